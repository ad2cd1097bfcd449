"""Linear(Linear(x)) -> Linear(x): two linear ops with nothing nonlinear between become one,
when the merged op costs no more multiply-accumulates than the pair.

    conv(conv(x, W1, b1), W2_1x1, b2) = conv(x, W2 . W1, W2 b1 + b2)        (first conv: any kernel,
                                                                          stride, padding; groups 1)
    conv(conv(x, W1_1x1, b1), W2, b2) = conv(x, W2 . W1, b2 + sum W2 b1)    (second conv: any kernel
                                                                          and stride; pads nothing,
                                                                          or b1 = 0)
    (x W1 + b1) W2 + b2               = x (W1 W2) + (b1 W2 + b2)            (MatMul/Gemm chains on
                                                                          the last axis)

where `W2 . W1` contracts the middle channels. VanillaNet's conv pairs (stem, blocks, head)
merge this way once their BatchNorms are folded and their leaky_relu(x, 1) dropped. Per-channel
affines on either side of a linear op are `fold_channel_affine`'s.

Conv pairs are a rule (`merge_conv_pair`), MatMul chains a walk (`merge_dense_pair`). Left
alone, with the reason (`edgec compile --explain`): grouped convs (merging would densify
them), a 1x1 second conv with a stride, padding, dilation or groups, a padded second conv
after a biased 1x1 (the padding would read 0 where the merged conv reads b1), an intermediate
read by anything else, and merges that cost more than the pair (a wide-narrow-wide
bottleneck).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult

from edgec.passes._ir import (
    as_f32,
    bypass,
    conv_params,
    dense_params,
    initializer,
    is_op,
    live_nodes,
    only_consumer,
)
from edgec.passes.rules import Rule, RulePass


def is_pointwise(node: ir.Node, w: np.ndarray) -> bool:
    a = node.attributes
    return (
        all(k == 1 for k in w.shape[2:])
        and all(s == 1 for s in a.get_ints("strides", [1]))
        and not any(a.get_ints("pads", [0]))
        and all(d == 1 for d in a.get_ints("dilations", [1]))
        and a.get_int("group", 1) == 1
    )


def _initializer(op: Any, array: np.ndarray, like: ir.Value | None, role: str) -> ir.Value:
    name = f"{like.name}_merged" if like is not None and like.name else f"merged_{role}"
    return op.initializer(ir.tensor(as_f32(array)), name=name)


class MergeConvPair(Rule):
    """Conv(Conv(x, W1, b1), W2, b2) -> Conv(x, W, b): the first conv's geometry when the
    second is 1x1, the second's when the first is."""

    name = "merge_conv_pair"

    def pattern(self, op: Any, x: ir.Value) -> ir.Value:
        first = op.Conv(x, _allow_other_inputs=True, _outputs=["mid"])
        return op.Conv(first, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, mid: ir.Value, out: ir.Value) -> MatchResult:
        first, second = mid.producer(), out.producer()
        assert first is not None and second is not None
        p1, p2 = conv_params(first), conv_params(second)
        if p1 is None or p2 is None:
            return self.fail(
                "a Conv's weight or bias is not a float32 constant, or it pads by auto_pad"
            )
        if first.attributes.get_int("group", 1) != 1:
            return self.fail("the first Conv is grouped: merging would make it dense")
        (w1, b1), (w2, _) = p1, p2
        c1, cin, cout = w1.shape[0], w1.shape[1], w2.shape[0]
        k1, k2 = math.prod(w1.shape[2:]), math.prod(w2.shape[2:])
        if is_pointwise(second, w2):
            if cout * cin * k1 > c1 * cin * k1 + cout * c1:
                return self.fail("the merged Conv would cost more multiply-adds than the pair")
            return self.ok()
        if not is_pointwise(first, w1):
            return self.fail("neither Conv is a plain 1x1 (stride 1, no padding, no groups)")
        if second.attributes.get_int("group", 1) != 1:
            return self.fail("the second Conv is grouped: merging would make it dense")
        if any(second.attributes.get_ints("pads", [0])) and b1 is not None and np.any(b1 != 0):
            return self.fail("a padded Conv after a biased 1x1: padding reads 0, not the bias")
        if cout * cin * k2 > c1 * cin + cout * c1 * k2:
            return self.fail("the merged Conv would cost more multiply-adds than the pair")
        return self.ok()

    def rewrite(self, op: Any, x: ir.Value, mid: ir.Value, out: ir.Value) -> ir.Value:
        first, second = mid.producer(), out.producer()
        assert first is not None and second is not None
        (w1, b1), (w2, b2) = conv_params(first), conv_params(second)  # type: ignore[misc]
        c1, cin, cout = w1.shape[0], w1.shape[1], w2.shape[0]
        if is_pointwise(second, w2):  # k x k, then 1 x 1: keep the first conv's geometry
            m = w2.reshape(cout, c1)
            w = (m @ w1.reshape(c1, -1)).reshape(cout, *w1.shape[1:])
            b = m @ (b1 if b1 is not None else np.zeros(c1)) + (b2 if b2 is not None else 0.0)
            kept = first
        else:  # 1 x 1, then k x k: keep the second's
            w2t = np.moveaxis(w2, 1, -1)  # (cout, k..., c1)
            w = np.moveaxis(w2t @ w1.reshape(c1, cin), -1, 1)
            shift = w2t.reshape(cout, -1, c1).sum(axis=1) @ b1 if b1 is not None else 0.0
            b = np.broadcast_to((b2 if b2 is not None else 0.0) + shift, (cout,))
            kept = second
        weight = _initializer(op, w, kept.inputs[1], "weight")
        bias = _initializer(op, b, kept.inputs[2] if len(kept.inputs) > 2 else None, "bias")
        return op.Conv(x, weight, bias, **kept.attributes)


DENSE = "merge_dense_pair"


class MergeSerialLinear(RulePass):
    """Conv pairs (a rule), then chains of MatMul(+Add)/Gemm on the last axis (a walk: the
    bias Add is optional on either side, and the second op may be a Gemm)."""

    name = "merge_serial_linear"
    rules = (MergeConvPair,)

    def rewrite(self, model: ir.Model) -> int:
        fired = self.apply_rules(model, self.rules)
        return fired + sum(
            self._merge_dense(n) for n in live_nodes(model) if is_op(n, "MatMul", "Gemm")
        )

    def _merge_dense(self, first: ir.Node) -> bool:
        p1 = dense_params(first)
        if p1 is None:
            return False
        w1, b1, end1 = p1
        second = only_consumer(end1.outputs[0])
        if second is None or second.inputs[0] is not end1.outputs[0]:
            return False
        p2 = dense_params(second)
        if p2 is None:
            why = "the next product's weight or bias is not a float32 constant"
            return is_op(second, "MatMul", "Gemm") and self.left_alone(DENSE, [first, second], why)
        w2, b2, end2 = p2
        nodes = list(dict.fromkeys([first, end1, second, end2]))
        k, n1, n2 = w1.shape[0], w1.shape[1], w2.shape[1]
        if k * n2 > k * n1 + n1 * n2:
            why = "the merged product would cost more multiply-adds than the pair"
            return self.left_alone(DENSE, nodes, why)
        w = w1 @ w2
        b = (b1 @ w2 if b1 is not None else 0.0) + (b2 if b2 is not None else 0.0)
        graph = first.graph
        x = first.inputs[0]
        assert graph is not None and x is not None
        mm = ir.node(
            "MatMul", [x, initializer(graph, as_f32(w), "weight")], name=f"{first.name}+merged"
        )
        add = ir.node(
            "Add",
            [mm.outputs[0], initializer(graph, as_f32(np.broadcast_to(b, (n2,))), "bias")],
            name=f"{second.name}+merged",
        )
        graph.insert_before(first, [mm, add])
        for value in (mm.outputs[0], add.outputs[0]):
            value.shape = end2.outputs[0].shape
            value.type = end2.outputs[0].type
        if not bypass(end2, add.outputs[0]):
            graph.remove([add, mm], safe=True)
            why = "the product is a graph output the merged op cannot take the place of"
            return self.left_alone(DENSE, nodes, why)
        for node in (second, end1, first):  # consumers before producers
            if node.graph is not None:
                graph.remove(node, safe=True)
        return self.fired(DENSE, nodes)
