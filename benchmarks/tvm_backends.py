"""onnxruntime against tuned TVM, and what measure-and-pick keeps, on one thread.

For each model, in one process: onnxruntime with all graph optimizations on the export users
get (`torch.onnx.export(model, args, dynamo=True)` with torch's defaults: the peer), the
edgec onnxruntime bundle, the edgec TVM bundle tuned
with MetaSchedule (`--tune TRIALS --tune-time SECONDS`, its database under the edgec cache),
and the bundle `--backend auto` chose. Timed in interleaved rounds, medians reported.

    python benchmarks/tvm_backends.py [--models a,b] [--trials 400] [--tune-time 720]

Tuning starts from an empty database (a fresh EDGEC_CACHE for the run), so the trials and
tuning time in the table are what each model's records cost.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import default_export_session, interleaved, write_results  # the script's own folder

import edgec
from edgec import frontend, models
from edgec.runtime.session import make_runner

SEED_MODELS = ["vanillanet_5", "tiny_vit_5m", "slab_deit_tiny"]


def measure(name: str, trials: int, tune_time: float, rounds: int, runs: int) -> dict:
    info = models.get_info(name)
    module = models.create(name)
    feeds = frontend.prepare(module, input_shapes=dict(info.inputs)).inputs
    peer, peer_feeds = default_export_session(module, feeds)
    with tempfile.TemporaryDirectory() as tmp:
        ort_bundle = edgec.compile(name, output=Path(tmp) / "ort", backend="onnxruntime")
        start = time.perf_counter()
        tvm_bundle = edgec.compile(
            name,
            target="x86_64",
            output=Path(tmp) / "tvm",
            backend="tvm",
            threads=1,
            tune=trials,
            tune_time=tune_time,
        )
        tvm_compile_s = time.perf_counter() - start
        start = time.perf_counter()
        auto_bundle = edgec.compile(name, output=Path(tmp) / "auto", threads=1)
        auto_compile_s = time.perf_counter() - start
        runners = {
            "ort_default_export": lambda: peer.run(None, peer_feeds),
            "edgec_ort": _runner(ort_bundle, feeds),
            "edgec_tvm": _runner(tvm_bundle, feeds),
        }
        p50 = interleaved(runners, rounds, runs)
        tuning = tvm_bundle.manifest.backend_options["tuning"]
        chosen = auto_bundle.manifest.backend
        return {
            "model": name,
            "p50_ms": p50,
            "auto_chose": chosen,
            "auto_selection": auto_bundle.manifest.selection,
            "auto_compile_s": round(auto_compile_s, 1),
            "tvm_compile_s": round(tvm_compile_s, 1),
            "tvm_error": tvm_bundle.manifest.reference["max_rel_error"],
            "tuning": tuning,
        }


def _runner(bundle, feeds):
    runner = make_runner(bundle, threads=1)
    return lambda: runner.run(feeds)


HEADER = [
    "model",
    "ORT on the default export p50 (ms)",
    "edgec ORT p50 (ms)",
    "edgec TVM tuned p50 (ms)",
    "TVM / edgec ORT",
    "auto chose",
    "trials measured",
    "kernels tuned",
    "tuning (s)",
    "TVM error vs reference",
]


def row(r: dict) -> list[str]:
    p, t = r["p50_ms"], r["tuning"]
    tuned = t["tasks"] - len(t["tasks_untuned"])
    return [
        r["model"],
        f"{p['ort_default_export']:.2f}",
        f"{p['edgec_ort']:.2f}",
        f"{p['edgec_tvm']:.2f}",
        f"{p['edgec_tvm'] / p['edgec_ort']:.2f}x",
        r["auto_chose"],
        f"{t['trials_ok']}/{t['trials_run']}",
        f"{tuned}/{t['tasks']}",
        f"{t['seconds']:.0f}",
        f"{r['tvm_error']:.1e}",
    ]


def main() -> None:
    os.environ["EDGEC_CACHE"] = tempfile.mkdtemp(prefix="edgec-bench-cache-")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SEED_MODELS))
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--tune-time", type=float, default=720.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--from-json", type=Path, nargs="+", help="Only write the table of saved result files."
    )
    args = parser.parse_args()
    if args.from_json:
        results = [r for f in args.from_json for r in json.loads(f.read_text())]
    else:
        results = []
        for name in args.models.split(","):
            results.append(measure(name, args.trials, args.tune_time, args.rounds, args.runs))
            print(row(results[-1]), flush=True)
    rows = [row(r) for r in results]
    print(write_results(args.out, "tvm_backends", results, HEADER, rows))


if __name__ == "__main__":
    main()
