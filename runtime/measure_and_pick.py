"""Measure-and-pick: the back ends' bundles of one model, each already checked against the
reference, timed on this host in interleaved rounds (noise hits all alike); the fastest is
kept, and the manifest's `selection` records every candidate's median and why any was left out.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from edgec.runtime.bundle import Bundle
from edgec.runtime.session import Session

log = logging.getLogger("edgec")


def pick_fastest(
    bundles: list[Bundle],
    errors: list[float | None],
    inputs: dict[str, np.ndarray],
    threads: int,
    failures: dict[str, str],
    budget_s: float = 10.0,
    labels: list[str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Time every checked candidate on the reference input, interleaved, and keep the fastest
    (`labels`: the candidates' names, by default their back ends).

    Rounds alternate between back ends so that noise hits both alike; timing stops after
    `budget_s` once every candidate has 3 runs, or early when one is 3x slower than another.
    """
    sessions = [Session(b, threads) for b in bundles]
    for s in sessions:  # warm-up: first-run allocation and JIT-like setup
        s.run(inputs)
    times: list[list[float]] = [[] for _ in bundles]
    start = time.perf_counter()
    for rounds in range(1, 26):
        for s, t in zip(sessions, times, strict=True):
            t0 = time.perf_counter()
            s.run(inputs)
            t.append(time.perf_counter() - t0)
        medians = [float(np.median(t)) for t in times]
        if rounds >= 3 and (
            time.perf_counter() - start > budget_s or max(medians) > 3 * min(medians)
        ):
            break
    medians = [float(np.median(t)) for t in times]
    best = int(np.argmin(medians))
    names = labels if labels is not None else [b.manifest.backend for b in bundles]
    selection: dict[str, Any] = {
        "rule": "fastest on this host among the back ends within tolerance",
        "chosen": names[best],
        "threads": threads,
        "candidates": {
            name: {
                "p50_ms": round(m * 1e3, 3),
                "runs": len(t),
                "max_rel_error": error,
                **(
                    {"tuning": b.manifest.backend_options["tuning"]}
                    if "tuning" in b.manifest.backend_options
                    else {}
                ),
            }
            for name, b, error, m, t in zip(names, bundles, errors, medians, times, strict=True)
        },
    }
    for name, why in failures.items():
        selection["candidates"][name] = {"failed": why}
    log.info(
        "measure-and-pick: %s",
        ", ".join(f"{name} {m * 1e3:.2f} ms" for name, m in zip(names, medians, strict=True)),
    )
    return best, selection
