"""Clean-ups that run between edgec's own rewrites, built on onnx_ir's common passes and the
onnxscript optimizer. None changes what the graph computes; each counts what it removed.

- fold_constants: a node whose inputs are all constant -> its value (onnxscript's folder,
  which also removes no-op Casts, Reshapes to the same shape and similar).
- drop_identity_nodes: Identity(x) -> x.
- merge_common_subexpressions: two nodes with the same op, attributes and inputs -> one.
- drop_unused_nodes: nodes, functions and opset imports no output depends on -> removed.
- lift_constants: Constant nodes -> initializers (so passes find weights in one place).
- deduplicate_initializers: equal initializers -> one.
- infer_shapes: ONNX shape inference, so later passes and MAC counts see every shape.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript import optimizer

from edgec.passes.base import EdgecPass


def _node_count(model: ir.Model) -> int:
    return sum(1 for _ in model.graph.all_nodes())


class _Removal(EdgecPass):
    """Run an upstream pass; rewrites = nodes (or initializers) it removed."""

    upstream: type[ir.passes.PassBase]

    def rewrite(self, model: ir.Model) -> int:
        before = _node_count(model) + len(model.graph.initializers)
        self.upstream()(model)
        return before - _node_count(model) - len(model.graph.initializers)


class FoldConstants(EdgecPass):
    name = "fold_constants"

    def rewrite(self, model: ir.Model) -> int:
        before = _node_count(model)
        result = optimizer.fold_constants(model, onnx_shape_inference=False)
        common.RemoveUnusedNodesPass()(model)
        removed = before - _node_count(model)
        return removed if result.modified or removed else 0


class DropIdentityNodes(_Removal):
    name = "drop_identity_nodes"
    upstream = common.IdentityEliminationPass


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
    """Not a rewrite: annotates shapes. Reports 0 rewrites; the IR's computation is unchanged."""

    name = "infer_shapes"

    def rewrite(self, model: ir.Model) -> int:
        common.ShapeInferencePass(data_prop=True)(model)
        return 0
