"""Small helpers over the IR shared by the frontend, passes and targets.

`run_onnx` is the reference executor: onnxruntime with its graph optimizations off, so that
what it computes is the graph as written, not onnxruntime's rewrite of it.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from edgec.core.errors import UnsupportedOpError
from edgec.core.ort_options import session_options
from edgec.core.specs import TensorSpec

_PROTO_LIMIT = 1_800_000_000  # protobuf refuses to serialize 2 GiB; save external data past this
_NOT_IMPLEMENTED = re.compile(r"implementation for (\S+?)\((\d+)\) node with name '([^']*)'")
_NODE_FAILED = re.compile(
    r"running (\S+) node\. Name:'([^']*)' Status Message: "
    r"(?:\S+:\d+ )?(?:[\w:~<>]+\([^()]*\) )?(.*)",  # file:line, then a C++ signature
    re.S,
)


def ort_failure(e: BaseException) -> str:
    """onnxruntime's error as one line, naming the node and op where it has them."""
    text = str(e).strip()
    m = _NODE_FAILED.search(text)
    if m:
        op, node, why = m.groups()
        why = why.strip().splitlines()[0] if why.strip() else "failed"
        return f"node '{node}' ({op}) failed: {why}"
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return text.splitlines()[0] if text else type(e).__name__


def _kind(t: ir.TypeProtocol | None) -> tuple[str, ir.TypeProtocol | None]:
    """(kind, tensor type) of a value type, see TensorSpec."""
    if isinstance(t, ir.OptionalType):
        inner, elem = _kind(t.elem_type)
        return ("optional_sequence" if inner == "sequence" else "optional"), elem
    if isinstance(t, ir.SequenceType):
        return "sequence", t.elem_type
    return "tensor", t


def value_spec(value: ir.Value) -> TensorSpec:
    kind, elem = _kind(value.type)
    if kind != "tensor":
        dtype = np.dtype(elem.dtype.numpy()).name if elem is not None else "float32"
        return TensorSpec(value.name or "", (), dtype, kind)
    shape: list[int | str] = []
    for i, d in enumerate(value.shape or []):
        if isinstance(d, int):
            shape.append(d)
        else:
            shape.append(d.value if isinstance(d, ir.SymbolicDim) and d.value else f"?{i}")
    dtype = np.dtype(value.dtype.numpy()).name if value.dtype is not None else "float32"
    return TensorSpec(value.name or "", tuple(shape), dtype)


def graph_inputs(model: ir.Model) -> list[ir.Value]:
    """Inputs a caller feeds: graph inputs that are not also initializers."""
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def input_specs(model: ir.Model) -> list[TensorSpec]:
    return [value_spec(v) for v in graph_inputs(model)]


def output_specs(model: ir.Model) -> list[TensorSpec]:
    return [value_spec(v) for v in model.graph.outputs]


def random_inputs(
    specs: list[TensorSpec],
    seed: int = 0,
    dims: dict[str, int] | None = None,
    int_ranges: dict[str, tuple[int, int]] | None = None,
) -> dict[str, np.ndarray]:
    """Deterministic inputs: normal floats, 0/1 integers and booleans, unless `int_ranges`
    gives an input's integer range [low, high).

    A dynamic axis takes its size from `dims` (by symbol), else 1. A rank-0 spec gives a
    rank-0 array. Float types numpy lacks (bfloat16, float8) come from ml_dtypes.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = tuple(d if isinstance(d, int) else (dims or {}).get(d, 1) for d in spec.shape)
        dtype = np.dtype(spec.dtype)
        low, high = (int_ranges or {}).get(spec.name, (0, 2))
        if spec.kind != "tensor":  # two items of shape (2,) for a sequence
            item = TensorSpec(spec.name, (2,), spec.dtype)
            one = random_inputs([item], seed + 1, int_ranges=int_ranges)[spec.name]
            feeds[spec.name] = one if spec.kind == "optional" else [one, one + one]
            continue
        if np.issubdtype(dtype, np.floating) or (dtype.kind == "V" and "float" in dtype.name):
            array = np.asarray(rng.standard_normal(shape)).astype(dtype)
        elif dtype == np.bool_:
            array = np.asarray(rng.integers(0, 2, shape)).astype(bool)
        elif dtype.kind in "OUS":
            array = np.asarray(rng.integers(low, high, shape)).astype(str).astype(object)
        else:
            array = np.asarray(rng.integers(low, high, shape)).astype(dtype)
        feeds[spec.name] = array
    return feeds


def ort_session(
    model: ir.Model | onnx.ModelProto | str | Path, optimize: bool = False, threads: int = 0
) -> ort.InferenceSession:
    so = session_options({"graph_optimization_level": "all" if optimize else "disable"}, threads)
    so.log_severity_level = 4  # a failure is raised and reported once, not logged as well
    try:
        if isinstance(model, (str, Path)):
            return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        proto = model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)
        if proto.ByteSize() < _PROTO_LIMIT:
            return ort.InferenceSession(
                proto.SerializeToString(), so, providers=["CPUExecutionProvider"]
            )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(proto, path, save_as_external_data=True, location="model.onnx.data")
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        m = _NOT_IMPLEMENTED.search(str(e))
        if m:
            op, version, node = m.groups()
            raise UnsupportedOpError(
                f"unsupported op '{op}' (opset {version}, node '{node}'): "
                "onnxruntime's CPU provider has no kernel for it"
            ) from None
        raise


def run_onnx(
    model: ir.Model | onnx.ModelProto | str | Path,
    feeds: dict[str, np.ndarray],
    optimize: bool = False,
) -> dict[str, np.ndarray]:
    """Run a model once with onnxruntime; outputs by name."""
    session = ort_session(model, optimize)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


_counter = itertools.count()


def copy_model(model: ir.Model) -> ir.Model:
    """An independent copy of `model` (the caller's object is never rewritten)."""
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


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


def _dim(d: object) -> str:
    if isinstance(d, int):
        return str(d)
    return str(getattr(d, "value", None) or "?")  # a symbolic dimension, named or not


def static_problem(model: ir.Model, who: str) -> str | None:
    """Which graph input or output has a size not fixed at compile time (None: all fixed), as
    a message saying that `who` ("TensorRT bundles") need fixed sizes."""
    for role, values in (("input", model.graph.inputs), ("output", model.graph.outputs)):
        for value in values:
            dims = value.shape.dims if value.shape is not None else None
            if dims is None or not all(isinstance(d, int) for d in dims):
                shown = "unknown" if dims is None else "x".join(_dim(d) for d in dims)
                return (
                    f"{who} have static shapes: {role} '{value.name}' is {shown}; "
                    "give every input's size with --input-shape NAME=D0xD1x..."
                )
    return None
