"""What a graph costs: op histogram, parameters, multiply-accumulates.

MACs count the linear ops only (Conv, ConvTranspose, Gemm, MatMul, MatMulInteger, and
edgec's binary ops as their float equivalent), the usual convention; they are read from the
shapes the IR carries, so a graph whose shapes are unknown reports `macs_complete = False`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import onnx_ir as ir


@dataclass
class GraphStats:
    nodes: int
    parameters: int
    macs: int
    macs_complete: bool
    ops: dict[str, int]


def _static(shape: ir.Shape | None) -> list[int] | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return [int(d) for d in shape]


def op_name(node: ir.Node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def node_macs(node: ir.Node) -> int | None:
    """MACs of one node from its shapes; 0 for ops that are not linear; None if unknown."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx", "ai.edgec"):
        return 0
    if op == "Conv":
        out = _static(node.outputs[0].shape)
        w = _static(node.inputs[1].shape if node.inputs[1] else None)
        if out is None or w is None:
            return None
        return math.prod(out) * math.prod(w[1:])
    if op == "ConvTranspose":
        x = _static(node.inputs[0].shape if node.inputs[0] else None)
        w = _static(node.inputs[1].shape if node.inputs[1] else None)
        if x is None or w is None:
            return None
        return math.prod(x) * math.prod(w[1:])
    if node.domain == "ai.edgec" and op in ("BinaryLinear", "BinaryMatMul"):
        a = _static(node.inputs[0].shape if node.inputs[0] else None)
        out = _static(node.outputs[0].shape)
        if a is None or out is None or not a:
            return None
        return math.prod(out) * a[-1]
    if op in ("Gemm", "MatMul", "MatMulInteger"):
        a = _static(node.inputs[0].shape if node.inputs[0] else None)
        out = _static(node.outputs[0].shape)
        if a is None or out is None or not a:
            return None
        trans_a = node.attributes.get_int("transA", 0) if op == "Gemm" else 0
        k = a[0] if trans_a and len(a) == 2 else a[-1]
        return math.prod(out) * k
    return 0


_INDEX_TYPES = (ir.DataType.INT64, ir.DataType.INT32)


def parameters(model: ir.Model) -> int:
    """Weights: elements of the initializers and Constant tensors, except int64/int32 ones
    (shapes, axes, gather indices), which are structure rather than parameters."""
    total = 0
    for v in model.graph.initializers.values():
        # the tensor's own shape: a value's annotation can carry symbolic dims after inference
        tensor = v.const_value
        shape = tensor.shape if tensor is not None else v.shape
        dtype = tensor.dtype if tensor is not None else v.dtype
        if shape is not None and dtype not in _INDEX_TYPES:
            total += math.prod(int(d) for d in shape.dims)
    for node in model.graph:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                tensor = attr.as_tensor()
                if tensor.dtype not in _INDEX_TYPES:
                    total += math.prod(tensor.shape.dims)
    return total


def graph_stats(model: ir.Model) -> GraphStats:
    macs, complete = 0, True
    ops: Counter[str] = Counter()
    for node in model.graph:
        ops[op_name(node)] += 1
        m = node_macs(node)
        if m is None:
            complete = False
        else:
            macs += m
    return GraphStats(
        nodes=sum(ops.values()),
        parameters=parameters(model),
        macs=macs,
        macs_complete=complete,
        ops=dict(ops.most_common()),
    )


@dataclass
class BinarySummary:
    """What binarization bought: storage of the binarized weights and the share of MACs that
    are bit operations (XNOR/AND-popcount) rather than float multiply-adds."""

    layers: int
    weights: int  # binarized weights (linear layers and embedding tables)
    weight_bytes: int  # their packed bits and scales, as stored
    bits_per_weight: float
    bit_macs: int
    macs: int
    bit_mac_share: float


def _const_bytes(value: ir.Value | None) -> int:
    if value is None or value.const_value is None:
        return 0
    return int(value.const_value.nbytes)


def binary_summary(model: ir.Model, macs: int) -> BinarySummary:
    """The summary of `model`, whose MACs in all (`graph_stats`) are `macs`."""
    layers = weights = stored = bit_macs = 0
    for node in model.graph:
        if node.domain != "ai.edgec":
            continue
        bit_macs += node_macs(node) or 0  # BinaryGather: none
        if node.op_type == "BinaryLinear":
            bits, scale = node.inputs[1], node.inputs[2]
            size = node.attributes.get_int("in_features", 0)
        elif node.op_type == "BinaryGather":
            bits, scale = node.inputs[0], node.inputs[1]
            size = node.attributes.get_int("dim", 0)
        else:
            continue
        rows = bits.shape[0] if bits is not None and bits.shape is not None else 0
        layers += 1
        weights += int(rows) * size
        stored += _const_bytes(bits) + _const_bytes(scale)
    return BinarySummary(
        layers=layers,
        weights=weights,
        weight_bytes=stored,
        bits_per_weight=8 * stored / weights if weights else 0.0,
        bit_macs=bit_macs,
        macs=macs,
        bit_mac_share=bit_macs / macs if macs else 0.0,
    )
