"""Target `coreml` (iPhone, iPad, Mac): an ML program (`model.mlpackage`) built from edgec's IR
with coremltools' MIL builder, not from a torch source, so every edgec pass is kept.

- Lowering: `targets/coreml_lowering.py` walks the IR after the `coreml` pipeline (the cpu
  one) through one rule per operator (`coreml_ops_*`); an operator with none is a one-line
  error naming it and its node. Shapes are fixed at compile time (`--input-shape`).
- Attention: the canonical op as MIL's `scaled_dot_product_attention` (form `sdpa`, iOS 18),
  or decomposed (`--attention-form softmax=decomposed`, iOS 17); linear and hashed attention
  as matmuls in the cheaper order.
- Deployment target: the lowest the program's ops allow, iOS 17 / macOS 14 or iOS 18 /
  macOS 15 (`backend_options.deployment_target`).
- `--precision fp32` (every op in float32: coremltools' own default would be fp16) or `fp16`
  (float16 compute with the ops whose sums or exponents leave fp16's range kept in float32,
  `FP32_GUARDS`; inputs and outputs stay float32).
- Binary layers: +-1 weights palettized at one bit per element, activations binarized with
  MIL ops (`coreml_ops_edgec`); the size against float32 is in `backend_options.size`.

Checked here: the saved program is run op by op by edgec's own MIL evaluator
(`runtime/mil_eval.py`) against the reference; prediction by Core ML itself, its compute
units and its latency need macOS (where `verify` and `profile` use Core ML).
`backend_options.checked_by` says which one checked the bundle.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.core.binary_ops import DOMAIN as EDGEC_DOMAIN
from edgec.core.binary_ops import has_binary_ops
from edgec.core.errors import OptionError, UnsupportedOpError
from edgec.core.irutil import copy_model, static_problem
from edgec.passes import lower_attention
from edgec.passes.cleanup import InferShapes
from edgec.targets.base import Artifacts, CompileOptions
from edgec.targets.coreml_precision import compute_precision, fp16_selector

PRECISIONS = ("fp32", "fp16")
MODEL = "model.mlpackage"
BINARY_OPS = ("BinaryLinear", "BinaryGather")


def checked_by() -> str:
    if sys.platform == "darwin":
        return "Core ML prediction on this Mac"
    return "edgec's MIL evaluator (numpy); Core ML prediction needs macOS"


def _weight_counts(model: ir.Model) -> tuple[int, int]:
    """(binary weights, float32 bytes of the whole model were every weight float32)."""
    codes = 0
    for node in model.graph:
        if node.domain == EDGEC_DOMAIN and node.op_type in BINARY_OPS:
            packed = node.inputs[1 if node.op_type == "BinaryLinear" else 0]
            k = node.attributes.get_int(
                "in_features" if node.op_type == "BinaryLinear" else "dim", 0
            )
            if packed is not None and packed.const_value is not None:
                codes += int(np.prod(packed.const_value.shape[:-1])) * k
    other = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None and tensor.dtype != ir.DataType.UINT64:
            other += tensor.size
    return codes, 4 * (codes + other)


def _size(package: Path, model: ir.Model) -> dict[str, Any]:
    """The package's weights against float32, and the bits each binary weight takes."""
    codes, float_bytes = _weight_counts(model)
    size: dict[str, Any] = {
        "mlpackage_bytes": sum(p.stat().st_size for p in package.rglob("*") if p.is_file()),
        "float_weight_bytes": float_bytes,
    }
    if codes:
        from edgec.runtime.mil_program import read_program

        program = read_program(package)
        stored = 0
        for op in program.ops:
            if op.type == "constexpr_lut_to_dense":
                params = {**op.attributes, **{k: v[0] for k, v in op.inputs.items()}}
                indices = params["indices"]
                bits = 8 if "shape" in params else 1  # iOS 16/17: packed bytes; iOS 18: uint1
                stored += int(np.asarray(indices).size) * bits
        size["binary_weights"] = codes
        size["binary_bits_per_weight"] = round(stored / codes, 4)
    return size


class CoremlTarget:
    name = "coreml"
    backend = "coreml"
    pipeline = "coreml"
    description = (
        "Apple devices through Core ML: an ML program (.mlpackage) lowered from the IR with "
        "coremltools' MIL builder, --precision fp32|fp16, 1-bit palettized binary weights"
    )
    verified = (
        "the saved program run op by op by edgec's MIL evaluator against the reference; "
        "Core ML prediction, compute units and latency only on macOS"
    )

    def reason_to_skip(self, model: ir.Model, options: CompileOptions) -> str | None:
        return None

    def compile(self, model: ir.Model, options: CompileOptions, stage: Path) -> Artifacts:
        # coremltools (seconds to import) only when a Core ML bundle is built
        import coremltools as ct

        from edgec.targets.coreml_lowering import DEPLOYMENT, lower, target_of

        precision = options.precision
        if precision not in PRECISIONS:
            raise OptionError(
                f"--precision for --target coreml must be one of {', '.join(PRECISIONS)} "
                f"(got '{precision}')"
            )
        problem = static_problem(model, "Core ML bundles")
        if problem is not None:
            raise OptionError(problem)
        source = model
        lowered_ir, attention = lower_attention.lowered_copy(
            model, lower_attention.coreml, options.attention_forms, lower_attention.coreml_forms
        )
        model = lowered_ir if attention else copy_model(model)  # the IR is shared
        InferShapes()(model)
        lowered = lower(model)
        binary = has_binary_ops(model)  # the attention op kept for SDPA is not one
        compute = (
            ct.precision.FLOAT32
            if precision == "fp32"
            else ct.transform.FP16ComputePrecision(op_selector=fp16_selector(binary))
        )
        # coremltools' pass pipelines draw progress bars on stderr: kept out of the terminal
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                mlmodel = ct.convert(
                    lowered.program,
                    convert_to="mlprogram",
                    minimum_deployment_target=target_of(lowered.opset),
                    compute_precision=compute,
                    skip_model_load=True,
                )
            except (ValueError, TypeError, NotImplementedError, IndexError, AssertionError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise UnsupportedOpError(
                    f"coremltools cannot convert the program: {first}"
                ) from None
        package = stage / MODEL
        mlmodel.save(str(package))
        ios, macos = DEPLOYMENT[lowered.opset]
        opts: dict[str, Any] = {
            "format": "mlprogram",
            "precision": precision,
            "compute_precision": compute_precision(precision, binary),
            "deployment_target": {"iOS": ios, "macOS": macos},
            "ops_needing_ios18": sorted(op for op, v in lowered.min_opset.items() if v >= 9),
            "inputs": lowered.inputs,
            "outputs": lowered.outputs,
            "checked_by": checked_by(),
            "coremltools_version": ct.__version__,
            "size": _size(package, source),
            **({"attention": attention} if attention else {}),
        }
        return Artifacts({"model": MODEL}, opts)
