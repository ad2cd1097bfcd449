"""The `edgec` command line.

Exit codes: 0 success; 2 a user error (one line naming the thing at fault, no traceback);
1 an internal fault (a bug in edgec: `-v` shows the traceback); 130 interrupted.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.errors import NotRenderableError

from edgec import render
from edgec.core.errors import BundleError, EdgecError, InputError, OptionError
from edgec.version import __version__


def _threads_option(default: int, text: str) -> Callable[[Any], Any]:
    """--threads, a count that cannot be negative."""
    return click.option(
        "--threads", type=click.IntRange(min=0), default=default, show_default=True, help=text
    )


# libraries whose log warnings only -v shows (edgec's own one-line error says what matters)
QUIET_LIBRARIES = ("coremltools", "torch", "onnx_ir", "onnxscript", "onnx", "tvm")


def _compute_units_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--compute-units",
        type=click.Choice(["cpu", "gpu", "ane", "all"]),
        help="Core ML bundles, on macOS: where Core ML may run the model (default: all).",
    )


def _explain_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--explain",
        is_flag=False,
        flag_value="*",
        default=None,
        metavar="[PASS]",
        help="Show what each pass (or PASS alone) rewrote and every candidate it left alone, "
        "with its nodes and why.",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgec")
@click.option("-v", "--verbose", count=True, help="Log what edgec does (-vv: debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """edgec: compile efficient neural networks for edge devices, then verify and measure them.

    \b
      edgec compile vanillanet_5 --target cpu -o out/vn5
      edgec compile net.onnx -o out/net
      edgec compile net.py:build --input-shape x=1x3x224x224 -o out/net
      edgec verify out/net
      edgec profile out/net --threads 1 --per-op --html report.html
      edgec compare out/net-unfolded out/net
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    # -v: edgec's own steps; -vv: everything, the libraries underneath included
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if verbose == 1:
        logging.getLogger("edgec").setLevel(logging.INFO)
    if verbose == 0:  # the libraries' warnings are about their internals, not the user's model
        for name in QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.ERROR)


@cli.command()
@click.argument("source")
@click.option("-t", "--target", default="cpu", show_default=True, help="See `edgec targets`.")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Bundle folder [out/SOURCE-TARGET]."
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=DxD..[:DTYPE]",
    help="Static input shape, e.g. x=1x3x224x224, ids=1x128:int64, or n=scalar:int64 "
    "(rank 0). Repeatable.",
)
@click.option(
    "--input",
    "input_files",
    multiple=True,
    metavar="NAME=FILE.npy",
    help="A sample input's values, for the reference, --verify and timing (generated "
    "otherwise). Repeatable.",
)
@click.option(
    "--inputs",
    "inputs_npz",
    type=click.Path(path_type=Path),
    metavar="FILE.npz",
    help="Sample inputs by name, all in one .npz file.",
)
@click.option(
    "--dynamic-axis",
    "dynamic_axes",
    multiple=True,
    metavar="NAME:AXIS[=SYM]",
    help="Keep an input axis dynamic, e.g. x:0=batch. Repeatable.",
)
@click.option("--verify", is_flag=True, help="Run onnxruntime before and after every pass.")
@click.option(
    "--tolerance",
    type=float,
    help="Max relative error (max|a-e| / max|e|) allowed per pass and for the bundle "
    "[1e-4 for float32 outputs, 5e-3 float16, 3e-2 bfloat16].",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed for built-in weights and the reference input.",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    help="For a built-in model: a state dict (.safetensors, or a torch file read with "
    "weights_only=True) instead of seeded random weights.",
)
@click.option(
    "--report",
    is_flag=True,
    help="Print every pass: rewrites, nodes, parameters, MACs, error (implies --verify).",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "onnxruntime", "tvm"]),
    default="auto",
    show_default=True,
    help="For cpu and x86_64: auto builds onnxruntime and TVM, checks both and keeps the "
    "faster on this host (cpu: TVM only where it can win: binary ops, --tune, tuning records).",
)
@click.option("--mcpu", help="TVM targets: the CPU (x86_64: the host's; arm64: cortex-a55 ...).")
@click.option(
    "--tune",
    type=int,
    default=0,
    metavar="TRIALS",
    help="TVM: MetaSchedule trials in all, split over the kernels the tuning database lacks.",
)
@click.option(
    "--tune-time", type=float, metavar="SECONDS", help="TVM: stop tuning after this long."
)
@_threads_option(0, "Threads the bundle is built, tuned and measured for (0: all cores).")
@click.option(
    "--device",
    metavar="HOST:PORT",
    help="Check the bundle on this device (`edgec device serve` or `emulate`) instead of here.",
)
@click.option(
    "--binarize",
    metavar="REGEX",
    help="Binarize the Linear and 1x1 Conv layers whose names match (post-training: sign "
    "with per-channel mean-|W| scales, calibrated input offsets); reports each layer's error.",
)
@click.option(
    "--attention-form",
    "attention_forms",
    multiple=True,
    metavar="KIND=FORM",
    help="Lower every softmax|linear|hashed attention block to FORM instead of the measured "
    "or cheapest one, where the back end has it (e.g. hashed=popcount: the codes' products "
    "as popcount kernels on TVM). Repeatable.",
)
@click.option(
    "--optimization-style",
    type=click.Choice(["fixed", "runtime"]),
    help="--target mobile: bake onnxruntime's optimizations into the ORT model (fixed, the "
    "default: CPU and XNNPACK) or save them to replay at load (runtime: NNAPI, Core ML).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8-binary"]),
    help="--target tensorrt: the engine's precision: fp32 (the default), fp16 (float32 guards "
    "around normalizations, softmax, reductions) or int8-binary (binary layers as INT8 Q/DQ). "
    "--target coreml: fp32 (the default) or fp16 (the same guards; in binary models only the "
    "products of binary codes, which are exact).",
)
@_explain_option()
@click.option(
    "--no-passes",
    is_flag=True,
    help="Compile the frontend's IR as it is, without edgec's rewrites: the baseline that "
    "`edgec compare` measures the passes against.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def compile(
    source: str,
    target: str,
    output: Path | None,
    input_shapes: tuple[str, ...],
    input_files: tuple[str, ...],
    inputs_npz: Path | None,
    dynamic_axes: tuple[str, ...],
    verify: bool,
    tolerance: float | None,
    seed: int,
    weights: Path | None,
    report: bool,
    backend: str,
    mcpu: str | None,
    tune: int,
    tune_time: float | None,
    threads: int,
    device: str | None,
    binarize: str | None,
    attention_forms: tuple[str, ...],
    optimization_style: str | None,
    precision: str | None,
    explain: str | None,
    no_passes: bool,
    as_json: bool,
) -> None:
    """Compile SOURCE for a target into a bundle folder.

    SOURCE is an .onnx file, path/to/file.py:factory, package.module:factory, or a built-in
    model name (`edgec models`). The bundle is checked against an independent reference
    (torch eager, or onnxruntime on the unmodified model) before it is written.
    """
    import edgec

    if tolerance is not None and not 0 < tolerance < float("inf"):
        raise OptionError(f"--tolerance must be a positive number (got {tolerance})")
    given = _read_inputs((*input_files, *([str(inputs_npz)] if inputs_npz else [])))
    forms = {}
    for item in attention_forms:
        kind, sep, form = item.partition("=")
        if not sep or not kind or not form:
            raise OptionError(f"--attention-form {item}: expected KIND=FORM, e.g. hashed=popcount")
        forms[kind.strip()] = form.strip()
    verify = verify or report  # the report's error column needs the per-pass runs
    start = time.perf_counter()
    with render.err.status("compiling", spinner="dots") as status:
        bundle = edgec.compile(
            source,
            target=target,
            output=output,
            input_shapes=list(input_shapes),
            inputs=given if isinstance(given, dict) and given else None,
            example_inputs=tuple(given) if isinstance(given, list) and given else None,
            dynamic_axes=list(dynamic_axes),
            verify=verify,
            tolerance=tolerance,
            seed=seed,
            model_options={"weights": weights} if weights is not None else None,
            backend=backend,
            mcpu=mcpu,
            tune=tune,
            tune_time=tune_time,
            threads=threads,
            device=device,
            binarize=binarize,
            attention_forms=forms,
            optimization_style=optimization_style,
            precision=precision,
            explain=_explain_value(explain),
            passes=not no_passes,
            on_step=lambda s: status.update(s),
        )
    seconds = time.perf_counter() - start
    m = bundle.manifest
    if as_json:
        render.print_json({"bundle": str(bundle.path), "seconds": seconds, "manifest": m.to_json()})
        return
    render.compile_summary(source, bundle, seconds, report, explain is not None)


def _explain_value(explain: str | None) -> bool | str:
    """--explain's value for the API: False (absent), True (all passes) or a pass name."""
    return False if explain is None else True if explain == "*" else explain


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--tolerance", type=float, help="Override the bundle's tolerance.")
@click.option(
    "--device", metavar="HOST:PORT", help="Run it on this device (`edgec device serve`/`emulate`)."
)
@_compute_units_option()
@click.option("--json", "as_json", is_flag=True)
def verify(
    bundle: Path,
    tolerance: float | None,
    device: str | None,
    compute_units: str | None,
    as_json: bool,
) -> None:
    """Check a bundle's checksums and run its reference input against the stored output.

    A Core ML bundle runs in Core ML on macOS (on --compute-units), and elsewhere in edgec's
    MIL evaluator, which checks its numerics op by op."""
    from edgec.core.errors import VerificationError
    from edgec.runtime import Bundle, load

    where = ""
    if device is not None:
        from edgec.runtime.remote import connect

        opened = Bundle.open(bundle)
        with connect(device) as remote:
            report = remote.verify(opened, tolerance=tolerance)
            where = f" on the {remote.info.describe()}"
    else:
        report = load(bundle, compute_units=compute_units).verify(tolerance)
    if as_json:
        render.print_json({"bundle": str(bundle), "device": device or "host", **report.to_json()})
    else:
        for name, e in report.errors.items():
            render.out.print(f"  {name}: max relative error {e:.2e}")
    if not report.ok:
        worst = max(report.errors, key=lambda k: report.errors[k])
        raise VerificationError(
            f"bundle '{bundle}' fails verification: output '{worst}' has max relative error "
            f"{report.max_error:.2e} > tolerance {report.tolerance:.0e}"
        )
    if not as_json:
        render.out.print(
            f"[bold green]verified[/] {bundle}{where}: checksums match, max relative error "
            f"{report.max_error:.2e} <= {report.tolerance:.0e}"
        )


def _read_inputs(specs: tuple[str, ...]) -> dict[str, np.ndarray] | list[np.ndarray]:
    named: dict[str, np.ndarray] = {}
    positional: list[np.ndarray] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        p = Path(path)
        if not p.is_file():
            raise InputError(f"input file '{p}' does not exist")
        try:
            data = np.load(p, allow_pickle=False)
        except Exception as e:
            raise InputError(f"cannot read input file '{p}' as .npy/.npz: {e}") from None
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                named.update({k: data[k] for k in data.files})
        elif name:
            named[name] = data
        else:
            positional.append(data)
    if named and positional:
        raise OptionError("name every --input (NAME=FILE.npy) when mixing names and files")
    return named or positional


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    required=True,
    metavar="[NAME=]FILE",
    help="A .npy per input (NAME=x.npy, or in input order), or one .npz. Repeatable.",
)
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    help="Write each output as OUTPUT_NAME.npy here.",
)
@_threads_option(0, "0: the back end picks.")
def run(bundle: Path, inputs: tuple[str, ...], output_dir: Path | None, threads: int) -> None:
    """Run a bundle on inputs from .npy/.npz files."""
    from edgec.runtime import load

    if output_dir is not None:  # before the run: a bad folder is the user's mistake, exit 2
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OptionError(
                f"cannot write to --output-dir '{output_dir}': {e.strerror}"
            ) from None
    session = load(bundle, threads=threads)
    results = session.run(_read_inputs(inputs))
    files = _output_files(output_dir, list(results)) if output_dir is not None else {}
    for name, value in results.items():
        if name in files:
            try:
                np.save(files[name], value)
            except OSError as e:
                raise OptionError(f"cannot write '{files[name]}': {e.strerror}") from None
        where = f" -> {files[name]}" if name in files else ""
        render.out.print(f"{name}: {value.dtype} {tuple(value.shape)}{where}")


def _output_files(folder: Path, names: list[str]) -> dict[str, Path]:
    """FOLDER/NAME.npy per output, NAME made a plain file name (an output name comes from the
    bundle, which may have been edited: '../x' must not write outside FOLDER)."""
    files = {}
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "output"
        path = folder / f"{stem}.npy"
        while path in files.values():
            path = path.with_name(f"{path.stem}_.npy")
        files[name] = path
    return files


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--runs", type=int, default=100, show_default=True)
@click.option("--warmup", type=int, default=10, show_default=True)
@_threads_option(1, "0: the back end picks.")
@click.option(
    "--per-op",
    is_flag=True,
    help="Add the time per op and per source module (onnxruntime's profiler, or the TVM VM's "
    "per-call timer), with the passes that made each op; on --device, measured there.",
)
@click.option("--top", type=int, default=15, show_default=True, help="Rows of the per-op table.")
@click.option(
    "--no-roofline",
    is_flag=True,
    help="Skip the machine's peaks (sgemm GFLOP/s, GB/s; measured once per host or device and "
    "thread count, then cached) and the fractions of the roofline reached.",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write a self-contained HTML report (charts inline; implies --per-op).",
)
@click.option(
    "--png",
    "png_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the report's four charts as one PNG (implies --per-op).",
)
@click.option(
    "--device",
    metavar="HOST:PORT",
    help="Time it on this device; latency under emulation is labelled emulated.",
)
@_compute_units_option()
@click.option("--json", "as_json", is_flag=True)
def profile(
    bundle: Path,
    runs: int,
    warmup: int,
    threads: int,
    per_op: bool,
    top: int,
    no_roofline: bool,
    html_path: Path | None,
    png_path: Path | None,
    device: str | None,
    compute_units: str | None,
    as_json: bool,
) -> None:
    """Measure a bundle's latency on its reference input: cold start, percentiles, memory,
    and the fraction of the machine's roofline reached; with --per-op, where the time goes
    (per op and per source module), on this host or on --device. --html / --png draw it.

    A Core ML bundle is timed in Core ML, on macOS only (on --compute-units)."""
    from edgec.runtime import Bundle, load
    from edgec.runtime import profile as run_profile

    per_op = per_op or html_path is not None or png_path is not None
    for path in (html_path, png_path):
        if path is not None and path.is_dir():
            raise OptionError(f"'{path}' is a folder; --html and --png take a file name")
    if device is not None:
        from edgec.runtime.remote import connect

        opened = Bundle.open(bundle)
        with connect(device) as remote, render.err.status(f"profiling {runs} runs on {device}"):
            report = remote.profile(
                opened,
                runs=runs,
                warmup=warmup,
                threads=threads,
                per_op=per_op,
                with_roofline=not no_roofline,
            )
    else:
        session = load(bundle, compute_units=compute_units)
        with render.err.status(f"profiling {runs} runs", spinner="dots"):
            report = run_profile(
                session,
                runs=runs,
                warmup=warmup,
                threads=threads,
                per_op=per_op,
                with_roofline=not no_roofline,
            )
    if html_path is not None or png_path is not None:
        from edgec.report_pictures import write_html, write_png

        title = f"edgec profile: {bundle.name} ({report.target}, {report.backend})"
        if html_path is not None:
            write_html(report, html_path, title)
        if png_path is not None:
            write_png(report, png_path, title)
    if as_json:
        render.print_json(report.to_json())
        return
    render.profile_report(bundle, report, runs, warmup, top)
    for path in (html_path, png_path):
        if path is not None:
            render.err.print(f"wrote {path}")


@cli.command()
@click.argument("bundle_a", type=click.Path(path_type=Path))
@click.argument("bundle_b", type=click.Path(path_type=Path))
@click.option("--rounds", type=int, default=20, show_default=True, help="Interleaved rounds.")
@click.option("--runs", type=int, default=5, show_default=True, help="Runs of each per round.")
@_threads_option(1, "0: the back end picks.")
@click.option("--device", metavar="HOST:PORT", help="Compare them on this device.")
@click.option("--top", type=int, default=15, show_default=True, help="Rows of the module table.")
@click.option("--json", "as_json", is_flag=True)
def compare(
    bundle_a: Path,
    bundle_b: Path,
    rounds: int,
    runs: int,
    threads: int,
    device: str | None,
    top: int,
    as_json: bool,
) -> None:
    """Run two bundles of one model interleaved on the same inputs: the ratio of their
    latencies with a 95% confidence interval, the difference of their outputs, and the time
    per source module of each (the before/after of a pass, two targets, two tunings).

    \b
      edgec compare out/unfolded out/folded
      edgec compare out/vn5-arm64-untuned out/vn5-arm64 --device 127.0.0.1:9190
    """
    from edgec.runtime import Bundle
    from edgec.runtime.compare_bundles import compare_local, compare_remote

    if rounds < 2 or runs < 1:
        raise OptionError(f"--rounds must be >= 2 and --runs >= 1 (got {rounds}, {runs})")
    a, b = Bundle.open(bundle_a), Bundle.open(bundle_b)
    if device is not None:
        from edgec.runtime.remote import connect

        with connect(device) as remote, render.err.status(f"comparing on {device}"):
            report = compare_remote(remote, a, b, rounds, runs, threads)
    else:
        with render.err.status(f"comparing over {rounds} rounds", spinner="dots"):
            report = compare_local(a, b, rounds, runs, threads)
    if as_json:
        render.print_json(report.to_json())
        return
    render.compare_report(report, top)


@cli.command()
@click.argument("what")
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=DxD..[:DTYPE]",
    help="For a torch source: its input shapes.",
)
@click.option(
    "-t", "--target", default="cpu", show_default=True, help="With --explain: whose pipeline."
)
@_explain_option()
@click.option("--json", "as_json", is_flag=True)
def inspect(
    what: str, input_shapes: tuple[str, ...], target: str, explain: str | None, as_json: bool
) -> None:
    """Describe a bundle folder or a source: ops, parameters, MACs, inputs/outputs, passes.

    For a bundle with binarized layers: their bits of storage per weight, the share of MACs
    that are bit operations, and the bundle's size against the float32 model.

    With --explain, a source is run through TARGET's pipeline (nothing is written) and each
    pass shows what it rewrote and what it left alone, and why.
    """
    from edgec.runtime.bundle import MANIFEST, Bundle

    is_bundle = (Path(what) / MANIFEST).is_file()
    if explain is not None and not is_bundle:
        from edgec.api import explain as explain_source

        reports = explain_source(
            what, target, input_shapes=list(input_shapes), passes=_explain_value(explain)
        )
        passes = [r.to_json() for r in reports]
        if as_json:
            render.print_json({"source": what, "target": target, "passes": passes})
        else:
            render.print_explain(passes)
        return
    if is_bundle:
        bundle = Bundle.open(what)
        m = bundle.manifest
        if explain is not None and not any("explained" in p for p in m.passes):
            raise OptionError(
                f"bundle '{what}' was compiled without --explain: inspect its source with "
                "--explain, or compile it with --explain"
            )
        size = sum((bundle.path / f).stat().st_size for f in m.files)
        info = {
            "bundle": str(bundle.path),
            "target": m.target,
            "backend": m.backend,
            "edgec_version": m.edgec_version,
            "format_version": m.format_version,
            "source": m.source,
            "inputs": [t.to_json() for t in m.inputs],
            "outputs": [t.to_json() for t in m.outputs],
            "size_bytes": size,
            "stats": m.stats.get("after", {}),
            "stats_before_passes": m.stats.get("before", {}),
            "stats_binary": m.stats.get("binary", {}),
            "passes": m.passes,
            "reference": m.reference,
            "backend_options": m.backend_options,
            "selection": m.selection,
        }
    else:
        from edgec.core.graph_stats import graph_stats
        from edgec.core.irutil import input_specs, output_specs
        from edgec.frontend import load as load_source

        model = load_source(what, input_shapes=list(input_shapes))
        info = {
            "source": what,
            "inputs": [t.to_json() for t in input_specs(model)],
            "outputs": [t.to_json() for t in output_specs(model)],
            "stats": vars(graph_stats(model)),
        }
    if as_json:
        render.print_json(info)
        return
    try:
        render.print_inspect(info)
        if explain is not None:
            render.print_explain(info["passes"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, NotRenderableError) as e:
        if "bundle" not in info:
            raise
        raise BundleError(
            f"bundle '{what}': {MANIFEST} is malformed (cannot describe it: {type(e).__name__} {e})"
        ) from None


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def targets(as_json: bool) -> None:
    """List the targets, their back ends and what edgec verifies of each on this host."""
    from edgec.passes.pipelines import get_pipeline
    from edgec.targets import list_targets

    rows = [
        {
            "name": t.name,
            "backend": t.backend,
            "pipeline": [s.name for s in get_pipeline(t.pipeline)],
            "description": t.description,
            "verified": t.verified,
        }
        for t in list_targets()
    ]
    if as_json:
        render.print_json(rows)
        return
    render.targets_table(rows)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """List the built-in architectures: parameters, MACs, input shape, paper."""
    from edgec import models as registry

    rows = []
    for name in registry.list_models():
        info = registry.get_info(name)
        rows.append(
            {
                "name": name,
                "family": info.family,
                "parameters": registry.count_parameters(name),
                "macs": registry.count_macs(name),
                "inputs": {
                    k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in info.inputs.items()
                },
                "description": info.description,
                "paper": info.paper,
            }
        )
    if as_json:
        render.print_json(rows)
        return
    render.models_table(rows)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--embed",
    "embed",
    type=click.Path(path_type=Path),
    required=True,
    help="Write a C++ project that runs the bundle without Python into this folder.",
)
@click.option("--build", is_flag=True, help="Also run its build.sh (TVM bundles).")
def package(bundle: Path, embed: Path, build: bool) -> None:
    """Package a TVM bundle (x86_64 or arm64) or a mobile bundle for embedding in a C++ program.

    A TVM bundle's folder holds model.so, the TVM runtime libraries for the bundle's
    architecture, the tvm-ffi headers, a header-only wrapper (edgec_runtime.hpp), an example
    host program that runs the model on raw input files, the reference input and output, and
    build.sh. A mobile bundle's holds model.ort, required_operators.config, the reduced
    onnxruntime build's command lines (build_onnxruntime.sh), an example program on
    onnxruntime's C++ API with its build.sh (needs ORT_HOME: no registry here ships
    onnxruntime's headers, so it is not built here), and the reference input and output.
    """
    from edgec.runtime import Bundle
    from edgec.runtime.package import package_embed

    folder = package_embed(Bundle.open(bundle), embed, build=build)
    render.out.print(f"[bold green]packaged[/] {bundle} -> {folder}")
    how = "mkdir -p out && ./run_bundle model.so io.txt inputs out" if build else "./build.sh"
    if (folder / "model.ort").is_file():
        how = "ORT_HOME=/path/to/onnxruntime ./build.sh (README.txt)"
    render.out.print(f"  next: cd {folder} && {how}")


@cli.group()
def device() -> None:
    """Devices that run and measure TVM bundles over RPC: a real board, or an emulated one.

    \b
      edgec device emulate arm64 --port 9190      # here, under qemu (prepared once, cached)
      edgec device serve --host 0.0.0.0 --port 9190   # on the board
      edgec verify out/vn5-arm64 --device 127.0.0.1:9190
      edgec profile out/vn5-arm64 --device 127.0.0.1:9190
    """


@device.command()
@click.argument("arch", type=click.Choice(["arm64"]))
@click.option("--port", type=int, default=9190, show_default=True, help="0: a free port.")
@click.option("--prepare-only", is_flag=True, help="Build the cached sysroot and exit.")
def emulate(arch: str, port: int, prepare_only: bool) -> None:
    """Serve an emulated ARCH device on 127.0.0.1 until interrupted (Ctrl-C or SIGTERM).

    The first run prepares an aarch64 sysroot (Debian's python3.11 and the aarch64 wheels of
    numpy, TVM and onnxruntime at this host's versions) under the cache folder; it needs the
    Debian package qemu-user-static. Latency measured here is emulated latency.
    """
    from edgec.runtime import emulator

    with render.err.status("preparing the emulated arm64 device", spinner="dots") as status:
        sysroot = emulator.prepare(report=lambda s: status.update(s))
    if prepare_only:
        render.out.print(f"arm64 sysroot ready: {sysroot}")
        return

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        with emulator.emulate(port) as (host, bound):
            render.out.print(
                f"edgec device: emulated {arch} serving on {host}:{bound} (Ctrl-C stops)"
            )
            sys.stdout.flush()
            while True:
                signal.pause()
    except KeyboardInterrupt:
        render.out.print("edgec device: stopped")


@device.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=int, default=9190, show_default=True)
def serve(host: str, port: int) -> None:
    """Run the device server here (on the board): TVM RPC plus edgec's device functions."""
    from edgec.runtime.device_server import serve as run_server

    run_server(host, port)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every cleanup runs as it does for Ctrl-C."""


def _terminate(_signum: int, _frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors exit 2 with one line, internal faults 1, interrupts 130,
    SIGTERM 143 (after removing what was being written, as for Ctrl-C)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        code = _run(argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    verbose = any(a in ("-v", "-vv", "--verbose") for a in (argv or sys.argv[1:]))
    try:
        cli.main(args=argv, prog_name="edgec", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        render.err.print("interrupted: nothing was written")
        return 130
    except Terminated:
        render.err.print("terminated: nothing was written")
        return 143
    except EdgecError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except Exception as e:
        if verbose:
            traceback.print_exc()
        click.echo(
            f"internal error (a bug in edgec): {type(e).__name__}: {e}"
            + ("" if verbose else "  [run with -v for the traceback]"),
            err=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    main()
