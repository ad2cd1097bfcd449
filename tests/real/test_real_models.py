"""Real trained models from PyPI packages compile for `cpu` and verify (see `models`); they
compile for `mobile` and `tensorrt` too, or are refused in one line (TensorRT: dynamic shapes)."""

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


@pytest.mark.parametrize("target", ["mobile", "tensorrt"])
@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_compiles_for_mobile_and_tensorrt(model: RealModel, target: str, tmp_path):
    path = fetch(model)
    kwargs = {
        "input_shapes": model.input_shapes or None,
        "inputs": model.inputs() if model.inputs else None,
    }
    if target == "tensorrt" and not model.input_shapes:  # silero: sizes fixed only at run time
        with pytest.raises(EdgecError, match=r"static shapes: input 'input' is \S+x\S+") as e:
            edgec.compile(path, target=target, output=tmp_path / "b", **kwargs)
        assert e.value.exit_code == 2 and "None" not in str(e.value)
        return
    bundle = edgec.compile(path, target=target, output=tmp_path / "b", **kwargs)
    reference = bundle.manifest.reference
    assert reference["max_rel_error"] <= reference["tolerance"]
    options = bundle.manifest.backend_options
    if target == "mobile":
        assert (bundle.path / "model.ort").is_file()
        assert all(r.get("checked", True) for r in options["partitions"].values())
    else:
        assert options["static_check"] == "passed" and options["lint"]["failing_nodes"] == []
