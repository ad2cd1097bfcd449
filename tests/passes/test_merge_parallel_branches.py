"""merge_parallel_branches: sums of conv / BN / identity / average-pool branches of one input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgec.passes.fold_batchnorm import FoldBatchnorm
from edgec.passes.merge_parallel_branches import MergeParallelBranches
from tests.passes.graphs import Graph, apply, check, explain, ops, reasons


def _sum(g: Graph, terms: list[str]) -> str:
    out = terms[0]
    for t in terms[1:]:
        out = g.op("Add", out, t)
    return out


def test_repvgg_block() -> None:
    """conv3x3 + conv1x1 + BN(x) (BNs of the convs already folded) -> one 3x3 conv."""
    g = Graph((1, 8, 10, 10))
    h = g.op("Relu", "x")
    y = _sum(g, [g.conv(h, 8, 8, 3), g.conv(h, 8, 8, 1, pad=0), g.bn(h, 8)])
    before = g.model(g.op("Relu", y))
    after, fired = apply(MergeParallelBranches(), before)
    assert fired == 1 and ops(after) == ["Relu", "Conv", "Relu"]
    check(before, after)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_mobileone_branches(groups: int) -> None:
    """k over-parameterized 3x3 branches, a 1x1 branch and an identity BN, any groups."""
    g = Graph((1, 8, 9, 9))
    h = g.op("Relu", "x")
    terms = [g.conv(h, 8, 8, 3, groups=groups) for _ in range(3)]
    terms += [g.conv(h, 8, 8, 1, groups=groups, pad=0), g.bn(h, 8)]
    before = g.model(_sum(g, terms))
    after, fired = apply(MergeParallelBranches(), before)
    assert fired == 1 and ops(after) == ["Relu", "Conv"]
    check(before, after)


def test_average_pool_and_identity_branches() -> None:
    g = Graph((1, 4, 8, 8))
    h = g.op("Relu", "x")
    pool = g.op("AveragePool", h, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    before = g.model(_sum(g, [g.conv(h, 4, 4, 5), pool, h]))
    after, fired = apply(MergeParallelBranches(), before)
    assert fired == 1 and ops(after) == ["Relu", "Conv"]
    check(before, after)


def test_strided_branches() -> None:
    g = Graph((1, 4, 8, 8))
    h = g.op("Relu", "x")
    before = g.model(_sum(g, [g.conv(h, 4, 6, 3, stride=2), g.conv(h, 4, 6, 1, stride=2, pad=0)]))
    after, fired = apply(MergeParallelBranches(), before)
    assert fired == 1 and ops(after) == ["Relu", "Conv"]
    check(before, after)


def test_conv_bn_branches_fold_then_merge() -> None:
    g = Graph((1, 6, 8, 8))
    h = g.op("Relu", "x")
    y = _sum(
        g, [g.bn(g.conv(h, 6, 6, 3, bias=False), 6), g.bn(g.conv(h, 6, 6, 1, pad=0, bias=False), 6)]
    )
    before = g.model(y)
    folded, _ = apply(FoldBatchnorm(), before)
    from onnx_ir import serde

    after, fired = apply(MergeParallelBranches(), serde.serialize_model(folded))
    assert fired == 1 and ops(after) == ["Relu", "Conv"]
    check(before, after)


def _why(model: object) -> list[str]:
    after, explained = explain(MergeParallelBranches(), model)  # type: ignore[arg-type]
    assert "Add" in ops(after)
    return reasons(explained, "merge_branches")


def test_mixed_strides_are_left_alone() -> None:
    """On a 1x1 map a stride-2 and a stride-1 conv give the same shape: a valid sum, but
    not one conv."""
    g = Graph((1, 4, 1, 1))
    h = g.op("Relu", "x")
    a = g.conv(h, 4, 4, 3, stride=2)
    b = g.conv(h, 4, 4, 1)
    assert _why(g.model(g.op("Add", a, b))) == ["mixed strides ((2, 2) and (1, 1))"]


def test_same_strides_merge() -> None:
    """The closest case that merges: both stride 2."""
    g = Graph((1, 4, 5, 5))
    h = g.op("Relu", "x")
    before = g.model(g.op("Add", g.conv(h, 4, 4, 3, stride=2), g.conv(h, 4, 4, 1, stride=2)))
    after, explained = explain(MergeParallelBranches(), before)
    assert ops(after) == ["Relu", "Conv"] and [c.fired for c in explained] == [True]
    check(before, after)


def test_different_inputs_are_left_alone() -> None:
    """Two convs on two different tensors are no parallel branches."""
    g = Graph((1, 4, 8, 8))
    a = g.conv(g.op("Relu", "x"), 4, 4, 3)
    b = g.conv(g.op("Sigmoid", "x"), 4, 4, 3)
    (reason,) = _why(g.model(g.op("Add", a, b)))
    assert reason.endswith("not 't0'") and "reads 't" in reason


def test_a_branch_read_elsewhere_is_left_alone() -> None:
    """A residual whose first conv also feeds the second: merging would lose its output."""
    g = Graph((1, 4, 8, 8))
    a = g.conv(g.op("Relu", "x"), 4, 4, 3)
    b = g.conv(a, 4, 4, 3)
    (reason,) = _why(g.model(g.op("Add", a, b)))
    assert reason.endswith("is also read elsewhere")


def test_uncentred_kernel_is_left_alone() -> None:
    """A 3x3 conv padded (0, 0, 2, 2): the same output size as the centred one, shifted."""
    g = Graph((1, 4, 8, 8))
    h = g.op("Relu", "x")
    a = g.conv(h, 4, 4, 3, pad=1)
    b = g.op("Conv", h, g.w(4, 4, 3, 3), kernel_shape=[3, 3], pads=[0, 0, 2, 2])
    (reason,) = _why(g.model(g.op("Add", a, b)))
    assert reason.endswith("is an uncentred kernel (pads != 1 on every side)")


@settings(max_examples=25, deadline=None)
@given(
    c_g=st.integers(1, 3),
    groups=st.integers(1, 3),
    stride=st.integers(1, 2),
    kernels=st.lists(st.sampled_from([1, 3, 5]), min_size=1, max_size=4),
    bn_identity=st.booleans(),
    plain_identity=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_property_branches(
    c_g: int,
    groups: int,
    stride: int,
    kernels: list[int],
    bn_identity: bool,
    plain_identity: bool,
    seed: int,
) -> None:
    c = c_g * groups
    g = Graph((1, c, 9, 9), seed=seed)
    h = g.op("Relu", "x")
    terms = [g.conv(h, c, c, k, groups=groups, stride=stride) for k in kernels]
    if stride == 1:
        terms += ([g.bn(h, c)] if bn_identity else []) + ([h] if plain_identity else [])
    if len(terms) < 2:
        terms.append(g.conv(h, c, c, 1, groups=groups, stride=stride, pad=0))
    before = g.model(_sum(g, terms))
    after, fired = apply(MergeParallelBranches(), before)
    assert fired == 1 and ops(after) == ["Relu", "Conv"]
    check(before, after)
