"""merge_serial_linear: conv pairs and MatMul chains become one op when that is cheaper."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgec.passes.merge_serial_linear import MergeSerialLinear
from tests.passes.graphs import Graph, apply, check, explain, ops, reasons


@pytest.mark.parametrize(
    ("k", "stride", "pad", "bias"),
    [(4, 4, 0, True), (3, 1, 1, False), (1, 1, 0, True), (3, 2, 1, True)],
)
def test_kxk_then_pointwise(k: int, stride: int, pad: int, bias: bool) -> None:
    g = Graph((1, 3, 16, 16))
    y = g.conv(g.conv("x", 3, 8, k, stride=stride, pad=pad, bias=bias), 8, 8, 1, pad=0)
    before = g.model(y)
    after, fired = apply(MergeSerialLinear(), before)
    assert fired == 1 and ops(after) == ["Conv"]
    assert after.graph.node(0).inputs[1].shape.dims == (8, 3, k, k)
    check(before, after)


@pytest.mark.parametrize(
    ("k", "stride", "pad", "bias"), [(3, 1, 0, True), (3, 2, 1, False), (5, 1, 2, False)]
)
def test_pointwise_then_kxk(k: int, stride: int, pad: int, bias: bool) -> None:
    g = Graph((1, 3, 12, 12))  # 3 -> 8 -> 4: merged 4*3*k^2 < 8*3 + 4*8*k^2
    y = g.conv(g.conv("x", 3, 8, 1, pad=0, bias=bias), 8, 4, k, stride=stride, pad=pad)
    before = g.model(y)
    after, fired = apply(MergeSerialLinear(), before)
    assert fired == 1 and ops(after) == ["Conv"]
    check(before, after)


def test_padded_after_biased_pointwise_is_left_alone() -> None:
    """The padding of the second conv would read 0 where the merged conv reads b1."""
    g = Graph((1, 4, 12, 12))
    y = g.conv(g.conv("x", 4, 3, 1, pad=0, bias=True), 3, 6, 3, pad=1)
    after, seen = explain(MergeSerialLinear(), g.model(y))
    assert ops(after) == ["Conv", "Conv"]
    assert reasons(seen, "merge_conv_pair") == [
        "a padded Conv after a biased 1x1: padding reads 0, not the bias"
    ]


def test_padded_after_unbiased_pointwise_merges() -> None:
    """The closest case that merges: no bias on the 1x1, so its padding reads what it should."""
    g = Graph((1, 4, 12, 12))
    y = g.conv(g.conv("x", 4, 8, 1, pad=0, bias=False), 8, 3, 3, pad=1)
    before = g.model(y)
    after, seen = explain(MergeSerialLinear(), before)
    assert ops(after) == ["Conv"] and [c.rule for c in seen if c.fired] == ["merge_conv_pair"]
    check(before, after)


def test_bottleneck_is_left_alone() -> None:
    """64 -> 4 -> 64 with 3x3 kernels: the merge would cost 64*64*9 against 64*4*9 + 4*64."""
    g = Graph((1, 64, 8, 8))
    y = g.conv(g.conv("x", 64, 4, 3), 4, 64, 1, pad=0)
    after, seen = explain(MergeSerialLinear(), g.model(y))
    assert ops(after).count("Conv") == 2
    assert reasons(seen, "merge_conv_pair") == [
        "the merged Conv would cost more multiply-adds than the pair"
    ]


def test_grouped_first_conv_is_left_alone() -> None:
    g = Graph((1, 8, 8, 8))
    y = g.conv(g.conv("x", 8, 8, 3, groups=8), 8, 8, 1, pad=0)
    after, seen = explain(MergeSerialLinear(), g.model(y))
    assert ops(after).count("Conv") == 2
    assert reasons(seen, "merge_conv_pair") == [
        "the first Conv is grouped: merging would make it dense"
    ]


def test_two_kxk_convs_are_left_alone() -> None:
    g = Graph((1, 4, 8, 8))
    y = g.conv(g.conv("x", 4, 4, 3), 4, 4, 3)
    after, seen = explain(MergeSerialLinear(), g.model(y))
    assert ops(after).count("Conv") == 2
    assert reasons(seen, "merge_conv_pair") == [
        "neither Conv is a plain 1x1 (stride 1, no padding, no groups)"
    ]


def test_nonlinearity_between_is_left_alone() -> None:
    g = Graph((1, 4, 8, 8))
    y = g.conv(g.op("Relu", g.conv("x", 4, 4, 3)), 4, 4, 1, pad=0)
    after, seen = explain(MergeSerialLinear(), g.model(y))
    assert ops(after).count("Conv") == 2 and not any(c.fired for c in seen)
    assert all("Relu" not in c.ops for c in seen)  # no candidate spans the nonlinearity


def test_conv_pair_with_a_shared_intermediate_says_why() -> None:
    """The first conv's output is read elsewhere too: merging would have to keep it."""
    g = Graph((1, 4, 8, 8))
    h = g.conv("x", 4, 4, 3)
    y = g.conv(h, 4, 4, 1, pad=0)
    after, seen = explain(MergeSerialLinear(), g.model(y, g.op("Relu", h)))
    assert ops(after).count("Conv") == 2
    assert any("other uses" in r for r in reasons(seen, "merge_conv_pair"))


@pytest.mark.parametrize("second", ["MatMul", "MatMulAdd", "Gemm"])
def test_dense_chain(second: str) -> None:
    g = Graph((3, 6))
    h = g.op("Add", g.op("MatMul", "x", g.w(6, 5)), g.w(5))
    if second == "MatMul":
        y = g.op("MatMul", h, g.w(5, 4))
    elif second == "MatMulAdd":
        y = g.op("Add", g.op("MatMul", h, g.w(5, 4)), g.w(4))
    else:
        y = g.op("Gemm", h, g.w(4, 5), g.w(4), transB=1, alpha=0.5)
    before = g.model(y)
    after, fired = apply(MergeSerialLinear(), before)
    assert fired == 1 and ops(after) == ["MatMul", "Add"]
    check(before, after)


def test_dense_bottleneck_is_left_alone() -> None:
    g = Graph((3, 16))
    y = g.op("MatMul", g.op("MatMul", "x", g.w(16, 2)), g.w(2, 16))
    after, seen = explain(MergeSerialLinear(), g.model(y))
    assert ops(after) == ["MatMul", "MatMul"]
    assert reasons(seen, "merge_dense_pair") == [
        "the merged product would cost more multiply-adds than the pair"
    ]


def test_product_by_a_runtime_value_is_left_alone() -> None:
    g = Graph((3, 6))
    h = g.op("MatMul", "x", g.w(6, 6))
    y = g.op("MatMul", h, g.op("Transpose", "x"))
    after, seen = explain(MergeSerialLinear(), g.model(y))
    assert ops(after).count("MatMul") == 2
    assert reasons(seen, "merge_dense_pair") == [
        "the second product's weight or bias is not a float32 constant"
    ]


def test_biased_product_after_a_gemm_merges_into_one() -> None:
    """The biased second form wins over the bare one (whose root, the MatMul, comes first)."""
    g = Graph((3, 6))
    h = g.op("Gemm", "x", g.w(4, 6), g.w(4), transB=1, beta=0.5)
    y = g.op("Add", g.w(3), g.op("MatMul", h, g.w(4, 3)))  # the bias first
    before = g.model(g.op("Relu", y))
    after, seen = explain(MergeSerialLinear(), before)
    assert ops(after) == ["MatMul", "Add", "Relu"]
    assert [c.rule for c in seen if c.fired] == ["merge_dense_pair"]
    check(before, after)


@settings(max_examples=25, deadline=None)
@given(
    cin=st.integers(1, 6),
    mid=st.integers(4, 12),
    cout=st.integers(1, 6),
    k=st.sampled_from([1, 2, 3, 5]),
    stride=st.integers(1, 3),
    pad=st.integers(0, 2),
    seed=st.integers(0, 10_000),
)
def test_property_conv_pairs(
    cin: int, mid: int, cout: int, k: int, stride: int, pad: int, seed: int
) -> None:
    g = Graph((1, cin, 13, 13), seed=seed)
    y = g.conv(g.conv("x", cin, mid, k, stride=stride, pad=pad), mid, cout, 1, pad=0)
    before = g.model(y)
    after, fired = apply(MergeSerialLinear(), before)
    cheaper = cout * cin * k * k <= mid * cin * k * k + cout * mid
    assert fired == int(cheaper)  # merged only when it costs no more than the pair
    check(before, after)
