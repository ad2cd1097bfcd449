"""Target `tensorrt` (Jetson and other NVIDIA GPUs): an ONNX graph shaped for TensorRT's ONNX
parser, the trtexec line that builds its engine, and the checks this machine allows.

The IR after the `tensorrt` pipeline (the cpu one, constants folded, INT64 constants narrowed
where exact: `passes/narrow_int64`) is made into what the parser takes:

- static shapes: every input and output of the graph has fixed sizes (`--input-shape`);
- attention in the pattern TensorRT fuses: MatMul(Q * scale, K^T) [+ mask] -> Softmax ->
  MatMul(., V), the scale on Q before the first batched matmul, the [B, N, S, H] layout
  (`lower_attention`, form `scaled_q`);
- binary layers without edgec's kernels (`lower_binary_ops`): INT8 quantize/dequantize pairs
  around each MatMul (`--precision int8-binary` and `fp16`: TensorRT runs an INT8 GEMM whose
  INT32 sum equals the popcount result exactly), or float +-1 MatMuls (`fp32`, exact too);
- `--precision fp16`: the graph converted to float16 by onnxconverter-common, with the ops
  that overflow or lose range in fp16 kept in float32 (`FP32_GUARDS`: normalizations, softmax,
  reductions, power and exponent), inputs and outputs float32; the engine is built
  `--stronglyTyped`, so TensorRT keeps exactly these types;
- every node checked against the parser's operator table (`targets/tensorrt_ops.py`, with the
  TensorRT version it comes from): an operator it cannot parse is a one-line error naming it.

Checked here: the graph runs in onnxruntime and matches the reference (it is still ONNX: the
driver checks it with onnxruntime, `Artifacts.check_backend`), the static operator check, and
polygraphy's lint (which runs each node in onnxruntime, no TensorRT needed). Not checked
here: the engine build and its latency (no TensorRT, no GPU): the manifest says
`engine_verified: false`. `build_engine.sh` builds and profiles the engine where TensorRT is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx_ir as ir
from onnxconverter_common import float16

from edgec.core.errors import OptionError, UnsupportedOpError
from edgec.core.irutil import copy_model, ort_session, static_problem
from edgec.passes import lower_attention
from edgec.passes.cleanup import InferShapes
from edgec.passes.lower_binary_ops import FORMS as BINARY_FORMS
from edgec.passes.lower_binary_ops import LowerBinaryOps
from edgec.targets.base import Artifacts, CompileOptions
from edgec.targets.onnxruntime import save_onnx
from edgec.targets.tensorrt_ops import TENSORRT_VERSION, problems

PRECISIONS = ("fp32", "fp16", "int8-binary")
BINARY_FORM = {"fp32": "float", "fp16": "qdq", "int8-binary": "qdq"}
# ops kept in float32 in an fp16 engine: their sums and squares leave fp16's range (65504)
FP32_GUARDS = [
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "RMSNormalization",
    "BatchNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum",
    "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Pow", "Exp",
]  # fmt: skip
MODEL = "model.onnx"
BUILD_SCRIPT = "build_engine.sh"
LINT_TIMEOUT_S = 600.0

BUILD_SH = """#!/bin/sh
# Builds and profiles the TensorRT engine of this bundle on a Jetson or an NVIDIA GPU machine
# with TensorRT {version} or later (trtexec on PATH, or TRTEXEC=/path/to/trtexec):
#   sh build_engine.sh [OUT]      -> OUT/model.engine (OUT: BUNDLE.engine beside the bundle),
#                                    and the timings of --avgRuns runs, layers and profile
# The bundle folder itself is never written: edgec refuses a bundle with files added to it.
# Precision {precision}: {how}.
# Then `edgec verify BUNDLE` and `edgec profile BUNDLE` load BUNDLE.engine/model.engine.
set -e
BUNDLE="$(cd "$(dirname "$0")" && pwd)"
OUT="${{1:-$BUNDLE.engine}}"
mkdir -p "$OUT"
TRTEXEC="${{TRTEXEC:-trtexec}}"
"$TRTEXEC" --onnx="$BUNDLE/{model}" --saveEngine="$OUT/model.engine" \\
{shapes}  {flags} \\
  --avgRuns=100 --percentile=50,90,99 --dumpProfile --separateProfileRun \\
  --profilingVerbosity=detailed --dumpLayerInfo --exportLayerInfo="$OUT/layers.json" \\
  --exportTimes="$OUT/times.json" --exportProfile="$OUT/profile.json"
"""
PRECISION_FLAGS = {
    "fp32": ("--noTF32", "float32 throughout, TF32 off; binary layers as exact +-1 MatMuls"),
    "fp16": (
        "--stronglyTyped",
        "the ONNX is float16 with float32 guards and INT8 binary layers; strongly typed, so "
        "TensorRT keeps those types",
    ),
    "int8-binary": (
        "--stronglyTyped",
        "float32, binary layers as INT8 Q/DQ GEMMs (exact); strongly typed",
    ),
}


def _to_fp16(model: ir.Model) -> ir.Model:
    proto = ir.serde.serialize_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every weight under fp16's range
        converted = float16.convert_float_to_float16(
            proto, keep_io_types=True, op_block_list=FP32_GUARDS
        )
    return ir.serde.deserialize_model(converted)


def lint(path: Path) -> dict[str, Any]:
    """polygraphy's `check lint` on the model (each node run in onnxruntime): which nodes
    pass and fail; where polygraphy cannot run, why."""
    with tempfile.TemporaryDirectory(prefix="edgec-lint-") as tmp:
        report = Path(tmp) / "lint.json"
        code = "import sys; from polygraphy.tools import main; sys.exit(main())"
        cmd = [sys.executable, "-c", code, "check", "lint", str(path), "-o", str(report)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LINT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"ran": False, "why": f"did not finish in {LINT_TIMEOUT_S:g} s"}
        if not report.is_file():
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            return {"ran": False, "why": lines[-1] if lines else f"exit code {proc.returncode}"}
        data = json.loads(report.read_text())
    summary = data.get("summary", {})
    entries = data.get("lint_entries", [])
    return {
        "ran": True,
        "passing_nodes": len(summary.get("passing", [])),
        "failing_nodes": sorted(summary.get("failing", [])),
        "findings": [str(e.get("message", e))[:200] for e in entries][:20],
    }


def _shapes(model: ir.Model) -> str:
    return ",".join(
        f"{v.name}:{'x'.join(str(d) for d in v.shape.dims)}"  # type: ignore[union-attr]
        for v in model.graph.inputs
    )


class TensorrtTarget:
    name = "tensorrt"
    backend = "tensorrt"
    pipeline = "tensorrt"
    description = (
        "NVIDIA GPUs and Jetson through TensorRT: an ONNX graph shaped for its parser "
        f"(operator table of TensorRT {TENSORRT_VERSION}), --precision fp32|fp16|int8-binary, "
        "and build_engine.sh (trtexec)"
    )
    verified = (
        "the TensorRT-shaped ONNX checked against the reference in onnxruntime here, the "
        "static operator check and polygraphy's lint; not the engine build or its latency "
        "(no TensorRT, no GPU here: engine_verified false)"
    )

    def reason_to_skip(self, model: ir.Model, options: CompileOptions) -> str | None:
        return None

    def compile(self, model: ir.Model, options: CompileOptions, stage: Path) -> Artifacts:
        precision = options.precision
        if precision not in PRECISIONS:
            raise OptionError(
                f"--precision must be one of {', '.join(PRECISIONS)} (got '{precision}')"
            )
        problem = static_problem(model, "TensorRT bundles")
        if problem is not None:
            raise OptionError(problem)
        lowered, attention = lower_attention.lowered_copy(
            model, lower_attention.tensorrt, options.attention_forms, lower_attention.tensorrt_forms
        )
        model = lowered if attention else copy_model(model)  # the IR is shared: never changed
        binary = LowerBinaryOps(BINARY_FORM[precision])
        binary(model)
        InferShapes()(model)
        found = problems(model)
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise UnsupportedOpError(
                f"TensorRT {TENSORRT_VERSION}'s ONNX parser cannot take {found[0]}{more}"
            )
        if precision == "fp16":
            model = _to_fp16(model)
        files = save_onnx(model, stage / MODEL)
        ort_session(stage / MODEL, optimize=True)  # it is still ONNX: onnxruntime must load it
        flags, how = PRECISION_FLAGS[precision]
        script = stage / BUILD_SCRIPT
        script.write_text(
            BUILD_SH.format(
                version=TENSORRT_VERSION,
                precision=precision,
                how=how,
                model=MODEL,
                shapes=f"  --shapes={_shapes(model)} \\\n" if model.graph.inputs else "",
                flags=flags,
            )
        )
        script.chmod(0o755)
        artifacts = {"model": files[0], "build_script": BUILD_SCRIPT}
        if len(files) > 1:
            artifacts["weights"] = files[1]
        opts: dict[str, Any] = {
            "precision": precision,
            "tensorrt_version": TENSORRT_VERSION,
            "engine_verified": False,
            "static_check": "passed",
            "lint": lint(stage / MODEL),
            **({"fp32_guards": FP32_GUARDS} if precision == "fp16" else {}),
            **({"attention": attention} if attention else {}),
        }
        if binary.rewrites:
            opts["binary_form"] = BINARY_FORMS[BINARY_FORM[precision]]
            opts["binary_ops"] = binary.rewrites
        # checked as written: onnxruntime's basic optimizations only (its fusions would round
        # differently from the graph, and flip binary layers' signs)
        return Artifacts(
            artifacts,
            opts,
            check_backend="onnxruntime",
            check_options={"graph_optimization_level": "basic"},
            check_hint=(
                "float16 rounding moves values across the binary layers' thresholds; "
                "--precision int8-binary keeps them exact"
                if precision == "fp16" and binary.rewrites
                else ""
            ),
        )
