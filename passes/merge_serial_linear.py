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

Two rules: `merge_conv_pair`, and `merge_dense_pair` (each product a bare MatMul, a MatMul
with a bias Add, or a Gemm: nine variants). Left
alone, with the reason (`edgec compile --explain`): grouped convs (merging would densify
them), a 1x1 second conv with a stride, padding, dilation or groups, a padded second conv
after a biased 1x1 (the padding would read 0 where the merged conv reads b1), an intermediate
read by anything else, and merges that cost more than the pair (a wide-narrow-wide
bottleneck).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult

from edgec.passes._ir import conv_params, dense_params
from edgec.passes.rules import Rule, RulePass, constant


def is_pointwise(node: ir.Node, w: np.ndarray) -> bool:
    a = node.attributes
    return (
        all(k == 1 for k in w.shape[2:])
        and all(s == 1 for s in a.get_ints("strides", [1]))
        and not any(a.get_ints("pads", [0]))
        and all(d == 1 for d in a.get_ints("dilations", [1]))
        and a.get_int("group", 1) == 1
    )


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
        weight = constant(op, w, kept.inputs[1], "merged", "weight")
        bias = constant(op, b, kept.inputs[2] if len(kept.inputs) > 2 else None, "merged", "bias")
        return op.Conv(x, weight, bias, **kept.attributes)


def _dense(op: Any, x: ir.Value, w: ir.Value, b: ir.Value, form: str, product: str) -> ir.Value:
    """x W (+ b) on the last axis in one of its forms: a bare MatMul, a MatMul and a bias Add,
    or a Gemm; the product's output named `product`."""
    if form == "gemm":
        return op.Gemm(x, w, _allow_other_inputs=True, _outputs=[product])
    out = op.MatMul(x, w, _outputs=[product])
    return op.Add(out, b) if form == "biased" else out


class MergeDensePair(Rule):
    """(x W1 + b1) W2 + b2 -> x (W1 W2) + (b1 W2 + b2): each product a MatMul, a MatMul with a
    bias Add, or a Gemm (`first`, `second`); emitted as a MatMul and an Add."""

    name = "merge_dense_pair"

    def __init__(self, first: str, second: str) -> None:
        super().__init__()
        self.first, self.second = first, second

    def pattern(self, op: Any, x: ir.Value, w1: ir.Value, b1: ir.Value, w2: ir.Value, b2):
        y = _dense(op, x, w1, b1, self.first, "p1")
        return _dense(op, y, w2, b2, self.second, "p2")

    def check(self, context: Any, x: ir.Value, p1: ir.Value, p2: ir.Value, **_: Any):
        second = p2.producer()
        assert second is not None
        first, last = dense_params(p1.producer()), dense_params(second)  # type: ignore[arg-type]
        if self.second == "bare" and last is not None and last[2] is not second:
            return self.skip()  # a bias Add follows: the biased form's match
        if first is None or last is None:
            which = "first" if first is None else "second"
            return self.fail(f"the {which} product's weight or bias is not a float32 constant")
        (w1, _, _), (w2, _, _) = first, last
        k, n1, n2 = w1.shape[0], w1.shape[1], w2.shape[1]
        if k * n2 > k * n1 + n1 * n2:
            return self.fail("the merged product would cost more multiply-adds than the pair")
        return self.ok()

    def rewrite(self, op: Any, x: ir.Value, p1: ir.Value, p2: ir.Value, **_: Any) -> ir.Value:
        w1, b1, _ = dense_params(p1.producer())  # type: ignore[arg-type,misc]
        w2, b2, end = dense_params(p2.producer())  # type: ignore[arg-type,misc]
        b = (b1 @ w2 if b1 is not None else 0.0) + (b2 if b2 is not None else 0.0)
        product = op.MatMul(x, constant(op, w1 @ w2, None, "merged", "weight"))
        product.shape, product.type = end.outputs[0].shape, end.outputs[0].type
        bias = np.broadcast_to(b, (w2.shape[1],))
        return op.Add(product, constant(op, bias, None, "merged", "bias"))


FORMS = ("bare", "biased", "gemm")


class MergeSerialLinear(RulePass):
    """Conv pairs, then chains of products on the last axis (in that order, as two walks)."""

    name = "merge_serial_linear"
    rules = (MergeConvPair,)
    dense = tuple(partial(MergeDensePair, a, b) for a in FORMS for b in FORMS)
    commuted = True  # a bias Add's constant on either side

    def rewrite(self, model: ir.Model) -> int:
        return self.apply_rules(model, self.rules) + self.apply_rules(model, self.dense)
