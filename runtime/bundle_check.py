"""Does a freshly built bundle agree with the reference? The check `edgec compile` runs before
a bundle is written: the bundle opened as the runtime opens it, on the sample inputs, against
the independent reference's outputs, within the tolerance or the noise floor (the error
onnxruntime's own optimizations make on the unmodified model), trying the target's fallback
options in turn when the preferred ones fail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from edgec.core.errors import VerificationError
from edgec.runtime.bundle import Bundle
from edgec.runtime.compare import rel_error
from edgec.runtime.session import Session

log = logging.getLogger("edgec")

NOISE_MARGIN = 2.0  # a bundle within twice onnxruntime's own optimization noise passes
# Noise past this is not rounding: onnxruntime's optimizations then change the model's
# discrete decisions (binarized or thresholded models) and are no floor for edgec's error.
NOISE_CAP = 1e-2


class BundleCheckError(VerificationError):
    """The finished bundle disagrees with the reference: a compiler fault, exit code 1."""

    exit_code = 1


def bundle_errors(
    bundle: Bundle, inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray], threads: int
) -> dict[str, float]:
    session = Session(bundle, threads)  # a Session checks no checksums: none exist yet
    got = session.run(inputs)
    return {k: rel_error(got[k], v) for k, v in expected.items()}


def accepted_tolerance(tolerance: float, noise: dict[str, float]) -> float:
    """The error a bundle may have: the tolerance, or twice the noise onnxruntime's own graph
    optimizations make on the unmodified model, whichever is larger (noise above NOISE_CAP
    does not count)."""
    floors = [NOISE_MARGIN * n for n in noise.values() if n <= NOISE_CAP]
    return max([tolerance, *floors])


def allowed(tolerance: float, noise: dict[str, float], outputs: Iterable[str]) -> dict[str, float]:
    """Per output: the tolerance, or twice its noise floor."""
    return {k: accepted_tolerance(tolerance, {k: noise[k]} if k in noise else {}) for k in outputs}


def check_bundle(
    bundle: Bundle,
    inputs: dict[str, Any],
    expected: dict[str, Any],
    noise: dict[str, float],
    tolerance: float,
    threads: int,
    fallbacks: list[dict[str, Any]],
) -> tuple[float, str]:
    """Run the staged bundle as the runtime will and compare with the reference.

    An output passes within the tolerance, or within NOISE_MARGIN times the error that
    onnxruntime's own optimizations make on the unmodified model (the noise floor: error
    edgec cannot tell from its own), with a note saying so. If the bundle fails with the
    target's preferred back-end options, the target's fallbacks are tried in order; the first
    that passes is kept in the manifest, with a note saying why.
    Returns (max relative error, note).
    """
    limits = allowed(tolerance, noise, expected)

    def failing(errors: dict[str, float]) -> list[str]:
        return [k for k, e in errors.items() if not e <= limits[k]]

    def noise_note(errors: dict[str, float]) -> str:
        within = [k for k, e in errors.items() if tolerance < e <= limits[k]]
        if not within:
            return ""
        k = max(within, key=lambda n: errors[n])
        return (
            f"output '{k}' differs from the reference by {errors[k]:.2e}, more than the "
            f"tolerance {tolerance:.0e} but within the noise floor: onnxruntime's own graph "
            f"optimizations move the unmodified model's output by {noise[k]:.2e}"
        )

    m = bundle.manifest
    preferred = dict(m.backend_options)
    first = bundle_errors(bundle, inputs, expected, threads)
    first_max = max(first.values(), default=0.0)
    if not failing(first):
        return first_max, noise_note(first)
    for options in fallbacks:
        m.backend_options = dict(options)
        errors = bundle_errors(bundle, inputs, expected, threads)
        if not failing(errors):
            note = (
                f"with {preferred} the bundle differed from the reference by {first_max:.2e}; "
                f"{options} keeps it within tolerance"
            )
            log.warning(note)
            return max(errors.values(), default=0.0), note
    m.backend_options = preferred
    worst = max(failing(first), key=lambda k: first[k])
    floor = f"; noise floor {noise[worst]:.2e}" if worst in noise else ""
    raise BundleCheckError(
        f"the compiled bundle's output '{worst}' differs from the reference: max relative "
        f"error {first[worst]:.2e} > tolerance {tolerance:.0e}{floor}"
    )
