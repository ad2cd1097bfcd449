"""Baseline: each built-in model as users export it, as onnxruntime runs it.

For every model: the time to build it (seeded weights, calibration), the time to export it
(`torch.onnx.export(model, args, dynamo=True)` with torch's defaults, `optimize=True`
included), and onnxruntime's latency on that export with all graph optimizations on, one
thread, median of repeated runs; plus the export's error against torch eager. This is what
edgec's bundles have to beat.

    python benchmarks/baseline.py [--models a,b] [--runs 20] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import default_export_session, write_results  # the script's own folder

from edgec import frontend, models
from edgec.runtime.compare import max_rel_error


def ort_latency_ms(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], runs: int, warmup: int
) -> list[float]:
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def measure(name: str, runs: int, warmup: int) -> dict[str, object]:
    start = time.perf_counter()
    module = models.create(name)
    build_s = time.perf_counter() - start
    info = models.get_info(name)
    prepared = frontend.prepare(module, input_shapes=dict(info.inputs))  # inputs, torch eager
    start = time.perf_counter()
    session, feeds = default_export_session(module, prepared.inputs)
    export_s = time.perf_counter() - start
    got = dict(zip(prepared.outputs, session.run(None, feeds), strict=True))
    error = max_rel_error(got, prepared.outputs)
    times = ort_latency_ms(session, feeds, runs, warmup)
    return {
        "model": name,
        "parameters": models.count_parameters(name),
        "build_s": round(build_s, 2),
        "export_s": round(export_s, 2),
        "ort_p50_ms": round(statistics.median(times), 2),
        "ort_min_ms": round(min(times), 2),
        "ort_p90_ms": round(float(np.percentile(times, 90)), 2),
        "runs": runs,
        "export_rel_error_vs_torch": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(models.list_models()))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        row = measure(name, args.runs, args.warmup)
        print(json.dumps(row), flush=True)
        rows.append(row)
    meta = {"machine": platform.machine(), "onnxruntime": ort.__version__, "threads": 1}
    header = [
        "model",
        "parameters",
        "export (s)",
        "onnxruntime p50 (ms)",
        "p90 (ms)",
        "error vs torch",
    ]
    table = write_results(
        args.out,
        "baseline",
        {"meta": meta, "rows": rows},
        header,
        [
            [
                str(r["model"]),
                f"{r['parameters']:,}",
                str(r["export_s"]),
                str(r["ort_p50_ms"]),
                str(r["ort_p90_ms"]),
                f"{r['export_rel_error_vs_torch']:.1e}",
            ]
            for r in rows
        ],
    )
    print(table)


if __name__ == "__main__":
    main()
