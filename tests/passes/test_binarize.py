"""binarize_linear, binarize_matmul and binarize_layers on the smallest graphs that match and
the closest that do not. Recognized binary computation must compute exactly what it did."""

from __future__ import annotations

import numpy as np
import pytest

from edgec.core.binary_ops import DOMAIN, unpack_bits
from edgec.passes.binarize_embedding import BinarizeEmbedding
from edgec.passes.binarize_layers import BinarizeLayers
from edgec.passes.binarize_linear import BinarizeLinear
from edgec.passes.binarize_matmul import BinarizeMatmul
from tests.passes.graphs import Graph, apply, check, explain, ops, reasons

OPSET = 17  # the bodies work from opset 13 on


def _signs(g: Graph, *shape: int) -> np.ndarray:
    return np.where(g.rng.standard_normal(shape) >= 0, 1.0, -1.0).astype(np.float32)


def _sign_code(g: Graph, x: str, offset: bool = True) -> str:
    moved = g.op("Add", x, g.w(16, scale=0.1)) if offset else x
    ge = g.op("GreaterOrEqual", moved, g.const(np.float32(0.0)))
    return g.op("Where", ge, g.const(np.float32(1.0)), g.const(np.float32(-1.0)))


def _step_code(g: Graph, x: str, alpha: float) -> str:
    div = g.op("Div", x, g.const(np.float32(alpha)))
    rnd = g.op("Round", div)
    return g.op("Min", g.op("Max", rnd, g.const(np.float32(0.0))), g.const(np.float32(1.0)))


def test_bit_linear_becomes_one_exact_binary_linear() -> None:
    g = Graph((2, 5, 16))
    codes = _signs(g, 16, 24)
    y = g.op("MatMul", _sign_code(g, "x"), g.const(codes))
    y = g.op("Add", g.op("Mul", y, g.const(np.float32(0.37))), g.w(24))
    before = g.model(y, opset=OPSET)
    after, n = apply(BinarizeLinear(), before)
    assert n == 1 and ops(after) == ["BinaryLinear"]
    node = next(iter(after.graph))
    assert node.domain == DOMAIN
    bits = node.inputs[1].const_value.numpy()
    assert bits.dtype == np.uint64 and bits.shape == (24, 1)
    np.testing.assert_array_equal(unpack_bits(bits, 16), codes.T > 0)
    assert check(before, after, tol=0.0) == 0.0  # the same arithmetic: exact


def test_step_form_with_per_channel_levels() -> None:
    g = Graph((3, 100), seed=1)
    levels = (g.rng.random(8) + 0.5).astype(np.float32)
    w = _signs(g, 100, 8) * levels  # +-s_n per output channel
    y = g.op("MatMul", _step_code(g, g.op("Relu", "x"), 0.5), g.const(w))
    before = g.model(y, opset=OPSET)
    after, n = apply(BinarizeLinear(), before)
    assert n == 1 and ops(after) == ["Relu", "BinaryLinear"]
    check(before, after, tol=1e-6)  # s applied after the sum: rounding only


LEFT_ALONE = {
    "three_levels": "a weight channel takes more than two values, or two that are not +-s",
    "offset_weight": "a weight channel takes more than two values, or two that are not +-s",
    "float_input": "two-level weights but an input that is not binarized: not a bit op",
}


@pytest.mark.parametrize("case", sorted(LEFT_ALONE))
def test_linear_left_alone(case: str) -> None:
    g = Graph((2, 16), seed=2)
    w = _signs(g, 16, 8)
    if case == "three_levels":
        w[0, 0] = 0.0
    if case == "offset_weight":
        w = w + 0.5  # two values per channel, but not +-s
    x = "x" if case == "float_input" else _sign_code(g, "x")
    before = g.model(g.op("MatMul", x, g.const(w)), opset=OPSET)
    after, seen = explain(BinarizeLinear(), before)
    assert "BinaryLinear" not in ops(after)
    assert reasons(seen, "binary_linear") == [LEFT_ALONE[case]]


def test_binary_matmul_reads_codes_through_transposes() -> None:
    g = Graph((2, 3, 6, 16), seed=3)
    q = _sign_code(g, "x", offset=False)
    k = g.op("Transpose", _sign_code(g, g.op("Mul", "x", g.w(16))), perm=[0, 1, 3, 2])
    p = g.op("Cast", g.op("Greater", g.op("MatMul", q, k), g.const(np.float32(0.0))), to=1)
    v = _step_code(g, g.op("Relu", "x"), 0.7)
    out = g.op("MatMul", p, v)  # {0, 1} x {0, 1}
    before = g.model(out, opset=OPSET)
    after, n = apply(BinarizeMatmul(), before)
    assert n == 2 and ops(after).count("BinaryMatMul") == 2 and "MatMul" not in ops(after)
    assert check(before, after, tol=0.0) == 0.0


def test_binary_matmul_needs_both_sides() -> None:
    g = Graph((2, 6, 16), seed=4)
    out = g.op("MatMul", _sign_code(g, "x"), g.op("Transpose", "x", perm=[0, 2, 1]))
    after, seen = explain(BinarizeMatmul(), g.model(out, opset=OPSET))
    assert ops(after).count("MatMul") == 1
    assert reasons(seen, "binary_matmul") == ["only one operand is binarized"]


def test_binary_matmul_needs_one_batch_shape() -> None:
    """Both sides binarized, but B broadcasts over A's batch: the kernel does not."""
    g = Graph((2, 6, 16), seed=4)
    b = g.op("Transpose", _sign_code(g, g.op("ReduceMean", "x", axes=[0], keepdims=0)))
    out = g.op("MatMul", _sign_code(g, "x", offset=False), b)
    after, seen = explain(BinarizeMatmul(), g.model(out, opset=OPSET))
    assert ops(after).count("MatMul") == 1
    assert reasons(seen, "binary_matmul") == [
        "the operands' ranks or batch shapes differ (no broadcasting)"
    ]


def test_post_training_binarization_reports_each_layer() -> None:
    g = Graph((4, 8, 6, 6), seed=5)
    y = g.conv("x", 8, 16, k=1)
    y = g.op("Relu", y)
    y = g.conv(y, 16, 16, k=3)  # not 1x1: left alone
    y = g.op("ReduceMean", y, axes=[2, 3], keepdims=0)
    y = g.op("Gemm", y, g.w(16, 10), g.w(10))
    before = g.model(y, opset=OPSET)
    import onnx_ir as ir

    from edgec.core.irutil import input_specs, random_inputs

    feeds = random_inputs(input_specs(ir.serde.deserialize_model(before)), seed=0)
    binarizer = BinarizeLayers(r".*", feeds)
    after, seen = explain(binarizer, before)
    assert ops(after).count("BinaryLinear") == 2 and ops(after).count("Conv") == 1
    assert [c.fired for c in seen] == [False, True, True]
    assert reasons(seen, "binarize_layer") == [
        "a Conv that is not 1x1 (binarized layers are Linear and 1x1 Conv)"
    ]
    assert [la.kind for la in binarizer.layers] == ["conv1x1", "linear"]
    for layer in binarizer.layers:  # a binarized layer is an approximation, not a copy
        assert 0.01 < layer.max_rel_error < 2.0
    # the report is the layer as it runs: re-running the binarized graph gives the same model
    from edgec.core.irutil import run_onnx

    got = run_onnx(ir.serde.serialize_model(after), feeds)
    assert np.isfinite(next(iter(got.values()))).all()


def test_post_training_binarization_follows_the_pattern() -> None:
    g = Graph((4, 16), seed=6)
    y = g.op("Gemm", "x", g.w(16, 16), g.w(16), transB=1)  # named n_<output>
    before = g.model(y, opset=OPSET)
    import onnx_ir as ir

    from edgec.core.irutil import input_specs, random_inputs

    feeds = random_inputs(input_specs(ir.serde.deserialize_model(before)), seed=0)
    after, n = apply(BinarizeLayers(r"^nothing$", feeds), before)
    assert n == 0 and ops(after) == ["Gemm"]
    after, n = apply(BinarizeLayers(rf"^n_{y}$", feeds), before)
    assert n == 1 and ops(after) == ["BinaryLinear"]


def _lookup(g: Graph, table: np.ndarray) -> str:
    ids = g.const(np.array([[0, 3, 1]], dtype=np.int64))
    return g.op("Gather", g.const(table), ids)


def test_two_level_table_becomes_a_binary_gather() -> None:
    g = Graph((1,), seed=7)
    table = _signs(g, 5, 64) * (g.rng.random((5, 1)) + 0.5).astype(np.float32)
    before = g.model(g.op("Add", _lookup(g, table), "x"), opset=OPSET)
    after, seen = explain(BinarizeEmbedding(), before)
    assert ops(after) == ["BinaryGather", "Add"] and [c.fired for c in seen] == [True]
    assert check(before, after, tol=0.0) == 0.0


@pytest.mark.parametrize(
    ("width", "offset", "why"),
    [
        (32, 0.0, "rows of 32 entries, under 64: packing saves little"),
        (64, 0.5, "a row of the table takes more than two values, or two that are not +-s"),
    ],
)
def test_table_left_alone(width: int, offset: float, why: str) -> None:
    g = Graph((1,), seed=7)
    table = _signs(g, 5, width) + np.float32(offset)
    before = g.model(g.op("Add", _lookup(g, table), "x"), opset=OPSET)
    after, seen = explain(BinarizeEmbedding(), before)
    assert ops(after) == ["Gather", "Add"] and reasons(seen, "binary_gather") == [why]
