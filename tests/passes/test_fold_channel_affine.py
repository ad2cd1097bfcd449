"""fold_channel_affine's rules, each with its smallest matching case and the closest case it
leaves alone (with the reason). More cases, from RepBN's side, are in test_fold_repbn.py."""

from __future__ import annotations

import numpy as np

from edgec.passes.fold_channel_affine import FoldChannelAffine
from tests.passes.graphs import Graph, check, explain, ops, reasons


def _vec(n: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    v = np.linspace(0.5, 2.0, n, dtype=np.float32)
    return v if shape is None else v.reshape(shape)


def test_scale_with_the_constant_first_folds_into_the_conv() -> None:
    """Mul(a, conv(x)): the commuted form of the pattern."""
    g = Graph((1, 3, 6, 6))
    y = g.op("Mul", g.const(_vec(4, (4, 1, 1))), g.conv("x", 3, 4, 3))
    before = g.model(g.op("Relu", y))
    after, seen = explain(FoldChannelAffine(), before)
    assert ops(after) == ["Conv", "Relu"]
    assert [c.rule for c in seen if c.fired] == ["affine_into_conv"]
    check(before, after)


def test_scale_of_a_conv_read_elsewhere_stays() -> None:
    g = Graph((1, 3, 6, 6))
    h = g.conv("x", 3, 4, 3)
    y = g.op("Mul", h, g.const(_vec(4, (4, 1, 1))))
    after, seen = explain(FoldChannelAffine(), g.model(g.op("Relu", y), g.op("Sigmoid", h)))
    assert ops(after).count("Mul") == 1
    assert any("other uses" in r for r in reasons(seen, "affine_into_conv"))


def test_shift_after_a_biased_linear_joins_its_bias() -> None:
    g = Graph((2, 3, 6))
    h = g.op("Add", g.op("MatMul", "x", g.w(6, 4)), g.w(4))
    before = g.model(g.op("Relu", g.op("Sub", h, g.const(_vec(4)))))
    after, seen = explain(FoldChannelAffine(), before)
    assert ops(after) == ["MatMul", "Add", "Relu"]
    assert [c.rule for c in seen if c.fired] == ["affine_into_biased_matmul"]
    check(before, after)


def test_scale_after_a_linear_on_the_token_axis_stays() -> None:
    """(B, N, C) scaled along N: not the Linear's output features."""
    g = Graph((2, 3, 6))
    h = g.op("Add", g.op("MatMul", "x", g.w(6, 4)), g.w(4))
    y = g.op("Mul", h, g.const(_vec(3, (3, 1))))
    after, seen = explain(FoldChannelAffine(), g.model(g.op("Relu", y)))
    assert ops(after) == ["MatMul", "Add", "Mul", "Relu"]
    assert reasons(seen, "affine_into_biased_matmul") == [
        "the affine does not run along the MatMul's last axis"
    ]


def test_shift_before_a_biased_linear_joins_its_bias() -> None:
    g = Graph((2, 6))
    y = g.op("Add", g.op("Relu", "x"), g.const(_vec(6)))
    before = g.model(g.op("Add", g.op("MatMul", y, g.w(6, 3)), g.w(3)))
    after, seen = explain(FoldChannelAffine(), before)
    assert ops(after) == ["Relu", "MatMul", "Add"]
    assert [c.rule for c in seen if c.fired] == ["affine_into_next_biased_matmul"]
    check(before, after)


def test_scale_varying_along_two_axes_stays() -> None:
    g = Graph((1, 4, 3, 3))
    y = g.op("Mul", g.op("Relu", "x"), g.const(np.ones((4, 3, 1), np.float32) * 2))
    after, seen = explain(FoldChannelAffine(), g.model(g.conv(y, 4, 4, 1, pad=0)))
    assert ops(after) == ["Relu", "Mul", "Conv"]
    assert reasons(seen, "affine_into_next_conv") == [
        "the constant varies along more than one axis, or broadcasts x"
    ]


def test_scale_before_a_grouped_conv_stays() -> None:
    g = Graph((1, 4, 5, 5))
    y = g.op("Mul", g.op("Relu", "x"), g.const(_vec(4, (4, 1, 1))))
    after, seen = explain(FoldChannelAffine(), g.model(g.conv(y, 4, 4, 3, groups=2)))
    assert ops(after) == ["Relu", "Mul", "Conv"]
    assert reasons(seen, "affine_into_next_conv") == ["the next Conv is grouped"]


def test_residual_add_is_no_candidate() -> None:
    """conv(x) + x is no affine by a constant: nothing is reported for it."""
    g = Graph((1, 4, 5, 5))
    y = g.op("Add", g.conv("x", 4, 4, 3), "x")
    after, seen = explain(FoldChannelAffine(), g.model(g.op("Relu", y)))
    assert ops(after) == ["Conv", "Add", "Relu"] and seen == []
