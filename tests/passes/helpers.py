"""Checks every pass test makes: the IR is valid, and it computes what the original did."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from edgec.core.irutil import input_specs, random_inputs, run_onnx
from edgec.runtime.compare import max_rel_error


def parse(text: str) -> ir.Model:
    """An IR model from ONNX text syntax."""
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))


def assert_equivalent(before: onnx.ModelProto, after: ir.Model, tol: float = 1e-5) -> None:
    """onnx.checker passes on `after`, and onnxruntime on the unmodified model agrees."""
    proto = ir.serde.serialize_model(after)
    onnx.checker.check_model(proto, full_check=True)
    feeds = random_inputs(input_specs(after), seed=3)
    expected = run_onnx(before, feeds)
    got = run_onnx(proto, feeds)
    assert set(got) == set(expected)
    assert max_rel_error(got, expected) <= tol, max_rel_error(got, expected)


def op_types(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def to_proto(model: ir.Model) -> onnx.ModelProto:
    return ir.serde.serialize_model(model)


__all__ = ["assert_equivalent", "np", "op_types", "parse", "to_proto"]
