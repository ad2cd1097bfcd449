"""Binary against float32, on one thread: the bit-packed linear layer, and whole binary models.

Layers (the linear shapes of BERT-base at 128 tokens and DeiT-Tiny at 197 tokens): BiT's
binary linear (offset, sign of the input, packing included) compiled by edgec for x86_64 (TVM
popcount kernels), against the float32 linear of the same shape in onnxruntime (all graph
optimizations). Two timings each, interleaved in one process, medians:
- kernel: the compiled function on tensors already in place (TVM's VM on a TVM tensor;
  onnxruntime with I/O binding), no host copies;
- runtime: a call through edgec's Python runtime with numpy in and out (TVM copies both;
  onnxruntime reads numpy in place).

Models: the binary model's edgec bundles (cpu: onnxruntime on the ops' function bodies;
x86_64: TVM kernels) against its float twin (the same geometry in float32, `float_twin`) and
the binary model as exported (float math with sign() in it), both in onnxruntime on the
export users get (`torch.onnx.export(dynamo=True)` with torch's defaults), as is the float
layer.

    python benchmarks/binary.py [--models bit_bert_base,bivit_deit_tiny] [--tune 0]
        [--model-tune 300 --model-tune-time 420]

The whole-model TVM bundles are tuned (MetaSchedule, from an empty database) within the
model budget: their float remainder (LayerNorm, softmax, GELU, the patch embedding) runs
TVM's kernels, which are slow untuned.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import default_export_session, interleaved, write_results  # the script's own folder

import edgec
from edgec import frontend, models
from edgec.models.binary import BitLinear, float_twin
from edgec.runtime.session import make_runner

LAYERS = {
    "BERT-base": (128, [(768, 768, "Q/K/V/out"), (768, 3072, "FFN in"), (3072, 768, "FFN out")]),
    "DeiT-Tiny": (
        197,
        [(192, 576, "QKV"), (192, 192, "proj"), (192, 768, "MLP in"), (768, 192, "MLP out")],
    ),
}
MODELS = ["bit_bert_base", "bivit_deit_tiny"]


def _bound(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for out in session.get_outputs():
        binding.bind_output(out.name, "cpu")
    session.run_with_iobinding(binding)  # outputs allocated once, then reused
    outputs = binding.get_outputs()
    for out, value in zip(session.get_outputs(), outputs, strict=True):
        binding.bind_ortvalue_output(out.name, value)
    return lambda: session.run_with_iobinding(binding)


def measure_layer(
    geometry: str, m: int, k: int, n: int, role: str, tune: int, rounds: int, runs: int
) -> dict:
    import tvm

    torch.manual_seed(0)
    x = torch.randn(1, m, k)
    layer = BitLinear(k, n).eval()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = edgec.compile(
            layer,
            target="x86_64",
            output=Path(tmp) / "binary",
            backend="tvm",
            threads=1,
            example_inputs=(x,),
            tune=tune,
        )
        runner = make_runner(bundle, threads=1)
        peer, peer_feeds = default_export_session(torch.nn.Linear(k, n).eval(), {"x": x.numpy()})
        feeds = {bundle.manifest.inputs[0].name: x.numpy()}
        xt = tvm.runtime.tensor(x.numpy())
        main = runner.vm["main"]  # type: ignore[attr-defined]
        p50 = interleaved(
            {
                "binary_kernel": lambda: main(xt),
                "float_kernel": _bound(peer, peer_feeds),
                "binary_runtime": lambda: runner.run(feeds),
                "float_runtime": lambda: peer.run(None, peer_feeds),
            },
            rounds,
            runs,
        )
        weights = bundle.manifest.stats["after"]
    return {
        "geometry": geometry,
        "layer": role,
        "shape": [m, k, n],
        "p50_ms": p50,
        "error": bundle.manifest.reference["max_rel_error"],
        "tuning": bundle.manifest.backend_options["tuning"],
        "parameters_after": weights["parameters"],
    }


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


def measure_model(name: str, rounds: int, runs: int, tune: int, tune_time: float) -> dict:
    info = models.get_info(name)
    shapes = dict(info.inputs)
    binary = frontend.prepare(models.create(name), input_shapes=shapes)
    twin_module = float_twin(models.create(name))
    twin = frontend.prepare(twin_module, input_shapes=shapes)
    feeds = binary.inputs
    with tempfile.TemporaryDirectory() as tmp:
        out: dict[str, object] = {"model": name}
        bundles = {}
        for key, target in (("edgec_cpu", "cpu"), ("edgec_tvm", "x86_64")):
            start = time.perf_counter()
            bundles[key] = edgec.compile(
                name,
                target=target,
                output=Path(tmp) / key,
                backend="onnxruntime" if target == "cpu" else "tvm",
                threads=1,
                tolerance=math.inf,  # measured and reported, not enforced here
                **({"tune": tune, "tune_time": tune_time} if target != "cpu" and tune else {}),
            )
            out[f"{key}_compile_s"] = round(time.perf_counter() - start, 1)
            out[f"{key}_error"] = bundles[key].manifest.reference["max_rel_error"]
            out[f"{key}_mb"] = round(_folder_mb(bundles[key].path), 2)
        out["tuning"] = bundles["edgec_tvm"].manifest.backend_options["tuning"]
        twin_path = Path(tmp) / "twin.onnx"
        import onnx_ir as ir

        ir.save(twin.model, twin_path)
        out["float_twin_mb"] = round(twin_path.stat().st_size / 1e6, 2)
        runners = {k: make_runner(b, threads=1) for k, b in bundles.items()}
        peers = {
            "float_twin": default_export_session(twin_module, feeds),
            "exported": default_export_session(models.create(name), feeds),
        }
        out["p50_ms"] = interleaved(
            {
                **{k: (lambda s=s, f=f: s.run(None, f)) for k, (s, f) in peers.items()},
                **{k: (lambda r=r: r.run(feeds)) for k, r in runners.items()},
            },
            rounds,
            runs,
        )
    return out


LAYER_HEADER = [
    "geometry",
    "layer",
    "M x K -> N",
    "binary kernel (us)",
    "float32 ORT kernel (us)",
    "speedup",
    "binary via runtime (us)",
    "float32 ORT via runtime (us)",
    "speedup",
    "schedule",
]


def layer_row(r: dict) -> list[str]:
    p = r["p50_ms"]
    m, k, n = r["shape"]
    t = r["tuning"]
    schedule = f"tuned ({t['trials_ok']} trials)" if t.get("trials_ok") else "default (untuned)"
    return [
        r["geometry"],
        r["layer"],
        f"{m} x {k} -> {n}",
        f"{p['binary_kernel'] * 1e3:.0f}",
        f"{p['float_kernel'] * 1e3:.0f}",
        f"{p['float_kernel'] / p['binary_kernel']:.1f}x",
        f"{p['binary_runtime'] * 1e3:.0f}",
        f"{p['float_runtime'] * 1e3:.0f}",
        f"{p['float_runtime'] / p['binary_runtime']:.1f}x",
        schedule,
    ]


MODEL_HEADER = [
    "model",
    "float twin ORT (ms)",
    "exported binary ORT (ms)",
    "edgec cpu (ms)",
    "edgec x86_64 TVM (ms)",
    "TVM vs float twin",
    "TVM kernels tuned",
    "bundle MB (cpu / TVM)",
    "float twin MB",
    "error vs torch (cpu / TVM)",
]


def _tuned(t: dict | None) -> str:
    if not t or not t.get("tasks"):
        return "-"
    done = t["tasks"] - len(t["tasks_untuned"])
    return f"{done}/{t['tasks']} ({t['trials_ok']} trials, {t['seconds']:.0f} s)"


def model_row(r: dict) -> list[str]:
    p = r["p50_ms"]
    return [
        r["model"],
        f"{p['float_twin']:.2f}",
        f"{p['exported']:.2f}",
        f"{p['edgec_cpu']:.2f}",
        f"{p['edgec_tvm']:.2f}",
        f"{p['float_twin'] / p['edgec_tvm']:.2f}x",
        _tuned(r.get("tuning")),
        f"{r['edgec_cpu_mb']} / {r['edgec_tvm_mb']}",
        f"{r['float_twin_mb']}",
        f"{r['edgec_cpu_error']:.1e} / {r['edgec_tvm_error']:.1e}",
    ]


def main() -> None:
    os.environ["EDGEC_CACHE"] = tempfile.mkdtemp(prefix="edgec-bench-cache-")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="'' for layers only")
    parser.add_argument("--tune", type=int, default=0, help="MetaSchedule trials per layer")
    parser.add_argument(
        "--model-tune", type=int, default=300, help="MetaSchedule trials per whole model"
    )
    parser.add_argument("--model-tune-time", type=float, default=420.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--from-json", type=Path, help="Only write the tables of saved results.")
    args = parser.parse_args()
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        data = {"layers": [], "models": []}
        for geometry, (m, shapes) in LAYERS.items():
            for k, n, role in shapes:
                data["layers"].append(
                    measure_layer(geometry, m, k, n, role, args.tune, args.rounds, args.runs)
                )
                print(layer_row(data["layers"][-1]), flush=True)
        for name in filter(None, args.models.split(",")):
            data["models"].append(
                measure_model(
                    name, args.rounds, max(2, args.runs // 4), args.model_tune, args.model_tune_time
                )
            )
            print(model_row(data["models"][-1]), flush=True)
    layers = write_results(
        args.out, "binary_layers", data, LAYER_HEADER, [layer_row(r) for r in data["layers"]]
    )
    table = write_results(
        args.out, "binary_models", data, MODEL_HEADER, [model_row(r) for r in data["models"]]
    )
    print(layers + "\n" + table)


if __name__ == "__main__":
    main()
