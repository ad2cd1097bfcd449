"""A loaded bundle: checked inputs in, named outputs out, and verification against the reference.

session = edgec.runtime.load("out/net")
outputs = session.run({"x": image})      # or session.run([image]), or session.run(image)
report = session.verify()                # the stored reference input, compared
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgec.core.errors import BundleError, InputError, OptionError
from edgec.core.specs import TensorSpec
from edgec.runtime.bundle import Bundle, consistent_read, load_reference
from edgec.runtime.compare import rel_error

Inputs = Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray


class Runner(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def make_runner(
    bundle: Bundle,
    threads: int = 0,
    profile_prefix: str | None = None,
    compute_units: str | None = None,
) -> Runner:
    """Open the bundle's artifact with the back end its manifest names (`compute_units`: a
    Core ML bundle's, on macOS)."""
    m = bundle.manifest
    if compute_units is not None and m.backend != "coreml":
        raise OptionError("--compute-units applies to Core ML bundles only")
    if m.backend == "onnxruntime":
        from edgec.runtime.ort_backend import OrtRunner

        return OrtRunner(
            bundle.path / m.artifacts["model"], m.backend_options, threads, profile_prefix
        )
    if m.backend == "tvm":
        from edgec.runtime.tvm_backend import TvmRunner, bundle_triple, host_triple

        triple = bundle_triple(bundle, "this runtime")
        if triple != host_triple():
            raise BundleError(
                f"bundle '{bundle.path}' is built for {triple}, which this {host_triple()} "
                "host cannot run: use --device HOST:PORT (`edgec device --help`)"
            )

        return TvmRunner(bundle.path / m.artifacts["model"], [s.name for s in m.inputs], threads)
    if m.backend == "tensorrt":
        from edgec.runtime.trt_backend import TrtRunner

        return TrtRunner(bundle.path, m.artifacts["model"], m.backend_options)
    if m.backend == "coreml":
        from edgec.runtime.coreml_backend import CoremlRunner

        dtypes = [s.dtype or "float32" for s in m.outputs]
        return CoremlRunner(bundle.path, m.artifacts["model"], dtypes, compute_units)
    raise BundleError(
        f"bundle '{bundle.path}' needs back end '{m.backend}', which this runtime does not have"
    )


@dataclass
class VerifyReport:
    """Per-output relative error of the bundle on its reference input, against the tolerance."""

    errors: dict[str, float]
    tolerance: float

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def ok(self) -> bool:
        return self.max_error <= self.tolerance

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "max_rel_error": self.max_error,
            "tolerance": self.tolerance,
            "errors": self.errors,
        }


class Session:
    """A bundle opened for inference."""

    def __init__(self, bundle: Bundle, threads: int = 0, compute_units: str | None = None) -> None:
        self.bundle = bundle
        self.threads = threads
        self.compute_units = compute_units
        self._runner = make_runner(bundle, threads, compute_units=compute_units)

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.bundle.manifest.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.bundle.manifest.outputs

    def feeds(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """Name, check and return the inputs; InputError names the input at fault."""
        specs = self.inputs
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - {s.name for s in specs})
            if unknown:
                raise InputError(
                    f"unknown input '{unknown[0]}'; the model's inputs are "
                    + ", ".join(s.name for s in specs)
                )
            given = dict(inputs)
        else:
            if len(inputs) != len(specs):
                raise InputError(
                    f"the model takes {len(specs)} input(s) "
                    f"({', '.join(s.name for s in specs)}); {len(inputs)} given"
                )
            given = {s.name: v for s, v in zip(specs, inputs, strict=True)}
        feeds: dict[str, np.ndarray] = {}
        for spec in specs:
            if spec.name not in given:
                raise InputError(f"input '{spec.name}' is missing; expected {spec.describe()}")
            feeds[spec.name] = spec.coerce(given[spec.name])
        return feeds

    def run(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """Run the model; returns outputs by name, in the manifest's order."""
        results = self._runner.run(self.feeds(inputs))
        return {s.name: r for s, r in zip(self.outputs, results, strict=True)}

    def reference(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The stored reference input and the unmodified model's output on it."""
        return load_reference(self.bundle)

    def verify(self, tolerance: float | None = None) -> VerifyReport:
        """Run the reference input and compare with the stored reference output."""
        ref_in, ref_out = self.reference()
        got = self.run(ref_in)
        tol = tolerance if tolerance is not None else self.bundle.manifest.reference["tolerance"]
        return VerifyReport({k: rel_error(got[k], v) for k, v in ref_out.items()}, float(tol))


def load(
    path: str | os.PathLike[str],
    threads: int = 0,
    check: bool = True,
    compute_units: str | None = None,
) -> Session:
    """Open a bundle folder: checks format version and every file's sha256 first
    (`compute_units`: where Core ML runs a Core ML bundle, on macOS)."""
    return consistent_read(
        Path(path),
        lambda folder: Session(Bundle.read(folder, check=check), threads, compute_units),
    )
