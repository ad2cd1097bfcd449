"""What every Core ML lowering rule works with: the values lowered so far, the constants of the
IR as numpy, static shapes, attributes, and the MIL names of the results.

A rule (`targets/coreml_ops_*.py`) takes the context and one ONNX node and returns the MIL
values of the node's outputs; the driver (`targets/coreml_lowering.py`) walks the graph. Core
ML has no 64-bit integers: INT64 constants become INT32 (a value outside its range is an
error naming the tensor), and FLOAT64 constants become FLOAT32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import types

from edgec.core.errors import UnsupportedOpError
from edgec.runtime.mil_program import mil_name

# a MIL value: a Var of the program, or a numpy constant the builder turns into a const op
Mil = Any
INT32 = np.iinfo(np.int32)
# ONNX element types Core ML programs can hold, and the MIL type each becomes
MIL_TYPES = {
    ir.DataType.FLOAT: types.fp32,
    ir.DataType.FLOAT16: types.fp16,
    ir.DataType.DOUBLE: types.fp32,
    ir.DataType.INT32: types.int32,
    ir.DataType.INT64: types.int32,
    ir.DataType.BOOL: types.bool,
    ir.DataType.INT8: types.int8,
    ir.DataType.UINT8: types.uint8,
}
# MIL's cast takes these dtype names
CAST_NAMES = {
    ir.DataType.FLOAT: "fp32",
    ir.DataType.FLOAT16: "fp16",
    ir.DataType.DOUBLE: "fp32",
    ir.DataType.INT32: "int32",
    ir.DataType.INT64: "int32",
    ir.DataType.BOOL: "bool",
    ir.DataType.INT8: "int8",
    ir.DataType.UINT8: "uint8",
}


CONSTANT_ATTRS = {
    "value": lambda a: a.as_tensor().numpy(),
    "value_float": lambda a: np.asarray(a.as_float(), np.float32),
    "value_floats": lambda a: np.asarray(a.as_floats(), np.float32),
    "value_int": lambda a: np.asarray(a.as_int(), np.int64),
    "value_ints": lambda a: np.asarray(a.as_ints(), np.int64),
}


def as_mil_array(array: np.ndarray, what: str) -> np.ndarray:
    """A numpy constant in a type Core ML holds (int64 -> int32, float64 -> float32)."""
    if array.dtype == np.int64 or array.dtype == np.uint64:
        if array.size and (array.min() < INT32.min or array.max() > INT32.max):
            raise UnsupportedOpError(
                f"Core ML has no 64-bit integers, and {what} holds values outside int32"
            )
        return array.astype(np.int32)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    return array


class Context:
    """The state of one lowering: ONNX values -> MIL values."""

    def __init__(self, opset: int) -> None:
        self.opset = opset  # coremltools' AvailableTarget of the program
        self.values: dict[int, Mil] = {}
        self.min_opset: dict[str, int] = {}  # op -> the deployment target it needs

    def bind(self, value: ir.Value, mil: Mil) -> None:
        self.values[id(value)] = mil

    def x(self, value: ir.Value | None) -> Mil:
        """The MIL value of an ONNX value (a constant as numpy)."""
        if value is None:
            raise UnsupportedOpError("an optional input left out where Core ML needs one")
        const = self.const(value)
        if const is not None:
            return const
        try:
            return self.values[id(value)]
        except KeyError:
            raise UnsupportedOpError(f"value '{value.name}' is not computed yet") from None

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        """The value as a numpy array in a type Core ML holds if it is a constant of the
        graph, else None."""
        raw = self.raw_const(value)
        return None if raw is None else as_mil_array(raw, f"constant '{value.name}'")  # type: ignore[union-attr]

    def raw_const(self, value: ir.Value | None) -> np.ndarray | None:
        """The constant as ONNX holds it (int64 kept: Slice's ends may be INT64_MAX)."""
        if value is None:
            return None
        if value.const_value is not None:
            return value.const_value.numpy()
        node = value.producer()
        if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for key, read in CONSTANT_ATTRS.items():
                attr = node.attributes.get(key)
                if attr is not None:
                    return read(attr)
        return None

    def need_const(self, node: ir.Node, index: int, what: str, raw: bool = False) -> np.ndarray:
        value = node.inputs[index] if index < len(node.inputs) else None
        const = self.raw_const(value) if raw else self.const(value)
        if const is None:
            raise UnsupportedOpError(
                f"{node.op_type} node '{node.name}' needs {what} as a constant for Core ML"
            )
        return const

    def shape(self, value: ir.Value | None) -> tuple[int, ...]:
        """The value's static shape (every compile for coreml has static shapes)."""
        dims = tuple(value.shape.dims) if value is not None and value.shape is not None else None
        if dims is None or not all(isinstance(d, int) for d in dims):
            name = getattr(value, "name", "")
            node = value.producer() if value is not None else None
            by = f" ({node.op_type} node '{node.name}')" if node is not None else ""
            raise UnsupportedOpError(
                f"value '{name}'{by} has no size fixed at compile time; Core ML programs have "
                "fixed shapes"
            )
        return dims  # type: ignore[return-value]

    def needs(self, op: str, opset: int) -> None:
        """Record that the program uses `op`, which exists from deployment target `opset`."""
        self.min_opset[op] = max(self.min_opset.get(op, 0), opset)


def name_of(node: ir.Node, index: int = 0) -> str:
    out = node.outputs[index]
    return mil_name(out.name or f"{node.name}_{index}")


def ints(node: ir.Node, attr: str, default: Sequence[int] | None = None) -> list[int] | None:
    a = node.attributes.get(attr)
    if a is None:
        return None if default is None else list(default)
    return [int(i) for i in a.as_ints()]


def rank_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


Rule = Callable[[Context, ir.Node], list[Mil]]


def unary(op: str, **fixed: Any) -> Rule:
    """A rule for an ONNX op that is one MIL op on its first input."""

    def rule(ctx: Context, node: ir.Node) -> list[Mil]:
        return [getattr(mb, op)(x=ctx.x(node.inputs[0]), name=name_of(node), **fixed)]

    return rule


def binary(op: str) -> Rule:
    """A rule for an elementwise ONNX op with numpy broadcasting, as one MIL op."""

    def rule(ctx: Context, node: ir.Node) -> list[Mil]:
        a, b = ctx.x(node.inputs[0]), ctx.x(node.inputs[1])
        return [getattr(mb, op)(x=a, y=b, name=name_of(node))]

    return rule
