"""fold_repbn and fold_channel_affine: RepBN becomes one affine and vanishes into a Linear."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import edgec
from edgec.frontend import prepare
from edgec.models.slab import RepBN
from edgec.passes import PassManager, get_pipeline
from edgec.passes.fold_channel_affine import FoldChannelAffine
from edgec.passes.fold_repbn import FoldRepbn
from edgec.runtime.compare import rel_error
from tests.conftest import with_bn_statistics
from tests.passes.graphs import Graph, apply, check, ops


class RepBNThenLinear(nn.Module):
    """Linear -> RepBN -> Linear on tokens (B, N, C), with a GELU after."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.fc0 = nn.Linear(c, c)
        self.norm = RepBN(c)
        self.fc1 = nn.Linear(c, 2 * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.fc1(self.norm(torch.relu(self.fc0(x)))))


class RepBNAfterLinear(nn.Module):
    """Linear (with bias) -> RepBN -> GELU: the affine folds backwards, bias included."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.fc0 = nn.Linear(c, c)
        self.norm = RepBN(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.norm(self.fc0(x)))


def _model(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    m = with_bn_statistics(cls())
    for mod in m.modules():
        if isinstance(mod, RepBN):
            mod.alpha.data.fill_(0.7)
    return m.eval()


@pytest.mark.parametrize("cls", [RepBNThenLinear, RepBNAfterLinear])
def test_repbn_folds_into_a_linear(cls: type[nn.Module]) -> None:
    module = _model(cls)
    prepared = prepare(module, input_shapes={"x": (2, 10, 16)})
    model = prepared.model
    PassManager(get_pipeline("cpu"), verify=True, tolerance=1e-5, inputs=prepared.inputs).run(model)
    op_types = [n.op_type for n in model.graph]
    assert "BatchNormalization" not in op_types and "Transpose" not in op_types
    assert op_types.count("Mul") == 0  # the affine went into a Linear
    x = np.random.default_rng(1).standard_normal((2, 10, 16)).astype(np.float32)
    from edgec.core.irutil import run_onnx

    got = next(iter(run_onnx(model, {"x": x}).values()))
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert rel_error(got, expected) < 1e-5


def test_sum_of_affines_without_bn_is_left_alone() -> None:
    """x * 2 + x * 3 is arithmetic, not RepBN: no BatchNormalization in the sum."""
    g = Graph((1, 4, 5))
    h = g.op("Relu", "x")
    y = g.op(
        "Add", g.op("Mul", h, g.const(np.float32(2.0))), g.op("Mul", h, g.const(np.float32(3.0)))
    )
    after, fired = apply(FoldRepbn(), g.model(y))
    assert fired == 0 and ops(after).count("Mul") == 2


def test_bn_plus_scaled_identity_is_one_affine() -> None:
    g = Graph((2, 6, 5))
    h = g.op("Relu", "x")
    y = g.op("Add", g.bn(h, 6), g.op("Mul", g.const(np.float32(0.4)), h))
    before = g.model(g.op("Sigmoid", y))
    after, fired = apply(FoldRepbn(), before)
    assert fired == 1 and ops(after) == ["Relu", "Mul", "Add", "Sigmoid"]
    check(before, after)


def test_affine_on_the_wrong_axis_stays() -> None:
    """An affine along axis 1 of (B, N, C) before a MatMul on C cannot fold into it."""
    g = Graph((2, 6, 5))
    h = g.op("Relu", "x")
    y = g.op("Mul", h, g.const(np.arange(1, 7, dtype=np.float32).reshape(6, 1)))
    after, fired = apply(FoldChannelAffine(), g.model(g.op("MatMul", y, g.w(5, 3))))
    assert fired == 0 and ops(after) == ["Relu", "Mul", "MatMul"]


def test_affine_after_conv_folds_backwards() -> None:
    g = Graph((1, 4, 6, 6))
    y = g.conv("x", 4, 5, 3)
    y = g.op(
        "Add",
        g.op("Mul", y, g.const(np.linspace(0.5, 2, 5, dtype=np.float32).reshape(5, 1, 1))),
        g.const(np.float32(0.3)),
    )
    before = g.model(g.op("Relu", y))
    after, fired = apply(FoldChannelAffine(), before)
    assert fired == 2 and ops(after) == ["Conv", "Relu"]
    check(before, after)


@pytest.mark.slow
def test_slab_models_lose_every_batchnorm(tmp_path) -> None:
    bundle = edgec.compile("slab_deit_tiny", output=tmp_path / "b", backend="onnxruntime")
    after = bundle.manifest.stats["after"]["ops"]
    assert "BatchNormalization" not in after
    assert after.get("Mul", 0) <= 1  # every RepBN folded into its Linear but the final norm's


def test_shift_before_matmul_gets_a_bias() -> None:
    g = Graph((2, 5))
    y = g.op("Add", g.op("Relu", "x"), g.const(np.linspace(-1, 1, 5, dtype=np.float32)))
    before = g.model(g.op("Sigmoid", g.op("MatMul", y, g.w(5, 3))))
    after, fired = apply(FoldChannelAffine(), before)
    assert fired == 1 and ops(after) == ["Relu", "MatMul", "Add", "Sigmoid"]
    check(before, after)


def test_shift_before_matmul_output_is_left_alone() -> None:
    """A new bias Add would take the graph output's place (and its name)."""
    g = Graph((2, 5))
    y = g.op("Add", g.op("Relu", "x"), g.const(np.linspace(-1, 1, 5, dtype=np.float32)))
    after, fired = apply(FoldChannelAffine(), g.model(g.op("MatMul", y, g.w(5, 3))))
    assert fired == 0 and ops(after) == ["Relu", "Add", "MatMul"]
