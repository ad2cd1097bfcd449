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

Left alone: sums whose terms read different tensors or have other readers, affines that vary
along more than one axis, and transposes that are not inverses of each other.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.passes._ir import (
    as_f32,
    bypass,
    f32,
    initializer,
    is_op,
    live_nodes,
    only_consumer,
)
from edgec.passes.base import EdgecPass
from edgec.passes.fold_batchnorm import bn_affine
from edgec.passes.fold_channel_affine import affine_step


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


def _fold_sum(add: ir.Node) -> bool:
    if not is_op(add, "Add") or len(add.inputs) != 2 or None in add.inputs:
        return False
    u, v = add.inputs
    candidates = {u, v}
    for side in (u, v):
        producer = side.producer()  # type: ignore[union-attr]
        if producer is not None and producer.inputs and producer.inputs[0] is not None:
            candidates.add(producer.inputs[0])
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
            continue
        a = np.broadcast_to(np.asarray(tu[0]) + np.asarray(tv[0]), (channels,))
        b = np.broadcast_to(np.asarray(tu[1]) + np.asarray(tv[1]), (channels,))
        out = emit_affine(add, x, np.array(a), np.array(b), 1, add.outputs[0])
        if not bypass(add, out):
            return False
        for node in reversed(chain):  # consumers before producers
            if node.graph is not None:
                node.graph.remove(node, safe=True)
        return True
    return False


def _bn_on_tokens(bn: ir.Node) -> bool:
    """A BN that reads a transpose and is still here: make it an affine on axis 1."""
    affine = bn_affine(bn)
    if affine is None:
        return False
    x = bn.inputs[0]
    if x is None or x.shape is None or not is_op(x.producer(), "Transpose"):
        return False
    s, t = affine
    return bypass(bn, emit_affine(bn, x, s, t, 1, bn.outputs[0]))


def _bn_after_reshape(bn: ir.Node) -> bool:
    """BN1d(Reshape(y)) on (M, C) with y's last axis C -> Reshape(a * y + b) on that axis: the
    affine moves before the flattening, next to the Linear that made y (LeViT's Linear+BN on
    tokens flattened to 2-D)."""
    affine = bn_affine(bn)
    x = bn.inputs[0] if affine is not None else None
    reshape = x.producer() if x is not None else None
    if affine is None or reshape is None or not is_op(reshape, "Reshape") or x is None:
        return False
    y = reshape.inputs[0] if reshape.inputs else None
    if y is None or y.shape is None or x.shape is None or len(x.shape) != 2:
        return False
    channels = x.shape[1]
    if not isinstance(channels, int) or y.shape[-1] != channels or only_consumer(x) is not bn:
        return False
    s, t = affine
    moved = emit_affine(reshape, y, s, t, len(y.shape) - 1, y)
    reshape.replace_input_with(0, moved)
    return bypass(bn, x)


def _cancel_transposes(first: ir.Node) -> bool:
    """Transpose(P) -> Mul(c) -> Add(d) -> Transpose(Q), Q . P = id  ->  Mul(c') -> Add(d')."""
    if not is_op(first, "Transpose"):
        return False
    perm = list(first.attributes.get_ints("perm", []))
    mul = only_consumer(first.outputs[0])
    add = only_consumer(mul.outputs[0]) if is_op(mul, "Mul") and mul is not None else None
    last = only_consumer(add.outputs[0]) if is_op(add, "Add") and add is not None else None
    if not perm or mul is None or add is None or not is_op(last, "Transpose") or last is None:
        return False
    back = list(last.attributes.get_ints("perm", []))
    if [perm[i] for i in back] != list(range(len(perm))):
        return False
    x = first.inputs[0]
    c, d = f32(mul.inputs[1]), f32(add.inputs[1])
    if x is None or c is None or d is None or mul.inputs[0] is not first.outputs[0]:
        return False
    if add.inputs[0] is not mul.outputs[0]:
        return False
    rank = len(perm)
    inverse = np.argsort(perm)
    c_full = np.transpose(c.reshape((1,) * (rank - c.ndim) + c.shape), inverse)
    d_full = np.transpose(d.reshape((1,) * (rank - d.ndim) + d.shape), inverse)
    graph = first.graph
    assert graph is not None
    mul.replace_input_with(0, x)
    mul.replace_input_with(1, initializer(graph, as_f32(c_full), "scale"))
    add.replace_input_with(1, initializer(graph, as_f32(d_full), "shift"))
    for v in (mul.outputs[0], add.outputs[0]):
        v.shape, v.type = last.outputs[0].shape, last.outputs[0].type
    graph.remove(first, safe=True)
    return bypass(last, add.outputs[0])


class FoldRepbn(EdgecPass):
    name = "fold_repbn"

    def rewrite(self, model: ir.Model) -> int:
        fired = 0
        # in this order: sums first, then what is left of BNs on tokens
        for rewrite in (_fold_sum, _bn_on_tokens, _bn_after_reshape, _cancel_transposes):
            for node in live_nodes(model):
                if rewrite(node):
                    fired += 1
        return fired
