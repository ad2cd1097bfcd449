"""The Python API, mirroring the CLI.

bundle = edgec.compile("vanillanet_5", target="cpu", output="out/vn5", verify=True)
session = edgec.load("out/vn5")
session.run({"x": x}); session.verify()
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgec.errors import VerificationError
from edgec.runtime.bundle import (
    Bundle,
    Manifest,
    finalize_manifest,
    save_reference,
    staged_bundle,
)
from edgec.runtime.compare import rel_error
from edgec.runtime.session import Session
from edgec.runtime.session import load as _load

__all__ = ["BundleCheckError", "compile", "default_output", "load"]

log = logging.getLogger("edgec")

DEFAULT_TOLERANCE = 1e-4


class BundleCheckError(VerificationError):
    """The finished bundle disagrees with the reference: a compiler fault, exit code 1."""

    exit_code = 1


def default_output(source: Any, target: str) -> Path:
    """out/NAME-TARGET: out/vanillanet_5-cpu, out/net-cpu for net.onnx, out/net-build-cpu
    for net.py:build, out/pkg.mod-build-cpu for pkg.mod:build."""
    if not isinstance(source, (str, os.PathLike)):
        return Path("out") / f"{type(source).__name__.lower()}-{target}"
    text = os.fspath(source)
    where, sep, factory = text.rpartition(":")
    if sep:
        return Path("out") / f"{Path(where).name.removesuffix('.py')}-{factory}-{target}"
    return Path("out") / f"{Path(text).stem}-{target}"


def compile(
    source: Any,
    target: str = "cpu",
    output: str | os.PathLike[str] | None = None,
    *,
    input_shapes: dict[str, Any] | list[str] | None = None,
    dynamic_axes: list[str] | None = None,
    example_inputs: tuple[Any, ...] | None = None,
    verify: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    threads: int = 0,
    model_options: dict[str, Any] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Bundle:
    """Compile `source` for `target` into a bundle folder; returns the bundle.

    verify: run onnxruntime before and after every pass, stopping at the first pass whose
      relative error exceeds `tolerance`. The finished bundle is always checked against the
      independent reference (torch eager, or onnxruntime on the unmodified model).
    """
    from edgec import frontend
    from edgec.graph_stats import graph_stats
    from edgec.irutil import input_specs, output_specs
    from edgec.passes import PassManager, get_pipeline
    from edgec.passes.cleanup import InferShapes
    from edgec.targets import CompileOptions, get_target

    def step(message: str) -> None:
        log.info(message)
        if on_step is not None:
            on_step(message)

    tgt = get_target(target)
    out = Path(output) if output is not None else default_output(source, target)
    timings: dict[str, float] = {}

    step("lowering the source to the IR")
    t0 = time.perf_counter()
    prepared = frontend.prepare(
        source,
        example_inputs=example_inputs,
        input_shapes=input_shapes,
        dynamic_axes=dynamic_axes,
        seed=seed,
        model_options=model_options,
    )
    timings["frontend_s"] = time.perf_counter() - t0
    # shapes only (exporters leave some out), so that the 'before' MACs are complete
    InferShapes()(prepared.model)
    stats_before = graph_stats(prepared.model)

    step(f"running the '{tgt.pipeline}' pipeline" + (" (verified)" if verify else ""))
    t0 = time.perf_counter()
    manager = PassManager(get_pipeline(tgt.pipeline), verify, tolerance, prepared.inputs)
    reports = manager.run(prepared.model)
    timings["passes_s"] = time.perf_counter() - t0
    stats_after = graph_stats(prepared.model)
    for r in reports:
        log.debug(
            "pass %s (round %d): %d rewrites, %d -> %d nodes",
            r.name,
            r.round,
            r.rewrites,
            r.nodes_before,
            r.nodes_after,
        )

    with staged_bundle(out) as stage:
        step(f"emitting {tgt.backend} artifacts")
        t0 = time.perf_counter()
        artifacts = tgt.compile(prepared.model, CompileOptions(threads=threads), stage)
        timings["target_s"] = time.perf_counter() - t0
        save_reference(stage, prepared.inputs, prepared.outputs)
        manifest = Manifest(
            target=tgt.name,
            backend=tgt.backend,
            artifacts=artifacts.files,
            inputs=input_specs(prepared.model),
            outputs=output_specs(prepared.model),
            backend_options=artifacts.backend_options,
            source=prepared.source,
            passes=[r.to_json() for r in reports],
        )
        step("checking the bundle against the reference")
        error, note = _check_bundle(
            Bundle(stage, manifest), prepared.outputs, tolerance, threads, artifacts.fallbacks
        )
        manifest.reference = {
            "file": "reference.npz",
            "against": prepared.source.get("reference", ""),
            "tolerance": tolerance,
            "max_rel_error": error,
        }
        if note:
            manifest.reference["note"] = note
        manifest.stats = {"before": vars(stats_before), "after": vars(stats_after)}
        manifest.compile = timings
        finalize_manifest(stage, manifest)
    log.info("wrote %s (max relative error %.2e)", out, error)
    return Bundle.open(out)


def _bundle_errors(
    bundle: Bundle, expected: dict[str, np.ndarray], threads: int
) -> dict[str, float]:
    session = Session(bundle, threads)  # a Session checks no checksums: none exist yet
    ref_in, _ = session.reference()
    got = session.run(ref_in)
    return {k: rel_error(got[k], v) for k, v in expected.items()}


def _check_bundle(
    bundle: Bundle,
    expected: dict[str, np.ndarray],
    tolerance: float,
    threads: int,
    fallbacks: list[dict[str, Any]],
) -> tuple[float, str]:
    """Run the staged bundle as the runtime will and compare with the reference.

    If it fails with the target's preferred back-end options, the target's fallbacks are tried
    in order; the first that passes is kept in the manifest, with a note saying why.
    Returns (max relative error, note).
    """
    m = bundle.manifest
    preferred = dict(m.backend_options)
    first = _bundle_errors(bundle, expected, threads)
    first_max = max(first.values(), default=0.0)
    if first_max <= tolerance:
        return first_max, ""
    for options in fallbacks:
        m.backend_options = dict(options)
        error = max(_bundle_errors(bundle, expected, threads).values(), default=0.0)
        if error <= tolerance:
            note = (
                f"with {preferred} the bundle differed from the reference by {first_max:.2e}; "
                f"{options} keeps it within tolerance"
            )
            log.warning(note)
            return error, note
    m.backend_options = preferred
    worst = max(first, key=lambda k: first[k])
    raise BundleCheckError(
        f"the compiled bundle's output '{worst}' differs from the reference: max relative "
        f"error {first[worst]:.2e} > tolerance {tolerance:.0e}"
    )


def load(path: str | os.PathLike[str], threads: int = 0) -> Session:
    """Open a bundle (checks its format version and checksums)."""
    return _load(path, threads=threads)
