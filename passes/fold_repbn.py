"""BN(t) + alpha * t -> a * t + b, and Transpose(a * Transpose(x) + b) -> a' * x + b'.

RepBN (SLAB) normalises tokens (B, N, C) as Transpose(BN1d(Transpose(x)) + alpha Transpose(x)).
With BN(t) = s t + u per channel,

    BN(t) + alpha * t = (s + alpha) * t + u                  a = gamma / sqrt(var + eps) + alpha
                                                             b = beta - gamma mean / sqrt(var + eps)

and, more generally, a sum of per-channel affines of the same tensor (BN, Mul/Add by
constants, or the tensor itself) is one affine: (a1 + a2) t + (b1 + b2). An affine between a
transpose and its inverse acts on the untransposed tensor along the permuted axis; the
transposes go. What is left is a Mul and an Add on the channel axis, which
`fold_channel_affine` folds into the neighbouring Linear or Conv, backwards or forwards (the
producing layer's bias included). A BatchNormalization that reads a transpose (BN1d on
tokens) and could not be folded directly becomes such an affine too, and so does one that
reads tokens flattened to (M, C) by a Reshape that keeps the channels last (LeViT's
Linear+BN): its affine moves before the Reshape, along the last axis,

    BN1d(Reshape(y, (M, C))) = Reshape(s * y + t, (M, C))       (y's last axis has size C)

The sum is an imperative walk (`repbn_sum`: a term is a chain of any length); the rest are
rules: `bn_on_tokens`, `bn_after_reshape`, `cancel_transposes`. Left alone, with the reason
(`edgec compile --explain`): sums whose terms read different tensors or have other readers,
affines that vary along more than one axis, reshapes that move the channels, and transposes
that are not inverses of each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult

from edgec.core.irutil import initializer
from edgec.passes._ir import as_f32, bypass, f32, is_op, live_nodes, only_consumer
from edgec.passes.fold_batchnorm import bn_affine, bn_affine_or_why
from edgec.passes.fold_channel_affine import affine_step
from edgec.passes.rules import Rule, RulePass, constant


def _channel_shape(rank: int, axis: int) -> tuple[int, ...]:
    return tuple(-1 if i == axis else 1 for i in range(rank))


def term(
    value: ir.Value, x: ir.Value, depth: int = 3
) -> tuple[np.ndarray | float, np.ndarray | float, list[ir.Node]] | None:
    """(a, b, nodes) with value = a * x + b along axis 1, for value = x, BN(x), or a chain of
    Mul/Add by per-channel constants on those; `nodes` are the ops the chain consists of."""
    if value is x:
        return 1.0, 0.0, []
    node = value.producer()
    if depth == 0 or node is None or only_consumer(value) is None or not node.inputs:
        return None
    if is_op(node, "BatchNormalization") and node.inputs[0] is x:
        affine = bn_affine(node)
        return None if affine is None else (affine[0], affine[1], [node])
    step = affine_step(node)
    if step is None or step[1] not in (None, 1):
        return None
    inner = term(step[0], x, depth - 1)
    if inner is None:
        return None
    a, b, nodes = inner
    vec = step[2]
    if step[3] == "scale":
        return a * vec, b * vec, [*nodes, node]
    return a, b + vec, [*nodes, node]


def emit_affine(
    anchor: ir.Node, x: ir.Value, a: np.ndarray, b: np.ndarray, axis: int, like: ir.Value
) -> ir.Value:
    """Insert Mul(x, a) then Add(., b) along `axis` before `anchor`; returns the Add output."""
    graph = anchor.graph
    assert graph is not None and x.shape is not None
    shape = _channel_shape(len(x.shape), axis)
    mul = ir.node(
        "Mul",
        [x, initializer(graph, as_f32(a.reshape(shape)), "scale")],
        name=f"{anchor.name}+scale",
    )
    add = ir.node(
        "Add",
        [mul.outputs[0], initializer(graph, as_f32(b.reshape(shape)), "shift")],
        name=f"{anchor.name}+shift",
    )
    graph.insert_before(anchor, [mul, add])
    for v in (mul.outputs[0], add.outputs[0]):
        v.shape, v.type = like.shape, like.type
    return add.outputs[0]


class FoldRepbn(RulePass):
    name = "fold_repbn"

    def rewrite(self, model: ir.Model) -> int:
        # in this order: sums first (a BN in a sum is RepBN), then what is left of BNs on
        # tokens, then the transposes around the affines those became
        fired = sum(self._fold_sum(node) for node in live_nodes(model))
        fired += self.apply_rules(model, (AffineOnTokens, AffineBeforeReshape))
        return fired + self.apply_rules(model, (CancelTransposes,))

    def _fold_sum(self, add: ir.Node) -> bool:
        """An Add of per-channel affines of one tensor, one of them a BN -> one affine."""
        if not is_op(add, "Add") or len(add.inputs) != 2 or None in add.inputs:
            return False
        u, v = add.inputs
        candidates = {u, v}
        for side in (u, v):
            producer = side.producer()  # type: ignore[union-attr]
            if producer is not None and producer.inputs and producer.inputs[0] is not None:
                candidates.add(producer.inputs[0])
        bns = [s.producer() for s in (u, v) if is_op(s.producer(), "BatchNormalization")]  # type: ignore[union-attr]
        why = "the other term is not a per-channel affine of the BN's input, or is read elsewhere"
        for x in candidates:
            if x is None or x.shape is None or len(x.shape) < 2 or x.shape[1] is None:
                continue
            tu, tv = term(u, x), term(v, x)  # type: ignore[arg-type]
            if tu is None or tv is None or (u is x and v is x):
                continue
            chain = tu[2] + tv[2]
            if not any(is_op(n, "BatchNormalization") for n in chain):
                continue  # sums without a BN are plain arithmetic, not RepBN
            channels = x.shape[1]
            if not isinstance(channels, int):
                why = f"the channel count of '{x.name}' is not static"
                continue
            a = np.broadcast_to(np.asarray(tu[0]) + np.asarray(tv[0]), (channels,))
            b = np.broadcast_to(np.asarray(tu[1]) + np.asarray(tv[1]), (channels,))
            out = emit_affine(add, x, np.array(a), np.array(b), 1, add.outputs[0])
            if not bypass(add, out):
                why = "the sum is a graph output the affine cannot take the place of"
                break
            for node in reversed(chain):  # consumers before producers
                if node.graph is not None:
                    node.graph.remove(node, safe=True)
            return self.fired("repbn_sum", [*chain, add])
        return bool(bns) and self.left_alone("repbn_sum", [*bns, add], why)  # type: ignore[list-item]


def _tokens_affine(op: Any, x: ir.Value, bn_out: ir.Value, axis: int) -> ir.Value:
    """Mul(x, s) then Add(., t) along `axis` of x, for the BN that made `bn_out`."""
    s, t = bn_affine(bn_out.producer())  # type: ignore[arg-type,misc]
    assert x.shape is not None
    shape = _channel_shape(len(x.shape), axis)
    mul = op.Mul(x, constant(op, s.reshape(shape), bn_out, "scale", "scale"))
    add = op.Add(mul, constant(op, t.reshape(shape), bn_out, "shift", "shift"))
    for value in (mul, add):
        value.shape, value.type = x.shape, x.type
    return add


class AffineOnTokens(Rule):
    """BN(Transpose(t)) left after the sums -> Mul and Add along axis 1 (BN1d on tokens), for
    `fold_channel_affine` or `CancelTransposes` to take further."""

    name = "bn_on_tokens"

    def pattern(self, op: Any, x: ir.Value) -> ir.Value:
        return op.BatchNormalization(x, _allow_other_inputs=True, _outputs=["bn_out"])

    def check(self, context: Any, x: ir.Value, bn_out: ir.Value) -> MatchResult:
        if not is_op(x.producer(), "Transpose"):
            return self.unlike("the BatchNormalization does not read a Transpose (tokens)")
        affine = bn_affine_or_why(bn_out.producer())  # type: ignore[arg-type]
        if isinstance(affine, str):
            return self.fail(affine)
        return self.fail("the input's rank is unknown") if x.shape is None else self.ok()

    def rewrite(self, op: Any, x: ir.Value, bn_out: ir.Value) -> ir.Value:
        return _tokens_affine(op, x, bn_out, 1)


class AffineBeforeReshape(Rule):
    """BN1d(Reshape(y, (M, C))), y's last axis C -> Reshape(s * y + t): the affine moves before
    the flattening, next to the Linear that made y (LeViT's Linear+BN on 2-D tokens)."""

    name = "bn_after_reshape"

    def pattern(self, op: Any, y: ir.Value, shape: ir.Value) -> ir.Value:
        flat = op.Reshape(y, shape, _outputs=["x"])
        return op.BatchNormalization(flat, _allow_other_inputs=True, _outputs=["bn_out"])

    def check(self, context: Any, y: ir.Value, shape: ir.Value, x: ir.Value, bn_out: ir.Value):
        affine = bn_affine_or_why(bn_out.producer())  # type: ignore[arg-type]
        if isinstance(affine, str):
            return self.fail(affine)
        if y.shape is None or x.shape is None or len(x.shape) != 2:
            return self.fail("the Reshape's output is not known to be 2-D (M, C)")
        channels = x.shape[1]
        if not isinstance(channels, int) or y.shape[-1] != channels:
            return self.fail("the Reshape does not keep the channels on the last axis")
        return self.ok()

    def rewrite(self, op: Any, y: ir.Value, shape: ir.Value, x: ir.Value, bn_out: ir.Value):
        assert y.shape is not None
        moved = _tokens_affine(op, y, bn_out, len(y.shape) - 1)
        return op.Reshape(moved, shape, **x.producer().attributes)  # type: ignore[union-attr]


class CancelTransposes(Rule):
    """Transpose(P) -> Mul(c) -> Add(d) -> Transpose(Q), Q . P = id  ->  Mul(c') -> Add(d')
    on the untransposed tensor (c, d permuted back)."""

    name = "cancel_transposes"

    def pattern(self, op: Any, x: ir.Value, c: ir.Value, d: ir.Value) -> ir.Value:
        inner = op.Add(op.Mul(op.Transpose(x, _outputs=["t"]), c), d)
        return op.Transpose(inner, _outputs=["out"])

    def check(
        self, context: Any, x: ir.Value, c: ir.Value, d: ir.Value, t: ir.Value, out: ir.Value
    ):
        perm = list(t.producer().attributes.get_ints("perm", []))  # type: ignore[union-attr]
        back = list(out.producer().attributes.get_ints("perm", []))  # type: ignore[union-attr]
        if not perm or [perm[i] for i in back] != list(range(len(perm))):
            return self.fail("the two Transposes are not each other's inverse")
        if f32(c) is None or f32(d) is None:
            return self.fail("the scale or shift between them is not a float32 constant")
        return self.ok()

    def rewrite(self, op: Any, x: ir.Value, c: ir.Value, d: ir.Value, t: ir.Value, out: ir.Value):
        inverse = np.argsort(t.producer().attributes.get_ints("perm", []))  # type: ignore[union-attr]
        rank = len(inverse)
        scale, shift = (f32(v) for v in (c, d))
        scale_back = _permuted(scale, rank, inverse)  # type: ignore[arg-type]
        shift_back = _permuted(shift, rank, inverse)  # type: ignore[arg-type]
        mul = op.Mul(x, constant(op, scale_back, c, "untransposed", "scale"))
        add = op.Add(mul, constant(op, shift_back, d, "untransposed", "shift"))
        for value in (mul, add):
            value.shape, value.type = out.shape, out.type
        return add


def _permuted(array: np.ndarray, rank: int, inverse: np.ndarray) -> np.ndarray:
    return np.transpose(array.reshape((1,) * (rank - array.ndim) + array.shape), inverse)
