"""Helpers the rewrite passes share: constants as numpy, single consumers, new initializers,
bypassing a node whose output another value can stand in for, and recording which rewrite
made a node from which."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir

from edgec.core.op_map import PROVENANCE


def live_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """The graph's nodes, skipping any that an earlier rewrite in the same walk removed."""
    for node in list(model.graph):
        if node.graph is not None:
            yield node


def layer_name(node: ir.Node, default: str = "") -> str:
    """The exporter's module path of a node (`blocks.3.mlp.fc1` of `blocks.3.mlp.fc1/linear`)."""
    return (node.name or default).split("/")[0]


def is_op(node: ir.Node | None, *op_types: str) -> bool:
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type in op_types


def const(value: ir.Value | None) -> np.ndarray | None:
    """The value as a numpy array if it is an initializer or a Constant node's output."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def scalar(value: ir.Value | None) -> float | None:
    """The value of a constant with one element, else None."""
    array = const(value)
    if array is None or array.size != 1:
        return None
    return float(array.reshape(()))


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's shape when every dimension is a known integer, else None."""
    if value is None or value.shape is None:
        return None
    dims = tuple(value.shape)
    return dims if all(isinstance(d, int) for d in dims) else None  # type: ignore[return-value]


def f32(value: ir.Value | None) -> np.ndarray | None:
    """`const(value)` if it is float32, else None: the reparameterization passes compute in
    float64 and write float32, so they take float32 layers only (a float16 or float64 model
    is left as it is rather than given weights of another type)."""
    array = const(value)
    return array if array is not None and array.dtype == np.float32 else None


def only_consumer(value: ir.Value) -> ir.Node | None:
    """The one node that reads `value` (once), if that is its only use and it is no output."""
    if value.is_graph_output():
        return None
    uses = list(value.uses())
    if len(uses) != 1:
        return None
    return uses[0].node


def used(value: ir.Value | None) -> bool:
    return value is not None and (value.is_graph_output() or bool(list(value.uses())))


def drop_if_orphaned(value: ir.Value | None) -> None:
    """Remove an initializer nothing reads any more (so reports count what is really there)."""
    if value is None or not value.is_initializer() or used(value) or value.is_graph_input():
        return
    graph = value.graph
    if graph is not None and value.name in graph.initializers:
        graph.initializers.pop(value.name)


def take_over(old: ir.Value, new: ir.Value) -> None:
    """Every reader of `old` reads `new`; where `old` is a graph output, `new` takes its place
    and name (so `new` must then be no graph input, initializer or other output)."""
    if old.is_graph_output():
        name = old.name
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        old.name = f"{name}__replaced"
        new.name = name
    else:
        old.replace_all_uses_with(new)


def remove_unread(graph: ir.Graph, nodes: list[ir.Node]) -> None:
    """Remove those of `nodes` whose outputs nothing reads any more (readers first)."""
    wanted = set(map(id, nodes))
    for node in reversed([n for n in graph if id(n) in wanted]):
        if not any(used(o) for o in node.outputs):
            graph.remove(node, safe=True)


def bypass(node: ir.Node, replacement: ir.Value) -> bool:
    """Make every reader of node.outputs[0] read `replacement`, then remove `node`.

    Fails (returns False) when the output is a graph output that `replacement` cannot become
    (a graph input, an initializer, or another output).
    """
    old = node.outputs[0]
    graph = node.graph
    assert graph is not None
    if any(used(o) for o in node.outputs[1:]):
        return False
    if old.is_graph_output() and (
        replacement.is_graph_input()
        or replacement.is_graph_output()
        or replacement.is_initializer()
    ):
        return False
    take_over(old, replacement)
    inputs = list(node.inputs)
    graph.remove(node, safe=True)
    for value in inputs:
        drop_if_orphaned(value)
    return True


def as_f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def weight_bias(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(W, b) in float64 when input 1 (and input 2, if present) are constants; b None if absent."""
    w = f32(node.inputs[1]) if len(node.inputs) > 1 else None
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    b = f32(node.inputs[2]) if has_bias else None
    if w is None or (has_bias and b is None):
        return None
    return w.astype(np.float64), None if b is None else b.astype(np.float64)


def conv_params(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(W, b) of a Conv with explicit padding and constant weights, else None."""
    if not is_op(node, "Conv") or node.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
        return None
    return weight_bias(node)


def dense_params(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None, ir.Node] | None:
    """(W (K, N), b or None, last node) of x W + b on the last axis: MatMul(+Add) or Gemm."""
    gemm = weight_bias(node) if is_op(node, "Gemm") else None
    if gemm is not None:
        w, c = gemm
        a = node.attributes
        if a.get_int("transA", 0) or (c is not None and c.ndim > 1):
            return None
        alpha, beta = a.get_float("alpha", 1.0), a.get_float("beta", 1.0)
        w = w.T if a.get_int("transB", 0) else w
        return alpha * w, None if c is None else beta * c, node
    if is_op(node, "MatMul") and len(node.inputs) == 2:
        w = f32(node.inputs[1])
        if w is None or w.ndim != 2:
            return None
        nxt = only_consumer(node.outputs[0])
        if is_op(nxt, "Add") and nxt is not None:
            other = nxt.inputs[1] if nxt.inputs[0] is node.outputs[0] else nxt.inputs[0]
            c = f32(other)
            if c is not None and c.ndim <= 1 and c.size in (1, w.shape[1]):
                bias = np.broadcast_to(c, (w.shape[1],)).astype(np.float64)
                return w.astype(np.float64), bias, nxt
        return w.astype(np.float64), None, node
    return None


def record_provenance(new: Sequence[ir.Node], matched: Sequence[ir.Node], rule: str) -> None:
    """Say in each new node's metadata (`PROVENANCE`, a JSON list) which rule made it from which
    nodes, after what those nodes already carried: a folded Conv reads
    `["fold_batchnorm: c/conv2d + b/batch_norm"]`, and a profile shows it beside the Conv's time.
    """
    history: list[str] = []
    for node in matched:
        for step in json.loads(node.metadata_props.get(PROVENANCE, "[]")):
            if step not in history:
                history.append(step)
    step = f"{rule}: " + " + ".join(n.name or n.op_type for n in matched)
    for node in new:
        node.metadata_props[PROVENANCE] = json.dumps([*history, step])
