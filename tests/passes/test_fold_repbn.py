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
from tests.passes.graphs import Graph, apply, check, explain, ops, reasons


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


def test_sum_of_a_bn_and_another_tensor_says_why() -> None:
    """BN(h) + g: the other term reads another tensor, so the sum is no affine of h."""
    g = Graph((2, 6, 5))
    h = g.op("Relu", "x")
    y = g.op("Add", g.bn(h, 6), g.op("Sigmoid", "x"))
    after, seen = explain(FoldRepbn(), g.model(g.op("Tanh", y)))
    assert "BatchNormalization" in ops(after)
    assert reasons(seen, "repbn_sum") == [
        "the other term is not a per-channel affine of the BN's input, or is read elsewhere"
    ]


def _tokens(g: Graph, c: int) -> str:
    """(B, N, C) -> BN1d on (B, C, N) -> back: a BN on tokens, no sum."""
    t = g.op("Transpose", g.op("Relu", "x"), perm=[0, 2, 1])
    return g.op("Transpose", g.bn(t, c), perm=[0, 2, 1])


def test_bn_on_tokens_becomes_an_affine_and_the_transposes_go() -> None:
    g = Graph((2, 5, 6))
    before = g.model(g.op("Sigmoid", _tokens(g, 6)))
    after, seen = explain(FoldRepbn(), before)
    assert ops(after) == ["Relu", "Mul", "Add", "Sigmoid"]
    assert [c.rule for c in seen if c.fired] == ["bn_on_tokens", "cancel_transposes"]
    check(before, after)


def test_transposes_that_are_not_inverses_stay_and_say_why() -> None:
    g = Graph((2, 3, 4, 4))
    t = g.op("Transpose", g.op("Relu", "x"), perm=[0, 2, 3, 1])
    y = g.op("Transpose", g.bn(t, 4), perm=[0, 2, 3, 1])  # not (0, 3, 1, 2)
    before = g.model(g.op("Sigmoid", y))
    after, seen = explain(FoldRepbn(), before)
    assert ops(after).count("Transpose") == 2
    assert reasons(seen, "cancel_transposes") == ["the two Transposes are not each other's inverse"]
    check(before, after)


def test_bn_after_a_flattening_reshape_moves_before_it() -> None:
    """LeViT: Linear on (B, N, C) tokens, flattened to (B*N, C), BN1d -> affine on C first."""
    g = Graph((2, 3, 6))
    flat = g.op("Reshape", g.op("MatMul", "x", g.w(6, 4)), g.const(np.array([6, 4])))
    before = g.model(g.op("Relu", g.bn(flat, 4)))
    after, fired = apply(FoldRepbn(), before)
    assert fired == 1 and ops(after) == ["MatMul", "Mul", "Add", "Reshape", "Relu"]
    check(before, after)


def test_bn_after_a_reshape_that_moves_the_channels_says_why() -> None:
    g = Graph((2, 4, 3))
    flat = g.op("Reshape", g.op("Relu", "x"), g.const(np.array([6, 4])))  # last axis 3, not 4
    after, seen = explain(FoldRepbn(), g.model(g.op("Relu", g.bn(flat, 4))))
    assert "BatchNormalization" in ops(after)
    assert reasons(seen, "bn_after_reshape") == [
        "the Reshape does not keep the channels on the last axis"
    ]


def test_affine_on_the_wrong_axis_stays() -> None:
    """An affine along axis 1 of (B, N, C) before a MatMul on C cannot fold into it."""
    g = Graph((2, 6, 5))
    h = g.op("Relu", "x")
    y = g.op("Mul", h, g.const(np.arange(1, 7, dtype=np.float32).reshape(6, 1)))
    after, seen = explain(FoldChannelAffine(), g.model(g.op("MatMul", y, g.w(5, 3))))
    assert ops(after) == ["Relu", "Mul", "MatMul"]
    assert reasons(seen, "affine_into_next_matmul") == [
        "the affine does not run along the next MatMul's input features"
    ]


def test_affine_on_the_last_axis_folds_forwards() -> None:
    """The closest case that folds: the same scale along C, the MatMul's input features."""
    g = Graph((2, 6, 5))
    h = g.op("Relu", "x")
    y = g.op("Mul", h, g.const(np.arange(1, 6, dtype=np.float32)))
    before = g.model(g.op("MatMul", y, g.w(5, 3)))
    after, fired = apply(FoldChannelAffine(), before)
    assert fired == 1 and ops(after) == ["Relu", "MatMul"]
    check(before, after)


def test_shift_before_a_padded_conv_stays_and_says_why() -> None:
    g = Graph((1, 4, 6, 6))
    y = g.op(
        "Add", g.op("Relu", "x"), g.const(np.linspace(0.5, 2, 4, dtype=np.float32).reshape(4, 1, 1))
    )
    before = g.model(g.conv(y, 4, 5, 3, pad=1))
    after, seen = explain(FoldChannelAffine(), before)
    assert ops(after) == ["Relu", "Add", "Conv"]
    assert reasons(seen, "affine_into_next_conv") == [
        "a shift before a padded Conv: padding reads 0, not the shift"
    ]


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
    after, seen = explain(FoldChannelAffine(), g.model(g.op("MatMul", y, g.w(5, 3))))
    assert ops(after) == ["Relu", "Add", "MatMul"]
    assert reasons(seen, "affine_into_next_matmul") == [
        "the next MatMul's output is a graph output: a new bias Add would take its place"
    ]


def test_explaining_rewrites_what_not_explaining_does() -> None:
    """The near-miss search only matches: it leaves no trace (such as the uses of a value by a
    replacement it built and never inserted) that changes what the rules then rewrite."""
    g = Graph((2, 5, 6))
    before = g.model(g.op("Sigmoid", _tokens(g, 6)))
    plain, _ = apply(FoldRepbn(), before)
    explained, _ = explain(FoldRepbn(), before)
    assert ops(explained) == ops(plain) == ["Relu", "Mul", "Add", "Sigmoid"]
    for node in explained.graph:
        assert all(use.node.graph is explained.graph for v in node.inputs for use in v.uses())
