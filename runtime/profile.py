"""Latency and memory of a bundle, the same report for every back end.

Cold start is the time to open the artifact and run it once (what a user waits for on first
use). Steady-state figures come from `runs` timed calls after `warmup` untimed ones, each on
the bundle's reference input. Peak memory is the process's peak resident set size. The
per-op breakdown (onnxruntime's profiler, or the Relax VM's instrument for TVM bundles;
`op_profile`) comes from a separate run, so its overhead never touches the latency figures;
each op carries its source module path and the passes that made it. The roofline
(`roofline`) puts the machine's measured peaks beside the figures: the fraction of the limit
each op, each module and the whole model reach.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgec.core.errors import OptionError
from edgec.runtime import roofline
from edgec.runtime.bundle import Bundle
from edgec.runtime.op_profile import (
    ModuleTime,
    OpTime,
    from_ort,
    from_tvm,
    load_op_map,
    model_bound_ms,
    per_module,
)
from edgec.runtime.op_timers import ort_kernel_times
from edgec.runtime.session import Session, make_runner

PER_OP_BACKENDS = ("onnxruntime", "tvm")


@dataclass
class ProfileReport:
    backend: str
    target: str
    threads: int
    runs: int
    warmup: int
    cold_start_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    throughput_per_s: float
    batch_size: int | None
    peak_rss_mb: float
    device: str = "host"
    emulated: bool = False
    per_op: list[OpTime] = field(default_factory=list)
    per_module: list[ModuleTime] = field(default_factory=list)
    times_ms: list[float] = field(default_factory=list)  # every timed run, in order
    # the machine's peaks (sgemm GFLOP/s, GB/s, threads) and the whole model's bound and
    # fraction of it reached at p50; None when not measured
    roofline: dict[str, Any] | None = None
    # the passes' effect: nodes, parameters and MACs before and after each pass that fired
    passes: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_mb() -> float:
    """The process's peak resident set size (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _percentile(sorted_ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(sorted_ms), q))


def summarize(times_ms: list[float]) -> dict[str, float]:
    """mean, std, min, p50, p90, p99, max of a list of latencies."""
    s = sorted(times_ms)
    return {
        "mean_ms": statistics.fmean(s),
        "std_ms": statistics.pstdev(s) if len(s) > 1 else 0.0,
        "min_ms": s[0],
        "p50_ms": _percentile(s, 50),
        "p90_ms": _percentile(s, 90),
        "p99_ms": _percentile(s, 99),
        "max_ms": s[-1],
    }


def check_counts(runs: int, warmup: int, threads: int) -> None:
    if runs < 1 or warmup < 0 or threads < 0:
        raise OptionError(
            f"runs must be >= 1, warmup and threads >= 0 (got {runs}, {warmup}, {threads})"
        )


def make_report(
    bundle: Bundle,
    times_ms: list[float],
    cold_ms: float,
    threads: int,
    warmup: int,
    peak_mb: float,
    **extra: Any,
) -> ProfileReport:
    """The report of `times_ms`, timed runs of `bundle` on its reference input."""
    m = bundle.manifest
    stats = summarize(times_ms)
    first = m.inputs[0].shape if m.inputs else ()
    batch = first[0] if first and isinstance(first[0], int) else None
    extra.setdefault("times_ms", list(times_ms))
    extra.setdefault("passes", pass_effects(bundle))
    return ProfileReport(
        backend=m.backend,
        target=m.target,
        threads=threads,
        runs=len(times_ms),
        warmup=warmup,
        cold_start_ms=cold_ms,
        throughput_per_s=1e3 / stats["mean_ms"] * (batch or 1),
        batch_size=batch,
        peak_rss_mb=peak_mb,
        **extra,
        **stats,
    )


def pass_effects(bundle: Bundle) -> list[dict[str, Any]]:
    """The manifest's pass reports that changed the graph, in order: name, rewrites, and nodes,
    parameters and MACs before and after."""
    keys = ("nodes", "params", "macs")
    effects = []
    for p in bundle.manifest.passes or []:
        if not isinstance(p, dict) or not p.get("rewrites"):
            continue
        effect = {"name": p.get("name", ""), "rewrites": p.get("rewrites", 0)}
        for k in keys:
            effect[f"{k}_before"] = p.get(f"{k}_before", 0)
            effect[f"{k}_after"] = p.get(f"{k}_after", 0)
        effects.append(effect)
    return effects


def roofline_summary(
    op_map: dict[str, Any] | None, peaks: dict[str, Any] | None, p50_ms: float
) -> dict[str, Any] | None:
    """The peaks, and the whole model's bound and the fraction of it the p50 latency reaches."""
    if peaks is None:
        return None
    bound = model_bound_ms(op_map, peaks)
    macs = sum(r["macs"] for r in op_map["nodes"].values()) if op_map else None
    nbytes = op_map.get("weight_bytes", 0) + op_map.get("io_bytes", 0) if op_map else None
    return {
        **peaks,
        "macs": macs,
        "bytes": nbytes,
        "bound_ms": bound,
        "fraction": bound / p50_ms if bound is not None and p50_ms > 0 else None,
    }


def profile(
    session: Session,
    runs: int = 100,
    warmup: int = 10,
    threads: int = 1,
    per_op: bool = False,
    with_roofline: bool = True,
) -> ProfileReport:
    """Time a bundle on its reference input with `threads` intra-op threads (0: back end's
    pick); `per_op`: add the per-op and per-module breakdown; `with_roofline`: the host's
    peaks (measured once per thread count, cached) and the fractions of them reached."""
    check_counts(runs, warmup, threads)
    if per_op:
        check_per_op(session.bundle)
    feeds, _ = session.reference()
    feeds = session.feeds(feeds)

    start = time.perf_counter()
    runner = make_runner(session.bundle, threads, compute_units=session.compute_units)
    if not getattr(runner, "measures_latency", True):
        raise OptionError(
            f"bundle '{session.bundle.path}' runs in Core ML, which times it on macOS only; "
            "here edgec's MIL evaluator checks its numerics (`edgec verify`) but is no measure "
            "of its latency"
        )
    runner.run(feeds)
    cold_ms = (time.perf_counter() - start) * 1e3

    for _ in range(warmup):
        runner.run(feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    peaks = roofline.host_peaks(threads) if with_roofline else None
    ops = op_breakdown(session.bundle, feeds, threads, min(runs, 20), peaks) if per_op else []
    report = make_report(session.bundle, times, cold_ms, threads, warmup, peak_rss_mb())
    return with_breakdown(report, session.bundle, ops, peaks)


def with_breakdown(
    report: ProfileReport, bundle: Bundle, ops: list[OpTime], peaks: dict[str, Any] | None
) -> ProfileReport:
    """`report` with the per-op times `ops`, their sum per module, and the roofline summary
    at `peaks` (None: not measured)."""
    report.per_op = ops
    report.per_module = per_module(ops, peaks)
    report.roofline = roofline_summary(load_op_map(bundle), peaks, report.p50_ms)
    return report


def check_per_op(bundle: Bundle) -> None:
    if bundle.manifest.backend not in PER_OP_BACKENDS:
        raise OptionError(
            f"a per-op breakdown needs an onnxruntime or TVM bundle; '{bundle.path}' runs on "
            f"{bundle.manifest.backend}"
        )


def op_breakdown(
    bundle: Bundle,
    feeds: dict[str, np.ndarray],
    threads: int,
    runs: int,
    peaks: dict[str, Any] | None = None,
) -> list[OpTime]:
    """Mean time per op (onnxruntime's nodes, TVM's kernels) of `bundle` on this host, largest
    first, mapped to the source through the bundle's op map."""
    check_per_op(bundle)
    op_map = load_op_map(bundle)
    if bundle.manifest.backend == "tvm":
        runner = make_runner(bundle, threads)
        calls = runner.op_profile(feeds, runs)  # type: ignore[attr-defined]
        return from_tvm(calls, op_map, peaks)
    with tempfile.TemporaryDirectory() as tmp:
        runner = make_runner(bundle, threads, profile_prefix=os.path.join(tmp, "ort"))
        for _ in range(runs):
            runner.run(feeds)
        records = ort_kernel_times(runner.end_profiling(), runs)  # type: ignore[attr-defined]
    return from_ort(records, op_map, peaks)
