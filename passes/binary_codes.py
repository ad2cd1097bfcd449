"""Recognizing binarized values in the IR, for the binarize passes.

An activation code is a value that is c(u) for a float u (see `binary_ops`):
- Where(GreaterOrEqual(u, t), +1, -1) or Where(..., +1, 0): sign (or step) at threshold t,
  with u = Add(x, offset) read as x and a fused offset;
- Min(Max(Round(Div(u, alpha)), 0), 1) or Clip(Round(Div(u, alpha)), 0, 1): BiT's {0, 1}
  form, bit = u / alpha > 0.5 (alpha = 1 when the division was folded away);
- Cast(bool -> float): any {0, 1} tensor (BiViT's softmax-aware attention), bit = x >= 0.5;
- any of these seen through data movement (Transpose, Reshape, Squeeze, Unsqueeze, Slice,
  Flatten): c commutes with them, so the movement is replayed on u.

Weights are often not initializers: the exporters keep the training-time expression
(sign(W - mean W), mean |W|) that computes them. `constant_value` evaluates such a
subgraph of constants with onnxruntime (the same runtime as the reference), once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from edgec.core.binary_ops import STEP_THRESHOLD
from edgec.passes._ir import const, drop_if_orphaned, is_op, scalar, used

MOVEMENT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Slice", "Flatten")


@dataclass
class ActivationCode:
    """value = replay(movement, c(source)) with c given by step, threshold, low, offset."""

    source: ir.Value
    step: float
    threshold: float
    low: float
    offset: np.ndarray | None  # per last-axis feature or scalar, fused into BinaryLinear
    movement: list[ir.Node]  # innermost first
    nodes: list[ir.Node]  # the nodes that compute the code (dropped when unused)


def _split_offset(u: ir.Value) -> tuple[ir.Value, np.ndarray | None, list[ir.Node]]:
    node = u.producer()
    if is_op(node, "Add") and node is not None:
        for i in (0, 1):
            c = const(node.inputs[1 - i])
            x = node.inputs[i]
            if c is not None and x is not None and c.ndim <= 1:
                return x, c.astype(np.float32), [node]
    return u, None, []


def _step_form(value: ir.Value) -> tuple[ir.Value, float, list[ir.Node]] | None:
    """Min(Max(Round(Div(u, a)), 0), 1) or Clip(Round(Div(u, a)), 0, 1) -> (u, a, nodes)."""
    node = value.producer()
    chain: list[ir.Node] = []
    if is_op(node, "Clip") and node is not None:
        if scalar(node.inputs[1]) != 0.0 or scalar(node.inputs[2]) != 1.0:
            return None
        chain.append(node)
        rnd = node.inputs[0].producer() if node.inputs[0] is not None else None
    elif is_op(node, "Min") and node is not None and len(node.inputs) == 2:
        hi = [i for i in (0, 1) if scalar(node.inputs[i]) == 1.0]
        if not hi:
            return None
        mx = node.inputs[1 - hi[0]].producer()  # type: ignore[union-attr]
        if not is_op(mx, "Max") or mx is None or len(mx.inputs) != 2:
            return None
        lo = [i for i in (0, 1) if scalar(mx.inputs[i]) == 0.0]
        if not lo:
            return None
        chain += [node, mx]
        rnd = mx.inputs[1 - lo[0]].producer()  # type: ignore[union-attr]
    else:
        return None
    if not is_op(rnd, "Round") or rnd is None:
        return None
    if rnd.inputs[0] is None:
        return None
    div = rnd.inputs[0].producer()
    if not is_op(div, "Div") or div is None:  # a step of 1: the division was folded away
        return rnd.inputs[0], 1.0, [*chain, rnd]
    alpha = scalar(div.inputs[1])
    if alpha is None or alpha <= 0 or div.inputs[0] is None:
        return None
    return div.inputs[0], alpha, [*chain, rnd, div]


def activation_code(value: ir.Value) -> ActivationCode | None:
    """The binarization that produces `value`, if it is one (module docstring)."""
    movement: list[ir.Node] = []
    v = value
    while True:
        node = v.producer()
        if node is None or not is_op(node, *MOVEMENT) or node.inputs[0] is None:
            break
        if any(const(i) is None for i in node.inputs[1:] if i is not None):
            return None
        movement.append(node)
        v = node.inputs[0]
    movement.reverse()
    node = v.producer()
    if node is None:
        return None
    if is_op(node, "Where"):
        hi, low = scalar(node.inputs[1]), scalar(node.inputs[2])
        cond = node.inputs[0].producer() if node.inputs[0] is not None else None
        if hi != 1.0 or low not in (-1.0, 0.0) or not is_op(cond, "GreaterOrEqual"):
            return None
        assert cond is not None and low is not None
        threshold = scalar(cond.inputs[1])
        if threshold is None or cond.inputs[0] is None:
            return None
        x, offset, add = _split_offset(cond.inputs[0])
        return ActivationCode(x, 1.0, threshold, low, offset, movement, [node, cond, *add])
    if is_op(node, "Cast") and node.inputs[0] is not None:
        if node.inputs[0].dtype != ir.DataType.BOOL or v.dtype != ir.DataType.FLOAT:
            return None
        return ActivationCode(v, 1.0, 0.5, 0.0, None, movement, [])
    step = _step_form(v)
    if step is not None:
        u, alpha, nodes = step
        x, offset, add = _split_offset(u)
        return ActivationCode(x, alpha, STEP_THRESHOLD, 0.0, offset, movement, [*nodes, *add])
    return None


def replay(code: ActivationCode, before: ir.Node, fuse_offset: bool) -> ir.Value:
    """The float input the binary op binarizes: the source (plus the offset, when it is not
    fused) moved like the code was. New nodes go before `before`."""
    graph = before.graph
    assert graph is not None
    v = code.source
    if code.offset is not None and not fuse_offset:
        add = code.nodes[-1]  # _split_offset's Add: reuse its output
        v = add.outputs[0]
    for node in code.movement:
        copy = ir.Node(
            node.domain,
            node.op_type,
            [v, *node.inputs[1:]],
            attributes=list(node.attributes.values()),
            name=f"{node.name}__binary",
        )
        graph.insert_before(before, copy)
        copy.outputs[0].name = f"{node.outputs[0].name}__float"
        v = copy.outputs[0]
    return v


def drop_dead(code: ActivationCode) -> None:
    """Remove the code's nodes (movement outermost first) that nothing reads any more."""
    for node in [*reversed(code.movement), *code.nodes]:
        graph = node.graph
        if graph is not None and not any(used(o) for o in node.outputs):
            inputs = list(node.inputs)
            graph.remove(node, safe=True)
            for value in inputs:
                drop_if_orphaned(value)


def _has_subgraph(node: ir.Node) -> bool:
    kinds = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
    return any(a.type in kinds for a in node.attributes.values())


class ConstantEvaluator:
    """Values computed from constants only, evaluated with onnxruntime (no size limit)."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self._cache: dict[int, np.ndarray | None] = {}

    def _subgraph(self, value: ir.Value) -> list[ir.Node] | None:
        nodes: dict[int, ir.Node] = {}
        stack = [value]
        while stack:
            v = stack.pop()
            if const(v) is not None:
                continue
            node = v.producer()
            if node is None or node.domain not in ("", "ai.onnx") or _has_subgraph(node):
                return None  # a graph input, or something we do not evaluate
            if id(node) not in nodes:
                nodes[id(node)] = node
                stack.extend(i for i in node.inputs if i is not None)
        order = {id(n): i for i, n in enumerate(self.model.graph)}
        return sorted(nodes.values(), key=lambda n: order[id(n)])

    def __call__(self, value: ir.Value | None) -> np.ndarray | None:
        if value is None:
            return None
        array = const(value)
        if array is not None:
            return array
        if id(value) in self._cache:
            return self._cache[id(value)]
        nodes = self._subgraph(value)
        result = None if nodes is None else self._run(nodes, value)
        self._cache[id(value)] = result
        return result

    def _run(self, nodes: list[ir.Node], value: ir.Value) -> np.ndarray | None:
        from edgec.core.irutil import run_onnx

        leaves: dict[str, ir.Value] = {}
        for node in nodes:
            for i in node.inputs:
                if i is not None and const(i) is not None and i.name is not None:
                    leaves[i.name] = i
        graph = onnx.GraphProto(name="weights")
        for node in nodes:
            graph.node.append(ir.serde.serialize_node(node))
        for name, v in leaves.items():
            tensor = ir.convenience.get_const_tensor(v)
            assert tensor is not None
            proto = ir.serde.serialize_tensor(tensor)
            proto.name = name
            graph.initializer.append(proto)
        out = graph.output.add()
        out.name = value.name or ""
        out.type.tensor_type.elem_type = (value.dtype or ir.DataType.FLOAT).value
        opsets = [onnx.helper.make_opsetid(d, v) for d, v in self.model.opset_imports.items()]
        model = onnx.helper.make_model(graph, opset_imports=opsets)
        model.ir_version = 10
        try:
            return next(iter(run_onnx(model, {}).values()))
        except Exception:
            return None
