"""A profile as pictures: `edgec profile BUNDLE --html report.html` and `--png report.png`.

Four charts, drawn with matplotlib: the latency histogram with p50/p90/p99 marked, the time per
source module, the roofline (each op at its arithmetic intensity and achieved GFLOP/s under the
machine's measured roofs) and the passes' effect (nodes, parameters and MACs left after each
pass that fired). The HTML page holds them as inline SVG, with the summary, the per-op table
and the pass table: one file, no script, no server, nothing fetched. The PNG is the four charts
in one figure.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure  # drawn without pyplot: no display, no global state

from edgec.runtime.profile import ProfileReport

CHARTS = ("latency-histogram", "module-times", "roofline", "pass-effect")
TOP_MODULES = 15


def _empty(ax: Axes, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center")
    ax.set_axis_off()


def _latency(ax: Axes, report: ProfileReport) -> None:
    times = report.times_ms or [report.p50_ms]
    ax.hist(times, bins=min(40, max(5, len(times) // 3)), color="#4c72b0", alpha=0.85)
    for label, value, color in (
        ("p50", report.p50_ms, "#2ca02c"),
        ("p90", report.p90_ms, "#ff7f0e"),
        ("p99", report.p99_ms, "#d62728"),
    ):
        ax.axvline(value, color=color, linestyle="--", linewidth=1.5, label=f"{label} {value:.3f}")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("runs")
    ax.set_title(f"latency over {report.runs} runs")
    ax.legend(fontsize=8)


def _modules(ax: Axes, report: ProfileReport) -> None:
    modules = report.per_module[:TOP_MODULES]
    if not modules:
        return _empty(ax, "no per-op profile (--per-op)")
    names = [m.module for m in reversed(modules)]
    ax.barh(names, [m.mean_ms for m in reversed(modules)], color="#55a868")
    ax.set_xlabel("ms per run")
    ax.set_title(f"time per source module (top {len(modules)})")
    ax.tick_params(axis="y", labelsize=7)


def _roofline(ax: Axes, report: ProfileReport) -> None:
    roof = report.roofline
    if not roof:
        return _empty(ax, "no roofline measured")
    peak, bandwidth = roof["sgemm_gflops"], roof["bandwidth_gbs"]
    ops = [o for o in report.per_op if o.bytes > 0 and o.mean_ms > 0]
    intensities = [2 * o.macs / o.bytes for o in ops if o.macs > 0]
    low = min([0.05, *intensities]) / 2
    high = max([peak / bandwidth * 8, *intensities]) * 2
    xs = [low * (high / low) ** (i / 200) for i in range(201)]
    ax.loglog(xs, [min(peak, x * bandwidth) for x in xs], color="black", linewidth=2)
    cache = roof.get("cache_bandwidth_gbs")
    if cache:  # operands of at most 1 MiB are priced at the cache's bandwidth
        ax.loglog(xs, [min(peak, x * cache) for x in xs], color="gray", linestyle="--")
        ax.text(low, low * cache, f" cache {cache:.0f} GB/s", ha="left", va="top", fontsize=8)
    ax.text(high, peak, f" sgemm {peak:.0f} GFLOP/s", ha="right", va="bottom", fontsize=8)
    memory = f" memory {bandwidth:.0f} GB/s"
    ax.text(low, low * bandwidth, memory, ha="left", va="bottom", fontsize=8)
    for o in ops:
        if o.macs <= 0:
            continue
        gflops = 2 * o.macs / (o.mean_ms * 1e6)
        ax.scatter(2 * o.macs / o.bytes, gflops, s=20 + 400 * o.share, alpha=0.6, color="#c44e52")
    if roof.get("macs") and roof.get("bytes") and report.p50_ms > 0:
        x = 2 * roof["macs"] / roof["bytes"]
        y = 2 * roof["macs"] / (report.p50_ms * 1e6)
        ax.scatter(x, y, marker="*", s=250, color="#8172b2", label="whole model at p50")
        ax.legend(fontsize=8, loc="lower right")
    fraction = roof.get("fraction")
    reached = f", model at {fraction:.0%} of its bound" if fraction is not None else ""
    ax.set_title(f"roofline ({roof['threads']} thread(s){reached})")
    ax.set_xlabel("arithmetic intensity (flop / byte)")
    ax.set_ylabel("GFLOP/s")


def _passes(ax: Axes, report: ProfileReport) -> None:
    steps = report.passes
    if not steps:
        return _empty(ax, "no pass changed the graph")
    labels = ["source"] + [s["name"] for s in steps]
    for key, color in (("nodes", "#4c72b0"), ("params", "#55a868"), ("macs", "#c44e52")):
        first = steps[0][f"{key}_before"] or 1
        values = [100.0] + [100.0 * s[f"{key}_after"] / first for s in steps]
        ax.plot(range(len(labels)), values, marker="o", color=color, label=key)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("% of the source graph")
    ax.set_title("the passes' effect")
    ax.legend(fontsize=8)


DRAW = {
    "latency-histogram": _latency,
    "module-times": _modules,
    "roofline": _roofline,
    "pass-effect": _passes,
}


def _svg(name: str, report: ProfileReport) -> str:
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    DRAW[name](fig.add_subplot(), report)
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def write_png(report: ProfileReport, path: Path, title: str) -> None:
    """The four charts in one PNG."""
    fig = Figure(figsize=(14, 9), layout="constrained")
    for name, ax in zip(CHARTS, fig.subplots(2, 2).flat, strict=True):
        DRAW[name](ax, report)
    fig.suptitle(title)
    fig.savefig(path, format="png", dpi=110)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def write_html(report: ProfileReport, path: Path, title: str, top: int = 30) -> None:
    """A self-contained page: summary, the four charts (inline SVG), per-op and pass tables."""
    summary = _table(
        ["back end", "device", "threads", "cold start", "p50", "p90", "p99", "peak RSS"],
        [
            [
                report.backend,
                report.device + (" (emulated)" if report.emulated else ""),
                str(report.threads),
                f"{report.cold_start_ms:.2f} ms",
                f"{report.p50_ms:.3f} ms",
                f"{report.p90_ms:.3f} ms",
                f"{report.p99_ms:.3f} ms",
                f"{report.peak_rss_mb:.0f} MB",
            ]
        ],
    )
    roof = report.roofline
    roof_text = (
        f"<p>Roofline: sgemm {roof['sgemm_gflops']:.1f} GFLOP/s, bandwidth "
        f"{roof['bandwidth_gbs']:.1f} GB/s with {roof['threads']} thread(s) "
        f"(measured on {html.escape(str(roof.get('machine', '')))}); the whole model reaches "
        f"{_pct(roof.get('fraction'))} of its bound at p50.</p>"
        if roof
        else "<p>No roofline measured.</p>"
    )
    ops = _table(
        ["op", "type", "module", "ms", "share", "MACs", "roofline", "made by"],
        [
            [
                o.name,
                o.op_type,
                o.module,
                f"{o.mean_ms:.4f}",
                _pct(o.share),
                f"{o.macs:,}",
                _pct(o.roofline_fraction),
                "; ".join(o.passes),
            ]
            for o in report.per_op[:top]
        ],
    )
    passes = _table(
        ["pass", "rewrites", "nodes", "parameters", "MACs"],
        [
            [
                p["name"],
                str(p["rewrites"]),
                f"{p['nodes_before']:,} → {p['nodes_after']:,}",
                f"{p['params_before']:,} → {p['params_after']:,}",
                f"{p['macs_before']:,} → {p['macs_after']:,}",
            ]
            for p in report.passes
        ],
    )
    figures = "".join(
        f'<figure class="chart" id="{name}">{_svg(name, report)}</figure>' for name in CHARTS
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); }}
figure {{ margin: 0.5em; }} figure svg {{ width: 100%; height: auto; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{summary}
{roof_text}
<div class="charts">{figures}</div>
<h2>time per op (top {min(top, len(report.per_op))} of {len(report.per_op)})</h2>
{ops}
<h2>passes</h2>
{passes}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
