"""Target cpu: the options it keeps, and the fallback when onnxruntime's fusions change rounding."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgec
from edgec.runtime import Bundle, load
from edgec.runtime.bundle_check import BundleCheckError
from edgec.targets.onnxruntime import OnnxruntimeTarget

pytestmark = pytest.mark.slow  # binary models through onnxruntime's fallbacks


def test_float_model_keeps_full_optimization(tiny_bundle: Path) -> None:
    m = Bundle.open(tiny_bundle).manifest
    assert m.backend_options == {"graph_optimization_level": "all"}
    assert "note" not in m.reference


def test_binary_model_falls_back_and_says_why(tmp_path: Path) -> None:
    """MatMulScaleFusion's fused matmul rounds differently; a binarized model turns that into
    flipped bits, so the target keeps the first fallback that passes the reference check."""
    bundle = edgec.compile("bit_bert_tiny", output=tmp_path / "b", backend="onnxruntime")
    m = bundle.manifest
    assert m.backend_options["disabled_optimizers"] == ["MatMulScaleFusion"]
    assert "differed from the reference" in m.reference["note"]
    assert m.reference["max_rel_error"] <= m.reference["tolerance"]
    assert load(tmp_path / "b").verify().ok  # the runtime honours the recorded options


def test_no_fallback_passes(tiny_net, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When no options pass, compile fails and nothing is written."""
    original = OnnxruntimeTarget.compile

    def broken(self, model, options, stage):
        artifacts = original(self, model, options, stage)
        bias = next(v for k, v in model.graph.initializers.items() if "head" in k)
        bias.const_value = edgec.core.irutil.ir.tensor(bias.const_value.numpy() + 1.0)
        from edgec.targets.onnxruntime import save_onnx

        save_onnx(model, stage / "model.onnx")
        return artifacts

    monkeypatch.setattr(OnnxruntimeTarget, "compile", broken)
    with pytest.raises(BundleCheckError, match="differs from the reference"):
        edgec.compile(
            tiny_net, output=tmp_path / "b", input_shapes=["x=1x3x16x16"], backend="onnxruntime"
        )
    assert not (tmp_path / "b").exists()
