"""Target x86_64 (TVM Relax, untuned): bundles of a conv net and a small transformer match
onnxruntime on the unmodified model within 1e-4 relative."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import edgec
from edgec import frontend
from edgec.runtime import load
from edgec.runtime.compare import rel_error
from edgec.runtime.session import Session
from tests.conftest import make_onnx_model

pytestmark = pytest.mark.slow  # TVM builds


class TinyTransformer(nn.Module):
    """Two pre-norm blocks: LayerNorm, softmax attention (4 heads), GELU MLP; mean-pooled head."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm1": nn.LayerNorm(dim),
                    "attn": nn.MultiheadAttention(dim, heads, batch_first=True),
                    "norm2": nn.LayerNorm(dim),
                    "mlp": nn.Sequential(
                        nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
                    ),
                }
            )
            for _ in range(depth)
        )
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            h = b["norm1"](x)
            x = x + b["attn"](h, h, h, need_weights=False)[0]
            x = x + b["mlp"](b["norm2"](x))
        return self.head(x.mean(dim=1))


def test_conv_net_from_onnx_matches_onnxruntime(tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    bundle = edgec.compile(path, target="x86_64", output=tmp_path / "b", backend="tvm")
    m = bundle.manifest
    assert (m.target, m.backend, m.artifacts["model"]) == ("x86_64", "tvm", "model.so")
    assert m.backend_options["target"]["kind"] == "llvm"
    assert m.backend_options["tuning"]["trials_run"] == 0
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert rel_error(Session(bundle).run({"x": x})["y"], expected) < 1e-4


def test_transformer_matches_onnxruntime_and_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    prepared = frontend.prepare(model, input_shapes=["x=2x16x32"])
    from edgec.core.irutil import run_onnx

    x = np.random.default_rng(1).standard_normal((2, 16, 32)).astype(np.float32)
    expected = next(iter(run_onnx(prepared.model, {"x": x}).values()))  # the unmodified model
    bundle = edgec.compile(
        model, target="x86_64", output=tmp_path / "b", input_shapes=["x=2x16x32"], backend="tvm"
    )
    got = next(iter(Session(bundle).run({"x": x}).values()))
    assert rel_error(got, expected) < 1e-4
    with torch.no_grad():
        assert rel_error(got, model(torch.from_numpy(x)).numpy()) < 1e-4
    assert load(tmp_path / "b").verify().ok


def test_tvm_bundle_runs_without_torch(tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    edgec.compile(path, target="x86_64", output=tmp_path / "b", backend="tvm")
    script = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx_ir", "onnxscript"):
                    raise ImportError(name)
        sys.meta_path.insert(0, Block())
        from edgec.runtime import load
        report = load(sys.argv[1]).verify()
        assert report.ok, report
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_recompiling_into_the_same_folder_loads_the_new_library(tmp_path: Path) -> None:
    """The dynamic loader keeps a library by its path: a bundle rewritten in place must not run
    the old code in a process that loaded it before."""
    from onnx import TensorProto, helper

    def model(op: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            [helper.make_node(op, ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    x = np.array([-2.0, -0.5, 0.5, 2.0], np.float32)
    edgec.compile(model("Relu"), "x86_64", tmp_path / "b", backend="tvm")
    assert np.array_equal(load(tmp_path / "b").run(x)["y"], np.maximum(x, 0))
    edgec.compile(model("Neg"), "x86_64", tmp_path / "b", backend="tvm")
    assert np.array_equal(load(tmp_path / "b").run(x)["y"], -x)
