"""Attention models: edgec's cpu bundle against onnxruntime, with and without onnxscript's
onnxruntime fusions.

For each seed transformer and a BERT-style encoder (MiniLM-sized: 6 layers, hidden 384, 12
heads, sequence 128; built from a transformers config with random weights, no download), on
one thread, in one process, interleaved rounds, medians:

- `default export`: onnxruntime (all graph optimizations) on `torch.onnx.export(model, args,
  dynamo=True)` with torch's defaults;
- `ort fusions`: the same export after `onnxscript.rewriter.ort_fusions.optimize_for_ort`
  (the fusions onnxruntime's own tools apply: attention, SkipLayerNorm, BiasGelu);
- `edgec cpu`: `edgec compile --target cpu --backend onnxruntime --threads 1`;
- `edgec TVM`: `edgec compile --target x86_64 --backend tvm --threads 1 --tune TRIALS
  --tune-time SECONDS` (MetaSchedule from an empty database: a fresh EDGEC_CACHE for the run;
  the kernels tuned within the budget are in the table),

with the attention blocks edgec found and the form the cpu target chose for each. All five
compile the default export's ONNX file.

    python benchmarks/attention.py [--models a,b] [--rounds 5] [--runs 5]
        [--tvm-trials 2000 --tvm-tune-time 240 | --no-tvm]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from common import interleaved, plain_session, write_results  # the script's own folder
from onnxscript.rewriter.ort_fusions import optimize_for_ort

import edgec
from edgec import frontend, models
from edgec.runtime.compare import max_rel_error
from edgec.runtime.session import make_runner

SEED_TRANSFORMERS = [
    "tiny_vit_5m",
    "slab_deit_tiny",
    "slab_swin_tiny",
    "pvt_v2_b0_ecoformer",
    "fmvit_tiny",
    "bert_minilm_seq128",
]


def bert_minilm() -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        vocab_size=30522,
    )
    ids = np.random.default_rng(0).integers(0, 30522, (1, 128)).astype(np.int64)
    mask = np.ones((1, 128), np.int64)
    mask[0, 100:] = 0
    return transformers.BertModel(config).eval(), {"input_ids": ids, "attention_mask": mask}


def measure(
    name: str, rounds: int, runs: int, tvm_trials: int, tvm_tune_time: float | None
) -> dict[str, Any]:
    if name == "bert_minilm_seq128":
        module, feeds = bert_minilm()
    else:
        info = models.get_info(name)
        module = models.create(name)
        feeds = frontend.prepare(module, input_shapes=dict(info.inputs)).inputs
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    with torch.no_grad():
        exported = torch.onnx.export(module, args, dynamo=True, verbose=False).model
    names = [v.name for v in exported.graph.inputs]
    peer_feeds = dict(zip(names, feeds.values(), strict=True))
    peer = plain_session(exported)
    fused_model = ir.serde.deserialize_model(ir.serde.serialize_model(exported))
    fused_model, counts = optimize_for_ort(fused_model)
    fused = plain_session(fused_model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        ir.save(exported, path)
        bundle = edgec.compile(
            path,
            output=Path(tmp) / "b",
            backend="onnxruntime",
            threads=1,
            inputs=peer_feeds,
        )
        runner = make_runner(bundle, threads=1)
        reference = peer.run(None, peer_feeds)[0]
        errors = {
            "ort_fusions": max_rel_error({"y": fused.run(None, peer_feeds)[0]}, {"y": reference}),
            "edgec": max_rel_error({"y": runner.run(peer_feeds)[0]}, {"y": reference}),
        }
        fns = {
            "default": lambda: peer.run(None, peer_feeds),
            "fusions": lambda: fused.run(None, peer_feeds),
            "edgec": lambda: runner.run(peer_feeds),
        }
        tvm: dict[str, Any] = {}
        if tvm_trials or tvm_tune_time:
            tvm_bundle = edgec.compile(
                path,
                target="x86_64",
                output=Path(tmp) / "tvm",
                backend="tvm",
                threads=1,
                inputs=peer_feeds,
                tune=tvm_trials,
                tune_time=tvm_tune_time,
            )
            tvm_runner = make_runner(tvm_bundle, threads=1)
            errors["edgec_tvm"] = max_rel_error(
                {"y": tvm_runner.run(peer_feeds)[0]}, {"y": reference}
            )
            fns["tvm"] = lambda: tvm_runner.run(peer_feeds)
            tuning = tvm_bundle.manifest.backend_options["tuning"]
            tvm = {
                "kernels_tuned": f"{tuning['tasks'] - len(tuning['tasks_untuned'])}"
                f"/{tuning['tasks']}",
                "tuning": tuning,
                "forms": dict(
                    collections.Counter(
                        c["form"] for c in tvm_bundle.manifest.backend_options.get("attention", [])
                    )
                ),
            }
        ms = interleaved(fns, rounds, runs)
        if "tvm" in ms:
            tvm["p50_ms"] = round(ms["tvm"], 2)
            tvm["vs_default"] = round(ms["default"] / ms["tvm"], 2)
    report = next(p for p in bundle.manifest.passes if p["name"] == "map_attention")
    softmax = sum(n.op_type == "Softmax" for n in exported.graph)
    forms = collections.Counter(
        c["form"] for c in bundle.manifest.backend_options.get("attention", [])
    )
    fused_counts = {k: v for k, v in counts.items() if v}
    return {
        "model": name,
        "default_p50_ms": round(ms["default"], 2),
        "ort_fusions_p50_ms": round(ms["fusions"], 2),
        "edgec_p50_ms": round(ms["edgec"], 2),
        "edgec_vs_default": round(ms["default"] / ms["edgec"], 2),
        "edgec_vs_ort_fusions": round(ms["fusions"] / ms["edgec"], 2),
        "softmax_in_export": softmax,
        "attention_mapped": report["rewrites"],
        "forms": dict(forms),
        "ort_fusions_fired": fused_counts,
        "max_rel_error_vs_default": errors,
        "edgec_tvm": tvm,
    }


KINDS = {
    "softmax": ("decomposed", "mha"),
    "linear": ("kv_first", "qk_first", "einsum_kv_first", "einsum_qk_first"),
    "hashed": ("matmul",),
}


def blocks(row: dict[str, Any]) -> str:
    """'found / mapped' softmax blocks and the forms chosen, then the linear and hashed ones."""
    forms = row["forms"]
    parts = []
    for kind, names in KINDS.items():
        chosen = {f: forms[f] for f in names if forms.get(f)}
        if kind == "softmax":
            mapped = f"{row['softmax_in_export']} / {row['attention_mapped']}"
            parts.append(f"softmax {mapped}" + (f" ({_counts(chosen)})" if chosen else ""))
        elif chosen:
            parts.append(f"{kind} {sum(chosen.values())} ({_counts(chosen)})")
    return "; ".join(parts)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items())


def write_table(rows: list[dict[str, Any]], out: Path) -> str:
    header = [
        "model",
        "default export p50 (ms)",
        "ORT fusions p50 (ms)",
        "edgec cpu p50 (ms)",
        "vs default",
        "vs ORT fusions",
        "edgec TVM p50 (ms) (kernels tuned)",
        "attention blocks: found / mapped (form chosen)",
        "ORT fusions fired",
    ]
    return write_results(
        out,
        "attention",
        rows,
        header,
        [
            [
                r["model"],
                str(r["default_p50_ms"]),
                str(r["ort_fusions_p50_ms"]),
                str(r["edgec_p50_ms"]),
                f"{r['edgec_vs_default']}x",
                f"{r['edgec_vs_ort_fusions']}x",
                _tvm_cell(r.get("edgec_tvm") or {}),
                blocks(r),
                _counts(r["ort_fusions_fired"]) or "none",
            ]
            for r in rows
        ],
    )


def _tvm_cell(tvm: dict[str, Any]) -> str:
    if "p50_ms" not in tvm:
        return "not run"
    return f"{tvm['p50_ms']} ({tvm['kernels_tuned']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(SEED_TRANSFORMERS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--table-from", type=Path, help="only rewrite the table from this JSON")
    parser.add_argument("--tvm-trials", type=int, default=2000)
    parser.add_argument("--tvm-tune-time", type=float, default=240.0)
    parser.add_argument("--no-tvm", action="store_true", help="leave the TVM column out")
    args = parser.parse_args()
    if args.table_from is not None:
        print(write_table(json.loads(args.table_from.read_text()), args.out))
        return
    os.environ["EDGEC_CACHE"] = tempfile.mkdtemp(prefix="edgec-bench-cache-")
    trials, seconds = (0, None) if args.no_tvm else (args.tvm_trials, args.tvm_tune_time)
    rows = []
    for name in args.models.split(","):
        row = measure(name, args.rounds, args.runs, trials, seconds)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(write_table(rows, args.out))


if __name__ == "__main__":
    main()
