"""fold_batchnorm: BN folded into the linear op beside it, exactly, or left alone."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgec.passes.fold_batchnorm import FoldBatchnorm
from tests.passes.graphs import Graph, apply, check, ops


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("groups", "stride", "dilation", "pad"),
    [
        (1, 1, 1, 1),
        (2, 2, 1, 0),
        (8, 1, 2, 2),
        (4, 2, 1, 1),
    ],
)
def test_conv_then_bn(bias: bool, groups: int, stride: int, dilation: int, pad: int) -> None:
    g = Graph((1, 8, 12, 12))
    y = g.bn(g.conv("x", 8, 8, 3, groups, stride, pad, dilation, bias), 8)
    before = g.model(y)
    after, fired = apply(FoldBatchnorm(), before)
    assert fired == 1 and ops(after) == ["Conv"]
    check(before, after)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_then_bn(groups: int) -> None:
    g = Graph((1, 4, 6, 6))
    w = g.w(4, 6 // groups, 3, 3)
    y = g.op("ConvTranspose", "x", w, g.w(6), strides=[2, 2], group=groups)
    before = g.model(g.bn(y, 6))
    after, fired = apply(FoldBatchnorm(), before)
    assert fired == 1 and ops(after) == ["ConvTranspose"]
    check(before, after)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_then_bn(trans_b: int) -> None:
    g = Graph((3, 5))
    w = g.w(7, 5) if trans_b else g.w(5, 7)
    y = g.op("Gemm", "x", w, g.w(7), transB=trans_b, alpha=0.7, beta=1.3)
    before = g.model(g.bn(y, 7))
    after, fired = apply(FoldBatchnorm(), before)
    assert fired == 1 and ops(after) == ["Gemm"]
    check(before, after)


def test_matmul_add_then_bn() -> None:
    g = Graph((3, 5))
    y = g.op("Add", g.op("MatMul", "x", g.w(5, 7)), g.w(7))
    before = g.model(g.bn(y, 7))
    after, fired = apply(FoldBatchnorm(), before)
    assert fired == 1 and ops(after) == ["MatMul", "Add"]
    check(before, after)


def test_bn_then_unpadded_conv() -> None:
    g = Graph((1, 6, 9, 9))
    before = g.model(g.conv(g.bn("x", 6), 6, 4, 3, groups=2, pad=0))
    after, fired = apply(FoldBatchnorm(), before)
    assert fired == 1 and ops(after) == ["Conv"]
    check(before, after)


def test_bn_then_gemm() -> None:
    g = Graph((3, 5))
    before = g.model(g.op("Gemm", g.bn("x", 5), g.w(7, 5), g.w(7), transB=1))
    after, fired = apply(FoldBatchnorm(), before)
    assert fired == 1 and ops(after) == ["Gemm"]
    check(before, after)


def test_bn_before_padded_conv_is_left_alone() -> None:
    """Padding would read 0 where the folded conv expects the shift t: not exact."""
    g = Graph((1, 6, 9, 9))
    before = g.model(g.conv(g.bn("x", 6), 6, 4, 3, pad=1))
    after, fired = apply(FoldBatchnorm(), before)
    assert fired == 0 and ops(after) == ["BatchNormalization", "Conv"]


def test_conv_read_twice_is_left_alone() -> None:
    """The conv's raw output is needed elsewhere, so its weights cannot change."""
    g = Graph((1, 4, 8, 8))
    y = g.conv("x", 4, 4)
    before = g.model(g.op("Add", g.bn(y, 4), y))
    after, fired = apply(FoldBatchnorm(), before)
    assert fired == 0 and "BatchNormalization" in ops(after)


def test_bn_on_rank3_matmul_is_left_alone() -> None:
    """BN's channel axis 1 is not MatMul's feature axis for (B, N, C) tokens."""
    g = Graph((2, 5, 5))
    before = g.model(g.bn(g.op("MatMul", "x", g.w(5, 5)), 5))
    after, fired = apply(FoldBatchnorm(), before)
    assert fired == 0 and ops(after) == ["MatMul", "BatchNormalization"]


@settings(max_examples=25, deadline=None)
@given(
    cin_g=st.integers(1, 4),
    cout_g=st.integers(1, 4),
    groups=st.integers(1, 3),
    k=st.sampled_from([1, 3, 5]),
    stride=st.integers(1, 2),
    pad=st.integers(0, 2),
    bias=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3]),
    seed=st.integers(0, 10_000),
)
def test_property_conv_bn(
    cin_g: int,
    cout_g: int,
    groups: int,
    k: int,
    stride: int,
    pad: int,
    bias: bool,
    eps: float,
    seed: int,
) -> None:
    cin, cout = cin_g * groups, cout_g * groups
    g = Graph((1, cin, 11, 11), seed=seed)
    y = g.bn(g.conv("x", cin, cout, k, groups, stride, pad, 1, bias), cout, eps)
    before = g.model(y)
    after, fired = apply(FoldBatchnorm(), before)
    assert fired == 1 and ops(after) == ["Conv"]
    check(before, after)


@settings(max_examples=20, deadline=None)
@given(
    c=st.integers(1, 8),
    cout=st.integers(1, 6),
    k=st.sampled_from([1, 3]),
    seed=st.integers(0, 10_000),
)
def test_property_bn_conv_unpadded(c: int, cout: int, k: int, seed: int) -> None:
    g = Graph((1, c, 7, 7), seed=seed)
    before = g.model(g.conv(g.bn("x", c), c, cout, k, pad=0))
    after, fired = apply(FoldBatchnorm(), before)
    assert fired == 1
    check(before, after)
