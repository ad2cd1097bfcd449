"""ONNX -> IR: read a model file (external data included) without ever writing to it.

The model is checked on the way in: it must parse, pass `onnx.checker`, have its external
data files, and use only ops that ONNX (or edgec, or a function in the model) defines. Each
failure is a one-line error naming the file, tensor or node at fault.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from edgec.core.errors import (
    ModelFormatError,
    OptionError,
    UnsupportedOpError,
    UnsupportedTypeError,
)
from edgec.core.irutil import copy_model
from edgec.core.specs import TensorSpec

# Domains whose ops some back end implements outside the ONNX standard.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.edgec"}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_file(path: str | os.PathLike[str]) -> ir.Model:
    """Read and check an .onnx file; external data is read into memory, so the IR never
    refers back to (or writes to) the user's files."""
    p = Path(path)
    if not p.exists():
        raise ModelFormatError(f"model file '{p}' does not exist")
    if not p.is_file():
        raise ModelFormatError(f"model path '{p}' is not a file")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise ModelFormatError(f"'{p}' is not a valid ONNX file: {_first_line(e)}") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelFormatError(f"'{p}' is not a valid ONNX file: it holds no graph")
    _check_external_data(proto, p)
    try:
        onnx.checker.check_model(str(p))
    except Exception as e:
        raise ModelFormatError(f"'{p}' fails the ONNX checker: {_first_line(e)}") from None
    try:
        model = ir.external_data.load_to_model(ir.load(str(p)))
    except Exception as e:
        raise ModelFormatError(f"cannot read '{p}': {_first_line(e)}") from None
    check_ops(model, str(p))
    _legacy_dynamic_dims(model)
    return model


def from_memory(model: onnx.ModelProto | ir.Model, label: str = "model") -> ir.Model:
    if isinstance(model, onnx.ModelProto):
        try:
            onnx.checker.check_model(model)
        except Exception as e:
            raise ModelFormatError(f"{label} fails the ONNX checker: {_first_line(e)}") from None
        model = ir.serde.deserialize_model(model)
    else:  # never rewrite the caller's object
        model = copy_model(model)
    check_ops(model, label)
    _legacy_dynamic_dims(model)
    return model


def _legacy_dynamic_dims(model: ir.Model) -> None:
    """`dim_value: -1`, older exporters' mark of a dynamic axis (the checker and onnxruntime
    accept it), becomes a dynamic dimension rather than a static size of -1."""
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.shape is not None and any(isinstance(d, int) and d < 0 for d in value.shape):
            value.shape = ir.Shape(
                [ir.SymbolicDim(None) if isinstance(d, int) and d < 0 else d for d in value.shape]
            )


# Element types that onnxruntime's Python API cannot take from (or give back as) numpy arrays.
_UNFEEDABLE = {
    name
    for name in (
        "BFLOAT16",
        "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2",
        "FLOAT8E5M2FNUZ",
        "FLOAT8E8M0",
        "UINT4",
        "INT4",
        "FLOAT4E2M1",
        "UINT2",
        "INT2",
        "COMPLEX64",
        "COMPLEX128",
    )
    if hasattr(ir.DataType, name)
}


def check_io_types(model: ir.Model, label: str) -> None:
    """Inputs and outputs must be tensors of a type numpy and onnxruntime exchange."""
    inits = model.graph.initializers
    values = [("input", v) for v in model.graph.inputs if v.name not in inits]
    values += [("output", v) for v in model.graph.outputs]
    for role, value in values:
        if value.type is None:
            continue
        elem = _tensor_of(value.type)
        if elem is None:
            raise UnsupportedTypeError(
                f"{role} '{value.name}' of {label} is a {_describe_type(value.type)}: edgec "
                "compiles models whose inputs and outputs are tensors, sequences of tensors "
                "or optional tensors"
            )
        if elem.dtype.name in _UNFEEDABLE:
            raise UnsupportedTypeError(
                f"{role} '{value.name}' of {label} has element type {elem.dtype.name.lower()}, "
                "which onnxruntime's Python API cannot exchange as a numpy array: cast it in "
                "the model (a Cast after the input, or before the output)"
            )


def _tensor_of(t: ir.TypeProtocol) -> ir.TensorType | None:
    """The tensor type of a tensor, a sequence of tensors, an optional of either; else None."""
    if isinstance(t, ir.OptionalType):
        t = t.elem_type
    if isinstance(t, ir.SequenceType):
        t = t.elem_type
    return t if isinstance(t, ir.TensorType) else None


def _describe_type(t: ir.TypeProtocol) -> str:
    if isinstance(t, ir.SequenceType):
        return f"sequence ({t})"
    if isinstance(t, ir.OptionalType):
        return f"optional ({t})"
    return f"non-tensor value ({t})"


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = path.parent / location
        if not location or not target.is_file():
            raise ModelFormatError(
                f"external data file '{location}' of '{path}' is missing (tensor '{tensor.name}')"
            )


def _nodes(graph: ir.Graph | ir.Function):
    for node in graph:
        yield node
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _nodes(attr.as_graph())
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.as_graphs():
                    yield from _nodes(g)


def check_ops(model: ir.Model, label: str) -> None:
    """Every op must be ONNX-standard at the model's opset, a model function, or edgec's."""
    newest = onnx.defs.onnx_opset_version()
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is not None and opset > newest:
        raise UnsupportedOpError(
            f"{label} imports opset {opset} of ai.onnx; the newest this edgec knows "
            f"(onnx {onnx.__version__}) is {newest}"
        )
    functions = set(model.functions)
    graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    for graph in graphs:
        for node in _nodes(graph):
            if (node.domain, node.op_type, node.overload) in functions:
                continue
            if node.domain in ("", "ai.onnx"):
                version = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
                try:
                    onnx.defs.get_schema(node.op_type, version, "")
                except onnx.defs.SchemaError:
                    raise UnsupportedOpError(
                        f"unsupported op '{node.op_type}' (node '{node.name}') in {label}: "
                        f"not an ONNX operator at opset {version}"
                    ) from None
            elif node.domain not in KNOWN_DOMAINS:
                raise UnsupportedOpError(
                    f"unsupported op '{node.domain}::{node.op_type}' (node '{node.name}') in "
                    f"{label}: no back end implements the domain '{node.domain}'"
                )


def set_input_shapes(
    model: ir.Model,
    shapes: dict[str | None, TensorSpec],
    dynamic_axes: list[tuple[str, int, str]],
) -> None:
    """Fix input shapes from --input-shape, and mark --dynamic-axis axes symbolic."""
    inputs = {v.name: v for v in model.graph.inputs if v.name not in model.graph.initializers}
    if None in shapes:
        if len(inputs) != 1:
            raise OptionError(
                f"the model has {len(inputs)} inputs ({', '.join(inputs)}): "
                "name each --input-shape NAME=..."
            )
        shapes = {next(iter(inputs)): shapes[None]}
    for name, spec in shapes.items():
        value = inputs.get(name or "")
        if value is None:
            raise OptionError(
                f"--input-shape names '{name}', which is not an input ({', '.join(inputs)})"
            )
        if spec.dtype is not None:
            want = ir.DataType.from_numpy(np.dtype(spec.dtype))
            if value.dtype is not None and value.dtype != want:
                raise OptionError(
                    f"--input-shape gives input '{name}' the dtype {spec.dtype}; the model "
                    f"declares {np.dtype(value.dtype.numpy()).name}"
                )
            if value.dtype is None:
                value.type = ir.TensorType(want)
        old = value.shape
        if old is not None:
            if len(old) != len(spec.shape):
                raise OptionError(
                    f"input '{name}' has rank {len(old)}; --input-shape gives {len(spec.shape)}"
                )
            for axis, (o, n) in enumerate(zip(old, spec.shape, strict=True)):
                if isinstance(o, int) and o != n:
                    raise OptionError(
                        f"input '{name}' has static size {o} on axis {axis}; "
                        f"--input-shape gives {n}"
                    )
        value.shape = ir.Shape(list(spec.shape))
    for name, axis, symbol in dynamic_axes:
        value = inputs.get(name)
        if value is None:
            raise OptionError(
                f"--dynamic-axis names '{name}', which is not an input ({', '.join(inputs)})"
            )
        if value.shape is None or axis >= len(value.shape):
            raise OptionError(f"--dynamic-axis {name}:{axis} is past the rank of input '{name}'")
        dims = list(value.shape)
        dims[axis] = ir.SymbolicDim(symbol)
        value.shape = ir.Shape(dims)
