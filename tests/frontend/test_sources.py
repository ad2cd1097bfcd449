"""Each source kind lowers to the IR, and its bundle matches an independent reference
(torch eager for torch sources, onnxruntime on the unmodified file for ONNX) within 1e-5."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import edgec
from edgec import frontend
from edgec.core.errors import ModelFormatError, OptionError, SourceError, UnsupportedOpError
from edgec.core.specs import TensorSpec
from edgec.frontend import load, prepare
from edgec.frontend.sources import parse_dynamic_axis, parse_input_shape
from edgec.runtime.compare import rel_error
from edgec.runtime.session import Session
from tests.conftest import make_onnx_model, tree_digest

TOL = 1e-5
X = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)


def eager(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(
    ("text", "name", "spec"),
    [
        ("x=1x3x224x224", "x", TensorSpec.requested((1, 3, 224, 224))),
        ("1x3x8x8", None, TensorSpec.requested((1, 3, 8, 8))),
        ("ids=2x128:int64", "ids", TensorSpec.requested((2, 128), "int64")),
    ],
)
def test_parse_input_shape(text: str, name: str | None, spec: TensorSpec) -> None:
    assert parse_input_shape(text) == (name, spec)


@pytest.mark.parametrize("text", ["x=", "x=1x3xa", "x=1x3:complex", "=1x3"])
def test_parse_input_shape_rejects(text: str) -> None:
    with pytest.raises(OptionError, match=r"input shape"):
        parse_input_shape(text)


def test_parse_dynamic_axis() -> None:
    assert parse_dynamic_axis("x:0") == ("x", 0, "x_dim0")
    assert parse_dynamic_axis("x:0=batch") == ("x", 0, "batch")
    with pytest.raises(OptionError, match=r"dynamic axis"):
        parse_dynamic_axis("x")


def test_module_with_input_shapes(tiny_net: torch.nn.Module, tmp_path: Path) -> None:
    bundle = edgec.compile(tiny_net, output=tmp_path / "b", input_shapes={"x": (1, 3, 16, 16)})
    got = Session(bundle).run({"x": X})
    assert rel_error(next(iter(got.values())), eager(tiny_net, X)) < TOL


def test_module_with_example_inputs(tiny_net: torch.nn.Module, tmp_path: Path) -> None:
    bundle = edgec.compile(tiny_net, output=tmp_path / "b", example_inputs=(torch.from_numpy(X),))
    ref_in, ref_out = Session(bundle).reference()
    np.testing.assert_array_equal(ref_in["x"], X)
    assert rel_error(next(iter(ref_out.values())), eager(tiny_net, X)) == 0.0


def test_module_needs_shapes(tiny_net: torch.nn.Module) -> None:
    with pytest.raises(SourceError, match=r"input shapes"):
        load(tiny_net)


def test_module_unknown_input_name(tiny_net: torch.nn.Module) -> None:
    with pytest.raises(OptionError, match=r"'image'.*not an input.*x"):
        load(tiny_net, input_shapes={"image": (1, 3, 16, 16)})


def test_exported_program(tiny_net: torch.nn.Module, tmp_path: Path) -> None:
    program = torch.export.export(tiny_net, (torch.from_numpy(X),))
    bundle = edgec.compile(program, output=tmp_path / "b")
    got = Session(bundle).run([X])
    assert rel_error(next(iter(got.values())), eager(tiny_net, X)) < TOL


def test_node_names_keep_module_path(tiny_net: torch.nn.Module) -> None:
    model = load(tiny_net, input_shapes=["x=1x3x16x16"])
    names = [n.name for n in model.graph]
    assert any(n.startswith("stem.0/") for n in names), names
    assert any(n.startswith("head/") for n in names), names
    assert len(set(names)) == len(names)


def _ort_reference(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_onnx_file(onnx_file: Path, tmp_path: Path) -> None:
    before = tree_digest(onnx_file.parent)
    bundle = edgec.compile(onnx_file, output=tmp_path / "b")
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = Session(bundle).run({"x": x})["y"]
    assert rel_error(got, _ort_reference(onnx_file, x)) < TOL
    assert tree_digest(onnx_file.parent) == before
    assert bundle.manifest.source["kind"] == "onnx"


def test_onnx_file_with_external_data(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    path = user / "ext.onnx"
    onnx.save(
        make_onnx_model(),
        path,
        save_as_external_data=True,
        location="ext.weights",
        size_threshold=0,
    )
    assert (user / "ext.weights").is_file()
    before = tree_digest(user)
    bundle = edgec.compile(path, output=tmp_path / "b")
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert rel_error(Session(bundle).run([x])["y"], _ort_reference(path, x)) < TOL
    assert tree_digest(user) == before


def test_onnx_missing_external_data(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(
        make_onnx_model(), path, save_as_external_data=True, location="w.bin", size_threshold=0
    )
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelFormatError, match=r"external data file 'w.bin'.*missing"):
        load(path)


def test_onnx_in_memory_is_not_modified() -> None:
    proto = make_onnx_model()
    before = proto.SerializeToString()
    frontend.prepare(proto)
    assert proto.SerializeToString() == before


def test_onnx_dynamic_axis(onnx_file: Path, tmp_path: Path) -> None:
    bundle = edgec.compile(onnx_file, output=tmp_path / "b", dynamic_axes=["x:0=batch"])
    assert bundle.manifest.inputs[0].shape[0] == "batch"


def test_onnx_input_shape_conflict(onnx_file: Path) -> None:
    with pytest.raises(OptionError, match=r"static size 16 on axis 2"):
        load(onnx_file, input_shapes=["x=1x3x32x32"])


def test_torch_dynamic_axis(tiny_net: torch.nn.Module, tmp_path: Path) -> None:
    bundle = edgec.compile(
        tiny_net, output=tmp_path / "b", input_shapes=["x=2x3x16x16"], dynamic_axes=["x:0=batch"]
    )
    assert bundle.manifest.inputs[0].shape == ("batch", 3, 16, 16)
    x3 = np.random.default_rng(4).standard_normal((3, 3, 16, 16)).astype(np.float32)
    got = next(iter(Session(bundle).run([x3]).values()))
    assert got.shape == (3, 5)
    assert rel_error(got, eager(tiny_net, x3)) < TOL


FACTORY = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

def build():
    torch.manual_seed(7)
    return Net().eval()

def build_with_inputs():
    return build(), (torch.ones(2, 12),)
"""


def test_file_factory(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "net.py").write_text(textwrap.dedent(FACTORY))
    before = tree_digest(user)
    bundle = edgec.compile(
        f"{user / 'net.py'}:build", output=tmp_path / "b", input_shapes=["x=2x12"]
    )
    assert tree_digest(user) == before  # no __pycache__ beside the user's file
    ns: dict[str, object] = {}
    exec(textwrap.dedent(FACTORY), ns)
    module = ns["build"]()  # type: ignore[operator]
    x = np.random.default_rng(5).standard_normal((2, 12)).astype(np.float32)
    assert rel_error(Session(bundle).run([x])["linear_1"], eager(module, x)) < TOL


def test_file_factory_returning_inputs(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(textwrap.dedent(FACTORY))
    prepared = prepare(f"{tmp_path / 'net.py'}:build_with_inputs")
    np.testing.assert_array_equal(prepared.inputs["x"], np.ones((2, 12), np.float32))


def test_module_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    bundle = edgec.compile("userpkg.nets:build", output=tmp_path / "b", input_shapes=["x=1x12"])
    assert bundle.manifest.source["kind"] == "factory"
    sys.modules.pop("userpkg.nets", None)
    sys.modules.pop("userpkg", None)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("nope.py:build", "model file 'nope.py' does not exist"),
        ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
        ("resnet_999", "unknown source 'resnet_999'"),
    ],
)
def test_bad_sources(source: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        load(source)


def test_factory_missing_attribute(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(textwrap.dedent(FACTORY))
    with pytest.raises(SourceError, match=r"has no attribute 'make'"):
        load(f"{tmp_path / 'net.py'}:make")


@pytest.mark.slow
def test_builtin_name(tmp_path: Path) -> None:
    """A built-in model at a small resolution; the full-size one is in tests/models."""
    prepared = prepare("vanillanet_5", input_shapes=["x=1x3x64x64"])
    assert prepared.source["kind"] == "builtin"
    model = edgec.models.create("vanillanet_5")
    assert (
        rel_error(next(iter(prepared.outputs.values())), eager(model, prepared.inputs["x"])) == 0.0
    )


def test_unsupported_standard_op(tmp_path: Path) -> None:
    model = make_onnx_model()
    model.graph.node[2].op_type = "Frobnicate"
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises((UnsupportedOpError, ModelFormatError), match=r"Frobnicate"):
        load(path)


def test_unsupported_custom_domain(tmp_path: Path) -> None:
    model = make_onnx_model()
    model.graph.node[2].domain = "acme.ops"
    model.opset_import.append(onnx.helper.make_opsetid("acme.ops", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedOpError, match=r"'acme.ops::Relu' \(node 'relu_a'\)"):
        load(path)


class DataDependent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on a value: torch.export cannot trace it
            return x * 2
        return x


def test_unexportable_module() -> None:
    with pytest.raises(SourceError, match=r"torch.export cannot export 'DataDependent'"):
        load(DataDependent(), input_shapes={"x": (2, 3)})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("vanillanet_5", "out/vanillanet_5-cpu"),
        ("models/net.onnx", "out/net-cpu"),
        ("src/net.py:build", "out/net-build-cpu"),
        ("pkg.mod:build", "out/pkg.mod-build-cpu"),
    ],
)
def test_default_output(source: str, expected: str) -> None:
    assert edgec.api.default_output(source, "cpu") == Path(expected)
