"""The onnxruntime back end of the runtime: one CPU InferenceSession per bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgec.errors import BundleError

ort.set_default_logger_severity(3)  # errors only: its warnings are about its internals

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(
    options: dict[str, Any], threads: int, profile_prefix: str | None = None
) -> ort.SessionOptions:
    """Build SessionOptions from the manifest's `backend_options`; threads=0 lets ORT pick."""
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[options.get("graph_optimization_level", "all")]
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


class OrtRunner:
    """Runs an ONNX artifact with onnxruntime's CPU execution provider."""

    def __init__(
        self,
        model_path: Path,
        options: dict[str, Any],
        threads: int = 0,
        profile_prefix: str | None = None,
    ) -> None:
        so = session_options(options, threads, profile_prefix)
        try:
            self.session = ort.InferenceSession(
                str(model_path),
                so,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=options.get("disabled_optimizers"),
            )
        except Exception as e:  # ORT raises its own exception types for bad files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"onnxruntime cannot load '{model_path}': {first}") from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)

    def end_profiling(self) -> str:
        return self.session.end_profiling()
