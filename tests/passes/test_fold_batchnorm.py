"""fold_batchnorm: BN folded into the linear op beside it, exactly, or left alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgec.passes.fold_batchnorm import FoldBatchnorm
from tests.passes.graphs import Graph, apply, check, explain, ops, reasons


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
    after, explained = explain(FoldBatchnorm(), before)
    assert ops(after) == ["BatchNormalization", "Conv"]
    assert reasons(explained, "bn_into_next_conv") == [
        "BN before a padded Conv with a nonzero shift: not exact"
    ]


def test_bn_with_zero_shift_before_padded_conv_folds() -> None:
    """The closest case that folds: the same padded conv, with BN's shift t = 0."""
    g = Graph((1, 6, 9, 9))
    bn = g.op(
        "BatchNormalization",
        "x",
        g.const(np.full(6, 2.0, np.float32)),
        g.const(np.zeros(6, np.float32)),
        g.const(np.zeros(6, np.float32)),
        g.const(np.ones(6, np.float32)),
    )
    before = g.model(g.conv(bn, 6, 4, 3, pad=1))
    after, explained = explain(FoldBatchnorm(), before)
    assert ops(after) == ["Conv"]
    assert [(c.rule, c.ops, c.fired) for c in explained] == [
        ("bn_into_next_conv", ("BatchNormalization", "Conv"), True)
    ]
    check(before, after)


def test_conv_read_twice_is_left_alone() -> None:
    """The conv's raw output is needed elsewhere, so its weights cannot change."""
    g = Graph((1, 4, 8, 8))
    y = g.conv("x", 4, 4)
    before = g.model(g.op("Add", g.bn(y, 4), y))
    after, explained = explain(FoldBatchnorm(), before)
    assert "BatchNormalization" in ops(after)
    assert reasons(explained, "bn_into_conv") == [
        "Matched nodes have other uses preventing replacement."
    ]


def test_bn_on_rank3_matmul_is_left_alone() -> None:
    """BN's channel axis 1 is not MatMul's feature axis for (B, N, C) tokens."""
    g = Graph((2, 5, 5))
    y = g.op("Add", g.op("MatMul", "x", g.w(5, 5)), g.w(5))
    before = g.model(g.bn(y, 5))
    after, explained = explain(FoldBatchnorm(), before)
    assert ops(after) == ["MatMul", "Add", "BatchNormalization"]
    assert reasons(explained, "bn_into_matmul_add") == [
        "MatMul input is not 2-D: BN's channel axis 1 is not its features"
    ]


def test_bn_in_training_mode_is_left_alone() -> None:
    g = Graph((1, 4, 8, 8))
    y = g.conv("x", 4, 4)
    bn = g.bn(y, 4)
    g.nodes[-1].attribute.append(helper.make_attribute("training_mode", 1))
    g.nodes[-1].output.extend(["running_mean", "running_var"])
    before = g.model(bn, opset=15)
    after, explained = explain(FoldBatchnorm(), before)
    assert ops(after) == ["Conv", "BatchNormalization"]
    assert reasons(explained, "bn_into_conv") == [
        "BatchNormalization in training mode (batch statistics): not an affine"
    ]


def test_bn_with_statistics_from_an_input_is_left_alone() -> None:
    g = Graph((3, 5))
    y = g.op("Gemm", "x", g.w(5, 7), g.w(7))
    stats = [g.const((np.random.default_rng(1).random(7) + 0.5).astype(np.float32))] * 3
    g.nodes.append(helper.make_node("BatchNormalization", [y, "x_var", *stats], ["bn"]))
    before = g.model("bn")
    before.graph.input.append(helper.make_tensor_value_info("x_var", TensorProto.FLOAT, [7]))
    after, explained = explain(FoldBatchnorm(), before)
    assert ops(after) == ["Gemm", "BatchNormalization"]
    assert reasons(explained, "bn_into_gemm") == ["x_var is not a constant initializer."]


def test_bn_before_a_transposing_gemm_is_left_alone() -> None:
    g = Graph((3, 5))
    before = g.model(g.op("Gemm", g.bn("x", 5), g.w(3, 7), transA=1))
    after, explained = explain(FoldBatchnorm(), before)
    assert ops(after) == ["BatchNormalization", "Gemm"]
    assert reasons(explained, "bn_into_next_gemm") == [
        "the Gemm transposes its input (transA): BN's channels are its rows"
    ]


def test_float16_layers_are_left_alone() -> None:
    """edgec folds float32 layers only (a float16 model keeps its own weights)."""
    g = Graph((1, 4, 8, 8))
    y = g.conv("x", 4, 4)
    before = g.model(g.bn(y, 4))
    for init in before.graph.initializer:
        if init.name == before.graph.node[0].input[1]:
            half = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(half, init.name))
    _, explained = explain(FoldBatchnorm(), before)
    assert reasons(explained, "bn_into_conv") == ["the Conv's weight is not a float32 constant"]


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


def test_two_folds_into_biasless_convs_keep_their_own_biases() -> None:
    """Each fold writes a bias of the same default name; both must stay (onnxscript registers
    initializers by name and would overwrite the first, leaving a layer reading the other's)."""
    g = Graph((1, 3, 6, 6))
    y = g.conv(g.bn(g.op("Relu", "x"), 3), 3, 4, 3, pad=0, bias=False)
    y = g.conv(g.bn(g.op("Relu", y), 4), 4, 4, 3, pad=0, bias=False)
    before = g.model(y)
    after, fired = apply(FoldBatchnorm(), before)
    assert fired == 2 and ops(after) == ["Relu", "Conv", "Relu", "Conv"]
    biases = [n.inputs[2] for n in after.graph if n.op_type == "Conv"]
    assert biases[0] is not biases[1] and biases[0].name != biases[1].name
    check(before, after)


def test_conv_whose_weight_another_conv_shares_is_left_alone() -> None:
    """Tied weights: onnxscript's rule declines (folding would have to copy the weight)."""
    g = Graph((1, 3, 6, 6))
    w = g.w(4, 3, 3, 3)
    a = g.op("Conv", "x", w, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    b = g.op("Conv", "x", w, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    before = g.model(g.op("Add", g.bn(a, 4), b))
    after, seen = explain(FoldBatchnorm(), before)
    assert ops(after) == ["Conv", "Conv", "BatchNormalization", "Add"]
    (why,) = reasons(seen, "bn_into_conv")
    assert why.startswith(f"Initializer '{w}' is used by another node")
