"""What the command line prints: tables and summaries of bundles, pass reports, explanations,
profiles, targets and models (`cli.py` parses and dispatches; this module only renders).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.table import Table

out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_jsonable))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "to_json"):
        return obj.to_json()
    if hasattr(obj, "__dict__"):
        return vars(obj)
    return str(obj)


def fmt_count(n: int | float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def compile_summary(source: str, bundle: Any, seconds: float, report: bool, explain: bool) -> None:
    """What `edgec compile` prints once the bundle is written."""
    m = bundle.manifest
    if report:
        print_pass_report(m.passes)
    if explain:
        print_explain(m.passes)
    before, after = m.stats["before"], m.stats["after"]
    out.print(
        f"[bold green]compiled[/] {source} -> [bold]{bundle.path}[/] "
        f"({m.target}, {m.backend}) in {seconds:.1f} s"
    )
    out.print(
        f"  nodes {before['nodes']} -> {after['nodes']}, "
        f"parameters {fmt_count(before['parameters'])} -> {fmt_count(after['parameters'])}, "
        f"MACs {fmt_count(before['macs'])} -> {fmt_count(after['macs'])}"
    )
    if m.reference["max_rel_error"] is None:
        out.print(f"  [yellow]not checked against the reference here[/]: {m.reference['note']}")
    else:
        out.print(
            f"  max relative error {m.reference['max_rel_error']:.2e} against "
            f"{m.reference['against']} (tolerance {m.reference['tolerance']:.0e})"
        )
        if m.reference.get("note"):
            out.print(f"  note: {m.reference['note']}")
    if "binarization" in m.reference:
        print_binarization(m.reference["binarization"])
    tuning = m.backend_options.get("tuning")
    if tuning:
        out.print("  " + describe_tuning(tuning))
    if m.selection:
        print_selection(m.selection, detailed=report)


def profile_report(bundle: Path, report: Any, runs: int, warmup: int, top: int) -> None:
    """`edgec profile`'s table (and per-op table with --per-op)."""
    table = Table(title=f"{bundle} ({report.backend}, {report.threads} thread(s), {report.device})")
    for col in ("cold start", "mean", "std", "min", "p50", "p90", "p99", "max"):
        table.add_column(col + " ms", justify="right")
    table.add_column("per s", justify="right")
    table.add_column("peak RSS", justify="right")
    table.add_row(
        *(
            f"{v:.2f}"
            for v in (
                report.cold_start_ms,
                report.mean_ms,
                report.std_ms,
                report.min_ms,
                report.p50_ms,
                report.p90_ms,
                report.p99_ms,
                report.max_ms,
                report.throughput_per_s,
            )
        ),
        f"{report.peak_rss_mb:.0f} MB",
    )
    out.print(table)
    out.print(f"{runs} runs after {warmup} warm-up runs")
    if report.emulated:
        out.print(
            "[bold yellow]emulated latency[/]: measured under emulation, it says nothing about "
            "the speed of a real device (the numerics are real)"
        )
    roof = report.roofline
    if roof:
        reached = roof.get("fraction")
        out.print(
            f"roofline: sgemm {roof['sgemm_gflops']:.1f} GFLOP/s, {roof['bandwidth_gbs']:.1f} GB/s"
            f" with {roof['threads']} thread(s)"
            + (" (cached)" if roof.get("cached") else " (measured now)")
            + (f"; the model reaches {reached:.1%} of its bound at p50" if reached else "")
        )
    if report.per_op:
        ops = Table(title="time per op")
        for col in ("op", "type", "module", "ms", "share", "roofline", "made by"):
            ops.add_column(col, justify="right" if col in ("ms", "share", "roofline") else "left")
        for o in report.per_op[:top]:
            fraction = "" if o.roofline_fraction is None else f"{o.roofline_fraction:.1%}"
            ops.add_row(
                o.name,
                o.op_type,
                o.module,
                f"{o.mean_ms:.3f}",
                f"{o.share:.1%}",
                fraction,
                "; ".join(o.passes),
            )
        out.print(ops)
        modules = Table(title="time per source module")
        for col in ("module", "ops", "ms", "share", "roofline"):
            modules.add_column(col, justify="left" if col == "module" else "right")
        for m in report.per_module[:top]:
            fraction = "" if m.roofline_fraction is None else f"{m.roofline_fraction:.1%}"
            modules.add_row(m.module, str(m.ops), f"{m.mean_ms:.3f}", f"{m.share:.1%}", fraction)
        out.print(modules)


def compare_report(report: Any, top: int) -> None:
    """`edgec compare`'s summary and module table."""
    faster = "B faster" if report.ratio > 1 else "A faster" if report.ratio < 1 else "equal"
    out.print(f"A: {report.a}  p50 {report.a_p50_ms:.3f} ms")
    out.print(f"B: {report.b}  p50 {report.b_p50_ms:.3f} ms")
    out.print(
        f"[bold]A/B = {report.ratio:.2f}x[/] (95% CI {report.ci_low:.2f}-{report.ci_high:.2f}, "
        f"{report.rounds} interleaved rounds of {report.runs_per_round} runs, "
        f"{report.device}): {faster}"
    )
    out.print(f"outputs: max relative difference of B from A {report.max_output_error:.2e}")
    if report.note:
        out.print(report.note)
    if report.modules:
        table = Table(title="time per source module")
        for col in ("module", "A ms", "B ms", "B - A ms"):
            table.add_column(col, justify="left" if col == "module" else "right")
        for m in report.modules[:top]:
            table.add_row(m.module, f"{m.a_ms:.3f}", f"{m.b_ms:.3f}", f"{m.delta_ms:+.3f}")
        out.print(table)


def targets_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="targets")
    for col in ("target", "back end", "description", "verified"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["backend"], r["description"], r["verified"])
    out.print(table)


def models_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="built-in models (training form)")
    for col in ("model", "family", "parameters", "MACs", "input"):
        table.add_column(col, justify="right" if col in ("parameters", "MACs") else "left")
    for r in rows:
        shape = ", ".join(
            f"{k}={'x'.join(map(str, v['shape']))}"
            + ("" if v["dtype"] == "float32" else f":{v['dtype']}")
            for k, v in r["inputs"].items()
        )
        table.add_row(r["name"], r["family"], f"{r['parameters']:,}", fmt_count(r["macs"]), shape)
    out.print(table)


def print_binarization(b: dict[str, Any]) -> None:
    table = Table(title=f"--binarize '{b['pattern']}': each layer's output error on the samples")
    for col in ("layer", "kind", "in -> out", "max rel error"):
        table.add_column(col, justify="right" if col != "layer" else "left")
    for layer in b["layers"]:
        table.add_row(
            layer["name"],
            layer["kind"],
            f"{layer['in_features']} -> {layer['out_features']}",
            f"{layer['max_rel_error']:.2e}",
        )
    out.print(table)
    out.print(
        f"  binarized model against the float model: max relative error "
        f"{b['output_error_vs_float']:.2e} on the sample inputs"
    )


def describe_tuning(t: dict[str, Any]) -> str:
    if not t["tasks"]:
        return "TVM: no kernels to tune"
    text = (
        f"TVM tuning: {t['tasks'] - len(t['tasks_untuned'])}/{t['tasks']} kernels scheduled "
        f"from the database ({t['tasks_from_database']} already there"
    )
    if t["trials_run"]:
        text += f"; {t['trials_ok']}/{t['trials_run']} trials measured in {t['seconds']:.0f} s"
    text += ")"
    if "records_measured_on" in t:
        text += f"; records measured on {t['records_measured_on']}"
    return text


def print_selection(sel: dict[str, Any], detailed: bool) -> None:
    parts = []
    for name, c in sel["candidates"].items():
        if "failed" in c:
            parts.append(f"{name} failed ({c['failed']})")
        elif "skipped" in c:
            parts.append(f"{name} not built ({c['skipped']})")
        elif "p50_ms" in c:
            parts.append(f"{name} {c['p50_ms']:.2f} ms (error {c['max_rel_error']:.1e})")
    timed = any("p50_ms" in c for c in sel["candidates"].values())
    how = "chosen by measurement" if timed else "the only candidate"
    out.print(f"  back end [bold]{sel['chosen']}[/] {how}: " + ", ".join(parts))
    if detailed:
        table = Table(title=f"measure-and-pick ({sel['rule']})")
        for col in ("back end", "p50 ms", "runs", "max rel err", "tuned kernels"):
            table.add_column(col, justify="left" if col == "back end" else "right")
        for name, c in sel["candidates"].items():
            if "failed" in c or "skipped" in c:
                table.add_row(name, "-", "-", "-", "failed" if "failed" in c else "not built")
                continue
            if "p50_ms" not in c:
                continue
            t = c.get("tuning")
            tuned = f"{t['tasks'] - len(t['tasks_untuned'])}/{t['tasks']}" if t else "-"
            chosen = " (chosen)" if name == sel["chosen"] else ""
            table.add_row(
                name + chosen,
                f"{c['p50_ms']:.2f}",
                str(c["runs"]),
                f"{c['max_rel_error']:.1e}",
                tuned,
            )
        out.print(table)


def print_explain(passes: list[dict[str, Any]]) -> None:
    """Each pass's candidates, each once (at the first round that saw it)."""
    seen: set[tuple[Any, ...]] = set()
    for p in passes:
        fresh = []
        for c in p.get("explained") or []:
            key = (p["name"], c["rule"], tuple(c["nodes"]), c["fired"], c["reason"])
            if key not in seen:
                seen.add(key)
                fresh.append(c)
        if not fresh:
            continue
        out.print(f"[bold]{p['name']}[/] (round {p['round']}):")
        for c in fresh:
            where = ", ".join(
                f"{n or '?'} ({op})" for n, op in zip(c["nodes"], c["ops"], strict=True)
            )
            what = "[green]fired[/]     " if c["fired"] else "[yellow]left alone[/]"
            why = "" if c["fired"] else f": {c['reason']}"
            out.print(f"  {what} {c['rule']}: {where}{why}", highlight=False, soft_wrap=True)
    if not seen:
        out.print("explain: no pass found a candidate (no rule matched any part of the graph)")


def print_pass_report(passes: list[dict[str, Any]]) -> None:
    table = Table(title="passes")
    for col in ("pass", "round", "rewrites", "nodes", "parameters", "MACs", "max rel err", "ms"):
        table.add_column(col, justify="left" if col == "pass" else "right")
    for p in passes:
        if p["round"] > 1 and not p["rewrites"]:
            continue  # the round of a fixed point that found nothing more
        error = "-" if p["max_rel_error"] is None else f"{p['max_rel_error']:.1e}"
        table.add_row(
            p["name"],
            str(p["round"]),
            str(p["rewrites"]),
            f"{p['nodes_before']} -> {p['nodes_after']}",
            f"{fmt_count(p['params_before'])} -> {fmt_count(p['params_after'])}",
            f"{fmt_count(p['macs_before'])} -> {fmt_count(p['macs_after'])}",
            error,
            f"{p['seconds'] * 1e3:.1f}",
        )
    out.print(table)


def print_binary(b: dict[str, Any], size_bytes: int | None) -> None:
    out.print(
        f"  binary: {b['layers']} binarized layers, {fmt_count(b['weights'])} weights at "
        f"{b['bits_per_weight']:.2f} bits each (scales included; float32 is 32), "
        f"{b['bit_mac_share']:.2%} of MACs are bit operations "
        f"({fmt_count(b['bit_macs'])} of {fmt_count(b['macs'])})"
    )
    if size_bytes:
        out.print(
            f"  size: bundle {size_bytes / 1e6:.1f} MB against {b['float_bytes'] / 1e6:.1f} MB "
            f"for the float32 model ({b['float_bytes'] / size_bytes:.1f}x smaller)"
        )


def print_tensorrt(opts: dict[str, Any]) -> None:
    """A TensorRT bundle: precision, the parser table it was checked against, what ran here."""
    lint = opts.get("lint", {})
    failing = len(lint.get("failing_nodes", []))
    linted = (
        f"lint: {lint.get('passing_nodes', 0)} nodes pass, {failing} fail"
        if lint.get("ran")
        else f"lint not run ({lint.get('why', '-')})"
    )
    out.print(
        f"  TensorRT {opts.get('tensorrt_version')} parser table: static check "
        f"{opts.get('static_check')}; precision {opts.get('precision')}; {linted}; engine "
        + ("verified" if opts.get("engine_verified") else "not built or verified here")
    )
    if opts.get("binary_ops"):
        out.print(f"  {opts['binary_ops']} binary ops as {opts['binary_form']} (exact)")


def print_mobile(opts: dict[str, Any]) -> None:
    """A mobile bundle: its ORT model, size and the execution providers' partitions."""
    size = opts.get("size", {})
    line = f"  ORT format, optimization style {opts.get('optimization_style')}"
    if size:
        line += (
            f", model {size['ort_bytes'] / 1e6:.1f} MB against "
            f"{size['float_weight_bytes'] / 1e6:.1f} MB of float32 weights"
        )
    out.print(line)
    if opts.get("binary_ops"):
        out.print(f"  {opts['binary_ops']} binary ops as {opts['binary_form']} (exact)")
    table = Table(title="execution providers (would take)")
    for col in ("provider", "nodes", "partitions", "suitable", "falls back to CPU"):
        table.add_column(col)
    for ep, r in opts.get("partitions", {}).items():
        if not r.get("checked", True):
            table.add_row(ep, "-", "-", "-", f"not checked: {r['why']}")
            continue
        names = r["cpu_fallback_ops"] + [f"{op} (rank)" for op in r.get("rank_too_high_ops", [])]
        table.add_row(
            ep,
            f"{r['supported_nodes']}/{r['nodes']}",
            str(r.get("partitions", "-")),
            r.get("suitability", "-"),
            ", ".join(n.removeprefix("ai.onnx:") for n in names) or "-",
        )
    out.print(table)


def print_coreml(opts: dict[str, Any]) -> None:
    """A Core ML bundle: deployment target, precision, size, and what checked it."""
    target = opts.get("deployment_target", {})
    size = opts.get("size", {})
    out.print(
        f"  Core ML ML program for {target.get('iOS')} / {target.get('macOS')} "
        f"(coremltools {opts.get('coremltools_version')}); precision {opts.get('precision')}: "
        f"{opts.get('compute_precision')}"
    )
    if size:
        line = (
            f"  .mlpackage {size['mlpackage_bytes'] / 1e6:.1f} MB against "
            f"{size['float_weight_bytes'] / 1e6:.1f} MB of float32 weights"
        )
        if size.get("binary_weights"):
            line += (
                f"; {fmt_count(size['binary_weights'])} binary weights at "
                f"{size['binary_bits_per_weight']:g} bit each"
            )
        out.print(line)
    out.print(f"  checked by {opts.get('checked_by')}")


def print_inspect(info: dict[str, Any]) -> None:
    head = info.get("bundle", info.get("source"))
    out.print(f"[bold]{head}[/]")
    if "bundle" in info:
        out.print(
            f"  target {info['target']} ({info['backend']}), edgec {info['edgec_version']}, "
            f"format {info['format_version']}, {info['size_bytes'] / 1e6:.1f} MB"
        )
        out.print(f"  source {info['source'].get('name')} ({info['source'].get('kind')})")
        opts = info["backend_options"]
        if "triple" in opts:
            t = opts["target"]
            out.print(
                f"  TVM {opts['tvm_version']}: {opts['triple']}, cpu {t['mcpu']}"
                + (f", {' '.join(t['mattr'])}" if t.get("mattr") else "")
                + f", {t['num-cores']} cores"
            )
            out.print("  " + describe_tuning(opts["tuning"]))
        if opts.get("format") == "ort":
            print_mobile(opts)
        if info["backend"] == "tensorrt":
            print_tensorrt(opts)
        if info["backend"] == "coreml":
            print_coreml(opts)
        if info["selection"]:
            print_selection(info["selection"], detailed=False)
    for role in ("inputs", "outputs"):
        for t in info[role]:
            out.print(f"  {role[:-1]:6} {t['name']}: {t['dtype']} {tuple(t['shape'])}")
    stats = info["stats"]
    macs = fmt_count(stats["macs"]) + ("" if stats["macs_complete"] else " (some shapes unknown)")
    out.print(
        f"  {stats['nodes']} nodes, {fmt_count(stats['parameters'])} parameters "
        f"({stats['parameters']:,}), {macs} MACs"
    )
    binary = info.get("stats_binary")
    if binary:
        print_binary(binary, info.get("size_bytes"))
    ops = Table(title="ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in stats["ops"].items():
        ops.add_row(op, str(n))
    out.print(ops)
    if info.get("passes"):
        print_pass_report(info["passes"])
