"""Teacher forcing tells a binarization tie from a miscompile (edgec.teacher_forcing)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import edgec
from edgec.frontend import prepare
from edgec.passes import PassManager, get_pipeline
from edgec.targets import CompileOptions, get_target
from edgec.teacher_forcing import TeacherForcingError, build_like, check, find_cuts

pytestmark = pytest.mark.slow  # binary models compiled and checked layer by layer


@pytest.fixture(scope="module")
def compiled():
    prepared = prepare("bit_bert_tiny")
    PassManager(get_pipeline("cpu")).run(prepared.model)
    return prepared


def _check(prepared, model: ir.Model):
    target = get_target("cpu")
    build = build_like(
        lambda m, where: target.compile(m, CompileOptions(), where), "cpu", "onnxruntime"
    )
    options = [{"graph_optimization_level": "basic"}]
    report, _ = check(
        model,
        build,
        prepared.inputs,
        prepared.outputs,
        prepared.intermediates,
        {"": 1e-4},
        1,
        options,
    )
    return report


def test_every_binarized_input_is_cut(compiled) -> None:
    cuts = find_cuts(compiled.model)
    layers = {c.layer for c in cuts}
    # 4 layers x (Q, K, V, out, FFN in, FFN out) linears and the pooler; two operands of
    # each layer's two activation products
    assert sum(c.node.op_type == "BinaryLinear" for c in cuts) == 25
    assert sum(c.node.op_type == "BinaryMatMul" for c in cuts) == 16
    assert "bert.encoder.layer.0.attention.self.query" in layers


def test_correct_bundle_passes_without_ties(compiled) -> None:
    report = _check(compiled, compiled.model)
    assert report.cuts >= 30 and report.max_error < 1e-5 and report.ties == 0


def test_a_flipped_weight_bit_fails(compiled) -> None:
    model = ir.serde.deserialize_model(ir.serde.serialize_model(compiled.model))
    layer = next(n for n in model.graph if n.op_type == "BinaryLinear")
    bits = layer.inputs[1]
    words = bits.const_value.numpy().copy()
    words[3, 0] ^= np.uint64(1)  # one weight of output channel 3 changes sign
    bits.const_value = ir.tensor(words, name=bits.name)
    with pytest.raises(TeacherForcingError, match=r"differs from torch by .*: a miscompile"):
        _check(compiled, model)


def test_bit_bert_base_compiles_and_reports_its_ties(tmp_path) -> None:
    """12 binarized layers with random weights: a tie in layer 1 moves the output by ~100%;
    the bundle is accepted because every segment matches torch on torch's own inputs."""
    bundle = edgec.compile("bit_bert_base", output=tmp_path / "b", backend="onnxruntime")
    reference = bundle.manifest.reference
    assert "teacher-forced" in reference["note"] and "tie" in reference["note"]
    assert reference["max_rel_error"] <= reference["tolerance"]
    assert edgec.load(tmp_path / "b").verify().ok
