"""Where each op of a compiled graph came from and what it costs: a bundle's `ops.json`.

For every node of the graph a target compiled, keyed by node name: its op type, the source
module path (the torch frontend names nodes `blocks.3.attn/linear`; the module is the part
before the last `/`), the passes that made it (`PROVENANCE`, which the rewrite rules write
into node metadata: a folded Conv names the BatchNormalization it absorbed), its
multiply-accumulates, the bytes its inputs and outputs hold (static shapes only; 0 where
unknown) and the node before it (`after`: the producer of its first input, to follow a back
end's fusion back to the op it kept). `values` maps output value names to their node
(onnxruntime names the nodes it creates after an output value), and `kernels` lists a TVM
library's kernels in call order, each with the nodes fused into it. Profiles read this map to
put module names, passes and a roofline bound beside each measured op.
"""

from __future__ import annotations

import json
import math
from typing import Any

import onnx_ir as ir

from edgec.core.graph_stats import node_macs, op_name

PROVENANCE = "edgec.provenance"  # node metadata: JSON list of "rule: node + node" steps
OP_MAP_FILE = "ops.json"
OP_MAP_VERSION = 1


def module_of(node_name: str) -> str:
    """`blocks.3.attn/linear` -> `blocks.3.attn`; "" for a name without a module path."""
    return node_name.rpartition("/")[0]


def value_bytes(value: ir.Value | None) -> int:
    """Bytes of a value of static shape and fixed-width type; 0 otherwise (strings too)."""
    if value is None or value.shape is None or value.dtype is None:
        return 0
    if not all(isinstance(d, int) for d in value.shape):
        return 0
    try:
        itemsize = value.dtype.itemsize
    except (AttributeError, NotImplementedError, KeyError, TypeError, ValueError):
        return 0  # strings and other types without a fixed width
    return math.ceil(math.prod(int(d) for d in value.shape) * itemsize)


def provenance(node: ir.Node) -> list[str]:
    try:
        steps = json.loads(node.metadata_props.get(PROVENANCE, "[]"))
    except ValueError:
        return []
    return [str(s) for s in steps] if isinstance(steps, list) else []


# ops that move no data in a back end (views, shape queries): no bytes
VIEW_OPS = frozenset(
    ["Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant"]
)


def node_bytes(node: ir.Node) -> int:
    """Bytes the node reads and writes if its operands come from memory: its inputs and
    outputs; none for a view; a Gather reads only the rows it gathers."""
    if node.domain in ("", "ai.onnx") and node.op_type in VIEW_OPS:
        return 0
    outputs = sum(value_bytes(v) for v in node.outputs)
    inputs = [value_bytes(v) for v in node.inputs]
    if node.domain in ("", "ai.onnx") and node.op_type == "Gather" and inputs:
        inputs[0] = min(inputs[0], outputs)
    return outputs + sum(inputs)


def _is_constant(value: ir.Value | None) -> bool:
    return value is not None and (value.const_value is not None or value.is_initializer())


def op_map(model: ir.Model, kernels: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The `ops.json` of `model` (its top-level graph), with a TVM library's `kernels`, and the
    graph's compulsory traffic: its weights and its inputs and outputs, in bytes."""
    graph = model.graph
    nodes: dict[str, dict[str, Any]] = {}
    values: dict[str, str] = {}
    weights = {id(v): value_bytes(v) for v in graph.initializers.values()}
    for index, node in enumerate(graph):
        first = node.outputs[0].name if node.outputs else None
        name = node.name or first or f"{node.op_type}_{index}"
        record = nodes.setdefault(
            name,
            {
                "op": op_name(node),
                "module": module_of(name),
                "macs": 0,
                "bytes": 0,
                "passes": provenance(node),
                "after": "",  # the node that made its first input (a back end's fusions)
            },
        )
        first_in = node.inputs[0] if node.inputs else None
        producer = first_in.producer() if first_in is not None else None
        if producer is not None and not record["after"]:
            record["after"] = producer.name or ""
        record["macs"] += node_macs(node) or 0
        record["bytes"] += node_bytes(node)
        for out in node.outputs:
            if out.name:
                values[out.name] = name
        for v in node.inputs:
            if _is_constant(v):
                weights[id(v)] = value_bytes(v)
    io = sum(value_bytes(v) for v in (*graph.inputs, *graph.outputs))
    return {
        "version": OP_MAP_VERSION,
        "nodes": nodes,
        "values": values,
        "kernels": kernels or [],
        "weight_bytes": sum(weights.values()),
        "io_bytes": io,
    }
