"""Per-op profiles mapped to the source, the roofline, and the pictures of a profile."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

import edgec
from edgec.core.op_map import OP_MAP_FILE, op_map
from edgec.report_pictures import CHARTS, write_html
from edgec.runtime import load, profile
from edgec.runtime.op_profile import INSERTED, RUNTIME, from_ort, from_tvm
from edgec.runtime.roofline import bound_ms, fraction, host_peaks
from tests.conftest import TinyNet, with_bn_statistics

SOURCE_MODULES = ("stem", "block", "head")


@pytest.fixture(scope="module")
def tvm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tvm") / "tiny"
    edgec.compile(
        with_bn_statistics(TinyNet()),
        target="x86_64",
        backend="tvm",
        output=out,
        input_shapes={"x": (1, 3, 16, 16)},
    )
    return out


def _folded_bn(ops: list) -> list:
    return [o for o in ops if any("batch_norm" in p for p in o.passes)]


def test_onnxruntime_ops_carry_module_passes_and_roofline(tiny_bundle: Path) -> None:
    r = profile(load(tiny_bundle), runs=5, warmup=1, threads=1, per_op=True)
    assert sum(o.share for o in r.per_op) == pytest.approx(1.0)
    modules = {o.module for o in r.per_op}
    assert {"stem.0", "block.0", "head"} <= modules, modules
    # the folded convs name the BatchNormalization each absorbed, and the rule that did it
    folded = _folded_bn(r.per_op)
    assert {o.module for o in folded} == {"stem.0", "block.0"}
    assert all(o.passes[0].startswith("bn_into_conv: ") for o in folded)
    # the block's conv then took in the residual: its history says both, in order
    (block,) = [o for o in folded if o.module == "block.0"]
    assert [p.split(":")[0] for p in block.passes] == ["bn_into_conv", "merge_branches"]
    convs = [o for o in r.per_op if o.macs > 0]
    assert convs and all(o.roofline_fraction is not None and o.roofline_fraction > 0 for o in convs)
    assert sum(m.mean_ms for m in r.per_module) == pytest.approx(sum(o.mean_ms for o in r.per_op))
    roof = r.roofline
    assert roof is not None and roof["macs"] > 0 and roof["bytes"] > 0
    # the model's bound: all its MACs at the sgemm peak, or its weights and I/O moved once
    ops = _op_map(tiny_bundle)
    macs = sum(n["macs"] for n in ops["nodes"].values())
    assert roof["macs"] == macs and roof["bytes"] == ops["weight_bytes"] + ops["io_bytes"]
    # TinyNet's float32 weights after folding (two convs, the linear), and a few int64 axes
    floats = 4 * (8 * 3 * 9 + 8 + 8 * 4 * 9 + 8 + 8 * 5 + 5)
    assert floats <= ops["weight_bytes"] <= floats + 64
    assert ops["io_bytes"] == 4 * (3 * 16 * 16 + 5)
    assert roof["bound_ms"] == pytest.approx(bound_ms(macs, roof["bytes"], roof))
    assert roof["fraction"] == pytest.approx(roof["bound_ms"] / r.p50_ms)
    assert [p["name"] for p in r.passes] and all(p["rewrites"] > 0 for p in r.passes)
    assert len(r.times_ms) == 5


def _op_map(bundle: Path) -> dict:
    return json.loads((bundle / OP_MAP_FILE).read_text())


@pytest.mark.slow
def test_tvm_kernels_map_to_source_modules(tvm_bundle: Path) -> None:
    """The Relax VM's calls: each fused kernel names the source nodes it computes (recorded
    between fusion and FuseTIR at compile time), so the time reads per torch module."""
    kernels = _op_map(tvm_bundle)["kernels"]
    assert kernels and all(k["nodes"] for k in kernels if k["kernel"].startswith("fused_conv2d"))
    r = profile(load(tvm_bundle), runs=10, warmup=2, threads=1, per_op=True)
    assert r.backend == "tvm" and sum(o.share for o in r.per_op) == pytest.approx(1.0)
    named = [o for o in r.per_op if o.op_type == "kernel"]
    assert {o.name for o in named} == {k["kernel"] for k in kernels}
    assert {"stem.0", "block.0", "head"} <= {o.module for o in named}
    assert {o.module for o in _folded_bn(named)} == {"stem.0", "block.0"}
    assert any(o.module == RUNTIME for o in r.per_op)  # the VM's allocations, apart
    assert all(o.mean_ms > 0 for o in named)


def test_op_records_from_back_end_names() -> None:
    """onnxruntime's names of nodes it made (suffixes after _ or /) and TVM's repeated kernel
    names (the k-th call is the k-th kernel of that name) resolve to the op map's nodes."""
    op_map = {
        "nodes": {
            "a/conv": {"op": "Conv", "module": "a", "macs": 100, "bytes": 40, "passes": []},
            "b/conv": {"op": "Conv", "module": "b", "macs": 100, "bytes": 40, "passes": ["x"]},
        },
        "values": {"conv_out": "b/conv"},
        "kernels": [
            {"kernel": "fused_conv", "nodes": ["a/conv"]},
            {"kernel": "fused_conv", "nodes": ["b/conv"]},
        ],
    }
    peaks = {"sgemm_gflops": 1.0, "bandwidth_gbs": 1.0}
    ort = from_ort(
        [
            {"name": "a/conv/FusedConv", "op": "FusedConv", "mean_ms": 3.0, "calls": 1},
            {"name": "conv_out_nchwc", "op": "Conv", "mean_ms": 1.0, "calls": 1},
            {"name": "reorder_7", "op": "Reorder", "mean_ms": 1.0, "calls": 2},
        ],
        op_map,
        peaks,
    )
    assert [(o.module, o.nodes) for o in ort] == [
        ("a", ["a/conv"]),
        ("b", ["b/conv"]),
        (INSERTED, []),
    ]
    assert ort[0].roofline_fraction == pytest.approx(fraction(100, 40, 3.0, peaks))
    assert ort[2].roofline_fraction is None and ort[1].passes == ["x"]
    tvm = from_tvm(
        [
            {"name": "vm.builtin.alloc_storage", "mean_ms": 0.5},
            {"name": "fused_conv", "mean_ms": 2.0},
            {"name": "vm.builtin.alloc_storage", "mean_ms": 0.5},
            {"name": "fused_conv", "mean_ms": 4.0},
        ],
        op_map,
        peaks,
    )
    assert [(o.name, o.module, o.mean_ms, o.calls) for o in tvm] == [
        ("fused_conv", "b", 4.0, 1),
        ("fused_conv", "a", 2.0, 1),
        ("vm.builtin.alloc_storage", RUNTIME, 1.0, 2),
    ]


def test_roofline_bound_and_fraction() -> None:
    peaks = {"sgemm_gflops": 100.0, "bandwidth_gbs": 10.0}
    # compute-bound: 1e6 MACs = 2e6 flops at 1e11 flop/s = 0.02 ms; 1e3 bytes: 1e-4 ms
    assert bound_ms(1e6, 1e3, peaks) == pytest.approx(0.02)
    # memory-bound: 1e7 bytes at 1e10 B/s = 1 ms
    assert bound_ms(10, 1e7, peaks) == pytest.approx(1.0)
    assert fraction(10, 1e7, 4.0, peaks) == pytest.approx(0.25)
    # operands of at most 1 MiB are priced at the cache's bandwidth, larger ones at memory's
    both = {**peaks, "cache_bandwidth_gbs": 100.0}
    assert bound_ms(0, 1e6, both) == pytest.approx(0.01)
    assert bound_ms(0, 1e7, both) == pytest.approx(1.0)


def test_host_peaks_are_measured_once_and_cached() -> None:
    first = host_peaks(1)
    again = host_peaks(1)
    assert again["cached"] is True
    assert (again["sgemm_gflops"], again["bandwidth_gbs"]) == (
        first["sgemm_gflops"],
        first["bandwidth_gbs"],
    )
    assert again["threads"] == 1 and again["sgemm_gflops"] > 0.5 and again["bandwidth_gbs"] > 0.1
    assert again["cache_bandwidth_gbs"] > 0.1


def _chromium() -> str:
    for name in ("chromium-headless-shell", "chromium"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(
        "headless Chromium is missing (Debian package chromium-headless-shell; make install)"
    )


def _has_color(image: Image.Image, hex_color: str, at_least: int = 30) -> bool:
    target = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    return int((np.abs(pixels - target).sum(axis=1) <= 12).sum()) >= at_least


def test_html_report_renders_in_headless_chromium(tiny_bundle: Path, tmp_path: Path) -> None:
    """The page is one file that fetches nothing; Chromium lays it out with the four charts,
    and its screenshot shows each chart's own colour (histogram bars, module bars, roofline
    points, pass lines)."""
    report = profile(load(tiny_bundle), runs=20, warmup=2, threads=1, per_op=True)
    page = tmp_path / "report.html"
    write_html(report, page, "tiny")
    text = page.read_text()
    assert "<script" not in text and "<link" not in text and " src=" not in text
    browser = _chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for name in CHARTS:
        assert f'<figure class="chart" id="{name}"><svg' in dom, name
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1300,2200", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    image = Image.open(shot)
    assert image.size == (1300, 2200)
    for color in ("#4c72b0", "#55a868", "#c44e52", "#8172b2"):
        assert _has_color(image, color), color


def test_png_report_has_the_four_charts(cli, tiny_bundle: Path, tmp_path: Path) -> None:
    png = tmp_path / "profile.png"
    r = cli("profile", tiny_bundle, "--runs", "10", "--warmup", "1", "--png", png)
    assert r.code == 0, r.err
    assert "time per source module" in r.out  # --png implies --per-op
    image = Image.open(png)
    assert image.format == "PNG" and image.size[0] > 1000
    for color in ("#4c72b0", "#55a868", "#c44e52"):
        assert _has_color(image, color), color


def test_report_file_errors_are_one_line(cli, tiny_bundle: Path, tmp_path: Path) -> None:
    r = cli("profile", tiny_bundle, "--runs", "2", "--html", tmp_path)
    assert r.code == 2 and "--html" in r.err and "Traceback" not in r.err


def test_per_op_needs_a_back_end_with_a_profiler(cli, onnx_file: Path, tmp_path: Path) -> None:
    edgec.compile(onnx_file, target="coreml", output=tmp_path / "ml")
    r = cli("profile", tmp_path / "ml", "--per-op")
    assert r.code == 2 and "per-op breakdown needs an onnxruntime or TVM bundle" in r.err


def test_op_map_is_total_on_strings_and_unknown_shapes() -> None:
    """ONNX's string cases: a type without a fixed width, and values without shapes, count as
    no bytes rather than stopping the compile."""
    graph = helper.make_graph(
        [
            helper.make_node("StringConcat", ["a", "b"], ["c"], name="concat"),
            helper.make_node("Identity", ["x"], ["y"]),
        ],
        "strings",
        [
            helper.make_tensor_value_info("a", TensorProto.STRING, [2]),
            helper.make_tensor_value_info("b", TensorProto.STRING, [2]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
        ],
        [
            helper.make_tensor_value_info("c", TensorProto.STRING, [2]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    ops = op_map(ir.serde.deserialize_model(proto))
    assert ops["nodes"]["concat"]["bytes"] == 0 and ops["io_bytes"] == 0
    assert set(ops["nodes"]) == {"concat", "y"}  # an unnamed node goes by its output
