"""ONNX's own backend conformance cases, as the onnx wheel ships them.

The wheel carries the node cases' generators (`onnx.backend.test.case.node`), not their data:
`node_cases` regenerates them in memory (about 1,900 models with inputs and expected
outputs). The `simple`, `pytorch-converted` and `pytorch-operator` folders are shipped as files
(`model.onnx`, `test_data_set_N/{input,output}_K.pb`) and are read as they are.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper

DATA_FOLDERS = ("simple", "pytorch-converted", "pytorch-operator")


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    rtol: float
    atol: float


def _feed_names(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in inits]


def node_cases() -> Iterator[Case]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    for c in cases:
        if c.model is None or not c.data_sets:
            continue
        ins, outs = c.data_sets[0]
        names = _feed_names(c.model)
        yield Case(
            c.name,
            c.model,
            dict(zip(names, ins, strict=False)),
            {v.name: o for v, o in zip(c.model.graph.output, outs, strict=False)},
            c.rtol,
            c.atol,
        )


def _read_pb(path: Path, type_proto: onnx.TypeProto) -> Any:
    data = path.read_bytes()
    kind = type_proto.WhichOneof("value")
    if kind == "sequence_type":
        seq = onnx.SequenceProto()
        seq.ParseFromString(data)
        return numpy_helper.to_list(seq)
    if kind == "optional_type":
        opt = onnx.OptionalProto()
        opt.ParseFromString(data)
        return numpy_helper.to_optional(opt)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(data)
    return numpy_helper.to_array(tensor)


def folder_cases() -> Iterator[Case]:
    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    for folder in DATA_FOLDERS:
        for case_dir in sorted((root / folder).iterdir()):
            model_path = case_dir / "model.onnx"
            data_dir = case_dir / "test_data_set_0"
            if not model_path.is_file() or not data_dir.is_dir():
                continue
            model = onnx.load(str(model_path))
            inits = {t.name for t in model.graph.initializer}
            feeds = [v for v in model.graph.input if v.name not in inits]
            inputs = {
                v.name: _read_pb(data_dir / f"input_{i}.pb", v.type)
                for i, v in enumerate(feeds)
                if (data_dir / f"input_{i}.pb").is_file()
            }
            outputs = {
                v.name: _read_pb(data_dir / f"output_{i}.pb", v.type)
                for i, v in enumerate(model.graph.output)
                if (data_dir / f"output_{i}.pb").is_file()
            }
            yield Case(f"{folder}/{case_dir.name}", model, inputs, outputs, 1e-3, 1e-7)


def all_cases() -> list[Case]:
    return [*node_cases(), *folder_cases()]
