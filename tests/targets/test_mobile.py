"""Target `mobile`: the ORT-format model from onnxruntime's converter, the reduced build's
operator config from the converted model, the partition report, binary layers as exact int8,
the app package; each bundle checked against the reference with onnxruntime here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec.runtime import Bundle, load
from edgec.runtime.bundle import load_reference

PROVIDERS = {"NNAPI", "CoreML-NeuralNetwork", "CoreML-MLProgram", "XNNPACK"}


def _config_ops(bundle: Bundle) -> set[str]:
    """op names in the bundle's required_operators config."""
    names = set()
    for line in (bundle.path / bundle.manifest.artifacts["operators"]).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        _domain, _opset, ops = line.split(";", 2)
        for entry in ops.split("},") if "{" in ops else ops.split(","):
            for op in entry.split(","):
                name = op.split("{", 1)[0].strip()
                if name and not name.startswith('"'):
                    names.add(name)
    return names


def _check(bundle: Bundle) -> None:
    m = bundle.manifest
    assert (m.target, m.backend) == ("mobile", "onnxruntime")
    assert m.artifacts["model"] == "model.ort"
    assert (bundle.path / "model.ort").read_bytes()[4:8] == b"ORTM"  # the ORT format's mark
    assert not (bundle.path / "model.onnx").exists()
    opts = m.backend_options
    assert opts["format"] == "ort" and opts["target_platform"] == "arm"
    assert set(opts["partitions"]) == PROVIDERS
    for report in opts["partitions"].values():
        assert 0 <= report["supported_nodes"] <= report["nodes"]
    report = load(bundle.path).verify()  # the ORT model, run by this host's onnxruntime
    assert report.ok, report.errors


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vanillanet_5", "tiny_vit_5m", "slab_deit_tiny"])
def test_float_models_compile_for_mobile(model: str, tmp_path: Path) -> None:
    bundle = edgec.compile(model, target="mobile", output=tmp_path / model)
    _check(bundle)
    ops = _config_ops(bundle)
    assert "binary_form" not in bundle.manifest.backend_options
    if model == "vanillanet_5":
        # a kernel the converter's fusions introduce: the config comes from the .ort model
        assert "FusedConv" in ops and "Conv" in ops
        nnapi = bundle.manifest.backend_options["partitions"]["NNAPI"]
        assert nnapi["supported_nodes"] == nnapi["nodes"] and nnapi["partitions"] == 1
    else:  # attention as MatMuls (and Softmax), which the mobile providers take
        attention = bundle.manifest.backend_options["attention"]
        assert attention and {a["form"] for a in attention} <= {
            "decomposed",
            "kv_first",
            "qk_first",
        }
        assert "MultiHeadAttention" not in ops and "MatMul" in ops


@pytest.mark.slow
def test_binary_transformer_is_int8_and_smaller(tmp_path: Path) -> None:
    bundle = edgec.compile("bit_bert_tiny", target="mobile", output=tmp_path / "b")
    _check(bundle)
    opts = bundle.manifest.backend_options
    assert opts["binary_form"] == "int8 MatMulInteger" and opts["binary_ops"] > 0
    assert opts["size"]["ort_bytes"] * 3 < opts["size"]["float_weight_bytes"]
    ops = _config_ops(bundle)
    assert "MatMulInteger" in ops
    text = (bundle.path / "required_operators.config").read_text()
    assert "ai.edgec" not in text and "int8_t" in text  # type reduction kept the int8 kernels
    assert "staging" not in text  # names the bundle's model, not the scratch copy


@pytest.mark.slow
def test_runtime_style_replays_saved_optimizations(tmp_path: Path) -> None:
    bundle = edgec.compile(
        "vanillanet_5",
        target="mobile",
        output=tmp_path / "rt",
        optimization_style="runtime",
    )
    _check(bundle)
    opts = bundle.manifest.backend_options
    assert opts["optimization_style"] == "runtime" and opts["saved_runtime_optimizations"]
    # the saved fusion is applied at load: the same outputs as the fixed-style model
    inputs, expected = load_reference(bundle)
    got = load(bundle.path).run(inputs)
    name = bundle.manifest.outputs[0].name
    assert np.abs(got[name] - expected[name]).max() <= 1e-4 * np.abs(expected[name]).max()


def test_optimization_style_is_for_mobile_only(cli, onnx_file: Path, tmp_path: Path) -> None:
    r = cli("compile", str(onnx_file), "-o", str(tmp_path / "x"), "--optimization-style", "runtime")
    assert r.code == 2 and "applies to --target mobile only" in r.err
    assert not (tmp_path / "x").exists()


def test_small_onnx_model_for_mobile_and_its_package(cli, onnx_file: Path, tmp_path: Path) -> None:
    r = cli("compile", str(onnx_file), "--target", "mobile", "-o", str(tmp_path / "m"))
    assert r.code == 0, r.err
    bundle = Bundle.open(tmp_path / "m")
    _check(bundle)
    r = cli("inspect", str(tmp_path / "m"))
    assert r.code == 0 and "ORT format" in r.out and "XNNPACK" in r.out and "NNAPI" in r.out
    r = cli("package", str(tmp_path / "m"), "--embed", str(tmp_path / "app"))
    assert r.code == 0, r.err
    app = tmp_path / "app"
    expected = {
        "model.ort", "required_operators.config", "run_ort_model.cc", "build.sh",
        "build_onnxruntime.sh", "README.txt", "io.txt", "inputs", "expected",
    }  # fmt: skip
    assert {p.name for p in app.iterdir()} == expected
    assert (app / "model.ort").read_bytes() == (bundle.path / "model.ort").read_bytes()
    script = (app / "build_onnxruntime.sh").read_text()
    assert (
        "--include_ops_by_config" in script and "--enable_reduced_operator_type_support" in script
    )
    assert "--minimal_build extended" in script
    io = (app / "io.txt").read_text().split()
    assert io[0] == "input" and (app / "inputs" / f"{io[1]}.bin").is_file()
    r = cli("package", str(tmp_path / "m"), "--embed", str(tmp_path / "app2"), "--build")
    assert r.code == 2 and "ORT_HOME" in r.err and not (tmp_path / "app2").exists()


def test_targets_lists_mobile_with_what_is_verified(cli) -> None:
    r = cli("targets", "--json")
    rows = {row["name"]: row for row in json.loads(r.out)}
    assert rows["mobile"]["pipeline"][-3:] == ["lower_binary_ops", "cleanup", "infer_shapes"]
    assert "arm64 device" in rows["mobile"]["verified"]
