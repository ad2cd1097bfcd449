"""Target `mobile`: onnxruntime Mobile (Android and iOS apps, small Linux boards).

The IR after the `mobile` pipeline (binary ops lowered to int8 integer arithmetic by
`passes/lower_binary_ops`, since a reduced onnxruntime build cannot carry edgec's kernels;
attention decomposed into MatMul and Softmax, the form NNAPI and Core ML take) is saved as
ONNX and converted by onnxruntime's own converter
(`onnxruntime.tools.convert_onnx_models_to_ort`) into the ORT format:

- `--optimization-style fixed` (default): optimizations baked in at conversion, for the CPU
  and XNNPACK providers; `runtime`: basic optimizations only, the rest saved to be replayed
  at load (`session.enable_saved_runtime_optimizations`) on the nodes NNAPI or Core ML leave
  to the CPU.
- The converter's `required_operators_and_types.config` (type reduction on), made from the
  converted `.ort` model, not from the ONNX file: kernels the converter introduces (fusions
  such as FusedConv) are in it (onnxruntime#23018). `--include_ops_by_config` of a reduced
  onnxruntime build takes it.
- The partition report (`targets/mobile_partitions.py`) and the size of the model against
  its float form are in `backend_options`, so the manifest and `edgec inspect` show them.

The ORT format is portable: the host checks the bundle against the reference with its own
onnxruntime, and `edgec verify/profile --device` runs it with the device's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx_ir as ir
from onnxruntime.tools.convert_onnx_models_to_ort import (
    OptimizationStyle,
    convert_onnx_models_to_ort,
)

from edgec.core.errors import OptionError, UnsupportedOpError
from edgec.core.irutil import ort_failure
from edgec.passes import lower_attention
from edgec.passes.lower_binary_ops import FORMS as BINARY_FORMS
from edgec.passes.lower_binary_ops import lowered_count
from edgec.targets.base import Artifacts, CompileOptions
from edgec.targets.mobile_partitions import partition_report
from edgec.targets.onnxruntime import save_onnx

OPTIMIZATION_STYLES = {"fixed": OptimizationStyle.Fixed, "runtime": OptimizationStyle.Runtime}
TARGET_PLATFORM = "arm"  # the converter leaves out x86-only layouts (NCHWc) for it
MODEL = "model.ort"
OPERATORS = "required_operators.config"


def _float_bytes(model: ir.Model) -> int:
    """The weights' size were every floating-point and int8 weight (the binary codes) float32,
    as in the model before binarization."""
    total = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None:
            continue
        dtype = tensor.dtype
        wide = dtype.is_floating_point() or dtype in (ir.DataType.INT8, ir.DataType.UINT8)
        total += tensor.size * 4 if wide else tensor.nbytes
    return total


def _convert(onnx_path: Path, out: Path, style: str) -> tuple[Path, Path]:
    """onnxruntime's converter on `onnx_path` into `out`; its printing is kept out of the
    user's terminal, its error made one line."""
    chatter = io.StringIO()
    config_log = logging.getLogger("ort_format_model.utils")  # says where the config went
    level = config_log.level
    config_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(chatter):
            convert_onnx_models_to_ort(
                onnx_path,
                output_dir=out,
                optimization_styles=[OPTIMIZATION_STYLES[style]],
                target_platform=TARGET_PLATFORM,
                enable_type_reduction=True,
            )
    except Exception as e:  # the converter raises onnxruntime's own errors
        raise UnsupportedOpError(
            f"onnxruntime's ORT format converter failed: {ort_failure(e)}"
        ) from None
    finally:
        config_log.setLevel(level)
    models = sorted(out.glob("*.ort"))
    configs = sorted(out.glob("*.config"))
    if len(models) != 1 or len(configs) != 1:
        raise UnsupportedOpError(
            f"onnxruntime's ORT format converter wrote {[p.name for p in out.iterdir()]}"
        )
    return models[0], configs[0]


class MobileTarget:
    name = "mobile"
    backend = "onnxruntime"
    pipeline = "mobile"
    description = (
        "onnxruntime Mobile: an ORT-format model, the operator config of a reduced build and "
        "the NNAPI / Core ML / XNNPACK partition report"
    )
    verified = (
        "the ORT model checked against the reference with onnxruntime here when compiled, and "
        "on an arm64 device's onnxruntime with --device; not the reduced build, the app "
        "package's C++ program, or the NNAPI / Core ML / XNNPACK providers (the partitions "
        "are onnxruntime's static checker and edgec's XNNPACK table)"
    )

    def reason_to_skip(self, model: ir.Model, options: CompileOptions) -> str | None:
        return None

    def compile(self, model: ir.Model, options: CompileOptions, stage: Path) -> Artifacts:
        style = options.optimization_style
        if style not in OPTIMIZATION_STYLES:
            raise OptionError(
                f"--optimization-style must be one of {', '.join(OPTIMIZATION_STYLES)} "
                f"(got '{style}')"
            )
        model, attention = lower_attention.lowered_copy(
            model,
            lower_attention.decomposed,
            options.attention_forms,
            lower_attention.onnxruntime_forms,
        )
        with tempfile.TemporaryDirectory(prefix=".mobile-", dir=stage) as tmp:
            scratch = Path(tmp)
            onnx_path = scratch / "model.onnx"
            save_onnx(model, onnx_path)
            ort_model, config = _convert(onnx_path, scratch / "out", style)
            partitions = partition_report(onnx_path)
            shutil.move(ort_model, stage / MODEL)
            # the converter names the scratch copies it read; the bundle's model instead
            lines = config.read_text().splitlines()
            named = [line for line in lines if not line.startswith("# - ")]
            named.insert(1, f"# - {MODEL}")
            (stage / OPERATORS).write_text("\n".join(named) + "\n")
        binary = lowered_count(model)
        size = {
            "ort_bytes": (stage / MODEL).stat().st_size,
            "float_weight_bytes": _float_bytes(model),
        }
        options_out: dict[str, Any] = {
            "format": "ort",
            "optimization_style": style,
            "target_platform": TARGET_PLATFORM,
            "partitions": partitions,
            "size": size,
            **({"binary_form": BINARY_FORMS["int8"], "binary_ops": binary} if binary else {}),
            **({"attention": attention} if attention else {}),
        }
        if style == "runtime":
            options_out["saved_runtime_optimizations"] = True
        return Artifacts({"model": MODEL, "operators": OPERATORS}, options_out)
