"""Target `cpu`: the optimized IR as an ONNX file, run by onnxruntime's CPU provider.

onnxruntime's own graph optimizations stay on at run time (level `all`): edgec's passes go
beyond them (folds that need whole-graph reasoning), and its fusions are kept on top.

Some of those fusions change rounding. MatMulScaleFusion turns (A @ B) * s into one FusedMatMul
whose result rounds differently; a float model does not notice, but a binarized one does: a
sum of +-1 that should be exactly zero, or an activation a few ulps from a threshold, lands on
the other side of the next sign() and the flipped bit cascades (bit_bert_tiny: 10% off). So
the target offers fallbacks, tried only when the bundle fails its reference check: that fusion
disabled, then level `basic`.
"""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

from edgec.core.irutil import ort_session
from edgec.passes import lower_attention
from edgec.targets.base import Artifacts, CompileOptions

# protobuf cannot hold 2 GiB; past this much weight data, it goes to model.onnx.data
EXTERNAL_DATA_BYTES = 1_500_000_000


def weight_bytes(model: ir.Model) -> int:
    return sum(
        v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None
    )


def save_onnx(model: ir.Model, path: Path) -> list[str]:
    """Write the model; returns the files written (external data only when needed)."""
    if weight_bytes(model) > EXTERNAL_DATA_BYTES:
        data = path.name + ".data"
        ir.save(model, path, external_data=data, size_threshold_bytes=1024)
        return [path.name, data]
    ir.save(model, path)
    return [path.name]


class OnnxruntimeTarget:
    name = "cpu"
    backend = "onnxruntime"
    pipeline = "cpu"
    description = (
        "host CPU through onnxruntime's CPU execution provider; with --backend auto (the "
        "default) also TVM, keeping the faster"
    )
    verified = "each bundle run here and checked against the reference when compiled"

    def reason_to_skip(self, model: ir.Model, options: CompileOptions) -> str | None:
        return None  # onnxruntime takes every model measure-and-pick is asked about

    def compile(self, model: ir.Model, options: CompileOptions, stage: Path) -> Artifacts:
        # each block in its fastest form here
        model, attention = lower_attention.lowered_copy(
            model,
            lower_attention.timed(options.threads),
            options.attention_forms,
            lower_attention.onnxruntime_forms,
        )
        files = save_onnx(model, stage / "model.onnx")
        ort_session(stage / "model.onnx", optimize=True)  # fails here, naming an unsupported op
        artifacts = {"model": files[0]}
        if len(files) > 1:
            artifacts["weights"] = files[1]
        return Artifacts(
            artifacts,
            {"graph_optimization_level": "all", **({"attention": attention} if attention else {})},
            fallbacks=[
                {"graph_optimization_level": "all", "disabled_optimizers": ["MatMulScaleFusion"]},
                {"graph_optimization_level": "basic"},
            ],
        )
