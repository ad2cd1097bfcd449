"""How edgec compares outputs: one error measure, used by passes, compile and verify.

    rel_error(a, e) = max |a - e| / max(max |e|, tiny)

An error relative to the output's own scale: elementwise relative error blows up on outputs
near zero (logits, residuals), which would make every tolerance meaningless. Integer and
boolean outputs must agree exactly (error 0 or inf).
"""

from __future__ import annotations

import numpy as np

_TINY = 1e-12


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Max absolute difference over the reference's largest magnitude; inf on shape mismatch."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    if not np.issubdtype(expected.dtype, np.floating):
        return 0.0 if np.array_equal(actual, expected) else float("inf")
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(e).all()):
        same = np.array_equal(np.isnan(a), np.isnan(e)) and np.array_equal(
            a[~np.isfinite(e)], e[~np.isfinite(e)]
        )
        finite = np.isfinite(e) & np.isfinite(a)
        if not same:
            return float("inf")
        a, e = a[finite], e[finite]
        if e.size == 0:
            return 0.0
    return float(np.max(np.abs(a - e)) / max(float(np.max(np.abs(e))), _TINY))


def max_rel_error(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """The worst `rel_error` over outputs matched by name."""
    return max((rel_error(actual[k], v) for k, v in expected.items()), default=0.0)
