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

Left alone: grouped convs (merging would densify them), a 1x1 second conv with a stride,
padding, dilation or groups, a padded second conv after a biased 1x1 (the padding would read 0
where the merged conv reads b1), an intermediate read by anything else, and merges that cost
more than the pair (a wide-narrow-wide bottleneck).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from edgec.passes._ir import (
    as_f32,
    bypass,
    conv_params,
    dense_params,
    drop_if_orphaned,
    initializer,
    is_op,
    live_nodes,
    only_consumer,
    set_const_input,
)
from edgec.passes.base import EdgecPass


def is_pointwise(node: ir.Node, w: np.ndarray) -> bool:
    a = node.attributes
    return (
        all(k == 1 for k in w.shape[2:])
        and all(s == 1 for s in a.get_ints("strides", [1]))
        and not any(a.get_ints("pads", [0]))
        and all(d == 1 for d in a.get_ints("dilations", [1]))
        and a.get_int("group", 1) == 1
    )


def _merge_convs(first: ir.Node, second: ir.Node) -> bool:
    p1, p2 = conv_params(first), conv_params(second)
    if p1 is None or p2 is None or first.attributes.get_int("group", 1) != 1:
        return False
    (w1, b1), (w2, b2) = p1, p2
    c1 = w1.shape[0]
    k1, k2 = math.prod(w1.shape[2:]), math.prod(w2.shape[2:])
    cin, cout = w1.shape[1], w2.shape[0]
    if is_pointwise(second, w2):  # k x k, then 1 x 1: keep the first conv's geometry
        if cout * cin * k1 > c1 * cin * k1 + cout * c1:
            return False
        m = w2.reshape(cout, c1)
        w = (m @ w1.reshape(c1, -1)).reshape(cout, *w1.shape[1:])
        b = m @ (b1 if b1 is not None else np.zeros(c1)) + (b2 if b2 is not None else 0.0)
        set_const_input(first, 1, as_f32(w), "weight")
        set_const_input(first, 2, as_f32(b), "bias")
        merged = first.outputs[0]
        merged.shape, merged.type = second.outputs[0].shape, second.outputs[0].type
        return bypass(second, merged)
    if is_pointwise(first, w1) and second.attributes.get_int("group", 1) == 1:
        if any(second.attributes.get_ints("pads", [0])) and b1 is not None and np.any(b1 != 0):
            return False
        if cout * cin * k2 > c1 * cin + cout * c1 * k2:
            return False
        w2t = np.moveaxis(w2, 1, -1)  # (cout, k..., c1)
        w = np.moveaxis(w2t @ w1.reshape(c1, cin), -1, 1)
        shift = w2t.reshape(cout, -1, c1).sum(axis=1) @ b1 if b1 is not None else 0.0
        b = (b2 if b2 is not None else 0.0) + shift
        set_const_input(second, 1, as_f32(w), "weight")
        set_const_input(second, 2, as_f32(np.broadcast_to(b, (cout,))), "bias")
        x = first.inputs[0]
        assert x is not None
        second.replace_input_with(0, x)
        inputs = list(first.inputs)
        first.graph.remove(first, safe=True)  # type: ignore[union-attr]
        for value in inputs:
            drop_if_orphaned(value)
        return True
    return False


def _merge_dense(first: ir.Node) -> bool:
    p1 = dense_params(first)
    if p1 is None:
        return False
    w1, b1, end1 = p1
    second = only_consumer(end1.outputs[0])
    if second is None or second.inputs[0] is not end1.outputs[0]:
        return False
    p2 = dense_params(second)
    if p2 is None:
        return False
    w2, b2, end2 = p2
    k, n1, n2 = w1.shape[0], w1.shape[1], w2.shape[1]
    if k * n2 > k * n1 + n1 * n2:
        return False
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
        return False
    for node in (second, end1, first):  # consumers before producers
        if node.graph is not None:
            graph.remove(node, safe=True)
    return True


class MergeSerialLinear(EdgecPass):
    name = "merge_serial_linear"

    def rewrite(self, model: ir.Model) -> int:
        fired = 0
        for node in live_nodes(model):
            if is_op(node, "Conv"):
                nxt = only_consumer(node.outputs[0])
                if is_op(nxt, "Conv") and nxt is not None and nxt.inputs[0] is node.outputs[0]:
                    fired += _merge_convs(node, nxt)
            elif is_op(node, "MatMul", "Gemm"):
                fired += _merge_dense(node)
        return fired
