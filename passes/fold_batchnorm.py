"""BatchNormalization(Conv(x)) -> Conv(x), and its neighbours: BN folded into the linear op
next to it.

BN(y) = s * y + t per channel, s = gamma / sqrt(var + eps), t = beta - mean * s, so

    BN(conv(x, W, b))     = conv(x, W * s[o], b * s + t)                  (any groups, stride,
                                                                           dilation, padding)
    BN(convT(x, W, b))    = convT(x, W * s[o], b * s + t)                 (o = output channel)
    BN(alpha A B + beta C) = A (alpha B * s) + (beta C * s + t)           (Gemm, 2-D)
    BN(x W + c)           = x (W * s) + (c * s + t)                       (MatMul(+Add), 2-D)
    conv(BN(x), W, b)     = conv(x, W * s[i], b + sum_{i,k} W[o,i,k] t[i]) (only when the conv
                                                                           pads nothing, or t = 0)
    BN(A) B               = A (s[:, None] B) + t B                        (Gemm, 2-D, no transA)

Left alone: BN in training mode, BN whose statistics are not constants, BN before a padded
conv with a non-zero shift (padding would read 0 where the folded conv expects t), BN on a
MatMul output of rank > 2 (its channel axis 1 is not MatMul's feature axis), and linear ops
whose output has other readers.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.passes._ir import (
    as_f32,
    bypass,
    f32,
    gemm_params,
    is_op,
    live_nodes,
    only_consumer,
    set_const_input,
    set_gemm,
    weight_bias,
)
from edgec.passes.base import EdgecPass


def bn_affine(node: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) with BN(y) = s * y + t along axis 1, or None if BN is not a constant affine."""
    if not is_op(node, "BatchNormalization") or node.attributes.get_int("training_mode", 0):
        return None
    if any(o is not None and (o.is_graph_output() or list(o.uses())) for o in node.outputs[1:]):
        return None
    arrays = [f32(v) for v in node.inputs[1:5]]
    if any(a is None for a in arrays):
        return None
    gamma, beta, mean, var = (a.astype(np.float64) for a in arrays)  # type: ignore[union-attr]
    eps = node.attributes.get_float("epsilon", 1e-5)
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _fold_into_producer(bn: ir.Node, s: np.ndarray, t: np.ndarray) -> bool:
    x = bn.inputs[0]
    assert x is not None
    op = x.producer()
    if op is None or only_consumer(x) is not bn:
        return False
    params = weight_bias(op) if is_op(op, "Conv", "ConvTranspose") else None
    if params is not None:
        w, b = params
        if op.op_type == "Conv":
            w_new = w * s.reshape(-1, *([1] * (w.ndim - 1)))
        else:  # ConvTranspose weight: (Cin, Cout / groups, k...)
            g = op.attributes.get_int("group", 1)
            cin, cout_g = w.shape[0], w.shape[1]
            grouped = w.reshape(g, cin // g, cout_g, *w.shape[2:])
            w_new = (grouped * s.reshape(g, 1, cout_g, *([1] * (w.ndim - 2)))).reshape(w.shape)
        b_new = (b if b is not None else 0.0) * s + t
        set_const_input(op, 1, as_f32(w_new), "weight")
        set_const_input(op, 2, as_f32(b_new), "bias")
        return bypass(bn, x)
    if _rank(x) != 2:
        return False
    gemm = gemm_params(op)
    if gemm is not None:  # transA does not matter: BN scales output columns
        w, c, alpha, beta, trans_b = gemm
        cols = s[:, None] if trans_b else s[None, :]
        set_gemm(op, alpha * w * cols, (beta * c if c is not None else 0.0) * s + t)
        return bypass(bn, x)
    if is_op(op, "Add"):  # MatMul(x, W) + c
        mm = op.inputs[0].producer() if op.inputs[0] is not None else None
        c = f32(op.inputs[1])
        if not is_op(mm, "MatMul") or c is None or only_consumer(op.inputs[0]) is not op:
            return False
        w = f32(mm.inputs[1])
        if w is None or w.ndim != 2:
            return False
        set_const_input(mm, 1, as_f32(w.astype(np.float64) * s[None, :]), "weight")
        set_const_input(op, 1, as_f32(c.astype(np.float64) * s + t), "bias")
        return bypass(bn, x)
    return False


def _fold_into_consumer(bn: ir.Node, s: np.ndarray, t: np.ndarray) -> bool:
    y = bn.outputs[0]
    op = only_consumer(y)
    x = bn.inputs[0]
    if op is None or x is None or op.inputs[0] is not y:
        return False
    params = weight_bias(op) if is_op(op, "Conv") else None
    if params is not None:
        w, b = params
        pads = op.attributes.get_ints("pads", [0])
        auto_pad = op.attributes.get_string("auto_pad", "NOTSET")
        if (any(pads) or auto_pad not in ("NOTSET", "VALID")) and np.any(t != 0):
            return False
        g = op.attributes.get_int("group", 1)
        cout, cin_g = w.shape[0], w.shape[1]
        # input channel of W[o, i]: (o // (cout // g)) * cin_g + i
        idx = (np.arange(cout)[:, None] // (cout // g)) * cin_g + np.arange(cin_g)[None, :]
        shape = (cout, cin_g, *([1] * (w.ndim - 2)))
        w_new = w * s[idx].reshape(shape)
        shift = (w * t[idx].reshape(shape)).sum(axis=tuple(range(1, w.ndim)))
        b_new = (b if b is not None else 0.0) + shift
        set_const_input(op, 1, as_f32(w_new), "weight")
        set_const_input(op, 2, as_f32(b_new), "bias")
        return bypass(bn, x)
    gemm = gemm_params(op)
    if gemm is not None and _rank(x) == 2 and not op.attributes.get_int("transA", 0):
        w, c, alpha, beta, trans_b = gemm
        wk = w.T if trans_b else w  # (K, N)
        w_new = alpha * s[:, None] * wk
        c_new = alpha * (t @ wk) + (beta * c if c is not None else 0.0)
        set_gemm(op, w_new.T if trans_b else w_new, c_new)
        return bypass(bn, x)
    return False


class FoldBatchnorm(EdgecPass):
    name = "fold_batchnorm"

    def rewrite(self, model: ir.Model) -> int:
        fired = 0
        for node in live_nodes(model):
            affine = bn_affine(node)
            if affine is None:
                continue
            if _fold_into_producer(node, *affine) or _fold_into_consumer(node, *affine):
                fired += 1
        return fired
