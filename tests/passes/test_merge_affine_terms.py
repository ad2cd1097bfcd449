"""The BatchNorms that models from a widely used model library keep and their own deploy code
removes by hand: FastViT's RepMixer, x + s * (mixer(x) - BN(x)) (merge_affine_terms), and
LeViT's Linear + BatchNorm1d on tokens flattened to 2-D (fold_repbn, `_bn_after_reshape`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgec.core.irutil import run_onnx
from edgec.frontend import prepare
from edgec.passes import PassManager, get_pipeline
from edgec.passes.fold_repbn import FoldRepbn
from edgec.passes.merge_affine_terms import MergeAffineTerms
from edgec.runtime.compare import rel_error
from tests.conftest import with_bn_statistics
from tests.passes.graphs import Graph, check, explain, ops, reasons


class RepMixer(nn.Module):
    """FastViT's token mixer in its training form: x + s * (BN(dwconv(x)) - BN(x))."""

    def __init__(self, c: int = 8, per_channel: bool = True) -> None:
        super().__init__()
        self.mixer = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c)
        )
        self.norm = nn.BatchNorm2d(c)
        shape = (c, 1, 1) if per_channel else ()
        self.layer_scale = nn.Parameter(
            torch.linspace(0.2, 1.1, c).reshape(shape) if per_channel else torch.tensor(0.6)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale * (self.mixer(x) - self.norm(x))


class LinearBN(nn.Module):
    """LeViT's Linear_BN: Linear, then BatchNorm1d on the tokens flattened to (B*N, C)."""

    def __init__(self, c: int = 12, d: int = 16) -> None:
        super().__init__()
        self.fc = nn.Linear(c, d, bias=False)
        self.bn = nn.BatchNorm1d(d)
        self.out = nn.Linear(d, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        y = self.bn(y.flatten(0, 1)).reshape_as(y)
        return self.out(torch.nn.functional.hardswish(y))


def _with_stats(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return with_bn_statistics(module)


def _compile(module: nn.Module, shape: tuple[int, ...]):
    prepared = prepare(module, input_shapes={"x": shape})
    PassManager(get_pipeline("cpu"), verify=True, tolerance=1e-5, inputs=prepared.inputs).run(
        prepared.model
    )
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    got = next(iter(run_onnx(prepared.model, {"x": x}).values()))
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    return [n.op_type for n in prepared.model.graph], rel_error(got, expected)


@pytest.mark.slow
@pytest.mark.parametrize("per_channel", [True, False])
def test_repmixer_becomes_one_depthwise_conv(per_channel: bool) -> None:
    torch.manual_seed(0)
    op_types, error = _compile(_with_stats(RepMixer(per_channel=per_channel)), (1, 8, 6, 6))
    assert op_types == ["Conv"], op_types  # FastViT's own reparameterize() gives the same
    assert error < 1e-5


def test_levit_linear_bn_folds_into_the_linear() -> None:
    torch.manual_seed(0)
    op_types, error = _compile(_with_stats(LinearBN()), (2, 5, 12))
    assert "BatchNormalization" not in op_types and "Mul" not in op_types, op_types
    assert error < 1e-5


def test_smallest_residual_with_bn_is_merged() -> None:
    """x + 0.5 * (relu(x) - BN(x)): one affine of x, plus 0.5 * relu(x)."""
    g = Graph((1, 4, 3, 3))
    x = g.op("Sigmoid", "x")
    d = g.op("Sub", g.op("Relu", x), g.bn(x, 4))
    y = g.op("Add", x, g.op("Mul", d, g.const(np.float32(0.5))))
    before = g.model(g.op("Tanh", y))
    after, seen = explain(MergeAffineTerms(), before)
    assert [c.rule for c in seen if c.fired] == ["affine_sum"]
    assert "BatchNormalization" not in ops(after), ops(after)
    check(before, after)


def test_combination_without_bn_is_left_alone() -> None:
    """x + 0.5 * (relu(x) - 2 * x) has no BatchNormalization: arithmetic, nothing to fold."""
    g = Graph((1, 4, 3, 3))
    x = g.op("Sigmoid", "x")
    d = g.op("Sub", g.op("Relu", x), g.op("Mul", x, g.const(np.float32(2.0))))
    y = g.op("Add", x, g.op("Mul", d, g.const(np.float32(0.5))))
    after, seen = explain(MergeAffineTerms(), g.model(g.op("Tanh", y)))
    assert ops(after).count("Mul") == 2 and seen == []  # not a candidate at all


def test_tree_read_elsewhere_is_left_alone() -> None:
    """The difference is also a graph output: its nodes cannot be merged away."""
    g = Graph((1, 4, 3, 3))
    x = g.op("Sigmoid", "x")
    d = g.op("Sub", g.op("Relu", x), g.bn(x, 4))
    y = g.op("Add", x, g.op("Mul", d, g.const(np.float32(0.5))))
    before = g.model(y, d)
    after, seen = explain(MergeAffineTerms(), before)
    assert "BatchNormalization" in ops(after)
    assert reasons(seen, "affine_sum") == [
        "no two terms of the sum are per-channel affines of one tensor (with a BN among them)"
    ]
    check(before, after)


def test_bn_on_a_reshape_that_moves_the_channels_stays() -> None:
    """BN1d over (M, C) after a Reshape whose input's last axis is not C: not the same axis."""
    g = Graph((2, 3, 8))
    y = g.op("Reshape", g.op("Relu", "x"), g.const(np.array([8, 6], np.int64)))
    before = g.model(g.op("Sigmoid", g.bn(y, 6)))
    after, seen = explain(FoldRepbn(), before)
    assert "BatchNormalization" in ops(after)
    assert reasons(seen, "bn_after_reshape") == [
        "the Reshape does not keep the channels on the last axis"
    ]
