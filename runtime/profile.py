"""Latency and memory of a bundle, the same report for every back end.

Cold start is the time to open the artifact and run it once (what a user waits for on first
use). Steady-state figures come from `runs` timed calls after `warmup` untimed ones, each on
the bundle's reference input. Peak memory is the process's peak resident set size. The
per-op breakdown (onnxruntime only) comes from a separate profiling session, so its overhead
never touches the latency figures; node names carry the torch module path, so it reads as
time per source module.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgec.core.errors import OptionError
from edgec.runtime.bundle import Bundle
from edgec.runtime.session import Session, make_runner


@dataclass
class OpTime:
    """Time spent in one node (or one op type), averaged over the profiled runs."""

    name: str
    op_type: str
    mean_ms: float
    share: float
    module: str = ""  # the source module the node came from, where the exporter kept it


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


def profile(
    session: Session,
    runs: int = 100,
    warmup: int = 10,
    threads: int = 1,
    per_op: bool = False,
) -> ProfileReport:
    """Time a bundle on its reference input with `threads` intra-op threads (0: back end's pick)."""
    check_counts(runs, warmup, threads)
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
    return make_report(
        session.bundle,
        times,
        cold_ms,
        threads,
        warmup,
        peak_rss_mb(),
        per_op=op_breakdown(session, feeds, threads, min(runs, 20)) if per_op else [],
    )


def op_breakdown(
    session: Session, feeds: dict[str, np.ndarray], threads: int, runs: int
) -> list[OpTime]:
    """Mean time per node from onnxruntime's profiler, largest first."""
    if session.bundle.manifest.backend != "onnxruntime":
        raise OptionError(
            f"a per-op breakdown needs the onnxruntime back end, "
            f"not '{session.bundle.manifest.backend}'"
        )
    with tempfile.TemporaryDirectory() as tmp:
        runner = make_runner(session.bundle, threads, profile_prefix=os.path.join(tmp, "ort"))
        for _ in range(runs):
            runner.run(feeds)
        trace = Path(runner.end_profiling())  # type: ignore[attr-defined]
        events = json.loads(trace.read_text())
    total: dict[str, float] = defaultdict(float)
    op_type: dict[str, str] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        name = ev["name"][: -len("_kernel_time")]
        total[name] += ev["dur"] / 1e3
        op_type[name] = ev.get("args", {}).get("op_name", "")
    grand = sum(total.values()) or 1.0
    modules = _module_names(session)
    ops = [
        OpTime(n, op_type[n], t / runs, t / grand, _module_of(n, modules)) for n, t in total.items()
    ]
    return sorted(ops, key=lambda o: -o.mean_ms)


def _module_names(session: Session) -> dict[str, str]:
    """Node name and output value name -> module path, from the bundle's ONNX graph."""
    import onnx

    m = session.bundle.manifest
    proto = onnx.load(str(session.bundle.path / m.artifacts["model"]), load_external_data=False)
    names: dict[str, str] = {}
    for node in proto.graph.node:
        module = node.name.rpartition("/")[0]
        names[node.name] = module
        for out in node.output:
            names.setdefault(out, module)
    return names


def _module_of(profiled: str, names: dict[str, str]) -> str:
    """onnxruntime names the nodes it creates after an output value plus a suffix
    (`relu_nchwc`, `conv_output_0_fused`): strip suffixes until a known name remains."""
    candidate = profiled
    while candidate:
        if candidate in names:
            return names[candidate]
        head, sep, _ = candidate.rpartition("_")
        if not sep:
            break
        candidate = head
    return ""
