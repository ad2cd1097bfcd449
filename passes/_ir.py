"""Helpers the rewrite passes share: constants as numpy, single consumers, new initializers,
and bypassing a node whose output another value can stand in for."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

STANDARD = ("", "ai.onnx")
_counter = itertools.count()


def live_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """The graph's nodes, skipping any that an earlier rewrite in the same walk removed."""
    for node in list(model.graph):
        if node.graph is not None:
            yield node


def is_op(node: ir.Node | None, *op_types: str) -> bool:
    return node is not None and node.domain in STANDARD and node.op_type in op_types


def const(value: ir.Value | None) -> np.ndarray | None:
    """The value as a numpy array if it is an initializer or a Constant node's output."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


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


def initializer(graph: ir.Graph, array: np.ndarray, hint: str) -> ir.Value:
    """A new initializer holding `array` (never mutate one: others may read it)."""
    name = f"{hint}__edgec{next(_counter)}"
    while name in graph.initializers:
        name = f"{hint}__edgec{next(_counter)}"
    value = ir.Value(
        name=name,
        shape=ir.Shape(list(array.shape)),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value


def set_const_input(node: ir.Node, index: int, array: np.ndarray, hint: str) -> None:
    """Point input `index` of `node` at a new initializer holding `array`."""
    graph = node.graph
    assert graph is not None
    value = initializer(graph, array, hint)
    old = node.inputs[index] if index < len(node.inputs) else None
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    drop_if_orphaned(old)


def drop_if_orphaned(value: ir.Value | None) -> None:
    """Remove an initializer nothing reads any more (so reports count what is really there)."""
    if value is None or not value.is_initializer() or used(value) or value.is_graph_input():
        return
    graph = value.graph
    if graph is not None and value.name in graph.initializers:
        graph.initializers.pop(value.name)


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
    if old.is_graph_output():
        if replacement.is_graph_input() or replacement.is_graph_output():
            return False
        if replacement.is_initializer():
            return False
        name = old.name
        old.replace_all_uses_with(replacement, replace_graph_outputs=True)
        old.name = f"{name}__bypassed"
        replacement.name = name
    else:
        old.replace_all_uses_with(replacement)
    inputs = list(node.inputs)
    graph.remove(node, safe=True)
    for value in inputs:
        drop_if_orphaned(value)
    return True


def as_f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)
