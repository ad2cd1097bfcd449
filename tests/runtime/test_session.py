"""Session.run: dicts, lists or one array in; every mismatch named in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgec.core.errors import InputError
from edgec.runtime import load

X = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)


@pytest.fixture
def session(tiny_bundle: Path):
    return load(tiny_bundle)


def test_input_forms_agree(session) -> None:
    by_name = session.run({"x": X})
    by_list = session.run([X])
    single = session.run(X)
    name = session.outputs[0].name
    np.testing.assert_array_equal(by_name[name], by_list[name])
    np.testing.assert_array_equal(by_name[name], single[name])
    assert by_name[name].shape == (1, 5)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"image": X}, r"unknown input 'image'; the model's inputs are x"),
        ({}, r"input 'x' is missing; expected \(1, 3, 16, 16\) float32"),
        ([X, X], r"the model takes 1 input\(s\) \(x\); 2 given"),
        (
            {"x": np.zeros((1, 3, 32, 32), np.float32)},
            r"input 'x' has shape \(1, 3, 32, 32\); expected \(1, 3, 16, 16\)",
        ),
        (
            {"x": np.zeros((3, 16, 16), np.float32)},
            r"input 'x' has shape \(3, 16, 16\); expected \(1, 3, 16, 16\)",
        ),
        ({"x": X.astype(np.float64)}, r"input 'x' has dtype float64; expected float32"),
    ],
)
def test_input_errors(session, inputs, message: str) -> None:
    with pytest.raises(InputError, match=message):
        session.run(inputs)


def test_verify_passes_and_fails(session) -> None:
    report = session.verify()
    assert report.ok and report.max_error <= report.tolerance == 1e-4
    strict = session.verify(tolerance=1e-30)
    assert strict.max_error == 0.0 or not strict.ok
