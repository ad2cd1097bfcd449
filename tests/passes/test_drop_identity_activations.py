"""drop_identity_activations: ops that compute x go; near-identities stay."""

from __future__ import annotations

import numpy as np
import pytest

from edgec.passes.drop_identity_activations import DropIdentityActivations
from tests.passes.graphs import Graph, apply, check, explain, ops, reasons


def _wrap(build) -> tuple[Graph, str]:
    """Relu -> identity-like op -> Sigmoid, so the identity sits inside the graph."""
    g = Graph((2, 3, 4))
    h = g.op("Relu", "x")
    return g, g.op("Sigmoid", build(g, h))


CASES = {
    "leaky_relu_alpha_1": lambda g, h: g.op("LeakyRelu", h, alpha=1.0),
    "dropout": lambda g, h: g.op("Dropout", h),
    "identity": lambda g, h: g.op("Identity", h),
    "mul_one": lambda g, h: g.op("Mul", h, g.const(np.ones((4,), np.float32))),
    "one_mul": lambda g, h: g.op("Mul", g.const(np.float32(1.0)), h),
    "div_one": lambda g, h: g.op("Div", h, g.const(np.float32(1.0))),
    "add_zero": lambda g, h: g.op("Add", h, g.const(np.zeros((3, 1), np.float32))),
    "sub_zero": lambda g, h: g.op("Sub", h, g.const(np.float32(0.0))),
    "reshape_same": lambda g, h: g.op("Reshape", h, g.const(np.array([2, 3, 4]))),
    "transpose_identity": lambda g, h: g.op("Transpose", h, perm=[0, 1, 2]),
    "cast_same": lambda g, h: g.op("Cast", h, to=1),
}


@pytest.mark.parametrize("case", CASES)
def test_drops(case: str) -> None:
    g, y = _wrap(CASES[case])
    before = g.model(y)
    after, fired = apply(DropIdentityActivations(), before)
    assert fired == 1 and ops(after) == ["Relu", "Sigmoid"]
    check(before, after)


def test_resize_to_same_size() -> None:
    g = Graph((1, 2, 5, 5))
    h = g.op("Relu", "x")
    r = g.op("Resize", h, "", "", g.const(np.array([1, 2, 5, 5], np.int64)), mode="linear")
    before = g.model(g.op("Sigmoid", r))
    after, fired = apply(DropIdentityActivations(), before)
    assert fired == 1 and ops(after) == ["Relu", "Sigmoid"]
    check(before, after)


# the closest cases that are not the identity, and the reason --explain gives (None: an op
# that is simply something else, no near miss)
NOT_IDENTITY = {
    "leaky_relu_alpha_0.1": (
        lambda g, h: g.op("LeakyRelu", h, alpha=0.1),
        "alpha 0.1, not 1: not the identity",
    ),
    "mul_two": (lambda g, h: g.op("Mul", h, g.const(np.float32(2.0))), None),
    "add_broadcasting_larger": (
        lambda g, h: g.op("Add", h, g.const(np.zeros((5, 1, 1, 1), np.float32))),
        "the constant 0 broadcasts x to (5, 2, 3, 4)",
    ),
    "reshape_other": (lambda g, h: g.op("Reshape", h, g.const(np.array([6, 4]))), None),
    "transpose_real": (lambda g, h: g.op("Transpose", h, perm=[0, 2, 1]), None),
}


@pytest.mark.parametrize("case", NOT_IDENTITY)
def test_keeps(case: str) -> None:
    build, reason = NOT_IDENTITY[case]
    g, y = _wrap(build)
    after, explained = explain(DropIdentityActivations(), g.model(y))
    assert len(ops(after)) == 3
    assert reasons(explained, "identity") == ([reason] if reason else [])


def test_identity_onto_graph_output() -> None:
    """y = Relu(x); out = Identity(y): out may be renamed onto y's producer."""
    g = Graph((2, 3))
    before = g.model(g.op("Identity", g.op("Relu", "x")))
    after, fired = apply(DropIdentityActivations(), before)
    assert fired == 1 and ops(after) == ["Relu"]
    assert after.graph.outputs[0].name == before.graph.output[0].name
    check(before, after)


def test_identity_of_graph_input_to_output_stays() -> None:
    """An input cannot become an output without a node: the Identity must stay."""
    g = Graph((2, 3))
    after, explained = explain(DropIdentityActivations(), g.model(g.op("Identity", "x")))
    assert ops(after) == ["Identity"]
    assert reasons(explained, "identity") == ["its output is a graph output x cannot be"]
