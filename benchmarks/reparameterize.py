"""edgec's compiled bundle against onnxruntime on the export a user gets.

For each seed model, in one process and on one thread: onnxruntime with all graph
optimizations on `torch.onnx.export(model, args, dynamo=True)` with torch's defaults
(`optimize=True`: the peer), and the edgec `cpu` bundle (the reparameterization passes, then
the same onnxruntime). The two are timed in interleaved
rounds so that noise on this shared machine hits both alike; medians are reported.

    python benchmarks/reparameterize.py [--models a,b] [--rounds 5] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import default_export_session, write_results  # the script's own folder

import edgec
from edgec import frontend, models
from edgec.runtime.compare import max_rel_error
from edgec.runtime.session import make_runner

SEED_MODELS = [
    "vanillanet_5",
    "tiny_vit_5m",
    "slab_deit_tiny",
    "slab_pvt_tiny",
    "slab_swin_tiny",
    "pvt_v2_b0_ecoformer",
    "bit_bert_tiny",
    "bivit_deit_tiny",
    "fmvit_tiny",
]


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def measure(name: str, rounds: int, runs: int) -> dict[str, object]:
    info = models.get_info(name)
    module = models.create(name)
    prepared = frontend.prepare(module, input_shapes=dict(info.inputs))
    feeds = prepared.inputs
    peer, peer_feeds = default_export_session(module, feeds)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        bundle = edgec.compile(name, output=Path(tmp) / name)
        compile_s = time.perf_counter() - start
        runner = make_runner(bundle, threads=1)
        stats = bundle.manifest.stats
        for _ in range(2):  # warm both
            peer.run(None, peer_feeds)
            runner.run(feeds)
        theirs = peer.run(None, peer_feeds)[0]
        mine = runner.run(feeds)[0]
        agreement = max_rel_error({"y": mine}, {"y": theirs})  # the peer computes the same
        peer_ms, ours = [], []
        for _ in range(rounds):
            peer_ms += timed(lambda: peer.run(None, peer_feeds), runs)
            ours += timed(lambda: runner.run(feeds), runs)
    p50_plain, p50_ours = statistics.median(peer_ms), statistics.median(ours)
    return {
        "model": name,
        "peer_p50_ms": round(p50_plain, 2),
        "edgec_p50_ms": round(p50_ours, 2),
        "speedup": round(p50_plain / p50_ours, 2),
        "nodes": f"{stats['before']['nodes']} -> {stats['after']['nodes']}",
        "parameters": f"{stats['before']['parameters']:,} -> {stats['after']['parameters']:,}",
        "gmacs": f"{stats['before']['macs'] / 1e9:.2f} -> {stats['after']['macs'] / 1e9:.2f}",
        "compile_s": round(compile_s, 1),
        "max_rel_error": bundle.manifest.reference["max_rel_error"],
        "peer_vs_edgec": agreement,
        "samples": len(peer_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(SEED_MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        row = measure(name, args.rounds, args.runs)
        print(json.dumps(row), flush=True)
        rows.append(row)
    header = [
        "model",
        "default export p50 (ms)",
        "edgec p50 (ms)",
        "speedup",
        "nodes",
        "parameters",
        "GMACs",
        "error vs reference",
    ]
    table = write_results(
        args.out,
        "reparameterize",
        rows,
        header,
        [
            [
                str(r["model"]),
                str(r["peer_p50_ms"]),
                str(r["edgec_p50_ms"]),
                f"{r['speedup']}x",
                str(r["nodes"]),
                str(r["parameters"]),
                str(r["gmacs"]),
                f"{r['max_rel_error']:.1e}",
            ]
            for r in rows
        ],
    )
    print(table)


if __name__ == "__main__":
    main()
