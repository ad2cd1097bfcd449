"""The onnxruntime back end of the runtime: one CPU InferenceSession per bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgec.core.errors import BundleError
from edgec.core.ort_options import session_options


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
