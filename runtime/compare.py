"""How edgec compares outputs: one error measure, used by passes, compile and verify.

    rel_error(a, e) = max |a - e| / max(max |e|, tiny)     over the finite positions of e

An error relative to the output's own scale: elementwise relative error blows up on outputs
near zero (logits, residuals), which would make every tolerance meaningless. NaN and
infinite values must sit at the same positions with the same values (a NaN where the
reference has one is agreement, not an error) and are left out of the measure. Integer,
boolean and string outputs must agree exactly (error 0 or inf).

The default tolerance follows the output's precision (`default_tolerance`): what a correct
compiler's reordering of float arithmetic can move.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_TINY = 1e-12

# By element type: a few units of rounding of that type, relative to the output's scale.
_TOLERANCES = {
    "float64": 1e-4,
    "float32": 1e-4,
    "float16": 5e-3,
    "bfloat16": 3e-2,
}
DEFAULT_TOLERANCE = _TOLERANCES["float32"]


def default_tolerance(dtypes: list[str]) -> float:
    """The tolerance for outputs of these dtypes: the loosest their precisions call for."""
    found = [_TOLERANCES.get(d, 0.25 if d.startswith("float8") else 0.0) for d in dtypes]
    return max([DEFAULT_TOLERANCE, *found])


def _as_float(array: np.ndarray) -> np.ndarray | None:
    if array.dtype.kind in "fc":
        return array.astype(np.complex128 if array.dtype.kind == "c" else np.float64)
    if array.dtype.kind == "V" and "float" in array.dtype.name:  # ml_dtypes floats
        return array.astype(np.float64)
    return None


def rel_error(actual: Any, expected: Any) -> float:
    """Max absolute difference over the reference's largest magnitude; inf on shape mismatch.

    Sequences (lists) compare item by item and must have the same length; an absent optional
    (None) must be absent in both.
    """
    if expected is None or actual is None:
        return 0.0 if expected is None and actual is None else float("inf")
    if isinstance(expected, (list, tuple)) or isinstance(actual, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or not isinstance(expected, (list, tuple)):
            return float("inf")
        if len(actual) != len(expected):
            return float("inf")
        return max((rel_error(a, e) for a, e in zip(actual, expected, strict=True)), default=0.0)
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    e = _as_float(expected)
    a = _as_float(actual)
    if e is None or a is None:
        return 0.0 if np.array_equal(actual, expected) else float("inf")
    finite = np.isfinite(e)
    if not finite.all() or not np.isfinite(a).all():
        same = np.array_equal(np.isnan(a), np.isnan(e)) and np.array_equal(
            a[~finite], e[~finite], equal_nan=True
        )
        if not same or not np.isfinite(a[finite]).all():
            return float("inf")
        a, e = a[finite], e[finite]
        if e.size == 0:
            return 0.0
    return float(np.max(np.abs(a - e)) / max(float(np.max(np.abs(e))), _TINY))


def max_rel_error(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """The worst `rel_error` over outputs matched by name."""
    return max((rel_error(actual[k], v) for k, v in expected.items()), default=0.0)
