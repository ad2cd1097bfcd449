"""Real trained models from PyPI packages compile for `cpu` and verify (see `models`); they
compile for `mobile`, `tensorrt` and `coreml` too, or are refused in one line (TensorRT and
Core ML: sizes not fixed at compile time)."""

from __future__ import annotations

import pytest

import edgec
from edgec.core.errors import EdgecError
from tests.real.models import MODELS, RealModel, fetch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_compiles_and_verifies(model: RealModel, tmp_path):
    path = fetch(model)
    before = path.read_bytes()
    bundle = edgec.compile(
        path,
        target="cpu",
        output=tmp_path / model.name,
        backend="onnxruntime",
        input_shapes=model.input_shapes or None,
        inputs=model.inputs() if model.inputs else None,
    )
    reference = bundle.manifest.reference
    # within the tolerance, or within twice onnxruntime's own optimization noise (noted)
    assert reference["max_rel_error"] <= reference["tolerance"]
    assert reference["tolerance"] == 1e-4 or "noise floor" in reference.get("note", "")
    assert bundle.manifest.stats["after"]["nodes"] < bundle.manifest.stats["before"]["nodes"]
    assert edgec.load(tmp_path / model.name).verify().ok
    assert path.read_bytes() == before  # the user's file is never modified


@pytest.mark.parametrize("target", ["mobile", "tensorrt", "coreml"])
@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_compiles_for_mobile_tensorrt_and_coreml(model: RealModel, target: str, tmp_path):
    path = fetch(model)
    kwargs = {
        "input_shapes": model.input_shapes or None,
        "inputs": model.inputs() if model.inputs else None,
    }
    if target in ("tensorrt", "coreml") and not model.input_shapes:  # silero: run-time sizes
        with pytest.raises(EdgecError, match=r"static shapes: input 'input' is \S+x\S+") as e:
            edgec.compile(path, target=target, output=tmp_path / "b", **kwargs)
        assert e.value.exit_code == 2 and "None" not in str(e.value)
        return
    if target == "coreml" and model.name == "ppocr_v4_rec":  # a Reshape to run-time sizes
        with pytest.raises(EdgecError, match=r"no size fixed at compile time") as e:
            edgec.compile(path, target=target, output=tmp_path / "b", **kwargs)
        assert e.value.exit_code == 2 and not (tmp_path / "b").exists()
        return
    bundle = edgec.compile(path, target=target, output=tmp_path / "b", **kwargs)
    reference = bundle.manifest.reference
    assert reference["max_rel_error"] <= reference["tolerance"]
    options = bundle.manifest.backend_options
    if target == "coreml":
        assert (bundle.path / "model.mlpackage").is_dir()
        assert options["deployment_target"]["iOS"] in ("iOS17", "iOS18")
        assert edgec.load(bundle.path).verify().ok  # the evaluator, from the saved package
    elif target == "mobile":
        assert (bundle.path / "model.ort").is_file()
        assert all(r.get("checked", True) for r in options["partitions"].values())
    else:
        assert options["static_check"] == "passed" and options["lint"]["failing_nodes"] == []
