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

One rule per linear op and direction, each for Mul, Add and Sub (constant on either side of
Mul and Add): `affine_into_conv`, `affine_into_matmul` (a scale: a shift after a bare MatMul
is its bias already), `affine_into_biased_matmul`, and forwards `affine_into_next_conv`,
`affine_into_next_matmul`, `affine_into_next_biased_matmul`. An affine node is tried
backwards first: it is the root of those patterns, and the graph is walked in order. Left
alone, with the reason (`edgec compile --explain`): an affine on another axis, a shift before
a padded conv, constants shaped to broadcast the tensor larger, and ops whose output has
other readers (the matcher's reason).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult

from edgec.passes._ir import const, conv_params, dense_params, f32, is_op
from edgec.passes.rules import Rule, RulePass, constant


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


Step = tuple[ir.Value, int | None, np.ndarray, str]


def _biased_dense(add: ir.Node | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(W, c) of x W + c made by this bias Add (the bias on either side)."""
    for value in add.inputs if add is not None else ():
        mm = value.producer() if value is not None else None
        dense = dense_params(mm) if is_op(mm, "MatMul") else None  # type: ignore[arg-type]
        if dense is not None and dense[1] is not None and dense[2] is add:
            return dense[0], dense[1]
    return None


def _emit_biased(
    op: Any, x: ir.Value, w: np.ndarray, c: np.ndarray, p: ir.Value, add: ir.Node
) -> ir.Value:
    """x W + c as a MatMul and a bias Add like `add` (product `p`; names and bias side kept)."""
    product = op.MatMul(x, constant(op, w, p.producer().inputs[1], "affine", "weight"))  # type: ignore[union-attr]
    product.shape, product.type = p.shape, p.type
    first = add.inputs[0] is p
    bias = constant(op, c, add.inputs[1 if first else 0], "affine", "bias")
    return op.Add(product, bias) if first else op.Add(bias, product)


class _Affine(Rule):
    """A rule for one affine op (`affine`: Mul, Add or Sub by a per-channel constant) next to a
    linear op. The pattern binds the affine's output as `a`; `step` reads it (`affine_step`).
    Subclasses: `linear_pattern`, `why_not` (a reason, or None when it folds), `folded`."""

    def __init__(self, affine: str) -> None:
        super().__init__()
        self.affine = affine

    def affine_of(self, op: Any, t: ir.Value, c: ir.Value) -> ir.Value:
        return getattr(op, self.affine)(t, c, _outputs=["a"])

    def step_or_why(self, a: ir.Value, t: ir.Value) -> MatchResult | Step:
        """The affine that made `a`, with `t` its tensor; or a failed check: not an affine by
        a constant at all, or the commuted variant whose `t` is the constant (both silent), or
        a constant that does not vary along one axis (a near miss, with its reason)."""
        step = self.step(a, t)
        if step is not None:
            return step
        node = a.producer()
        c = [f32(v) for v in node.inputs if v is not t] if node is not None else []
        known = len(c) == 1 and c[0] is not None and t.shape is not None and const(t) is None
        if known and channel_vector(c[0], len(t.shape)) is None:  # type: ignore[arg-type]
            return self.fail("the constant varies along more than one axis, or broadcasts x")
        return self.skip()

    def step(self, a: ir.Value, t: ir.Value) -> Step | None:
        """The affine that made `a`, if it is one by a constant and `t` is its tensor."""
        node = a.producer()
        found = affine_step(node) if node is not None else None
        return found if found is not None and found[0] is t else None


class _Backward(_Affine):
    """affine(linear(x)) -> linear'(x): the affine is the pattern's root."""

    def pattern(self, op: Any, x: ir.Value, c: ir.Value, b: ir.Value) -> ir.Value:
        return self.affine_of(op, self.linear_pattern(op, x, b), c)

    def linear_pattern(self, op: Any, x: ir.Value, b: ir.Value) -> ir.Value:
        """The linear op's pattern on x, its output named `y` (`b`: a bias, where added)."""
        raise NotImplementedError

    def check(self, context: Any, x: ir.Value, y: ir.Value, a: ir.Value, **_: Any) -> MatchResult:
        step = self.step_or_why(a, y)
        if isinstance(step, MatchResult):
            return step
        why = self.why_not(y, step)
        return self.fail(why) if why else self.ok()

    def why_not(self, y: ir.Value, step: Step) -> str | None:
        raise NotImplementedError

    def rewrite(self, op: Any, x: ir.Value, y: ir.Value, a: ir.Value, **_: Any) -> ir.Value:
        return self.folded(op, x, y, self.step(a, y))  # type: ignore[arg-type]

    def folded(self, op: Any, x: ir.Value, y: ir.Value, step: Step) -> ir.Value:
        raise NotImplementedError


class AffineIntoConv(_Backward):
    """a * conv(x, W, c) + b = conv(x, W * a[o], c * a + b)."""

    name = "affine_into_conv"

    def linear_pattern(self, op: Any, x: ir.Value, b: ir.Value) -> ir.Value:
        return op.Conv(x, _allow_other_inputs=True, _outputs=["y"])

    def why_not(self, y: ir.Value, step: Step) -> str | None:
        params = conv_params(y.producer())  # type: ignore[arg-type]
        if params is None:
            return "the Conv's weight or bias is not a float32 constant, or it uses auto_pad"
        _, axis, vec, _ = step
        if _fits(axis, 1, len(y.shape or ()), params[0].shape[0], vec) is None:
            return "the affine does not run along the Conv's output channels"
        return None

    def folded(self, op: Any, x: ir.Value, y: ir.Value, step: Step) -> ir.Value:
        conv = y.producer()
        assert conv is not None
        w, b = conv_params(conv)  # type: ignore[misc]
        _, axis, vec, kind = step
        v = _fits(axis, 1, len(y.shape or ()), w.shape[0], vec)
        assert v is not None
        b = b if b is not None else np.zeros(w.shape[0])
        if kind == "scale":
            w, b = w * v.reshape(-1, *([1] * (w.ndim - 1))), b * v
        else:
            b = b + v
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        weight = constant(op, w, conv.inputs[1], "affine", "weight")
        return op.Conv(x, weight, constant(op, b, bias, "affine", "bias"), **conv.attributes)


class AffineIntoMatmul(_Backward):
    """(x W) * a = x (W * a[None, :]). Mul only: a shift after a bare MatMul is its bias."""

    name = "affine_into_matmul"

    def linear_pattern(self, op: Any, x: ir.Value, b: ir.Value) -> ir.Value:
        return op.MatMul(x, _allow_other_inputs=True, _outputs=["y"])

    def why_not(self, y: ir.Value, step: Step) -> str | None:
        w = f32(y.producer().inputs[1])  # type: ignore[union-attr]
        if w is None or w.ndim != 2:
            return "the MatMul's weight is not a 2-D float32 constant"
        _, axis, vec, _ = step
        if _fits(axis, -1, len(y.shape or ()), w.shape[1], vec) is None:
            return "the affine does not run along the MatMul's last axis"
        return None

    def folded(self, op: Any, x: ir.Value, y: ir.Value, step: Step) -> ir.Value:
        weight = y.producer().inputs[1]  # type: ignore[union-attr]
        w = f32(weight).astype(np.float64)  # type: ignore[union-attr]
        _, axis, vec, _ = step
        v = _fits(axis, -1, len(y.shape or ()), w.shape[1], vec)
        return op.MatMul(x, constant(op, w * v[None, :], weight, "affine", "weight"))  # type: ignore[index]


class AffineIntoBiasedMatmul(_Backward):
    """(x W + c) * a + b = x (W * a[None, :]) + (c * a + b)."""

    name = "affine_into_biased_matmul"

    def linear_pattern(self, op: Any, x: ir.Value, b: ir.Value) -> ir.Value:
        product = op.MatMul(x, _allow_other_inputs=True, _outputs=["p"])
        return op.Add(product, b, _outputs=["y"])

    def check(self, context: Any, x: ir.Value, p: ir.Value, y: ir.Value, a: ir.Value, **_: Any):
        return super().check(context, x, y, a)

    def why_not(self, y: ir.Value, step: Step) -> str | None:
        dense = _biased_dense(y.producer())
        if dense is None:
            return "the MatMul's weight or the added bias is not a float32 constant"
        _, axis, vec, _ = step
        if _fits(axis, -1, len(y.shape or ()), dense[0].shape[1], vec) is None:
            return "the affine does not run along the MatMul's last axis"
        return None

    def rewrite(self, op: Any, x: ir.Value, p: ir.Value, y: ir.Value, a: ir.Value, **_: Any):
        w, c = _biased_dense(y.producer())  # type: ignore[misc]
        _, axis, vec, kind = self.step(a, y)  # type: ignore[misc]
        v = _fits(axis, -1, len(y.shape or ()), w.shape[1], vec)
        assert v is not None
        if kind == "scale":
            w, c = w * v[None, :], c * v
        else:
            c = c + v
        return _emit_biased(op, x, w, c, p, y.producer())  # type: ignore[arg-type]


class _Forward(_Affine):
    """linear(affine(t)) -> linear'(t): the linear op is the pattern's root."""

    def check(self, context: Any, t: ir.Value, a: ir.Value, z: ir.Value, **_: Any) -> MatchResult:
        step = self.step_or_why(a, t)
        if isinstance(step, MatchResult):
            return step
        why = self.why_not(t, step, z)
        return self.fail(why) if why else self.ok()

    def why_not(self, t: ir.Value, step: Step, z: ir.Value) -> str | None:
        raise NotImplementedError


class AffineIntoNextConv(_Forward):
    """conv(a * t + b, W, c) = conv(t, W * a[i], c + sum_{i,k} W[o, i, k] b[i]) (unpadded, or
    b = 0; groups 1)."""

    name = "affine_into_next_conv"

    def pattern(self, op: Any, t: ir.Value, c: ir.Value) -> ir.Value:
        return op.Conv(self.affine_of(op, t, c), _allow_other_inputs=True, _outputs=["z"])

    def why_not(self, t: ir.Value, step: Step, z: ir.Value) -> str | None:
        conv = z.producer()
        assert conv is not None
        params = conv_params(conv)
        if params is None:
            return "the next Conv's weight or bias is not a float32 constant, or it uses auto_pad"
        if conv.attributes.get_int("group", 1) != 1:
            return "the next Conv is grouped"
        _, axis, vec, kind = step
        v = _fits(axis, 1, len(t.shape or ()), params[0].shape[1], vec)
        if v is None:
            return "the affine does not run along the next Conv's input channels"
        if kind == "shift" and any(conv.attributes.get_ints("pads", [0])) and np.any(v != 0):
            return "a shift before a padded Conv: padding reads 0, not the shift"
        return None

    def rewrite(self, op: Any, t: ir.Value, a: ir.Value, z: ir.Value, **_: Any) -> ir.Value:
        conv = z.producer()
        assert conv is not None
        w, b = conv_params(conv)  # type: ignore[misc]
        _, axis, vec, kind = self.step(a, t)  # type: ignore[misc]
        v = _fits(axis, 1, len(t.shape or ()), w.shape[1], vec)
        assert v is not None
        b = b if b is not None else np.zeros(w.shape[0])
        if kind == "scale":
            w = w * v.reshape(1, -1, *([1] * (w.ndim - 2)))
        else:
            b = b + w.sum(axis=tuple(range(2, w.ndim))) @ v
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        weight = constant(op, w, conv.inputs[1], "affine", "weight")
        return op.Conv(t, weight, constant(op, b, bias, "affine", "bias"), **conv.attributes)


class AffineIntoNextMatmul(_Forward):
    """(a * t + b) W = t (a[:, None] W) + b W: a shift gives the MatMul a bias Add."""

    name = "affine_into_next_matmul"

    def pattern(self, op: Any, t: ir.Value, c: ir.Value) -> ir.Value:
        return op.MatMul(self.affine_of(op, t, c), _allow_other_inputs=True, _outputs=["z"])

    def check(self, context: Any, t: ir.Value, a: ir.Value, z: ir.Value, **_: Any) -> MatchResult:
        step, dense = self.step(a, t), dense_params(z.producer())  # type: ignore[arg-type]
        biased = dense is not None and dense[2] is not z.producer()
        if step is not None and step[3] == "shift" and biased:  # the biased form takes it
            return self.unlike("a bias Add follows: affine_into_next_biased_matmul's case")
        return super().check(context, t, a, z)

    def why_not(self, t: ir.Value, step: Step, z: ir.Value) -> str | None:
        dense = dense_params(z.producer())  # type: ignore[arg-type]
        if dense is None:
            return "the next MatMul's weight is not a 2-D float32 constant"
        _, axis, vec, kind = step
        if _fits(axis, -1, len(t.shape or ()), dense[0].shape[0], vec) is None:
            return "the affine does not run along the next MatMul's input features"
        if kind == "shift" and z.is_graph_output():
            return "the next MatMul's output is a graph output: a new bias Add would take its place"
        return None

    def rewrite(self, op: Any, t: ir.Value, a: ir.Value, z: ir.Value, **_: Any) -> ir.Value:
        weight = z.producer().inputs[1]  # type: ignore[union-attr]
        w = f32(weight).astype(np.float64)  # type: ignore[union-attr]
        _, axis, vec, kind = self.step(a, t)  # type: ignore[misc]
        v = _fits(axis, -1, len(t.shape or ()), w.shape[0], vec)
        assert v is not None
        if kind == "scale":
            return op.MatMul(t, constant(op, v[:, None] * w, weight, "affine", "weight"))
        product = op.MatMul(t, weight)
        product.shape, product.type = z.shape, z.type
        return op.Add(product, constant(op, v @ w, None, "affine", "bias"))


class AffineIntoNextBiasedMatmul(_Forward):
    """(a * t + b) W + c = t (a[:, None] W) + (b W + c)."""

    name = "affine_into_next_biased_matmul"

    def pattern(self, op: Any, t: ir.Value, c: ir.Value, b: ir.Value) -> ir.Value:
        product = op.MatMul(self.affine_of(op, t, c), _allow_other_inputs=True, _outputs=["p"])
        return op.Add(product, b, _outputs=["z"])

    def why_not(self, t: ir.Value, step: Step, z: ir.Value) -> str | None:
        dense = _biased_dense(z.producer())
        if dense is None:
            return "the next MatMul's weight or its added bias is not a float32 constant"
        _, axis, vec, _ = step
        if _fits(axis, -1, len(t.shape or ()), dense[0].shape[0], vec) is None:
            return "the affine does not run along the next MatMul's input features"
        return None

    def rewrite(self, op: Any, t: ir.Value, a: ir.Value, p: ir.Value, z: ir.Value, **_: Any):
        w, c = _biased_dense(z.producer())  # type: ignore[misc]
        _, axis, vec, kind = self.step(a, t)  # type: ignore[misc]
        v = _fits(axis, -1, len(t.shape or ()), w.shape[0], vec)
        assert v is not None
        if kind == "scale":
            w = v[:, None] * w
        else:
            c = c + v @ w
        return _emit_biased(op, t, w, c, p, z.producer())  # type: ignore[arg-type]


AFFINES = ("Mul", "Add", "Sub")


class FoldChannelAffine(RulePass):
    name = "fold_channel_affine"
    rules = (
        *(partial(AffineIntoConv, a) for a in AFFINES),
        partial(AffineIntoMatmul, "Mul"),
        *(partial(AffineIntoBiasedMatmul, a) for a in AFFINES),
        *(partial(AffineIntoNextConv, a) for a in AFFINES),
        *(partial(AffineIntoNextMatmul, a) for a in AFFINES),
        *(partial(AffineIntoNextBiasedMatmul, a) for a in AFFINES),
    )
    commuted = True  # the constant of a Mul or Add on either side; a bias on either side
