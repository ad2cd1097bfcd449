"""A saved Core ML ML program (`.mlpackage`) read into plain Python: its inputs, outputs and
operations with their constant values as numpy arrays.

Reads the model's protobuf (`coremltools.proto`) and its weight blobs (coremltools' blob
storage reader) directly, not through coremltools' converters, so that the program the
evaluator walks is exactly what was saved and nothing here needs torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from coremltools import libmilstoragepython as milstorage
from coremltools.proto import MIL_pb2, Model_pb2

from edgec.core.errors import BundleError

SPEC = Path("Data/com.apple.CoreML/model.mlmodel")
WEIGHTS = Path("Data/com.apple.CoreML/weights")
T = MIL_pb2.DataType
# MIL element type -> numpy dtype of the values
DTYPES: dict[int, Any] = {
    T.BOOL: np.bool_,
    T.FLOAT16: np.float16,
    T.FLOAT32: np.float32,
    T.FLOAT64: np.float64,
    T.INT8: np.int8,
    T.INT16: np.int16,
    T.INT32: np.int32,
    T.INT64: np.int64,
    T.UINT8: np.uint8,
    T.UINT16: np.uint16,
    T.UINT32: np.uint32,
    T.UINT64: np.uint64,
    T.UINT1: np.uint8,
    T.UINT2: np.uint8,
    T.UINT4: np.uint8,
    T.UINT3: np.uint8,
    T.UINT6: np.uint8,
    T.INT4: np.int8,
    T.STRING: np.str_,
}
SUB_BYTE_BITS = {T.UINT1: 1, T.UINT2: 2, T.UINT3: 3, T.UINT4: 4, T.UINT6: 6, T.INT4: 4}
BLOB_READS = {
    T.FLOAT32: "read_float_data",
    T.FLOAT16: "read_fp16_data",
    T.INT8: "read_int8_data",
    T.UINT8: "read_uint8_data",
    T.INT16: "read_int16_data",
    T.UINT16: "read_uint16_data",
    T.INT32: "read_int32_data",
    T.UINT32: "read_uint32_data",
    T.UINT1: "read_uint1_data",
    T.UINT2: "read_uint2_data",
    T.UINT3: "read_uint3_data",
    T.UINT4: "read_uint4_data",
    T.UINT6: "read_uint6_data",
    T.INT4: "read_int4_data",
}


@dataclass
class Op:
    """One operation: its type, inputs by parameter (each a list of bindings: a value name,
    or a constant), attributes and output names and types."""

    type: str
    inputs: dict[str, list[str | np.ndarray]]
    outputs: list[tuple[str, int, tuple[int, ...]]]  # name, MIL dtype, shape
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        name = self.attributes.get("name")
        return str(name) if name is not None else self.outputs[0][0]


@dataclass
class MilProgram:
    inputs: list[tuple[str, int, tuple[int, ...]]]
    outputs: list[str]
    ops: list[Op]
    opset: str  # "CoreML7" (iOS 17) / "CoreML8" (iOS 18) ...
    specification_version: int


def mil_name(name: str) -> str:
    """A name Core ML accepts for a feature or an op: letters, digits and underscores, not
    starting with a digit."""
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name) or "value"
    return f"v_{clean}" if clean[0].isdigit() else clean


def unpack_sub_byte(packed: np.ndarray, bits: int, count: int, signed: bool) -> np.ndarray:
    """Elements of `bits` bits packed least significant bit first into bytes."""
    stream = np.unpackbits(np.asarray(packed, np.uint8).reshape(-1), bitorder="little")
    fields = stream[: count * bits].reshape(count, bits).astype(np.int32)
    values = (fields << np.arange(bits, dtype=np.int32)).sum(axis=1)
    if signed:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values.astype(np.int8 if signed else np.uint8)


class _Reader:
    def __init__(self, package: Path) -> None:
        self.package = package
        self.blobs: dict[str, Any] = {}

    def value(self, spec: Any) -> Any:
        kind = spec.type.WhichOneof("type")
        if kind != "tensorType":
            raise BundleError(f"the Core ML program holds a {kind} value, which edgec cannot read")
        ttype = spec.type.tensorType
        shape = tuple(int(d.constant.size) for d in ttype.dimensions)
        dtype = ttype.dataType
        if spec.WhichOneof("value") == "blobFileValue":
            data = self._blob(spec.blobFileValue, dtype)
        else:
            data = self._immediate(spec.immediateValue, dtype, shape)
        if dtype == T.STRING:
            return str(data[0]) if len(data) and not shape else list(data)
        array = np.asarray(data).astype(DTYPES[dtype]).reshape(shape)
        return array

    def _immediate(self, spec: Any, dtype: int, shape: tuple[int, ...]) -> Any:
        if spec.WhichOneof("value") != "tensor":
            raise BundleError("the Core ML program holds a non-tensor immediate value")
        tensor = spec.tensor
        which = tensor.WhichOneof("value")
        if which == "bytes":
            raw = tensor.bytes.values
            count = int(np.prod(shape, dtype=np.int64))
            if dtype in SUB_BYTE_BITS:
                return unpack_sub_byte(
                    np.frombuffer(raw, np.uint8), SUB_BYTE_BITS[dtype], count, dtype == T.INT4
                )
            return np.frombuffer(raw, DTYPES[dtype])
        return list(getattr(tensor, which).values) if which else []

    def _blob(self, spec: Any, dtype: int) -> np.ndarray:
        path = self.package / WEIGHTS / spec.fileName.split("/")[-1]
        reader = self.blobs.get(str(path))
        if reader is None:
            if not path.is_file():
                raise BundleError(f"the Core ML weights file '{path}' is missing")
            reader = self.blobs[str(path)] = milstorage._BlobStorageReader(str(path))
        if dtype not in BLOB_READS:
            raise BundleError(
                f"the Core ML weights hold type {T.Name(dtype)}, which edgec cannot read"
            )
        data = getattr(reader, BLOB_READS[dtype])(int(spec.offset))
        if dtype == T.FLOAT16:
            return np.frombuffer(np.asarray(data).tobytes(), np.float16)
        return np.asarray(data)


def _value_type(named: Any) -> tuple[str, int, tuple[int, ...]]:
    ttype = named.type.tensorType
    return named.name, ttype.dataType, tuple(int(d.constant.size) for d in ttype.dimensions)


def read_program(package: str | Path) -> MilProgram:
    """Read the `main` function of a saved `.mlpackage`."""
    package = Path(package)
    spec_path = package / SPEC
    if not spec_path.is_file():
        raise BundleError(f"'{package}' is not an ML program package: {SPEC} is missing")
    model = Model_pb2.Model()
    model.ParseFromString(spec_path.read_bytes())
    if not model.HasField("mlProgram"):
        raise BundleError(f"'{package}' holds a Core ML model that is not an ML program")
    func = model.mlProgram.functions["main"]
    block = func.block_specializations[func.opset]
    reader = _Reader(package)
    ops = []
    for op in block.operations:
        if op.blocks:
            raise BundleError(f"Core ML op '{op.type}' has nested blocks, which edgec cannot run")
        inputs: dict[str, list[str | np.ndarray]] = {}
        for param, argument in op.inputs.items():
            inputs[param] = [
                b.name if b.WhichOneof("binding") == "name" else reader.value(b.value)
                for b in argument.arguments
            ]
        attributes = {k: reader.value(v) for k, v in op.attributes.items()}
        ops.append(Op(op.type, inputs, [_value_type(o) for o in op.outputs], attributes))
    return MilProgram(
        [_value_type(i) for i in func.inputs],
        list(block.outputs),
        ops,
        func.opset,
        model.specificationVersion,
    )
