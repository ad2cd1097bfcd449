"""The cleanup passes: each fires on its smallest case, keeps numerics, and leaves alone the
closest case it must not touch."""

from __future__ import annotations

from edgec.passes.cleanup import (
    DeduplicateInitializers,
    DropIdentityNodes,
    DropUnusedNodes,
    FoldConstants,
    InferShapes,
    LiftConstants,
    MergeCommonSubexpressions,
)
from tests.passes.helpers import assert_equivalent, op_types, parse, to_proto

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def test_fold_constants_fires() -> None:
    model = parse(f"""{HEADER}
    g (float[2, 3] x) => (float[2, 3] y) {{
        a = Constant <value = float[3] {{1.0, 2.0, 3.0}}> ()
        b = Constant <value = float[3] {{0.5, 0.5, 0.5}}> ()
        c = Mul (a, b)
        y = Add (x, c)
    }}""")
    before = to_proto(model)
    p = FoldConstants()
    p(model)
    assert p.rewrites > 0
    assert op_types(model).count("Mul") == 0
    assert_equivalent(before, model)


def test_fold_constants_leaves_runtime_values() -> None:
    model = parse(f"""{HEADER}
    g (float[2, 3] x, float[2, 3] z) => (float[2, 3] y) {{
        c = Mul (x, z)
        y = Add (x, c)
    }}""")
    p = FoldConstants()
    result = p(model)
    assert (p.rewrites, result.modified) == (0, False)  # nothing constant to fold
    assert op_types(model) == ["Mul", "Add"]


def test_drop_identity_nodes() -> None:
    model = parse(f"""{HEADER}
    g (float[4] x) => (float[4] y) {{
        a = Identity (x)
        b = Relu (a)
        y = Identity (b)
    }}""")
    before = to_proto(model)
    p = DropIdentityNodes()
    p(model)
    assert p.rewrites >= 1
    assert "Relu" in op_types(model)
    assert_equivalent(before, model)


def test_drop_identity_keeps_graph_input_to_output() -> None:
    """y = Identity(x) with x a graph input and y an output cannot go: outputs need a node."""
    model = parse(f"""{HEADER}
    g (float[4] x) => (float[4] y) {{
        y = Identity (x)
    }}""")
    p = DropIdentityNodes()
    p(model)
    assert p.rewrites == 0
    assert op_types(model) == ["Identity"]
    (seen,) = p.explained
    assert not seen.fired and seen.reason.startswith("it returns a graph input, an initializer")


def test_merge_common_subexpressions() -> None:
    model = parse(f"""{HEADER}
    g (float[4] x) => (float[4] y) {{
        a = Relu (x)
        b = Relu (x)
        y = Add (a, b)
    }}""")
    before = to_proto(model)
    p = MergeCommonSubexpressions()
    p(model)
    assert p.rewrites == 1
    assert op_types(model) == ["Relu", "Add"]
    assert_equivalent(before, model)


def test_merge_common_subexpressions_needs_same_attributes() -> None:
    model = parse(f"""{HEADER}
    g (float[4] x) => (float[4] y) {{
        a = LeakyRelu <alpha = 0.1> (x)
        b = LeakyRelu <alpha = 0.2> (x)
        y = Add (a, b)
    }}""")
    p = MergeCommonSubexpressions()
    p(model)
    assert p.rewrites == 0
    assert op_types(model).count("LeakyRelu") == 2


def test_drop_unused_nodes() -> None:
    model = parse(f"""{HEADER}
    g (float[4] x) => (float[4] y) {{
        dead = Sigmoid (x)
        y = Relu (x)
    }}""")
    before = to_proto(model)
    p = DropUnusedNodes()
    p(model)
    assert p.rewrites == 1
    assert op_types(model) == ["Relu"]
    assert_equivalent(before, model)


def test_drop_unused_nodes_keeps_everything_used() -> None:
    model = parse(f"""{HEADER}
    g (float[4] x) => (float[4] y) {{
        a = Sigmoid (x)
        y = Mul (x, a)
    }}""")
    p = DropUnusedNodes()
    p(model)
    assert p.rewrites == 0


def test_lift_constants_and_deduplicate() -> None:
    model = parse(f"""{HEADER}
    g (float[3] x) => (float[3] y) {{
        a = Constant <value = float[3] {{1.0, 2.0, 3.0}}> ()
        b = Constant <value = float[3] {{1.0, 2.0, 3.0}}> ()
        c = Add (x, a)
        y = Mul (c, b)
    }}""")
    before = to_proto(model)
    lift = LiftConstants()
    lift(model)
    assert lift.rewrites == 2
    assert len(model.graph.initializers) == 2
    dedup = DeduplicateInitializers()
    dedup(model)
    assert dedup.rewrites == 1
    assert len(model.graph.initializers) == 1
    assert_equivalent(before, model)


def test_deduplicate_keeps_different_values() -> None:
    model = parse(f"""{HEADER}
    g (float[3] x) => (float[3] y) {{
        a = Constant <value = float[3] {{1.0, 2.0, 3.0}}> ()
        b = Constant <value = float[3] {{1.0, 2.0, 4.0}}> ()
        c = Add (x, a)
        y = Mul (c, b)
    }}""")
    LiftConstants()(model)
    dedup = DeduplicateInitializers()
    dedup(model)
    assert dedup.rewrites == 0
    assert len(model.graph.initializers) == 2


def test_infer_shapes_annotates_without_rewriting() -> None:
    model = parse(f"""{HEADER}
    g (float[2, 3] x) => (float[3, 2] y) {{
        a = Relu (x)
        y = Transpose <perm = [1, 0]> (a)
    }}""")
    relu = next(iter(model.graph))
    relu.outputs[0].shape = None
    p = InferShapes()
    result = p(model)
    assert not result.modified
    relu = next(iter(model.graph))
    assert list(relu.outputs[0].shape) == [2, 3]
