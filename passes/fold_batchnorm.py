"""BatchNormalization(Conv(x)) -> Conv(x), and its neighbours: BN folded into the linear op
next to it, one rule per case.

BN(y) = s * y + t per channel, s = gamma / sqrt(var + eps), t = beta - mean * s, so

    BN(conv(x, W, b))     = conv(x, W * s[o], b * s + t)                  (any groups, stride,
                                                                           dilation, padding)
    BN(convT(x, W, b))    = convT(x, W * s[o], b * s + t)                 (o = output channel)
    BN(alpha A B + beta C) = A (alpha B * s) + (beta C * s + t)           (Gemm, 2-D)
    BN(x W + c)           = x (W * s) + (c * s + t)                       (MatMul(+Add), 2-D)
    conv(BN(x), W, b)     = conv(x, W * s[i], b + sum_{i,k} W[o,i,k] t[i]) (only when the conv
                                                                           pads nothing, or t = 0)
    BN(A) B               = A (s[:, None] B) + t B                        (Gemm, 2-D, no transA)

The first three are onnxscript's rules (`rules/common/_fuse_batchnorm.py`) with edgec's checks
added; the others are edgec's. Left alone, each with its reason (`edgec compile --explain`):
BN in training mode, BN whose statistics are not float32 constants, BN before a padded conv
with a non-zero shift (padding would read 0 where the folded conv expects t), BN on a MatMul
output of rank > 2 (its channel axis 1 is not MatMul's feature axis), and an intermediate
value that something else reads (the matcher's own reason).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.rules.common._fuse_batchnorm import (
    FuseBatchNormIntoConv,
    FuseBatchNormIntoConvTranspose,
    FuseBatchNormIntoGemm,
)

from edgec.passes._ir import f32, is_op
from edgec.passes.rules import Rule, RulePass, constant


def bn_affine(node: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) with BN(y) = s * y + t along axis 1, or None if `node` is no such BN."""
    if not is_op(node, "BatchNormalization"):
        return None
    affine = bn_affine_or_why(node)
    return None if isinstance(affine, str) else affine


def bn_affine_or_why(node: ir.Node) -> tuple[np.ndarray, np.ndarray] | str:
    """(s, t) with BN(y) = s * y + t along axis 1, or why BN is not a constant affine."""
    if node.attributes.get_int("training_mode", 0):
        return "BatchNormalization in training mode (batch statistics): not an affine"
    if any(o is not None and (o.is_graph_output() or list(o.uses())) for o in node.outputs[1:]):
        return "BatchNormalization's running statistics are read: training form"
    arrays = [f32(v) for v in node.inputs[1:5]]
    if any(a is None for a in arrays):
        return "BatchNormalization's scale, shift, mean or variance is not a float32 constant"
    gamma, beta, mean, var = (a.astype(np.float64) for a in arrays)  # type: ignore[union-attr]
    eps = node.attributes.get_float("epsilon", 1e-5)
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


def _weights(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None] | str:
    """A linear op's float32 constant weight and bias (None if absent), or why not."""
    w = f32(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return f"the {node.op_type}'s weight is not a float32 constant"
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    b = f32(bias)
    if bias is not None and b is None:
        return f"the {node.op_type}'s bias is not a float32 constant"
    return w, b


def _edgec_checks(result: MatchResult, inbound: ir.Value, bn_out: ir.Value) -> MatchResult:
    """What edgec requires beyond onnxscript's BN rules: an inference-mode BN of float32
    constants, and a float32 linear op (edgec folds float32 layers only)."""
    if not result:
        return result
    affine = bn_affine_or_why(bn_out.producer())  # type: ignore[arg-type]
    if isinstance(affine, str):
        return result.fail(affine)
    weights = _weights(inbound.producer())  # type: ignore[arg-type]
    if isinstance(weights, str):
        return result.fail(weights)
    return result


class _EdgecChecked:
    """onnxscript's BN rule (the next base class), named, with `_edgec_checks` added."""

    rule_name: ClassVar[str]

    def __init__(self) -> None:
        super().__init__(name=self.rule_name)  # type: ignore[call-arg]

    def check(self, context: Any, x: ir.Value, inbound_out: ir.Value, batchnorm_out: ir.Value):
        result = super().check(context, x, inbound_out, batchnorm_out)  # type: ignore[misc]
        return _edgec_checks(result, inbound_out, batchnorm_out)


class FoldIntoConv(_EdgecChecked, FuseBatchNormIntoConv):
    """BN(Conv(x)) -> Conv(x)."""

    rule_name = "bn_into_conv"


class FoldIntoConvTranspose(_EdgecChecked, FuseBatchNormIntoConvTranspose):
    """BN(ConvTranspose(x)) -> ConvTranspose(x) (any groups)."""

    rule_name = "bn_into_conv_transpose"


class FoldIntoGemm(_EdgecChecked, FuseBatchNormIntoGemm):
    """BN(Gemm(a)) -> Gemm(a)."""

    rule_name = "bn_into_gemm"


class FoldIntoMatMulAdd(Rule):
    """BN(MatMul(x, W) + c) -> MatMul(x, W * s) + (c * s + t), for 2-D x."""

    name = "bn_into_matmul_add"

    def pattern(self, op: Any, x: ir.Value, w: ir.Value, c: ir.Value) -> ir.Value:
        return op.BatchNormalization(
            op.Add(op.MatMul(x, w), c), _allow_other_inputs=True, _outputs=["bn_out"]
        )

    def check(self, context: Any, x: ir.Value, w: ir.Value, c: ir.Value, bn_out: ir.Value):
        affine = bn_affine_or_why(bn_out.producer())  # type: ignore[arg-type]
        if isinstance(affine, str):
            return self.fail(affine)
        if x.shape is None or len(x.shape) != 2:
            return self.fail("MatMul input is not 2-D: BN's channel axis 1 is not its features")
        weight, bias = f32(w), f32(c)
        if weight is None or weight.ndim != 2 or bias is None:
            return self.fail("the MatMul weight or the added bias is not a float32 constant")
        return self.ok()

    def rewrite(self, op: Any, x: ir.Value, w: ir.Value, c: ir.Value, bn_out: ir.Value):
        s, t = bn_affine_or_why(bn_out.producer())  # type: ignore[arg-type,misc]
        weight = f32(w).astype(np.float64) * s[None, :]  # type: ignore[union-attr]
        bias = f32(c).astype(np.float64) * s + t  # type: ignore[union-attr]
        return op.Add(
            op.MatMul(x, constant(op, weight, w, "bn", "weight")),
            constant(op, bias, c, "bn", "bias"),
        )


class _BnIntoNext(Rule):
    """BN whose output only the next linear op (`next_op`) reads, folded into its weights;
    subclasses say when that is not exact (`why_not`) and build the folded op (`folded`)."""

    next_op: ClassVar[str]

    def pattern(self, op: Any, x: ir.Value) -> ir.Value:
        bn = op.BatchNormalization(x, _allow_other_inputs=True, _outputs=["bn_out"])
        return getattr(op, self.next_op)(bn, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, bn_out: ir.Value, out: ir.Value):
        affine = bn_affine_or_why(bn_out.producer())  # type: ignore[arg-type]
        if isinstance(affine, str):
            return self.fail(affine)
        node = out.producer()
        assert node is not None
        weights = _weights(node)
        if isinstance(weights, str):
            return self.fail(weights)
        reason = self.why_not(x, node, affine[1])
        return self.fail(reason) if reason else self.ok()

    def why_not(self, x: ir.Value, node: ir.Node, t: np.ndarray) -> str | None:
        return None

    def rewrite(self, op: Any, x: ir.Value, bn_out: ir.Value, out: ir.Value):
        s, t = bn_affine_or_why(bn_out.producer())  # type: ignore[arg-type,misc]
        node = out.producer()
        assert node is not None
        w, b = _weights(node)  # type: ignore[misc]
        return self.folded(op, x, node, s, t, w.astype(np.float64), b)

    def folded(
        self,
        op: Any,
        x: ir.Value,
        node: ir.Node,
        s: np.ndarray,
        t: np.ndarray,
        w: np.ndarray,
        b: np.ndarray | None,
    ) -> ir.Value:
        raise NotImplementedError


class FoldIntoNextConv(_BnIntoNext):
    """Conv(BN(x), W, b) -> Conv(x, W * s[i], b + sum W t[i]): exact only when the Conv pads
    nothing or the shift t is 0 (padding reads 0, where the folded Conv would need t)."""

    name = "bn_into_next_conv"
    next_op = "Conv"

    def why_not(self, x: ir.Value, node: ir.Node, t: np.ndarray) -> str | None:
        pads = node.attributes.get_ints("pads", [0])
        auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
        if (any(pads) or auto_pad not in ("NOTSET", "VALID")) and np.any(t != 0):
            return "BN before a padded Conv with a nonzero shift: not exact"
        return None

    def folded(
        self,
        op: Any,
        x: ir.Value,
        node: ir.Node,
        s: np.ndarray,
        t: np.ndarray,
        w: np.ndarray,
        b: np.ndarray | None,
    ) -> ir.Value:
        g = node.attributes.get_int("group", 1)
        cout, cin_g = w.shape[0], w.shape[1]
        # input channel of W[o, i]: (o // (cout // g)) * cin_g + i
        idx = (np.arange(cout)[:, None] // (cout // g)) * cin_g + np.arange(cin_g)[None, :]
        shape = (cout, cin_g, *([1] * (w.ndim - 2)))
        shift = (w * t[idx].reshape(shape)).sum(axis=tuple(range(1, w.ndim)))
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        return op.Conv(
            x,
            constant(op, w * s[idx].reshape(shape), node.inputs[1], "bn", "weight"),
            constant(op, (b if b is not None else 0.0) + shift, bias, "bn", "bias"),
            **node.attributes,
        )


class FoldIntoNextGemm(_BnIntoNext):
    """Gemm(BN(a), B, C) -> Gemm(a, alpha s B, alpha t B + beta C), 2-D a, no transA."""

    name = "bn_into_next_gemm"
    next_op = "Gemm"

    def why_not(self, x: ir.Value, node: ir.Node, t: np.ndarray) -> str | None:
        if node.attributes.get_int("transA", 0):
            return "the Gemm transposes its input (transA): BN's channels are its rows"
        if x.shape is None or len(x.shape) != 2:
            return "the Gemm input's rank is unknown"
        return None

    def folded(
        self,
        op: Any,
        x: ir.Value,
        node: ir.Node,
        s: np.ndarray,
        t: np.ndarray,
        w: np.ndarray,
        b: np.ndarray | None,
    ) -> ir.Value:
        alpha = node.attributes.get_float("alpha", 1.0)
        beta = node.attributes.get_float("beta", 1.0)
        trans_b = node.attributes.get_int("transB", 0)
        wk = w.T if trans_b else w  # (K, N)
        w_new = alpha * s[:, None] * wk
        c_new = alpha * (t @ wk) + (beta * b if b is not None else 0.0)
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        return op.Gemm(
            x,
            constant(op, w_new.T if trans_b else w_new, node.inputs[1], "bn", "weight"),
            constant(op, np.asarray(c_new), bias, "bn", "bias"),
            transB=trans_b,
        )


class FoldBatchnorm(RulePass):
    name = "fold_batchnorm"
    rules = (
        FoldIntoConv,
        FoldIntoConvTranspose,
        FoldIntoGemm,
        FoldIntoMatMulAdd,
        FoldIntoNextConv,
        FoldIntoNextGemm,
    )
