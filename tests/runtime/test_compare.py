"""The error measure: NaN and inf positions, sequences, per-dtype default tolerance; the
noise floor a bundle is judged against."""

from __future__ import annotations

import numpy as np
import pytest

from edgec.runtime.bundle_check import NOISE_CAP, accepted_tolerance
from edgec.runtime.compare import default_tolerance, rel_error


def test_nan_where_the_reference_has_nan_is_agreement() -> None:
    x = np.array([1.0, np.nan, -np.inf, 2.0], np.float32)
    assert rel_error(x, x.copy()) == 0.0
    assert rel_error(np.array([1.0, 0.0, -np.inf, 2.0], np.float32), x) == float("inf")
    assert rel_error(np.array([1.0, np.nan, np.inf, 2.0], np.float32), x) == float("inf")
    y = x.copy()
    y[3] = 2.5
    assert rel_error(y, x) == pytest.approx(0.25)


def test_sequences_and_absent_optionals() -> None:
    a = [np.ones(2), np.zeros(3)]
    assert rel_error(a, [np.ones(2), np.zeros(3)]) == 0.0
    assert rel_error(a, a[:1]) == float("inf")
    assert rel_error(None, None) == 0.0 and rel_error(None, np.ones(1)) == float("inf")


def test_default_tolerance_follows_the_output_precision() -> None:
    assert default_tolerance(["float32"]) == 1e-4
    assert default_tolerance(["float32", "float16"]) == 5e-3
    assert default_tolerance(["int64"]) == 1e-4


def test_noise_floor_widens_the_tolerance_up_to_its_cap() -> None:
    assert accepted_tolerance(1e-4, {"y": 3e-3}) == pytest.approx(6e-3)
    assert accepted_tolerance(1e-4, {"y": 1e-6}) == 1e-4
    assert accepted_tolerance(1e-4, {"y": 10 * NOISE_CAP}) == 1e-4  # decisions, not noise


def test_bundle_within_the_noise_floor_passes_and_one_beyond_fails(onnx_file, tmp_path) -> None:
    import edgec
    from edgec.frontend import prepare
    from edgec.runtime.bundle_check import BundleCheckError, check_bundle

    bundle = edgec.compile(onnx_file, output=tmp_path / "b", backend="onnxruntime")
    prepared = prepare(onnx_file)
    y = prepared.outputs["y"]
    scale = float(np.abs(y).max())
    prepared.noise = {"y": 1e-3}  # as if onnxruntime's optimizations moved it this much
    prepared.outputs = {"y": y + np.float32(1.5e-3 * scale)}
    error, note = check_bundle(
        bundle, prepared.inputs, prepared.outputs, prepared.noise, 1e-4, 1, []
    )
    assert error == pytest.approx(1.5e-3, rel=1e-2) and "noise floor" in note
    prepared.outputs = {"y": y + np.float32(2.5e-3 * scale)}
    with pytest.raises(BundleCheckError, match=r"noise floor 1\.00e-03"):
        check_bundle(bundle, prepared.inputs, prepared.outputs, prepared.noise, 1e-4, 1, [])
