"""fold_square_sum: ReduceSum(Pow(x, 2)) -> ReduceSumSquare(x), the same values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch
from torch import nn

from edgec.core.irutil import run_onnx
from edgec.passes.cleanup import InferShapes
from edgec.passes.fold_square_sum import FoldSquareSum
from edgec.passes.pipelines import cleanup


class _Distance(nn.Module):
    def __init__(self, power: int) -> None:
        super().__init__()
        self.power = power
        self.anchors = nn.Parameter(torch.randn(1, 5, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.unsqueeze(-2) - self.anchors) ** self.power).sum(-1)


def _folded(power: int, tmp_path: Path) -> tuple[ir.Model, FoldSquareSum, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    module, x = _Distance(power).eval(), torch.randn(3, 7, 8)
    torch.onnx.export(module, (x,), tmp_path / "d.onnx", dynamo=True)
    model = ir.from_proto(onnx.load(tmp_path / "d.onnx"))
    InferShapes()(model)
    cleanup()(model)
    fold = FoldSquareSum()
    fold.explain = True
    fold(model)
    got = next(iter(run_onnx(model, {"x": x.numpy()}).values()))
    return model, fold, got, module(x).detach().numpy()


def test_squared_distances_become_one_reduction(tmp_path: Path) -> None:
    model, fold, got, want = _folded(2, tmp_path)
    ops = [n.op_type for n in model.graph]
    assert fold.rewrites == 1 and "ReduceSumSquare" in ops and "Pow" not in ops
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_another_exponent_is_left_alone_with_its_reason(tmp_path: Path) -> None:
    model, fold, got, want = _folded(3, tmp_path)
    assert fold.rewrites == 0 and "Pow" in [n.op_type for n in model.graph]
    assert any("not the constant 2" in c.reason for c in fold.explained), fold.explained
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
