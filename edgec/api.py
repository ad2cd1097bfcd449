"""The Python API, mirroring the CLI.

bundle = edgec.compile("vanillanet_5", target="cpu", output="out/vn5", verify=True)
session = edgec.load("out/vn5")
session.run({"x": x}); session.verify()
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx_ir as ir

from edgec import teacher_forcing
from edgec.core.binary_ops import has_binary_ops
from edgec.core.errors import OptionError, UnsupportedOpError
from edgec.core.irutil import copy_model
from edgec.core.op_map import OP_MAP_FILE, op_map
from edgec.runtime.bundle import Bundle, Manifest, finalize_manifest, save_reference
from edgec.runtime.bundle_check import BundleCheckError, accepted_tolerance, allowed, check_bundle
from edgec.runtime.compare import default_tolerance
from edgec.runtime.measure_and_pick import pick_fastest
from edgec.runtime.session import Session
from edgec.runtime.session import load as _load
from edgec.runtime.staging import check_destination, staged_bundle

__all__ = ["BundleCheckError", "compile", "default_output", "explain", "load"]

log = logging.getLogger("edgec")


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


AUTO_BACKENDS = ("cpu", "x86_64")  # the targets `--backend auto` measures against each other
SOURCE_GRAPH = "onnxruntime-source"  # cpu, auto: onnxruntime on the source graph, no passes
# ... kept only when the compiled candidates are slower by both this ratio and this much
SOURCE_MARGIN, SOURCE_FLOOR_MS = 1.05, 0.05
# a float16 engine's error through a whole network (float16 outputs alone get 5e-3)
FP16_ENGINE_TOLERANCE = 2e-2


def compile(
    source: Any,
    target: str = "cpu",
    output: str | os.PathLike[str] | None = None,
    *,
    input_shapes: dict[str, Any] | list[str] | None = None,
    dynamic_axes: list[str] | None = None,
    inputs: Mapping[str, Any] | None = None,
    example_inputs: tuple[Any, ...] | None = None,
    verify: bool = False,
    tolerance: float | None = None,
    seed: int = 0,
    threads: int = 0,
    model_options: dict[str, Any] | None = None,
    backend: str = "auto",
    mcpu: str | None = None,
    tune: int = 0,
    tune_time: float | None = None,
    device: str | None = None,
    binarize: str | None = None,
    attention_forms: Mapping[str, str] | None = None,
    optimization_style: str | None = None,
    precision: str | None = None,
    explain: bool | str = False,
    passes: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> Bundle:
    """Compile `source` for `target` into a bundle folder; returns the bundle.

    inputs: sample input values by name (numpy arrays; `example_inputs`: by position), used
      for the reference pair, `verify`, back-end timing and binarization calibration; the
      inputs not given are generated (see `edgec.frontend.samples`).
    verify: run onnxruntime before and after every pass, stopping at the first pass whose
      relative error exceeds `tolerance`. The finished bundle is always checked against the
      independent reference (torch eager, or onnxruntime on the unmodified model); a bundle
      for another architecture is checked on `device` (HOST:PORT) when one is given.
    tolerance: the max relative error allowed; by default it follows the outputs' precision
      (1e-4 for float32, see `edgec.runtime.compare`). A bundle is also accepted within
      twice the noise floor: the error onnxruntime's own graph optimizations make on the
      unmodified model (recorded in the manifest beside the bundle's error).
    backend: for `cpu` and `x86_64`, "auto" builds onnxruntime and TVM, checks both and keeps
      the faster one on this host; "onnxruntime" or "tvm" builds just that one. For `cpu`,
      auto builds TVM only where it can win (binary ops, `tune`, or tuning records for every
      kernel) and the manifest's `selection` says why it did not; it also measures
      onnxruntime on the source graph without edgec's passes (optimized as torch's default
      export is) and keeps it when it is clearly faster: never slower than that export.
    mcpu, tune, tune_time: the TVM targets' CPU, and MetaSchedule's trial and time budgets.
    binarize: a regular expression of layer names (module paths); the matching Linear and 1x1
      Conv layers are binarized after the pipeline (`edgec.passes.binarize_layers`), each
      layer's output error on the sample inputs is reported, and the binarized model becomes
      the reference the bundle is checked against.
    attention_forms: kind of attention block ("softmax", "linear", "hashed") -> the form to
      lower it to instead of the one measured or counted cheapest
      (`edgec.passes.lower_attention`), where the back end has that form for the block;
      `backend_options.attention` records each block's form.
    optimization_style: target `mobile`: "fixed" (the default: onnxruntime's optimizations
      baked into the ORT model, for the CPU and XNNPACK providers) or "runtime" (basic ones
      only, the rest replayed at load: for NNAPI and Core ML).
    precision: target `tensorrt`: "fp32" (the default), "fp16" (float32 guards around
      normalizations, softmax and reductions; the default tolerance becomes 2e-2) or
      "int8-binary" (binary layers as INT8 quantize/dequantize GEMMs, exact). Target
      `coreml`: "fp32" (the default) or "fp16" (the same guards, tolerance 2e-2; in a model
      with binary layers only the products of binary codes are float16, exactly).
    explain: True, or the name of one pass: each pass report in the manifest (`passes`) also
      lists every rewrite that fired and every candidate left alone, with its nodes and why.
    passes: False compiles the frontend's IR as it is (the `none` pipeline): no edgec
      rewrites, the baseline `edgec compare` measures the passes against.
    """
    from edgec import frontend
    from edgec.core.graph_stats import graph_stats
    from edgec.core.irutil import output_specs
    from edgec.passes import PassManager, get_pipeline
    from edgec.passes.binarize_layers import binarize_step
    from edgec.passes.cleanup import InferShapes
    from edgec.passes.lower_attention import form_problem
    from edgec.passes.pipelines import check_explain
    from edgec.targets import CompileOptions

    def step(message: str) -> None:
        log.info(message)
        if on_step is not None:
            on_step(message)

    candidates = _candidates(target, backend)
    if (tune or tune_time or mcpu) and not any(t.backend == "tvm" for t in candidates):
        raise OptionError(
            "--tune, --tune-time and --mcpu apply to the TVM back end; "
            f"target '{target}' with back end '{backend}' builds none"
        )
    check_explain(candidates[0].pipeline, explain)
    if optimization_style is not None and target != "mobile":
        raise OptionError("--optimization-style applies to --target mobile only")
    if precision is not None and target not in ("tensorrt", "coreml"):
        raise OptionError("--precision applies to --target tensorrt and coreml only")
    attention_forms = dict(attention_forms or {})
    problem = form_problem(attention_forms)
    if problem is not None:
        raise OptionError(problem)
    out = Path(output) if output is not None else default_output(source, target)
    check_destination(out)  # before the long work, not after it
    timings: dict[str, float] = {}

    step("lowering the source to the IR")
    t0 = time.perf_counter()
    prepared = frontend.prepare(
        source,
        inputs=inputs,
        example_inputs=example_inputs,
        input_shapes=input_shapes,
        dynamic_axes=dynamic_axes,
        seed=seed,
        model_options=model_options,
    )
    timings["frontend_s"] = time.perf_counter() - t0
    if tolerance is None:
        tolerance = default_tolerance([s.dtype for s in output_specs(prepared.model)])
        if precision == "fp16":  # the engine computes in float16, through the whole network
            tolerance = max(tolerance, FP16_ENGINE_TOLERANCE)
    # shapes only (exporters leave some out), so that the 'before' MACs are complete
    InferShapes()(prepared.model)
    stats_before = graph_stats(prepared.model)

    # the source graph as torch's default export would optimize it: a candidate of its own, so
    # that the cpu target is never slower than onnxruntime on the export users have
    source_graph = None
    if backend == "auto" and target == "cpu" and not binarize:
        source_graph = _default_export_form(prepared.model)

    pipeline = candidates[0].pipeline if passes else "none"
    step(f"running the '{pipeline}' pipeline" + (" (verified)" if verify else ""))
    t0 = time.perf_counter()
    manager = PassManager(get_pipeline(pipeline), verify, tolerance, prepared.inputs, explain)
    reports = manager.run(prepared.model)
    timings["passes_s"] = time.perf_counter() - t0
    binarization = None
    if binarize:
        step(f"binarizing the layers matching '{binarize}'")
        report, binarized_outputs, binarization = binarize_step(
            prepared.model, prepared.inputs, prepared.outputs, binarize
        )
        reports.append(report)
        prepared.outputs = binarized_outputs  # the binarized model is the reference now
        prepared.intermediates = None  # torch's values are the float model's, not the reference
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

    options = CompileOptions(
        threads=threads,
        mcpu=mcpu,
        tune=tune,
        tune_time=tune_time,
        device=device,
        on_progress=on_step,
        attention_forms=attention_forms,
        optimization_style=optimization_style or "fixed",
        precision=precision or "fp32",
    )
    skipped: dict[str, str] = {}  # back end -> why measure-and-pick did not build it
    if backend == "auto" and target == "cpu":  # an x86_64 compile asked for TVM: always built
        for tgt in list(candidates):
            why = tgt.reason_to_skip(prepared.model, options)
            if why is not None:
                candidates.remove(tgt)
                skipped[tgt.backend] = why
                log.info("back end %s not built: %s", tgt.backend, why)
    with staged_bundle(out) as stage:
        built: list[_Built] = []
        failures: dict[str, str] = {}
        builds = [(t.backend, t, prepared.model) for t in candidates]
        if source_graph is not None:
            builds.append((SOURCE_GRAPH, candidates[0], source_graph))
        for label, tgt, model in builds:
            folder = stage if len(builds) == 1 else stage / f".candidate-{label}"
            folder.mkdir(exist_ok=True)
            step(f"emitting {label} artifacts")
            try:
                one = _build(
                    tgt, prepared, options, folder, tolerance, threads, device, timings, model
                )
                built.append(replace(one, label=label))
            except (
                BundleCheckError,
                UnsupportedOpError,
                teacher_forcing.TeacherForcingError,
            ) as e:
                if len(builds) == 1:
                    raise
                failures[label] = str(e)
                log.warning("back end %s left out: %s", label, e)
            except Exception as e:  # a fault of TVM or onnxruntime; measure-and-pick has others
                if len(builds) == 1 or not _upstream_fault(e):
                    raise
                why = f"internal error in the {label} back end: {type(e).__name__}: {e}"
                failures[label] = why.splitlines()[0]
                log.warning("back end %s left out (%s); -v shows the traceback", label, why)
                log.info("traceback of the %s back end", label, exc_info=True)
        if not built:
            raise BundleCheckError(
                "no back end produced a bundle within tolerance: "
                + "; ".join(f"{k}: {v}" for k, v in failures.items())
            )
        chosen = built[0]
        selection: dict[str, Any] = {}
        if len(builds) > 1:
            step("timing the back ends on this host")
            best, selection = pick_fastest(
                [Bundle(b.folder, b.manifest) for b in built],
                [b.error for b in built],
                prepared.inputs,
                threads,
                failures,
                labels=[b.label for b in built],
            )
            chosen = built[best]
            if chosen.label == SOURCE_GRAPH:  # kept only when clearly faster (noise aside)
                timed = selection["candidates"]
                others = [b for b in built if b.label != SOURCE_GRAPH]
                if others:
                    runner_up = min(others, key=lambda b: timed[b.label]["p50_ms"])
                    theirs, ours = timed[SOURCE_GRAPH]["p50_ms"], timed[runner_up.label]["p50_ms"]
                    if ours <= SOURCE_MARGIN * theirs or ours - theirs < SOURCE_FLOOR_MS:
                        chosen = runner_up
                        selection["chosen"] = chosen.label
            for name in chosen.manifest.artifacts.values():
                os.replace(chosen.folder / name, stage / name)
            for b in built:
                shutil.rmtree(b.folder, ignore_errors=True)
        elif skipped:
            selection = {
                "rule": "the only back end that can win on this host",
                "chosen": chosen.label,
                "threads": threads,
                "candidates": {chosen.label: {"max_rel_error": chosen.error}},
            }
        if selection:
            selection["candidates"].update({k: {"skipped": v} for k, v in skipped.items()})
        if chosen.label == SOURCE_GRAPH and source_graph is not None:
            selection["note"] = (
                "edgec's passes made this model slower here: the bundle holds the source graph "
                "as torch's default export optimizes it"
            )
            stats_after = graph_stats(source_graph)
        manifest = chosen.manifest
        save_reference(stage, prepared.inputs, chosen.own_outputs or prepared.outputs)
        _describe(
            manifest,
            target=target,
            chosen=chosen,
            prepared=prepared,
            tolerance=tolerance,
            binarization=binarization,
            reports=reports,
            stats=(stats_before, stats_after),
            timings=timings,
            selection=selection,
        )
        finalize_manifest(stage, manifest)
    if chosen.error is None:
        log.info("wrote %s (not run here: %s)", out, chosen.note)
    else:
        log.info("wrote %s (max relative error %.2e)", out, chosen.error)
    return Bundle.open(out)


_UPSTREAM = ("tvm", "tvm_ffi", "onnxruntime")


def explain(
    source: Any,
    target: str = "cpu",
    *,
    input_shapes: dict[str, Any] | list[str] | None = None,
    dynamic_axes: list[str] | None = None,
    passes: bool | str = True,
) -> list[Any]:
    """Run `target`'s pipeline on `source` as `compile` would, write nothing, and return the
    pass reports with what each pass fired and left alone, and why (`passes`: True for all,
    or one pass's name)."""
    from edgec import frontend
    from edgec.passes import PassManager, get_pipeline
    from edgec.passes.cleanup import InferShapes
    from edgec.passes.pipelines import check_explain
    from edgec.targets import get_target

    pipeline = get_target(target).pipeline
    check_explain(pipeline, passes)
    model = frontend.load(source, input_shapes=input_shapes, dynamic_axes=dynamic_axes)
    InferShapes()(model)
    return PassManager(get_pipeline(pipeline), explain=passes).run(model)


def _upstream_fault(e: BaseException) -> bool:
    """Was `e` raised inside TVM or onnxruntime, called from edgec (not in edgec's code)?"""
    frames = []
    tb = e.__traceback__
    while tb is not None:
        frames.append(
            (str(tb.tb_frame.f_globals.get("__name__", "")), tb.tb_frame.f_code.co_filename)
        )
        tb = tb.tb_next
    ours = [i for i, (module, _) in enumerate(frames) if module.startswith("edgec.")]
    if not ours or ours[-1] + 1 >= len(frames):
        return False
    module, filename = frames[ours[-1] + 1]
    return module.split(".")[0] in _UPSTREAM or any(f"/{u}/" in filename for u in _UPSTREAM)


def _describe(
    manifest: Manifest,
    *,
    target: str,
    chosen: _Built,
    prepared: Any,
    tolerance: float,
    binarization: dict[str, Any] | None,
    reports: list[Any],
    stats: tuple[Any, Any],
    timings: dict[str, float],
    selection: dict[str, Any],
) -> None:
    """Fill in what the manifest says of the bundle beyond its artifacts: the reference it was
    checked against and how, the source, the pass reports, graph statistics, timings and the
    back-end selection."""
    from edgec.core.graph_stats import binary_summary

    before, after = stats
    manifest.target = target
    manifest.reference = {
        "file": "reference.npz",
        "against": prepared.source.get("reference", ""),
        "tolerance": accepted_tolerance(tolerance, prepared.noise),
        "requested_tolerance": tolerance,
        "noise_floor": max(prepared.noise.values(), default=None),
        "max_rel_error": chosen.error,
    }
    if chosen.note:
        manifest.reference["note"] = chosen.note
    if chosen.own_outputs is not None:
        manifest.reference["against"] = (
            "this bundle's own output, accepted by a teacher-forced check against "
            f"{manifest.reference['against']}"
        )
    if binarization is not None:
        manifest.reference["against"] = (
            "the binarized model in onnxruntime (ai.edgec function bodies); "
            f"the float model's reference: {manifest.reference['against']}"
        )
        manifest.reference["binarization"] = binarization
    manifest.source = prepared.source
    manifest.passes = [r.to_json() for r in reports]
    manifest.stats = {"before": vars(before), "after": vars(after)}
    summary = binary_summary(prepared.model, after.macs)
    if summary.layers or summary.bit_macs:
        # the float model: every parameter of the source in float32
        manifest.stats["binary"] = {**vars(summary), "float_bytes": 4 * before.parameters}
    manifest.compile = timings
    manifest.selection = selection


def _candidates(target: str, backend: str) -> list[Any]:
    """The targets a compile builds: one, or the measure-and-pick set for `--backend auto`."""
    from edgec.core.errors import TargetError
    from edgec.runtime.tvm_backend import host_triple
    from edgec.targets import get_target

    tgt = get_target(target)
    if target in AUTO_BACKENDS:
        peers = [get_target(t) for t in AUTO_BACKENDS]
        if host_triple() != "x86_64-linux-gnu":  # the x86_64 TVM library cannot run here
            peers = [t for t in peers if t.name != "x86_64"]
        if backend == "auto":
            return peers
        match = [t for t in peers if t.backend == backend]
        if match:
            return match
        raise TargetError(
            f"target '{target}' has no back end '{backend}'; choose from auto, "
            + ", ".join(t.backend for t in peers)
        )
    if backend not in ("auto", tgt.backend):
        raise TargetError(f"target '{target}' has only the back end '{tgt.backend}'")
    return [tgt]


@dataclass
class _Built:
    """One back end's artifacts in `folder`, checked against the reference."""

    folder: Path
    manifest: Manifest
    error: float | None
    note: str
    # the bundle's own outputs, when a teacher-forced check accepted them in place of the
    # reference's (binarization ties); None: the reference's outputs stand
    own_outputs: dict[str, Any] | None = None
    label: str = ""  # the candidate's name in measure-and-pick


def _default_export_form(model: ir.Model) -> ir.Model:
    """A copy of the frontend's graph, optimized as `torch.onnx.export(dynamo=True)` does by
    default (onnxscript's optimizer, then its ONNX fusions)."""
    import onnxscript.optimizer
    import onnxscript.rewriter.onnx_fusions

    copy = copy_model(model)
    onnxscript.optimizer.optimize_ir(copy)
    onnxscript.rewriter.onnx_fusions.fuse(copy)
    return copy


def _build(
    tgt: Any,
    prepared: Any,
    options: Any,
    folder: Path,
    tolerance: float,
    threads: int,
    device: str | None,
    timings: dict[str, float],
    model: ir.Model | None = None,
) -> _Built:
    """Compile `model` (by default the pipeline's IR) for `tgt` into `folder` and check it."""
    from edgec.core.irutil import input_specs, output_specs
    from edgec.runtime.tvm_backend import host_triple

    t0 = time.perf_counter()
    model = prepared.model if model is None else model
    artifacts = tgt.compile(model, options, folder)
    timings[f"target_{tgt.name}_s"] = time.perf_counter() - t0
    source = artifacts.source_model if artifacts.source_model is not None else model
    (folder / OP_MAP_FILE).write_text(json.dumps(op_map(source, artifacts.kernels)))
    artifacts.files.setdefault("ops", OP_MAP_FILE)
    manifest = Manifest(
        target=tgt.name,
        backend=tgt.backend,
        artifacts=artifacts.files,
        inputs=input_specs(model),
        outputs=output_specs(model),
        backend_options=artifacts.backend_options,
    )
    triple = artifacts.backend_options.get("triple")
    bundle = Bundle(folder, manifest)
    if device is not None:
        from edgec.runtime.remote import connect

        log.info("checking the %s bundle on the device %s", tgt.name, device)
        with connect(device) as remote:
            report = remote.verify(bundle, prepared.inputs, prepared.outputs, tolerance)
        if not report.ok:
            worst = max(report.errors, key=lambda k: report.errors[k])
            raise BundleCheckError(
                f"the compiled bundle's output '{worst}' differs from the reference on device "
                f"{device}: max relative error {report.max_error:.2e} > tolerance {tolerance:.0e}"
            )
        return _Built(folder, manifest, report.max_error, f"checked on device {device}")
    if triple is not None and triple != host_triple():
        note = (
            f"this {host_triple()} host cannot run a library built for {triple}: "
            "check it with `edgec verify BUNDLE --device HOST:PORT`"
        )
        log.info("not checked against the reference here: %s", note)
        return _Built(folder, manifest, None, note)
    preferred = dict(manifest.backend_options)
    checked = bundle
    if artifacts.check_backend is not None:  # the host cannot run the target's own back end
        checked = Bundle(
            folder,
            replace(
                manifest,
                backend=artifacts.check_backend,
                backend_options=artifacts.check_options,
            ),
        )
    try:
        error, note = check_bundle(
            checked,
            prepared.inputs,
            prepared.outputs,
            prepared.noise,
            tolerance,
            threads,
            artifacts.fallbacks,
        )
    except BundleCheckError as e:
        if artifacts.check_hint:
            raise BundleCheckError(f"{e}; {artifacts.check_hint}") from None
        own_back_end = artifacts.check_backend is None  # teacher forcing runs the target's
        if prepared.intermediates is None or not has_binary_ops(model) or not own_back_end:
            raise
        log.info("%s; checking the binarized layers with teacher forcing", e)
        untuned = replace(options, tune=0, tune_time=None)
        report, kept = teacher_forcing.check(
            model,
            teacher_forcing.build_like(
                lambda ir_, where: tgt.compile(ir_, untuned, where), tgt.name, tgt.backend
            ),
            prepared.inputs,
            prepared.outputs,
            prepared.intermediates,
            allowed(tolerance, prepared.noise, prepared.outputs),
            threads,
            [preferred, *artifacts.fallbacks],
        )
        manifest.backend_options = kept
        note = report.note()
        if manifest.backend_options != preferred:
            note += f"; with {manifest.backend_options} instead of {preferred}"
        own = Session(bundle, threads).run(prepared.inputs)
        log.warning("%s", note)
        return _Built(folder, manifest, report.max_error, note, own)
    if artifacts.check_backend is not None:
        checked_as = (
            f"checked as ONNX in {artifacts.check_backend}; the {tgt.backend} engine is not "
            "built here"
        )
        note = f"{note}; {checked_as}" if note else checked_as
    return _Built(folder, manifest, error, note)


def load(path: str | os.PathLike[str], threads: int = 0) -> Session:
    """Open a bundle (checks its format version and checksums)."""
    return _load(path, threads=threads)
