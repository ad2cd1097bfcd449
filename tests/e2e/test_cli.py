"""The CLI: every verb, and every user error exits 2 with one line naming the thing at fault
while leaving the user's files untouched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.targets.onnxruntime import OnnxruntimeTarget
from tests.conftest import make_onnx_model, tree_digest

EDGEC = str(Path(sys.executable).with_name("edgec"))


def one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_compile_verify_run_profile_inspect(cli, onnx_file: Path, tmp_path: Path) -> None:
    before = tree_digest(onnx_file.parent)
    out = tmp_path / "out" / "small"
    r = cli("compile", onnx_file, "--target", "cpu", "-o", out, "--verify", "--report")
    assert r.code == 0, r.err
    assert "compiled" in r.out and "fold_constants" in r.out
    assert tree_digest(onnx_file.parent) == before

    r = cli("verify", out)
    assert r.code == 0 and "verified" in r.out

    r = cli("verify", out, "--json")
    data = json.loads(r.out)
    assert data["ok"] and data["max_rel_error"] <= data["tolerance"]

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = cli("run", out, "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", tmp_path / "preds")
    assert r.code == 0, r.err
    got = np.load(tmp_path / "preds" / "y.npy")
    import onnxruntime as ort

    expected = ort.InferenceSession(str(onnx_file)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    r = cli("profile", out, "--runs", "5", "--warmup", "1", "--threads", "1", "--json")
    report = json.loads(r.out)
    assert report["runs"] == 5 and report["p50_ms"] > 0 and report["threads"] == 1

    r = cli("profile", out, "--runs", "3", "--warmup", "0", "--per-op")
    assert r.code == 0 and "p99" in r.out and "time per op" in r.out
    assert "time per source module" in r.out and "roofline" in r.out

    r = cli("inspect", out, "--json")
    info = json.loads(r.out)
    assert info["stats"]["ops"]["Conv"] == 1 and info["stats"]["parameters"] > 0
    assert info["passes"] and info["inputs"][0]["name"] == "x"

    r = cli("inspect", onnx_file)
    assert r.code == 0 and "Conv" in r.out and "MACs" in r.out


def test_compile_json(cli, onnx_file: Path, tmp_path: Path) -> None:
    r = cli("compile", onnx_file, "-o", tmp_path / "b", "--json")
    data = json.loads(r.out)
    assert data["manifest"]["backend"] == "onnxruntime"
    assert data["manifest"]["files"]["model.onnx"]


def test_run_positional_and_npz(cli, tiny_bundle: Path, tmp_path: Path) -> None:
    x = np.zeros((1, 3, 16, 16), np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "in.npz", x=x)
    assert cli("run", tiny_bundle, "-i", tmp_path / "x.npy").code == 0
    r = cli("run", tiny_bundle, "-i", tmp_path / "in.npz")
    assert r.code == 0 and "(1, 5)" in r.out


@pytest.mark.slow
def test_targets_and_models(cli) -> None:
    r = cli("targets", "--json")
    targets = json.loads(r.out)
    assert targets[0]["name"] == "cpu" and targets[0]["backend"] == "onnxruntime"
    r = cli("models", "--json")
    models = {m["name"]: m for m in json.loads(r.out)}
    assert models["vanillanet_5"]["parameters"] == 22_328_800
    assert models["vanillanet_5"]["macs"] > 5e9


def test_help_and_version(cli) -> None:
    assert cli("--help").code == 0
    r = cli("--version")
    assert r.code == 0 and "edgec" in r.out


def _user_file(tmp_path: Path, name: str, data: bytes) -> Path:
    user = tmp_path / "user"
    user.mkdir(exist_ok=True)
    (user / name).write_bytes(data)
    return user / name


def _unsupported_op_model() -> bytes:
    model = make_onnx_model()
    model.graph.node[2].domain = "acme.ops"
    model.opset_import.append(onnx.helper.make_opsetid("acme.ops", 1))
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("missing.onnx", None, "model file '.*missing.onnx' does not exist"),
        (
            "garbage.onnx",
            b"\x00\x01 this is not a protobuf at all \xff" * 8,
            "is not a valid ONNX file",
        ),
        ("custom.onnx", "unsupported", r"unsupported op 'acme.ops::Relu' \(node 'relu_a'\)"),
    ],
)
def test_compile_user_errors(cli, tmp_path: Path, name: str, data, message: str) -> None:
    if data is None:
        (tmp_path / "user").mkdir()
        path = tmp_path / "user" / name
    else:
        payload = _unsupported_op_model() if data == "unsupported" else data
        path = _user_file(tmp_path, name, payload)
    before = tree_digest(tmp_path / "user")
    r = cli("compile", path, "-o", tmp_path / "out")
    assert r.code == 2
    import re

    assert re.search(message, one_line(r.err)), r.err
    assert tree_digest(tmp_path / "user") == before
    assert not (tmp_path / "out").exists()


def test_unknown_target(cli, onnx_file: Path, tmp_path: Path) -> None:
    r = cli("compile", onnx_file, "--target", "gpu9000", "-o", tmp_path / "o")
    assert r.code == 2
    assert "unknown target 'gpu9000'; known targets: cpu" in one_line(r.err)


def test_bad_input_shape_option(cli, onnx_file: Path, tmp_path: Path) -> None:
    r = cli("compile", onnx_file, "--input-shape", "x=1x3xZ", "-o", tmp_path / "o")
    assert r.code == 2 and "malformed input shape 'x=1x3xZ'" in one_line(r.err)


def test_run_wrong_input_shape(cli, tiny_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "img.npy"
    np.save(path, np.zeros((1, 3, 32, 32), np.float32))
    before = tree_digest(tmp_path)
    r = cli("run", tiny_bundle, "--input", f"x={path}")
    assert r.code == 2
    assert "input 'x' has shape (1, 3, 32, 32); expected (1, 3, 16, 16)" in one_line(r.err)
    assert tree_digest(tmp_path) == before


def test_run_missing_input_file(cli, tiny_bundle: Path, tmp_path: Path) -> None:
    r = cli("run", tiny_bundle, "--input", f"x={tmp_path / 'none.npy'}")
    assert r.code == 2 and "input file" in one_line(r.err) and "none.npy" in r.err


def test_verify_tampered_bundle(cli, tiny_bundle: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    data = bytearray((b / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / "model.onnx").write_bytes(bytes(data))
    r = cli("verify", b)
    assert r.code == 2
    assert "checksum mismatch for 'model.onnx'" in one_line(r.err)


def test_verify_not_a_bundle(cli, tmp_path: Path) -> None:
    r = cli("verify", tmp_path)
    assert r.code == 2 and "not an edgec bundle" in one_line(r.err)


def test_interrupted_compile_leaves_nothing(
    cli, onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self, model, options, stage):
        (stage / "model.onnx").write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxruntimeTarget, "compile", interrupted)
    out = tmp_path / "out"
    out.mkdir()
    r = cli("compile", onnx_file, "-o", out / "b")
    assert r.code == 130 and "nothing was written" in r.err
    assert list(out.iterdir()) == []


def test_interrupted_recompile_keeps_old_bundle(
    cli, tiny_bundle: Path, onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    before = tree_digest(b)

    def interrupted(self, model, options, stage):
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxruntimeTarget, "compile", interrupted)
    assert cli("compile", onnx_file, "-o", b).code == 130
    assert tree_digest(b) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "user"]  # no staging left


def test_internal_fault_exits_1(
    cli, onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self, model, options, stage):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(OnnxruntimeTarget, "compile", broken)
    r = cli("compile", onnx_file, "-o", tmp_path / "b")
    assert r.code == 1
    assert "internal error (a bug in edgec): ZeroDivisionError: a bug" in one_line(r.err)
    assert not (tmp_path / "b").exists()


FACTORY = """
import torch

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
"""


@pytest.mark.slow
def test_console_script_factory_source(tmp_path: Path) -> None:
    """The installed `edgec` script, as a user runs it, on a file.py:factory source."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "net.py").write_text(textwrap.dedent(FACTORY))
    before = tree_digest(user)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": ""}
    result = subprocess.run(
        [
            EDGEC,
            "compile",
            f"{user / 'net.py'}:build",
            "--input-shape",
            "input=1x3x8x8",
            "--target",
            "cpu",
            "-o",
            str(tmp_path / "net"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert tree_digest(user) == before
    result = subprocess.run(
        [EDGEC, "verify", str(tmp_path / "net")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "verified" in result.stdout


@pytest.mark.slow
def test_console_script_user_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [EDGEC, "compile", str(tmp_path / "nope.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "does not exist" in one_line(result.stderr)


@pytest.mark.slow
def test_compile_builtin_with_weights(cli, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from edgec import models

    user = tmp_path / "user"
    user.mkdir()
    trained = models.create("tiny_vit_5m", seed=5)
    save_file(trained.state_dict(), str(user / "tv5.safetensors"))
    before = tree_digest(user)
    r = cli(
        "compile",
        "tiny_vit_5m",
        "--weights",
        user / "tv5.safetensors",
        "--backend",
        "onnxruntime",
        "-o",
        tmp_path / "b",
    )
    assert r.code == 0, r.err
    assert tree_digest(user) == before
    from edgec.runtime import load

    session = load(tmp_path / "b")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = trained(torch.from_numpy(x)).numpy()
    got = next(iter(session.run({"x": x}).values()))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_compile_builtin_with_mismatched_weights(cli, tmp_path: Path) -> None:
    import torch

    path = tmp_path / "wrong.pt"
    torch.save({"head.weight": torch.zeros(3, 3)}, path)
    before = path.read_bytes()
    r = cli(
        "compile",
        "tiny_vit_5m",
        "--weights",
        path,
        "--backend",
        "onnxruntime",
        "-o",
        tmp_path / "b",
    )
    assert r.code == 2
    assert "weights" in one_line(r.err) and "lack 'patch_embed.seq.0.c.weight'" in r.err
    assert path.read_bytes() == before
    assert not (tmp_path / "b").exists()


def test_weights_for_a_non_builtin_source(cli, onnx_file: Path, tmp_path: Path) -> None:
    r = cli("compile", onnx_file, "--weights", tmp_path / "w.pt", "-o", tmp_path / "b")
    assert r.code == 2 and "built-in models only" in one_line(r.err)


def test_binarize_reports_layers_and_inspect_shows_bits(
    cli, onnx_file: Path, tmp_path: Path
) -> None:
    before = tree_digest(onnx_file.parent)
    out = tmp_path / "bin"
    r = cli("compile", onnx_file, "-o", out, "--backend", "onnxruntime", "--binarize", "^fc$")
    assert r.code == 0, r.err
    assert "--binarize '^fc$'" in r.out and "binarized model against the float model" in r.out
    manifest = json.loads((out / "manifest.json").read_text())
    layers = manifest["reference"]["binarization"]["layers"]
    assert [layer["name"] for layer in layers] == ["fc"] and layers[0]["max_rel_error"] > 0
    assert manifest["reference"]["max_rel_error"] <= 1e-4  # against the binarized model
    r = cli("inspect", out)
    assert r.code == 0 and "1 binarized layers" in r.out and "bits each" in r.out
    assert "x smaller" in r.out
    assert tree_digest(onnx_file.parent) == before


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("(", "not a regular expression"), ("^nothing$", "matches no Linear or 1x1 Conv")],
)
def test_binarize_user_errors(
    cli, onnx_file: Path, tmp_path: Path, pattern: str, message: str
) -> None:
    r = cli(
        "compile",
        onnx_file,
        "-o",
        tmp_path / "b",
        "--backend",
        "onnxruntime",
        "--binarize",
        pattern,
    )
    assert r.code == 2
    assert message in one_line(r.err)
    assert not (tmp_path / "b").exists()


EXITING = """
import sys
import argparse

def build():
    sys.exit(0)

def parse():
    argparse.ArgumentParser(prog="train.py").parse_args(["--lr"])
"""


@pytest.mark.parametrize(("factory", "says"), [("build", "sys.exit(0)"), ("parse", "sys.exit(2)")])
def test_a_factory_cannot_end_edgec(cli, tmp_path: Path, factory: str, says: str) -> None:
    """A factory that exits (argparse does on bad arguments) is a mistake in the source: exit 2,
    one line, argparse's usage not printed as if it were edgec's."""
    script = tmp_path / "net.py"
    script.write_text(EXITING)
    r = cli("compile", f"{script}:{factory}", "-o", tmp_path / "b")
    assert r.code == 2 and says in r.err and "usage:" not in r.err
    assert len(r.err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_negative_threads_is_a_usage_error(cli, tiny_bundle: Path) -> None:
    r = cli("profile", tiny_bundle, "--threads", "-2")
    assert r.code == 2 and "--threads" in r.err


def test_huge_declared_input_is_named(cli, tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 200000, 100000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 200000, 100000])],
    )
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    r = cli("compile", path, "-o", tmp_path / "b")
    assert r.code == 2 and "input 'x'" in r.err and "224 GiB" in r.err
    assert cli("inspect", path).code == 0  # inspecting needs no sample


def test_output_under_a_file_is_refused_before_compiling(cli, onnx_file: Path, tmp_path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    r = cli("compile", onnx_file, "-o", blocker / "bundle")
    assert r.code == 2 and "not a writable folder" in r.err
    assert blocker.read_text() == "mine"


def _bn_model(path: Path) -> Path:
    """stem: Conv -> BN (folds); block: BN -> padded Conv, BN with a nonzero shift (cannot)."""
    rng = np.random.default_rng(0)

    def arr(name: str, *shape: int, positive: bool = False) -> onnx.TensorProto:
        a = rng.random(shape) + 0.5 if positive else rng.standard_normal(shape)
        return numpy_helper.from_array(a.astype(np.float32), name)

    inits = [arr("w1", 8, 3, 3, 3), arr("b1", 8), arr("w2", 8, 8, 3, 3), arr("b2", 8)]
    for k in ("1", "2"):
        inits += [arr("g" + k, 8, positive=True), arr("s" + k, 8), arr("m" + k, 8)]
        inits += [arr("v" + k, 8, positive=True)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="stem.conv", pads=[1] * 4),
        helper.make_node(
            "BatchNormalization", ["c1", "g1", "s1", "m1", "v1"], ["n1"], name="stem.bn"
        ),
        helper.make_node("Relu", ["n1"], ["r"], name="stem.act"),
        helper.make_node(
            "BatchNormalization", ["r", "g2", "s2", "m2", "v2"], ["n2"], name="block.bn"
        ),
        helper.make_node("Conv", ["n2", "w2", "b2"], ["y"], name="block.conv", pads=[1] * 4),
    ]
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_compile_explain_says_what_fired_and_why_not(cli, tmp_path: Path) -> None:
    model = _bn_model(tmp_path / "bn.onnx")
    r = cli("compile", model, "--explain", "--backend", "onnxruntime", "-o", tmp_path / "b")
    assert r.code == 0, r.err
    lines = [line.strip() for line in r.out.splitlines()]
    assert "fired      bn_into_conv: stem.conv (Conv), stem.bn (BatchNormalization)" in lines
    assert (
        "left alone bn_into_next_conv: block.bn (BatchNormalization), block.conv (Conv): "
        "BN before a padded Conv with a nonzero shift: not exact"
    ) in lines
    assert sum("bn_into_next_conv" in line for line in lines) == 1  # once, not per round


def test_explain_one_pass_json_and_inspect(cli, tmp_path: Path) -> None:
    model = _bn_model(tmp_path / "bn.onnx")
    r = cli("inspect", model, "--explain", "fold_batchnorm", "--json")
    assert r.code == 0, r.err
    passes = json.loads(r.out)["passes"]
    explained = [c for p in passes for c in p.get("explained") or []]
    assert {p["name"] for p in passes if "explained" in p} == {"fold_batchnorm"}
    assert {(c["rule"], c["fired"]) for c in explained} == {
        ("bn_into_conv", True),
        ("bn_into_next_conv", False),
    }
    assert not (tmp_path / "out").exists()  # inspect writes nothing
    r = cli("inspect", model, "--explain", "fold_everything")
    assert r.code == 2 and "runs no pass 'fold_everything'" in r.err


def test_inspect_explain_of_a_bundle(cli, tiny_bundle: Path) -> None:
    r = cli("inspect", tiny_bundle, "--explain")
    assert r.code == 2 and "compiled without --explain" in r.err
