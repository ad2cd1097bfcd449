"""Shared fixtures: a small torch net with real BatchNorm statistics, an ONNX model built
directly with onnx.helper (independent of edgec's exporter), and an in-process CLI runner."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import settings
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgec
from edgec.cli import main

# Tuning databases and device sysroots go to a cache of this test run, never the user's: a test
# that tunes must see its trials run, not records left by an earlier run.
os.environ["EDGEC_CACHE"] = tempfile.mkdtemp(prefix="edgec-test-cache-")

# The same examples on every run: CI must not fail on a draw a developer never saw.
settings.register_profile("edgec", derandomize=True, print_blob=True)
settings.load_profile("edgec")


class TinyNet(nn.Module):
    """conv -> BN -> ReLU -> (block: conv + residual) -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(self.block(y) + y)
        return self.head(y.mean((2, 3)))


def with_bn_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN affine parameters and running statistics, then eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


@pytest.fixture
def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return with_bn_statistics(TinyNet())


def make_onnx_model(with_identity: bool = True) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> GlobalAveragePool -> Flatten -> Gemm, plus an
    Identity and a duplicated Relu (work for the cleanup passes)."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int, scale: float = 0.3) -> TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype("float32"), name)

    inits = [
        init("w", 8, 3, 3, 3),
        init("b", 8),
        numpy_helper.from_array((rng.random(8) + 0.5).astype("float32"), "gamma"),
        init("beta", 8),
        init("mean", 8),
        numpy_helper.from_array((rng.random(8) + 0.5).astype("float32"), "var"),
        init("fc_w", 5, 8),
        init("fc_b", 5),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], name="bn"
        ),
        helper.make_node("Relu", ["n"], ["r1"], name="relu_a"),
        helper.make_node("Relu", ["n"], ["r2"], name="relu_b"),
        helper.make_node("Add", ["r1", "r2"], ["s"], name="add"),
    ]
    last = "s"
    if with_identity:
        nodes.append(helper.make_node("Identity", ["s"], ["s_id"], name="identity"))
        last = "s_id"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "user" / "small.onnx"
    path.parent.mkdir()
    onnx.save(make_onnx_model(), path)
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (to prove nothing was modified or added)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `edgec ARGS` in this process; returns exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(int(exc.value.code or 0), captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compiled bundle of TinyNet, shared by read-only tests."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    edgec.compile(with_bn_statistics(TinyNet()), output=out, input_shapes={"x": (1, 3, 16, 16)})
    return out
