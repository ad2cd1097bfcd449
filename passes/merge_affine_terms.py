"""x + s * (f(x) - BN(x)) -> A * x + (s * f(x) + B): every per-channel affine of one tensor in
a linear combination, merged into one affine.

A tree of Add, Sub and Mul/Add by per-channel constants (along axis 1, or scalars) is a
linear combination of its leaves, sum_i c_i * t_i + d. Leaves that are affines of the same
tensor x (x itself, BN(x), Mul/Add chains on x; `fold_repbn.term`) sum to one affine:

    sum_i c_i * (a_i * x + b_i) = (sum_i c_i a_i) * x + sum_i c_i b_i = A * x + B

and the other leaves keep their coefficients. FastViT's RepMixer, x + s * (mixer(x) - BN(x)),
becomes (1 - s * a) * x + (s * conv(x) + s * b - s * ... ): the scale and shift then fold
into the conv (`fold_channel_affine`), and the sum of a conv and an affine of one input is
one conv (`merge_parallel_branches`), the deploy form FastViT's own code writes by hand.

Emitted as Mul(x, A) (left out when A = 1, the term dropped when A = 0), the first other
leaf as Add(Mul(f, c), B), the rest as Mul(f_j, c_j), summed by Adds.

Left alone, with the reason (`edgec compile --explain`): combinations without a
BatchNormalization among the x terms (plain arithmetic, nothing to fold), fewer than two x
terms, constants varying along another axis than 1, tree nodes read outside the tree, and
non-float32 tensors.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.core.irutil import initializer
from edgec.passes._ir import as_f32, bypass, is_op, live_nodes, only_consumer
from edgec.passes.base import EdgecPass
from edgec.passes.fold_channel_affine import affine_step
from edgec.passes.fold_repbn import term

Coef = np.ndarray  # per-channel (C,) or scalar ()


def _expand(
    value: ir.Value, coef: Coef, leaves: list[tuple[ir.Value, Coef]], nodes: list[ir.Node]
) -> Coef | None:
    """Add value * coef to `leaves`; returns the constant offset it contributes, or None if
    the tree has a constant along another axis."""
    node = value.producer()
    inner = node is not None and (not nodes or only_consumer(value) is not None)
    if inner and node is not None and is_op(node, "Add", "Sub") and len(node.inputs) == 2:
        a, b = node.inputs
        step = affine_step(node)
        if a is not None and b is not None and step is None:
            nodes.append(node)
            sign = -1.0 if node.op_type == "Sub" else 1.0
            d1 = _expand(a, coef, leaves, nodes)
            d2 = _expand(b, sign * coef, leaves, nodes)
            return None if d1 is None or d2 is None else d1 + d2
    if inner and node is not None:
        step = affine_step(node)
        if step is not None:
            x, axis, vec, kind = step
            if axis not in (None, 1):
                return None
            nodes.append(node)
            if kind == "scale":
                return _expand(x, coef * vec, leaves, nodes)
            offset = _expand(x, coef, leaves, nodes)
            return None if offset is None else offset + coef * vec
    leaves.append((value, coef))
    return np.zeros(())


def _channel_const(graph: ir.Graph, c: Coef, rank: int, hint: str) -> ir.Value:
    shape = () if c.ndim == 0 else (-1, *([1] * (rank - 2)))
    return initializer(graph, as_f32(np.asarray(c).reshape(shape)), hint)


def _merge(root: ir.Node) -> bool | str:
    """True if merged; why not, for a sum with a BatchNormalization term; else False."""
    nodes: list[ir.Node] = []
    leaves: list[tuple[ir.Value, Coef]] = []
    offset = _expand(root.outputs[0], np.ones(()), leaves, nodes)
    if len(leaves) < 2 or root not in nodes:
        return False
    if not any(is_op(leaf.producer(), "BatchNormalization") for leaf, _ in leaves):
        return False
    if offset is None:
        return "a constant in the sum varies along another axis than the channels (1)"
    why = "no two terms of the sum are per-channel affines of one tensor (with a BN among them)"
    candidates: list[ir.Value] = []
    for leaf, _ in leaves:
        producer = leaf.producer()
        candidates.append(leaf)
        if producer is not None and producer.inputs and producer.inputs[0] is not None:
            candidates.append(producer.inputs[0])
    for x in dict.fromkeys(candidates):
        shape = x.shape
        if shape is None or len(shape) < 2 or not isinstance(shape[1], int):
            continue
        found = [(leaf, c, term(leaf, x)) for leaf, c in leaves]
        mine = [(leaf, c, t) for leaf, c, t in found if t is not None]
        if len(mine) < 2 or not any(
            is_op(n, "BatchNormalization") for _, _, t in mine for n in t[2]
        ):
            continue
        channels = shape[1]
        a = sum(c * np.asarray(t[0]) for _, c, t in mine)
        b = sum(c * np.asarray(t[1]) for _, c, t in mine) + offset
        a = np.broadcast_to(a, (channels,)).astype(np.float64)
        b = np.broadcast_to(b, (channels,)).astype(np.float64)
        others = [(leaf, c) for leaf, c, t in found if t is None]
        if any(leaf.shape is None or len(leaf.shape) != len(shape) for leaf, _ in others):
            why = "another term's rank is unknown or differs: its coefficient needs axis 1"
            continue
        return _emit(root, x, a, b, others)
    return why


def _emit(
    root: ir.Node, x: ir.Value, a: np.ndarray, b: np.ndarray, others: list[tuple[ir.Value, Coef]]
) -> bool | str:
    graph = root.graph
    assert graph is not None and x.shape is not None
    rank = len(x.shape)
    out = root.outputs[0]
    new: list[ir.Node] = []

    def op(kind: str, u: ir.Value, c: Coef, hint: str) -> ir.Value:
        node = ir.node(kind, [u, _channel_const(graph, c, rank, hint)], name=f"{root.name}+{hint}")
        new.append(node)
        return node.outputs[0]

    terms: list[ir.Value] = []
    if np.any(a != 0):
        terms.append(x if np.all(a == 1) else op("Mul", x, a, "scale"))
    shift_done = False
    for leaf, c in others:
        t = leaf if np.all(c == 1) else op("Mul", leaf, np.asarray(c), "coef")
        if not shift_done and np.any(b != 0):
            t = op("Add", t, b, "shift")
        shift_done = True
        terms.append(t)
    if not terms:
        return "the terms cancel: the sum is a constant (left to constant folding)"
    if not shift_done and np.any(b != 0):
        terms[0] = op("Add", terms[0], b, "shift")
    total = terms[0]
    for t in terms[1:]:
        node = ir.node("Add", [total, t], name=f"{root.name}+sum")
        new.append(node)
        total = node.outputs[0]
    if total is x:
        return "the terms sum to their tensor unchanged (left as it is)"
    graph.insert_before(root, new)
    for node in new:
        node.outputs[0].shape, node.outputs[0].type = out.shape, out.type
    if not bypass(root, total):
        for node in reversed(new):
            graph.remove(node, safe=True)
        return "the sum is a graph output the merged affine cannot take the place of"
    _drop_dead(graph)
    return True


def _drop_dead(graph: ir.Graph) -> None:
    """Remove the tree's nodes that nothing reads any more (consumers first)."""
    for node in reversed(list(graph)):
        if not any(o.is_graph_output() or list(o.uses()) for o in node.outputs):
            graph.remove(node, safe=True)


class MergeAffineTerms(EdgecPass):
    """A walk (`affine_sum`): a tree of any shape is no fixed pattern."""

    name = "merge_affine_terms"

    def rewrite(self, model: ir.Model) -> int:
        fired = 0
        for node in reversed(list(live_nodes(model))):  # the root of a tree comes last
            if node.graph is None or not is_op(node, "Add", "Sub"):
                continue
            found = _merge(node)
            if found is True:
                fired += self.fired("affine_sum", [node])
            elif isinstance(found, str) and not _in_larger_sum(node):
                self.left_alone("affine_sum", [node], found)
        return fired


def _in_larger_sum(node: ir.Node) -> bool:
    """The node feeds another Add/Sub/Mul of the same tree (which reports for the whole)."""
    reader = only_consumer(node.outputs[0])
    return reader is not None and is_op(reader, "Add", "Sub", "Mul")
