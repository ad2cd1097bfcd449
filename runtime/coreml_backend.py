"""The Core ML back end of the runtime: a bundle's `model.mlpackage`, run by Core ML itself on
macOS (on the compute units asked for), and everywhere else by edgec's MIL evaluator
(`runtime/mil_eval.py`), which checks numerics but is no measure of latency.

Needs coremltools, not torch. Core ML takes no 64-bit integers: int64 inputs are passed as
int32 (a value outside int32 is an InputError naming the input).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np

from edgec.core.errors import InputError, OptionError
from edgec.runtime.mil_eval import Evaluator
from edgec.runtime.mil_program import mil_name

# --compute-units -> coremltools' ComputeUnit
COMPUTE_UNITS = {
    "all": "ALL",
    "cpu": "CPU_ONLY",
    "gpu": "CPU_AND_GPU",
    "ane": "CPU_AND_NE",
}
INT32 = np.iinfo(np.int32)


def on_macos() -> bool:
    return sys.platform == "darwin"


class CoremlRunner:
    """Runs a Core ML bundle: Core ML on macOS, the evaluator elsewhere (`engine` says which)."""

    def __init__(
        self,
        bundle_path: Path,
        artifact: str,
        output_dtypes: list[str],
        compute_units: str | None,
    ) -> None:
        package = bundle_path / artifact
        # Core ML has no int64 or bool outputs (they come back int32 / float32): the bundle's
        # outputs are given back in the model's own types
        self.output_dtypes = output_dtypes
        if compute_units is not None and compute_units not in COMPUTE_UNITS:
            raise OptionError(
                f"--compute-units must be one of {', '.join(COMPUTE_UNITS)} (got '{compute_units}')"
            )
        if on_macos():
            ct = importlib.import_module("coremltools")
            unit = getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units or "all"])
            self.model: object = ct.models.MLModel(str(package), compute_units=unit)
            self.output_names = [o.name for o in self.model.get_spec().description.output]  # type: ignore[attr-defined]
            self.engine = f"Core ML ({compute_units or 'all'} compute units)"
            self.measures_latency = True
        else:
            if compute_units is not None:
                raise OptionError(
                    "--compute-units needs Core ML, which runs on macOS only; here edgec's MIL "
                    "evaluator checks the bundle's numerics"
                )
            evaluator = Evaluator(package)
            self.model = evaluator
            self.output_names = list(evaluator.program.outputs)
            self.engine = "edgec's MIL evaluator (numpy)"
            self.measures_latency = False

    def _feed(self, name: str, value: np.ndarray) -> np.ndarray:
        if value.dtype in (np.int64, np.uint64):
            if value.size and (value.min() < INT32.min or value.max() > INT32.max):
                raise InputError(f"input '{name}' holds values outside int32, which Core ML lacks")
            return value.astype(np.int32)
        return value

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # the program's features are the ONNX names made Core ML names; outputs in graph order
        named = {mil_name(k): self._feed(k, np.asarray(v)) for k, v in feeds.items()}
        got = self.model.predict(named) if on_macos() else self.model.run(named)  # type: ignore[attr-defined]
        return [
            np.asarray(got[name]).astype(dtype, copy=False)
            for name, dtype in zip(self.output_names, self.output_dtypes, strict=True)
        ]
