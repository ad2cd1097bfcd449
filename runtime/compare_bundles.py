"""Two bundles side by side: `edgec compare A B [--device H:P]`.

Both run on the same inputs (A's stored reference input, fed to B by position) in interleaved
rounds (A then B, then B then A, ...), so that the machine's drift and noise fall on both
alike. Each round times a block of runs of each; the ratio A/B is the median of the rounds'
ratios of medians, with a 95% bootstrap confidence interval over the rounds. The outputs are
compared (B against A, edgec's relative error), and where both back ends have a per-op
profile, the time per source module of each and their difference: the before/after of a
pass, two targets, two tunings.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgec.core.errors import InputError
from edgec.runtime.bundle import Bundle, load_reference
from edgec.runtime.compare import rel_error
from edgec.runtime.op_profile import ModuleTime, OpTime, per_module
from edgec.runtime.profile import PER_OP_BACKENDS, op_breakdown
from edgec.runtime.session import make_runner

BOOTSTRAP = 2000


@dataclass
class ModuleDelta:
    module: str
    a_ms: float
    b_ms: float

    @property
    def delta_ms(self) -> float:
        return self.b_ms - self.a_ms


@dataclass
class CompareReport:
    a: str
    b: str
    device: str
    rounds: int
    runs_per_round: int
    a_p50_ms: float
    b_p50_ms: float
    ratio: float  # A's time over B's: 2.0 means B is twice as fast
    ci_low: float
    ci_high: float
    output_errors: dict[str, float]  # B's outputs against A's, by A's output names
    modules: list[ModuleDelta] = field(default_factory=list)
    note: str = ""

    @property
    def max_output_error(self) -> float:
        return max(self.output_errors.values(), default=0.0)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["max_output_error"] = self.max_output_error
        for m, row in zip(self.modules, d["modules"], strict=True):
            row["delta_ms"] = m.delta_ms
        return d


def bootstrap_ratio(ratios: list[float], seed: int = 0) -> tuple[float, float, float]:
    """The median of `ratios` and a 95% percentile-bootstrap interval of it."""
    data = np.asarray(ratios, dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(data, size=(BOOTSTRAP, data.size), replace=True), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(np.median(data)), float(low), float(high)


def matched_feeds(a: Bundle, b: Bundle) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A's reference input, under A's and under B's input names (by position)."""
    specs_a, specs_b = a.manifest.inputs, b.manifest.inputs
    feeds_a, _ = load_reference(a)
    if len(specs_a) != len(specs_b):
        raise InputError(
            f"bundles '{a.path}' and '{b.path}' take {len(specs_a)} and {len(specs_b)} inputs: "
            "compare takes two builds of one model"
        )
    feeds_b = {}
    for sa, sb in zip(specs_a, specs_b, strict=True):
        value = feeds_a[sa.name]
        if tuple(sa.shape) != tuple(sb.shape) or sa.dtype != sb.dtype:
            raise InputError(
                f"input '{sb.name}' of '{b.path}' is {sb.describe()}, but '{sa.name}' of "
                f"'{a.path}' is {sa.describe()}: compare takes two builds of one model"
            )
        feeds_b[sb.name] = value
    return feeds_a, feeds_b


Timer = Callable[[int], list[float]]


def interleaved(
    timer_a: Timer, timer_b: Timer, rounds: int, block: int
) -> tuple[list[float], list[float], list[float]]:
    """Per round: median of A's block over median of B's, the order alternating; and every
    time of A and of B."""
    ratios = []
    a_all: list[float] = []
    b_all: list[float] = []
    for r in range(rounds):
        if r % 2 == 0:
            ta, tb = timer_a(block), timer_b(block)
        else:
            tb, ta = timer_b(block), timer_a(block)
        a_all += ta
        b_all += tb
        ratios.append(statistics.median(ta) / statistics.median(tb))
    return ratios, a_all, b_all


def module_deltas(a_modules: list[ModuleTime], b_modules: list[ModuleTime]) -> list[ModuleDelta]:
    """Per module in either: A's and B's time, largest change first."""
    a = {m.module: m.mean_ms for m in a_modules}
    b = {m.module: m.mean_ms for m in b_modules}
    rows = [ModuleDelta(name, a.get(name, 0.0), b.get(name, 0.0)) for name in {*a, *b}]
    return sorted(rows, key=lambda r: (-abs(r.delta_ms), r.module))


def _local_timer(runner: Any, feeds: dict[str, np.ndarray]) -> Timer:
    runner.run(feeds)

    def time_block(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            runner.run(feeds)
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    return time_block


Breakdown = Callable[[Bundle, dict[str, np.ndarray]], list[OpTime]]


def _module_times(
    a: Bundle, b: Bundle, feeds: tuple[dict, dict], breakdown: Breakdown
) -> tuple[list[ModuleDelta], str]:
    """Per-module deltas of A and B's per-op profiles, or why there are none."""
    if not all(x.manifest.backend in PER_OP_BACKENDS for x in (a, b)):
        return [], f"no per-module times: per-op profiles exist for {', '.join(PER_OP_BACKENDS)}"
    ops_a, ops_b = breakdown(a, feeds[0]), breakdown(b, feeds[1])
    return module_deltas(per_module(ops_a, None), per_module(ops_b, None)), ""


def compare_local(a: Bundle, b: Bundle, rounds: int, block: int, threads: int) -> CompareReport:
    """Compare two bundles on this host."""
    feeds = matched_feeds(a, b)
    runner_a, runner_b = make_runner(a, threads), make_runner(b, threads)
    ratios, times_a, times_b = interleaved(
        _local_timer(runner_a, feeds[0]), _local_timer(runner_b, feeds[1]), rounds, block
    )
    out_a = dict(zip([s.name for s in a.manifest.outputs], runner_a.run(feeds[0]), strict=True))
    out_b = dict(zip([s.name for s in b.manifest.outputs], runner_b.run(feeds[1]), strict=True))
    modules, note = _module_times(
        a, b, feeds, lambda x, f: op_breakdown(x, f, threads, max(5, block))
    )
    return _report(a, b, "host", rounds, block, ratios, times_a, times_b,
                   out_a, out_b, modules, note)  # fmt: skip


def compare_remote(
    remote: Any, a: Bundle, b: Bundle, rounds: int, block: int, threads: int
) -> CompareReport:
    """Compare two bundles on a device (`RemoteDevice`), each block timed by its clock."""
    feeds = matched_feeds(a, b)

    def timer(bundle: Bundle) -> Timer:
        def time_block(n: int) -> list[float]:
            report = remote.profile(bundle, runs=n, warmup=1, threads=threads, with_roofline=False)
            return list(report.times_ms)

        return time_block

    ratios, times_a, times_b = interleaved(timer(a), timer(b), rounds, block)
    out_a, out_b = remote.run(a, feeds[0]), remote.run(b, feeds[1])
    modules, note = _module_times(
        a, b, feeds, lambda x, f: remote.op_breakdown(x, f, threads, max(5, block))
    )
    return _report(a, b, remote.info.describe(), rounds, block, ratios, times_a, times_b,
                   out_a, out_b, modules, note)  # fmt: skip


def _report(
    a: Bundle,
    b: Bundle,
    device: str,
    rounds: int,
    block: int,
    ratios: list[float],
    times_a: list[float],
    times_b: list[float],
    out_a: dict[str, np.ndarray],
    out_b: dict[str, np.ndarray],
    modules: list[ModuleDelta],
    note: str,
) -> CompareReport:
    ratio, low, high = bootstrap_ratio(ratios)
    names_b = list(out_b)
    errors = {
        name: rel_error(out_b[names_b[i]], value) if i < len(names_b) else float("inf")
        for i, (name, value) in enumerate(out_a.items())
    }
    return CompareReport(
        a=str(a.path),
        b=str(b.path),
        device=device,
        rounds=rounds,
        runs_per_round=block,
        a_p50_ms=float(np.percentile(times_a, 50)),
        b_p50_ms=float(np.percentile(times_b, 50)),
        ratio=ratio,
        ci_low=low,
        ci_high=high,
        output_errors=errors,
        modules=modules,
        note=note,
    )
