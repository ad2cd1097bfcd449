"""Linear(a * x + b) -> Linear'(x), and a * Linear(x) + b -> Linear'(x): a per-channel affine
(Mul and/or Add by constants that vary along one axis) folded into the linear op next to it.

Backwards, into the producer (y = conv(x, W, c) or y = x W + c):

    a * y + b = conv(x, W * a[o], c * a + b)    = x (W * a[None, :]) + (c * a + b)

Forwards, into the consumer (z = conv(y, W, c) or z = y W + c):

    conv(a * y + b, W, c) = conv(y, W * a[i], c + sum_{i,k} W[o, i, k] b[i])   (unpadded, or b = 0)
    (a * y + b) W + c     = y (a[:, None] W) + (b W + c)

The affine must run along the linear op's channel axis (axis 1 for Conv, the last for
MatMul/Gemm); scalars fold too. This is how RepBN, once `fold_repbn` has made it one affine,
disappears into the Linear after it, and how an affine left by other folds joins its conv.

One walk (`affine_into_linear`). Left alone, with the reason (`edgec compile --explain`): an
affine on another axis, a shift before a padded conv, constants shaped to
broadcast the tensor larger, and ops whose output has other readers.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.passes._ir import (
    as_f32,
    bypass,
    const,
    conv_params,
    dense_params,
    f32,
    initializer,
    is_op,
    live_nodes,
    only_consumer,
    other_slot,
    set_const_input,
)
from edgec.passes.base import EdgecPass


def channel_vector(c: np.ndarray, rank: int) -> tuple[int | None, np.ndarray] | None:
    """(axis, vector) if `c` broadcast to `rank` varies along one axis; (None, scalar) if it
    is a scalar; None otherwise (or if it would broadcast the tensor larger)."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    varying = [i for i, d in enumerate(shape) if d != 1]
    if not varying:
        return None, c.reshape(()).astype(np.float64)
    if len(varying) > 1:
        return None
    return varying[0], c.reshape(-1).astype(np.float64)


def affine_step(node: ir.Node) -> tuple[ir.Value, int | None, np.ndarray, str] | None:
    """For Mul/Add/Sub of a tensor by a per-channel constant: (tensor, axis, vector, kind)."""
    if not is_op(node, "Mul", "Add", "Sub") or len(node.inputs) != 2:
        return None
    x, c = node.inputs[0], f32(node.inputs[1])
    if c is None and node.op_type != "Sub":
        x, c = node.inputs[1], f32(node.inputs[0])
    if x is None or c is None or x.shape is None or const(x) is not None:
        return None
    found = channel_vector(c, len(x.shape))
    if found is None:
        return None
    axis, vec = found
    kind = "scale" if node.op_type == "Mul" else "shift"
    return x, axis, (-vec if node.op_type == "Sub" else vec), kind


def _fits(axis: int | None, want: int, rank: int, size: int, vec: np.ndarray) -> np.ndarray | None:
    """The vector expanded to `size` channels if the affine runs along axis `want`."""
    if axis is None:
        return np.full(size, float(vec))
    if axis % rank != want % rank or vec.size != size:
        return None
    return vec


RULE = "affine_into_linear"
Outcome = bool | str  # True: folded; a string: why not; False: no linear op there to try


def _backward(node: ir.Node, x: ir.Value, axis: int | None, vec: np.ndarray, kind: str) -> Outcome:
    op = x.producer()
    if op is None:
        return False
    rank = len(x.shape or ())
    if is_op(op, "Conv"):
        if only_consumer(x) is not node:
            return "the Conv's output is read elsewhere too"
        p = conv_params(op)
        if p is None:
            return "the Conv's weight or bias is not a float32 constant, or it uses auto_pad"
        w, b = p
        v = _fits(axis, 1, rank, w.shape[0], vec)
        if v is None:
            return "the affine does not run along the Conv's output channels"
        b = b if b is not None else np.zeros(w.shape[0])
        if kind == "scale":
            set_const_input(op, 1, as_f32(w * v.reshape(-1, *([1] * (w.ndim - 1)))), "weight")
            b = b * v
        else:
            b = b + v
        set_const_input(op, 2, as_f32(b), "bias")
        return bypass(node, x)
    if is_op(op, "MatMul"):  # no bias: a shift is one already; a scale goes into W
        if kind == "shift":
            return False
        w = f32(op.inputs[1])
        if only_consumer(x) is not node:
            return "the MatMul's output is read elsewhere too"
        if w is None or w.ndim != 2:
            return "the MatMul's weight is not a 2-D float32 constant"
        v = _fits(axis, -1, rank, w.shape[1], vec)
        if v is None:
            return "the affine does not run along the MatMul's last axis"
        set_const_input(op, 1, as_f32(w.astype(np.float64) * v[None, :]), "weight")
        return bypass(node, x)
    if not is_op(op, "Add") or len(op.inputs) != 2:
        return False
    mm = next(
        (v.producer() for v in op.inputs if v is not None and is_op(v.producer(), "MatMul")), None
    )
    dense = dense_params(mm) if mm is not None else None
    if mm is None or dense is None or dense[2] is not op or dense[1] is None:
        return False
    if only_consumer(x) is not node:
        return "the biased MatMul's output is read elsewhere too"
    w, c, _ = dense
    v = _fits(axis, -1, rank, w.shape[1], vec)
    if v is None:
        return "the affine does not run along the MatMul's last axis"
    slot = other_slot(op, mm.outputs[0])
    if kind == "scale":
        set_const_input(mm, 1, as_f32(w * v[None, :]), "weight")
        set_const_input(op, slot, as_f32(c * v), "bias")
    else:
        set_const_input(op, slot, as_f32(c + v), "bias")
    return bypass(node, x)


def _forward(node: ir.Node, x: ir.Value, axis: int | None, vec: np.ndarray, kind: str) -> Outcome:
    y = node.outputs[0]
    op = only_consumer(y)
    if op is None or op.inputs[0] is not y:
        return False
    rank = len(x.shape or ())
    if is_op(op, "Conv"):
        p = conv_params(op)
        if p is None:
            return "the next Conv's weight or bias is not a float32 constant, or it uses auto_pad"
        if op.attributes.get_int("group", 1) != 1:
            return "the next Conv is grouped"
        w, b = p
        v = _fits(axis, 1, rank, w.shape[1], vec)
        if v is None:
            return "the affine does not run along the next Conv's input channels"
        b = b if b is not None else np.zeros(w.shape[0])
        if kind == "scale":
            set_const_input(op, 1, as_f32(w * v.reshape(1, -1, *([1] * (w.ndim - 2)))), "weight")
        else:
            if any(op.attributes.get_ints("pads", [0])) and np.any(v != 0):
                return "a shift before a padded Conv: padding reads 0, not the shift"
            set_const_input(op, 2, as_f32(b + w.sum(axis=tuple(range(2, w.ndim))) @ v), "bias")
        return bypass(node, x)
    if is_op(op, "MatMul"):
        dense = dense_params(op)
        if dense is None:
            return "the next MatMul's weight is not a 2-D float32 constant"
        w, c, end = dense
        v = _fits(axis, -1, rank, w.shape[0], vec)
        if v is None:
            return "the affine does not run along the next MatMul's input features"
        if kind == "scale":
            set_const_input(op, 1, as_f32(v[:, None] * w), "weight")
            return bypass(node, x)
        shift = v @ w
        if end is op and op.outputs[0].is_graph_output():
            return "the next MatMul's output is a graph output: a new bias Add would take its place"
        if end is op:  # no bias yet: add one
            graph = op.graph
            assert graph is not None
            out = op.outputs[0]
            add = ir.node(
                "Add", [out, initializer(graph, as_f32(shift), "bias")], name=f"{op.name}+bias"
            )
            graph.insert_after(op, add)
            add.outputs[0].shape, add.outputs[0].type = out.shape, out.type
            out.replace_all_uses_with(add.outputs[0], replace_graph_outputs=True)
            add.replace_input_with(0, out)
        else:
            slot = other_slot(end, op.outputs[0])
            set_const_input(end, slot, as_f32(c + shift), "bias")  # type: ignore[operator]
        return bypass(node, x)
    return False


class FoldChannelAffine(EdgecPass):
    """A walk (`affine_into_linear`): an affine's neighbours are tried backwards, then
    forwards, each with its own reason when it cannot take the affine."""

    name = "fold_channel_affine"

    def rewrite(self, model: ir.Model) -> int:
        fired = 0
        for node in live_nodes(model):
            step = affine_step(node)
            if step is None:
                continue
            back = _backward(node, *step)
            forward = _forward(node, *step) if back is not True else False
            if back is True or forward is True:
                fired += self.fired(RULE, [node])
            elif isinstance(back, str) or isinstance(forward, str):
                why = "; ".join(r for r in (back, forward) if isinstance(r, str))
                self.left_alone(RULE, [node], why)
        return fired
