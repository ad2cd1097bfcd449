"""profile(): every field of the report, consistent with the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgec.core.errors import OptionError
from edgec.runtime import load, profile


def test_report_fields(tiny_bundle: Path) -> None:
    r = profile(load(tiny_bundle), runs=30, warmup=3, threads=1)
    assert (r.backend, r.target, r.threads, r.runs, r.warmup) == ("onnxruntime", "cpu", 1, 30, 3)
    assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
    assert r.min_ms <= r.mean_ms <= r.max_ms and r.std_ms >= 0
    assert r.cold_start_ms > 0
    assert r.batch_size == 1
    assert r.throughput_per_s == pytest.approx(1e3 / r.mean_ms)
    assert r.peak_rss_mb > 10
    assert (r.device, r.emulated) == ("host", False)
    assert r.per_op == []
    assert set(r.to_json()) >= {"cold_start_ms", "p99_ms", "throughput_per_s", "peak_rss_mb"}


def test_per_op_breakdown_maps_to_modules(tiny_bundle: Path) -> None:
    r = profile(load(tiny_bundle), runs=5, warmup=1, threads=1, per_op=True)
    assert r.per_op
    assert sum(o.share for o in r.per_op) == pytest.approx(1.0)
    assert all(o.mean_ms >= 0 and o.op_type for o in r.per_op)
    modules = {o.module for o in r.per_op}
    assert any(m.startswith(("stem", "block", "head")) for m in modules), modules


@pytest.mark.parametrize(("runs", "warmup", "threads"), [(0, 1, 1), (5, -1, 1), (5, 1, -2)])
def test_bad_arguments(tiny_bundle: Path, runs: int, warmup: int, threads: int) -> None:
    with pytest.raises(OptionError):
        profile(load(tiny_bundle), runs=runs, warmup=warmup, threads=threads)
