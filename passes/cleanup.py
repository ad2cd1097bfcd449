"""Clean-ups that run between edgec's own rewrites, built on onnx_ir's common passes and the
onnxscript optimizer. None changes what the graph computes; each counts what it removed.

- fold_constants: a node whose inputs are all constant -> its value (onnxscript's folder,
  which also removes no-op Casts, Reshapes to the same shape and similar).
- drop_identity_nodes: Identity(x) -> x, where a graph's outputs and outer-scope values allow.
- merge_common_subexpressions: two nodes with the same op, attributes and inputs -> one.
- drop_unused_nodes: nodes, functions and opset imports no output depends on -> removed.
- lift_constants: Constant nodes -> initializers (so passes find weights in one place).
- deduplicate_initializers: equal initializers -> one.
- infer_shapes: ONNX shape inference, so later passes and MAC counts see every shape.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript import optimizer

from edgec.passes.base import EdgecPass

log = logging.getLogger(__name__)


def _node_count(model: ir.Model) -> int:
    return sum(1 for _ in model.graph.all_nodes())


class _Removal(EdgecPass):
    """Run an upstream pass; rewrites = nodes (or initializers) it removed."""

    upstream: type[ir.passes.PassBase]

    def rewrite(self, model: ir.Model) -> int:
        before = _node_count(model) + len(model.graph.initializers)
        self.upstream()(model)
        return before - _node_count(model) - len(model.graph.initializers)


# onnxscript's partial evaluators of these ops write Split/Unsqueeze with their opset-13
# signature (splits and axes as inputs), whatever the model's opset.
_OPSET13_REWRITES = {"SplitToSequence", "ConcatFromSequence"}


class FoldConstants(EdgecPass):
    """onnxscript's constant folder; skipped for a model below opset 13 that holds an op whose
    folding would write opset-13 forms into it (`_OPSET13_REWRITES`)."""

    name = "fold_constants"

    def rewrite(self, model: ir.Model) -> int:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        if opset < 13 and any(
            n.op_type in _OPSET13_REWRITES for n in ir.traversal.RecursiveGraphIterator(model.graph)
        ):
            return 0
        before = _node_count(model)
        try:
            modified = optimizer.fold_constants(model, onnx_shape_inference=False).modified
        except RuntimeError as e:
            # An evaluator of onnxscript's failed on a node it does not handle (its own bug, as
            # SplitToSequence with a split of known shape but unknown value). Each replacement
            # the folder made before it is complete, so the graph stays valid: keep them.
            log.debug("constant folding stopped early: %s (%s)", e, e.__cause__)
            modified = True
        common.RemoveUnusedNodesPass()(model)
        removed = before - _node_count(model)
        return removed if modified or removed else 0


class DropIdentityNodes(EdgecPass):
    """y = Identity(x) -> x, in the graph and in every subgraph and function.

    1. y is not an output of its graph: its readers read x.
    2. y is an output, x is made by a node of the same graph and is no output itself: x takes
       y's name and place.
    3. Left alone: y an output while x is an input, an initializer, another output, or a value
       of an enclosing graph (the Identity is how an If branch or a Loop/Scan body returns it:
       two sibling branches would otherwise both claim the outer value, and renaming it would
       rename the outer value). onnx_ir's IdentityEliminationPass rewires these cases.
    """

    name = "drop_identity_nodes"

    def rewrite(self, model: ir.Model) -> int:
        graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
        fired = 0
        for graph in graphs:
            for node in list(ir.traversal.RecursiveGraphIterator(graph)):
                done = _drop_identity(node)
                if isinstance(done, str):
                    self.left_alone("identity_node", [node], done)
                elif done:
                    fired += self.fired("identity_node", [node])
        return fired


def _drop_identity(node: ir.Node) -> bool | str:
    """True if dropped; why not, for an Identity left in place; False for other nodes."""
    if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
        return False
    if len(node.inputs) != 1 or len(node.outputs) != 1 or node.inputs[0] is None:
        return False
    x, y = node.inputs[0], node.outputs[0]
    graph = node.graph
    if graph is None:
        return False
    if y.is_graph_output() or y in graph.outputs:
        producer = x.producer()
        if (
            producer is None
            or producer.graph is not graph
            or x.is_graph_input()
            or x.is_graph_output()
            or x in graph.outputs
        ):
            return (
                "it returns a graph input, an initializer, another output or an outer value"
                " as an output of its graph"
            )
        if x.type is None:
            x.type = y.type
        if x.shape is None:
            x.shape = y.shape
        ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
        x.name = y.name
    else:
        ir.convenience.replace_all_uses_with(y, x)
    graph.remove(node, safe=True)
    return True


def _more_known(new: ir.Shape | None, old: ir.Shape | None) -> bool:
    if new is None:
        return False
    if old is None:
        return True
    static = sum(isinstance(d, int) for d in new) > sum(isinstance(d, int) for d in old)
    return len(new) == len(old) and static


class MergeCommonSubexpressions(_Removal):
    name = "merge_common_subexpressions"
    upstream = common.CommonSubexpressionEliminationPass


class DeduplicateInitializers(_Removal):
    name = "deduplicate_initializers"
    upstream = common.DeduplicateInitializersPass


class DropUnusedNodes(EdgecPass):
    name = "drop_unused_nodes"

    def rewrite(self, model: ir.Model) -> int:
        before = _node_count(model) + len(model.functions)
        common.RemoveUnusedNodesPass()(model)
        common.RemoveUnusedFunctionsPass()(model)
        common.RemoveUnusedOpsetsPass()(model)
        return before - _node_count(model) - len(model.functions)


class LiftConstants(EdgecPass):
    name = "lift_constants"

    def rewrite(self, model: ir.Model) -> int:
        before = _node_count(model)
        common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(model)
        return before - _node_count(model)


class InferShapes(EdgecPass):
    """Not a rewrite: annotates shapes. Reports 0 rewrites; the IR's computation is unchanged.

    ONNX shape inference, merged back by value name into tensors only: onnx_ir's
    ShapeInferencePass sets a dtype on sequence- and optional-typed values too, which turns
    them into tensors. A model that shape inference rejects is left as it is.
    """

    name = "infer_shapes"

    def rewrite(self, model: ir.Model) -> int:
        try:
            proto = ir.serde.serialize_model(model)
            inferred = ir.serde.deserialize_model(
                onnx.shape_inference.infer_shapes(proto, check_type=False, data_prop=True)
            )
        except Exception:  # inference is an annotation: a model it rejects stays as it is
            return 0
        for graph, new_graph in zip(model.graphs(), inferred.graphs(), strict=False):
            found = ir.convenience.create_value_mapping(new_graph)
            for name, value in ir.convenience.create_value_mapping(graph).items():
                new = found.get(name)
                if new is None or new.type is None:
                    continue
                if value.type is None:
                    value.type = new.type
                if (
                    isinstance(value.type, ir.TensorType)
                    and isinstance(new.type, ir.TensorType)
                    and value.dtype == new.dtype
                    and _more_known(new.shape, value.shape)
                ):
                    value.shape = new.shape
        return 0
