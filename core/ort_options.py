"""onnxruntime's session options as edgec sets them everywhere (the runtime's sessions, the
reference runs, the passes' checks): CPU, sequential, errors-only logging. Needs only
onnxruntime (the runtime imports it on devices that have nothing else).
"""

from __future__ import annotations

from typing import Any

import onnxruntime as ort

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
    if options.get("saved_runtime_optimizations"):  # an ORT model converted in 'runtime' style
        so.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so
