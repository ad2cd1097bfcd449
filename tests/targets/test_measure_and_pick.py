"""--backend auto: both back ends built, checked and timed; the faster within tolerance kept
(for `cpu`, TVM only where it can win)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import edgec
from edgec.core.errors import UnsupportedOpError
from edgec.passes.base import EdgecPass
from edgec.runtime.session import Session
from edgec.targets.tvm import TvmTarget
from tests.conftest import make_onnx_model


def test_auto_records_both_timings_and_keeps_the_faster(tmp_path: Path) -> None:
    target = "x86_64"
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    bundle = edgec.compile(path, target=target, output=tmp_path / "b")
    sel = bundle.manifest.selection
    cands = sel["candidates"]
    assert set(cands) == {"onnxruntime", "tvm"}
    for c in cands.values():
        assert c["p50_ms"] > 0 and c["runs"] >= 3 and c["max_rel_error"] <= 1e-4
    fastest = min(cands, key=lambda k: cands[k]["p50_ms"])
    assert sel["chosen"] == fastest == bundle.manifest.backend
    assert bundle.manifest.target == target
    files = sorted(p.name for p in bundle.path.iterdir())
    assert not [f for f in files if f.startswith(".candidate")]
    assert Session(bundle).verify().ok


def test_cpu_auto_skips_untuned_tvm_for_a_float_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Untuned float kernels cannot beat onnxruntime: no TVM build, and the manifest says why."""

    def never(self, model, options, stage):
        raise AssertionError("TVM was built")

    monkeypatch.setenv("EDGEC_CACHE", str(tmp_path / "cache"))  # no tuning records
    monkeypatch.setattr(TvmTarget, "compile", never)
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    bundle = edgec.compile(path, output=tmp_path / "b")
    sel = bundle.manifest.selection
    assert bundle.manifest.backend == "onnxruntime"
    assert sel["chosen"] in ("onnxruntime", "onnxruntime-source")
    assert "untuned TVM cannot win" in sel["candidates"]["tvm"]["skipped"]
    assert sel["candidates"]["onnxruntime"]["max_rel_error"] <= 1e-4


def test_cpu_auto_builds_tvm_for_binary_ops(tmp_path: Path) -> None:
    from edgec.core.binary_ops import has_binary_ops
    from edgec.targets.base import CompileOptions

    model = ir.from_proto(make_onnx_model())
    assert TvmTarget().reason_to_skip(model, CompileOptions(tune=4)) is None
    assert not has_binary_ops(model)
    model.graph.append(ir.node("BinaryMatMul", [model.graph.inputs[0]] * 2, domain="ai.edgec"))
    assert has_binary_ops(model)
    assert TvmTarget().reason_to_skip(model, CompileOptions()) is None


def test_a_back_end_that_fails_is_left_out_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(self, model, options, stage):
        raise UnsupportedOpError("TVM's ONNX importer cannot take this model: Foo")

    monkeypatch.setattr(TvmTarget, "compile", unsupported)
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    bundle = edgec.compile(path, target="x86_64", output=tmp_path / "b")
    assert bundle.manifest.backend == "onnxruntime"
    assert "Foo" in bundle.manifest.selection["candidates"]["tvm"]["failed"]


def test_explicit_backend_builds_one(tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    bundle = edgec.compile(path, output=tmp_path / "b", backend="tvm")
    assert (bundle.manifest.target, bundle.manifest.backend) == ("cpu", "tvm")
    assert bundle.manifest.selection == {}
    with pytest.raises(edgec.EdgecError, match="only the back end 'tvm'"):
        edgec.compile(path, target="arm64", output=tmp_path / "c", backend="onnxruntime")


def test_report_shows_the_choice(cli, tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    r = cli("compile", path, "-o", tmp_path / "b", "--report", "--target", "x86_64")
    assert r.code == 0, r.err
    assert "measure-and-pick" in r.out and "chosen by measurement" in r.out
    r = cli("compile", path, "-o", tmp_path / "c", "--report")
    assert r.code == 0, r.err
    assert "onnxruntime-source" in r.out and "tvm not built" in r.out


def test_tuning_options_need_a_tvm_back_end(cli, tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    r = cli("compile", path, "--backend", "onnxruntime", "--tune", "8", "-o", tmp_path / "b")
    assert r.code == 2 and "--tune" in r.err
    assert not (tmp_path / "b").exists()


def test_inspect_shows_the_tvm_build_and_the_choice(cli, tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    assert cli("compile", path, "-o", tmp_path / "b", "--target", "x86_64").code == 0
    r = cli("inspect", tmp_path / "b")
    assert r.code == 0 and "chosen by measurement" in r.out
    assert cli("compile", path, "--target", "arm64", "-o", tmp_path / "a").code == 0
    r = cli("inspect", tmp_path / "a")
    assert "aarch64-linux-gnu" in r.out and "+neon" in r.out


def test_a_fault_inside_tvm_leaves_tvm_out(tmp_path) -> None:
    """ONNX's Trilu case with a negative k: TVM's importer declares k a scalar and its VM
    refuses the 1-element tensor the model passes. auto keeps onnxruntime and says why; a
    fault in edgec's own code would still end the compile (tests/e2e: exit 1)."""
    from tests.conformance.cases import node_cases

    case = next(c for c in node_cases() if c.name == "test_tril_neg")
    bundle = edgec.compile(case.model, target="x86_64", output=tmp_path / "b", inputs=case.inputs)
    assert bundle.manifest.backend == "onnxruntime"
    failed = bundle.manifest.selection["candidates"]["tvm"]["failed"]
    assert failed.startswith("internal error in the tvm back end")


class _Slowdown(EdgecPass):
    """A pass that makes the model slower and changes nothing: y + 0 * sum(expand(x))."""

    name = "slowdown"

    def rewrite(self, model: ir.Model) -> int:
        graph = model.graph
        x, y = graph.inputs[0], graph.outputs[0]
        big = ir.Value(name="big_shape", const_value=ir.tensor(np.array([4096, 3, 16, 16])))
        graph.register_initializer(big)
        zero = ir.Value(name="slow_zero", const_value=ir.tensor(np.float32(0.0)))
        graph.register_initializer(zero)
        expand = ir.node("Expand", [x, big])
        total = ir.node("ReduceSum", [expand.outputs[0]], attributes={"keepdims": 0})
        scaled = ir.node("Mul", [total.outputs[0], zero])
        add = ir.node("Add", [y, scaled.outputs[0]])
        graph.extend([expand, total, scaled, add])
        name = y.name
        y.name = "y_before"
        add.outputs[0].name = name
        add.outputs[0].shape, add.outputs[0].type = y.shape, y.type
        graph.outputs[0] = add.outputs[0]
        return 1


def test_cpu_auto_keeps_the_source_graph_when_the_passes_slow_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never slower than onnxruntime on the export users have: the source graph (optimized
    as torch's default export is) is a candidate, kept when it is clearly faster."""
    from edgec.passes import pipelines

    monkeypatch.setitem(pipelines.PIPELINES, "cpu", lambda: [_Slowdown()])
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    bundle = edgec.compile(path, output=tmp_path / "b")
    sel = bundle.manifest.selection
    cands = sel["candidates"]
    assert cands["onnxruntime-source"]["p50_ms"] * 2 < cands["onnxruntime"]["p50_ms"]
    assert sel["chosen"] == "onnxruntime-source" and "slower" in sel["note"]
    ops = {n.op_type for n in onnx.load(bundle.path / "model.onnx").graph.node}
    assert "Expand" not in ops  # the source, as torch's default export optimizes it
    assert Session(bundle).verify().ok

    monkeypatch.setitem(pipelines.PIPELINES, "cpu", pipelines.cpu)  # the passes help
    bundle = edgec.compile(path, output=tmp_path / "c")
    assert "onnxruntime-source" in bundle.manifest.selection["candidates"]
    assert bundle.manifest.selection["chosen"] in ("onnxruntime", "onnxruntime-source")
