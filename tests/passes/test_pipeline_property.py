"""The whole cpu pipeline on random mixes of the ops its passes touch: it never crashes, the
result passes the ONNX checker, and onnxruntime computes on it what it computes on the
unmodified graph. Graphs mix the shapes passes look for (conv + BN, branch sums, residual
affines, BN on flattened tokens, Linear + BN) with what they must survive (Constant nodes
instead of initializers, constants on either side of commutative ops, graph outputs in the
middle of a pattern, values with several readers, Identity and Reshape round trips)."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from edgec.frontend.onnx import from_memory
from edgec.passes import PassManager, get_pipeline
from tests.passes.graphs import Graph, check

C = 4
STEPS = (
    "conv",
    "dwconv",
    "bn",
    "bn_before",
    "relu",
    "branches",
    "residual_bn",
    "affine_left",
    "affine_right",
    "constant_node",
    "identity",
    "reshape_roundtrip",
    "tokens_linear_bn",
    "sub_const",
    "output_here",
    "shared",
)


def _constant_node(g: Graph, array: np.ndarray) -> str:
    """A Constant node, not an initializer: passes meet both."""
    out = f"k{len(g.nodes)}"
    g.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(array)))
    return out


def _vec(g: Graph, kind: int) -> str:
    """A per-channel or scalar constant, as an initializer or a Constant node."""
    array = (g.rng.random((C, 1, 1)) + 0.5).astype(np.float32)
    if kind % 2:
        array = np.float32(g.rng.random() + 0.5).reshape(())
    return _constant_node(g, array) if kind >= 2 else g.const(array)


def _build(steps: list[tuple[str, int]]) -> onnx.ModelProto:
    g = Graph((1, C, 5, 5))
    y, outputs = "x", []
    for step, kind in steps:
        if step == "conv":
            y = g.conv(y, C, C, 3 if kind % 2 else 1, bias=kind < 2)
        elif step == "dwconv":
            y = g.conv(y, C, C, 3, groups=C, bias=bool(kind % 2))
        elif step == "bn":
            y = g.bn(y, C)
        elif step == "bn_before":
            y = g.conv(g.bn(y, C), C, C, 1 if kind % 2 else 3, pad=0 if kind % 2 else 1)
        elif step == "relu":
            y = g.op("Relu", y)
        elif step == "branches":
            y = g.op("Add", g.conv(y, C, C, 3), g.bn(y, C) if kind % 2 else g.conv(y, C, C, 1))
        elif step == "residual_bn":  # x + s * (f(x) - BN(x))
            d = g.op("Sub", g.conv(y, C, C, 3, groups=C), g.bn(y, C))
            y = g.op("Add", y, g.op("Mul", d, _vec(g, kind)))
        elif step == "affine_left":
            y = g.op("Add", _vec(g, kind), g.op("Mul", _vec(g, kind + 1), y))
        elif step == "affine_right":
            y = g.op("Add", g.op("Mul", y, _vec(g, kind)), _vec(g, kind + 1))
        elif step == "sub_const":
            y = g.op("Sub", _vec(g, kind), y) if kind % 2 else g.op("Sub", y, _vec(g, kind))
        elif step == "constant_node":
            y = g.op("Mul", y, _constant_node(g, np.float32(1.0 + kind / 4).reshape(())))
        elif step == "identity":
            y = g.op("Identity", y)
        elif step == "reshape_roundtrip":
            flat = g.op("Reshape", y, g.const(np.array([1, C, 25], np.int64)))
            y = g.op("Reshape", g.op("Relu", flat), g.const(np.array([1, C, 5, 5], np.int64)))
        elif step == "tokens_linear_bn":  # LeViT: Linear, BN1d on (B*N, C), back
            t = g.op(
                "Transpose",
                g.op("Reshape", y, g.const(np.array([1, C, 25], np.int64))),
                perm=[0, 2, 1],
            )
            t = g.op("Add", g.op("MatMul", t, g.w(C, C)), g.w(C))
            t = g.bn(g.op("Reshape", t, g.const(np.array([25, C], np.int64))), C)
            t = g.op(
                "Transpose",
                g.op("Reshape", t, g.const(np.array([1, 25, C], np.int64))),
                perm=[0, 2, 1],
            )
            y = g.op("Reshape", t, g.const(np.array([1, C, 5, 5], np.int64)))
        elif step == "output_here" and y != "x":
            outputs.append(y)
        elif step == "shared":  # a value with two readers
            y = g.op("Add", g.conv(y, C, C, 1), g.op("Relu", y))
    return g.model(*dict.fromkeys([*outputs, g.op("Sigmoid", y)]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(STEPS), st.integers(0, 3)), min_size=1, max_size=7))
def test_cpu_pipeline_is_total_and_exact(steps: list[tuple[str, int]]) -> None:
    before = _build(steps)
    model = from_memory(before)  # as a user's model comes in
    feeds = {"x": np.random.default_rng(5).standard_normal((1, C, 5, 5)).astype(np.float32)}
    PassManager(get_pipeline("cpu"), verify=True, tolerance=1e-4, inputs=feeds).run(model)
    check(before, model)
