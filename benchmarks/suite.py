"""The benchmark suite: every seed model against its peers, with the roofline beside each figure.

One entry point for the README's main table. For the smallest model of each family, on one
thread, in one process, interleaved rounds, medians (p50):

- `default export`: onnxruntime (all graph optimizations) on `torch.onnx.export(model, args,
  dynamo=True)` with torch's defaults (`optimize=True` included): the export users get;
- `ORT fusions`: the same export after `onnxscript.rewriter.ort_fusions.optimize_for_ort`
  (attention, SkipLayerNorm, BiasGelu: what onnxruntime's own tools apply);
- `edgec cpu`: `edgec compile MODEL --target cpu --threads 1` from the model itself (what
  `--backend auto` keeps);
- `edgec x86_64 TVM`: `edgec compile MODEL --target x86_64 --backend tvm --threads 1`, untuned
  (the default for the binary models, whose popcount kernels need no tuning; `--tvm all` adds
  the float models, 30-100x slower untuned).

Beside each p50: the fraction of the roofline it reaches, bound / p50, where the bound is the
least time the graph that back end runs can take on this host: max(2 MACs / sgemm peak,
compulsory bytes / bandwidth), the compulsory bytes being its weights, inputs and outputs
(`edgec.runtime.roofline`). The peaks are measured with one thread at the start and
after each model, and the highest of those measurements is used: on a shared machine they
vary by up to a third from one minute to the next. The peers' bound is the default export's;
edgec's is its own bundle's (folded graphs have less work: a lower bound). Every figure's
output is checked against torch eager (max relative error in the JSON and the table's last
column: onnxruntime's graph optimizations move binary networks' sign thresholds, so the peers
can be far off there).

    python benchmarks/suite.py [--models a,b] [--rounds 5] [--runs 3] [--tvm binary|all|none]

writes benchmarks/results/suite.json and suite.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch
from common import (
    default_export,
    default_export_session,
    interleaved,
    plain_session,
    write_results,
)
from onnxscript.rewriter.ort_fusions import optimize_for_ort

import edgec
from edgec import frontend, models
from edgec.core.binary_ops import has_binary_ops
from edgec.core.op_map import op_map
from edgec.runtime.compare import max_rel_error
from edgec.runtime.machine_peaks import measure as measure_peaks
from edgec.runtime.op_profile import load_op_map
from edgec.runtime.roofline import bound_ms, probe_models
from edgec.runtime.session import make_runner

SEED_MODELS = [
    "vanillanet_5",
    "tiny_vit_5m",
    "slab_deit_tiny",
    "pvt_v2_b0_ecoformer",
    "fmvit_tiny",
    "bit_bert_tiny",
    "bipft_tiny",
    "bivit_deit_tiny",
]
COLUMNS = {
    "default": "default export",
    "fusions": "ORT fusions",
    "cpu": "edgec cpu",
    "tvm": "edgec x86_64 TVM",
}


def graph_work(ops: dict[str, Any] | None) -> dict[str, int]:
    """A graph's MACs and compulsory traffic (weights, inputs, outputs), from its op map."""
    assert ops is not None
    macs = sum(int(r["macs"]) for r in ops["nodes"].values())
    return {"macs": macs, "bytes": int(ops["weight_bytes"]) + int(ops["io_bytes"])}


def best_peaks(found: list[dict[str, Any]]) -> dict[str, Any]:
    """The highest of several measurements of each peak (a shared machine's quiet moments)."""
    return {
        "sgemm_gflops": max(p["sgemm_gflops"] for p in found),
        "bandwidth_gbs": max(p["bandwidth_gbs"] for p in found),
        "cache_bandwidth_gbs": max(p["cache_bandwidth_gbs"] for p in found),
        "threads": 1,
        "measurements": len(found),
    }


def measure(name: str, rounds: int, runs: int, tvm: str) -> dict[str, Any]:
    module = models.create(name)
    feeds = frontend.prepare(module, input_shapes=dict(models.get_info(name).inputs)).inputs
    exported = default_export(module, feeds)
    peer, peer_feeds = default_export_session(module, feeds, threads=1, exported=exported)
    copy = ir.serde.deserialize_model(ir.serde.serialize_model(exported))
    fused_model, counts = optimize_for_ort(copy)
    fused = plain_session(fused_model, threads=1)
    names = [o.name for o in peer.get_outputs()]
    with torch.no_grad():
        eager = module.eval()(*(torch.from_numpy(v) for v in feeds.values()))
    eager = eager if isinstance(eager, (tuple, list)) else (eager,)
    reference = dict(zip(names, (t.numpy() for t in eager), strict=True))
    work = {"default": graph_work(op_map(exported))}
    work["fusions"] = work["default"]
    fns = {
        "default": lambda: peer.run(None, peer_feeds),
        "fusions": lambda: fused.run(None, peer_feeds),
    }
    outputs = {"default": peer.run(None, peer_feeds), "fusions": fused.run(None, peer_feeds)}
    chosen: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        targets = [("cpu", "cpu", "auto")]
        if tvm == "all" or (tvm == "binary" and name.startswith(("bit_", "bipft", "bivit"))):
            targets.append(("tvm", "x86_64", "tvm"))
        for key, target, backend in targets:
            bundle = edgec.compile(
                module,
                target=target,
                backend=backend,
                output=Path(tmp) / key,
                inputs=feeds,
                threads=1,
            )
            runner = make_runner(bundle, threads=1)
            names = [s.name for s in bundle.manifest.inputs]
            bundle_feeds = dict(zip(names, feeds.values(), strict=True))
            fns[key] = lambda r=runner, f=bundle_feeds: r.run(f)
            outputs[key] = runner.run(bundle_feeds)
            work[key] = graph_work(load_op_map(bundle))
            chosen[key] = bundle.manifest.backend
        ms = interleaved(fns, rounds, runs)
    errors = {
        key: max_rel_error(dict(zip(reference, outs, strict=True)), reference)
        for key, outs in outputs.items()
    }
    return {
        "model": name,
        "binary": has_binary_ops(exported),
        "p50_ms": {k: round(v, 3) for k, v in ms.items()},
        "work": work,
        "vs_default": {k: round(ms["default"] / v, 2) for k, v in ms.items()},
        "max_rel_error_vs_torch": errors,
        "backend_kept": chosen,
        "ort_fusions_fired": {k: v for k, v in counts.items() if v},
    }


def _cell(row: dict[str, Any], key: str) -> str:
    if key not in row["p50_ms"]:
        return "not run"
    fraction = row["roofline_fraction"].get(key)

    roof = f" ({fraction:.1%})" if fraction is not None else ""
    speed = "" if key == "default" else f", {row['vs_default'][key]}x"
    return f"{row['p50_ms'][key]}{roof}{speed}"


def with_fractions(rows: list[dict[str, Any]], peaks: dict[str, Any]) -> None:
    """Each figure's bound and roofline fraction (bound / p50) at `peaks`."""
    for row in rows:
        row["bound_ms"], row["roofline_fraction"] = {}, {}
        for key, p50 in row["p50_ms"].items():
            work = row["work"][key]
            bound = bound_ms(work["macs"], work["bytes"], peaks)
            row["bound_ms"][key] = round(bound, 4)
            row["roofline_fraction"][key] = round(bound / p50, 4)


def write_table(rows: list[dict[str, Any]], peaks: dict[str, Any], out: Path) -> str:
    with_fractions(rows, peaks)
    header = ["model", *[f"{c} p50 ms (roofline, vs default)" for c in COLUMNS.values()]]
    header += ["cpu kept", "max error vs torch (default / fusions / cpu / TVM)"]
    table_rows = [
        [
            r["model"],
            *[_cell(r, k) for k in COLUMNS],
            r["backend_kept"].get("cpu", ""),
            " / ".join(
                f"{r['max_rel_error_vs_torch'][k]:.1e}" if k in r["max_rel_error_vs_torch"] else "-"
                for k in COLUMNS
            ),
        ]
        for r in rows
    ]
    data = {"peaks": peaks, "rows": rows}
    table = write_results(out, "suite", data, header, table_rows)
    return (
        f"one thread; roofline: sgemm {peaks['sgemm_gflops']:.1f} GFLOP/s, "
        f"{peaks['bandwidth_gbs']:.1f} GB/s\n\n{table}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(SEED_MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tvm", choices=["binary", "all", "none"], default="binary")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--table-from", type=Path, help="only rewrite the table from this JSON")
    args = parser.parse_args()
    if args.table_from is not None:
        data = json.loads(args.table_from.read_text())
        print(write_table(data["rows"], data["peaks"], args.out))
        return
    os.environ.setdefault("EDGEC_CACHE", tempfile.mkdtemp(prefix="edgec-bench-cache-"))
    probes = probe_models()
    found = [measure_peaks(1, *probes, budget_s=3.0)]
    rows = []
    for name in args.models.split(","):
        row = measure(name, args.rounds, args.runs, args.tvm)
        print(json.dumps(row), flush=True)
        rows.append(row)
        found.append(measure_peaks(1, *probes, budget_s=3.0))
    print(write_table(rows, best_peaks(found), args.out))


if __name__ == "__main__":
    main()
