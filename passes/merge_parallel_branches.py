"""sum_i Branch_i(x) -> Conv(x): parallel branches reading the same input, merged into one conv
(RepVGG, MobileOne and ACNet structural reparameterization; FMViT's multi-group conv).

Each branch is a linear map of x that a conv can express, with the same stride and groups:

    conv_k(x, W_k, b_k)       its kernel, zero-padded to the largest K x K, centred
    a * x + b (BN alone)      a at the centre tap of channel c's own input, bias b
    x                         the same with a = 1, b = 0
    AveragePool_k(x)          1 / k^2 over a k x k window of channel c's own input

    sum_i Branch_i(x) = conv_K(x, sum_i W_i, sum_i b_i)     (pads K // 2, same stride, groups)

Left alone: fewer than two branches or none a conv, branches reading different tensors or
read elsewhere, even or uncentred kernels (pads != k // 2), mixed strides, groups or
dilations, an identity-like branch when input and output channels differ, an average pool
that does not count its padding, and constant operands that are not branches.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.core.irutil import initializer
from edgec.passes._ir import (
    as_f32,
    bypass,
    conv_params,
    drop_if_orphaned,
    is_op,
    only_consumer,
    record_provenance,
)
from edgec.passes.base import EdgecPass
from edgec.passes.fold_batchnorm import bn_affine
from edgec.passes.fold_channel_affine import affine_step


def _leaves(add: ir.Node) -> list[ir.Value] | None:
    """The terms of a tree of Adds whose inner sums are read only by the tree."""
    out: list[ir.Value] = []
    for value in add.inputs:
        if value is None:
            return None
        inner = value.producer()
        if is_op(inner, "Add") and inner is not None and only_consumer(value) is add:
            sub = _leaves(inner)
            if sub is None:
                return None
            out += sub
        else:
            out.append(value)
    return out


def _geometry(node: ir.Node, k: int) -> tuple[tuple[int, ...], int] | str:
    """(strides, groups) of a centred, undilated k x k op, else why not."""
    a = node.attributes
    if k % 2 == 0:
        return f"'{node.name}' has an even kernel ({k}x{k}): no centre tap"
    if a.get_string("auto_pad", "NOTSET") != "NOTSET":
        return f"'{node.name}' pads by auto_pad"
    if any(d != 1 for d in a.get_ints("dilations", [1])):
        return f"'{node.name}' is dilated"
    if any(p != k // 2 for p in a.get_ints("pads", [0, 0, 0, 0])):
        return f"'{node.name}' is an uncentred kernel (pads != {k // 2} on every side)"
    return tuple(a.get_ints("strides", [1, 1])), a.get_int("group", 1)


def _identity_kernel(channels: int, groups: int, k: int, taps: np.ndarray) -> np.ndarray:
    """W (C, C/g, k, k) with `taps` (C, k, k) on each channel's own input."""
    w = np.zeros((channels, channels // groups, k, k))
    w[np.arange(channels), np.arange(channels) % (channels // groups)] = taps
    return w


def _branch(leaf: ir.Value, x: ir.Value, channels: int) -> dict | str:
    """The branch that computes `leaf` from `x`, or why `leaf` is none."""
    if leaf is x:
        return {"kind": "affine", "a": np.ones(channels), "b": np.zeros(channels), "node": None}
    node = leaf.producer()
    if node is None or not node.inputs:
        return f"the term '{leaf.name}' is no op on '{x.name}'"
    if node.inputs[0] is not x:
        return (
            f"'{node.name}' reads '{node.inputs[0].name if node.inputs[0] else ''}', not '{x.name}'"
        )
    if only_consumer(leaf) is None:
        return f"the output of '{node.name}' is also read elsewhere"
    if is_op(node, "Conv"):
        p = conv_params(node)
        if p is None or p[0].ndim != 4 or p[0].shape[2] != p[0].shape[3]:
            return f"'{node.name}' is not a 2-D square conv with constant weights"
        geometry = _geometry(node, p[0].shape[2])
        if isinstance(geometry, str):
            return geometry
        return {"kind": "conv", "w": p[0], "b": p[1], "geometry": geometry, "node": node}
    if is_op(node, "BatchNormalization"):
        affine = bn_affine(node)
        return (
            f"'{node.name}' is not an inference-mode BN of float32 constants"
            if affine is None
            else {"kind": "affine", "a": affine[0], "b": affine[1], "node": node}
        )
    step = affine_step(node)
    if step is not None and step[1] in (None, 1):
        vec = np.broadcast_to(step[2], (channels,)).astype(np.float64)
        a, b = (vec, np.zeros(channels)) if step[3] == "scale" else (np.ones(channels), vec)
        return {"kind": "affine", "a": a, "b": b, "node": node}
    if is_op(node, "AveragePool"):
        k = node.attributes.get_ints("kernel_shape", [])
        if len(k) != 2 or k[0] != k[1]:
            return f"'{node.name}' is not a square 2-D average pool"
        geometry = _geometry(node, k[0])
        if isinstance(geometry, str):
            return geometry
        if any(node.attributes.get_ints("pads", [0])) and not node.attributes.get_int(
            "count_include_pad", 0
        ):
            return f"'{node.name}' does not count its padding: not a conv at the borders"
        return {"kind": "pool", "k": k[0], "strides": geometry[0], "node": node}
    return f"'{node.name}' ({node.op_type}) is not a branch a conv can express"


def _merge(add: ir.Node) -> bool | str:
    """Merge the branches summed by `add` into one conv: True, or why they stay."""
    leaves = _leaves(add)
    if leaves is None or len(leaves) < 2 or len(set(map(id, leaves))) != len(leaves):
        return "fewer than two distinct terms"
    producers = [leaf.producer() for leaf in leaves]
    x = next((p.inputs[0] for p in producers if is_op(p, "Conv") and p is not None), None)
    if x is None:
        return "no term is a conv"
    if x.shape is None or len(x.shape) != 4 or not isinstance(x.shape[1], int):
        return f"the branches' input '{x.name}' is not 4-D with known channels"
    cin = x.shape[1]
    branches = []
    for leaf in leaves:
        branch = _branch(leaf, x, cin)
        if isinstance(branch, str):
            return branch
        branches.append(branch)
    convs = [b for b in branches if b["kind"] == "conv"]
    strides, groups = convs[0]["geometry"]
    cout = convs[0]["w"].shape[0]
    for c in convs:
        if c["geometry"][0] != strides:
            return f"mixed strides ({strides} and {c['geometry'][0]})"
        if c["geometry"][1] != groups or c["w"].shape[:2] != convs[0]["w"].shape[:2]:
            return "the convs differ in groups or channels"
    pools = [b for b in branches if b["kind"] == "pool"]
    if any(p["strides"] != strides for p in pools):
        return f"mixed strides (convs {strides}, an average pool another)"
    identities = [b for b in branches if b["kind"] in ("affine", "pool")]
    if identities and cout != cin:  # (the sum's shapes already agree on stride)
        return "an identity-like branch where input and output channels differ"
    k = max([c["w"].shape[2] for c in convs] + [p["k"] for p in pools])
    w = np.zeros((cout, cin // groups, k, k))
    bias = np.zeros(cout)
    for b in branches:
        if b["kind"] == "conv":  # type: ignore[index]
            o = (k - b["w"].shape[2]) // 2  # type: ignore[index]
            w[:, :, o : k - o, o : k - o] += b["w"]  # type: ignore[index]
            bias += 0.0 if b["b"] is None else b["b"]  # type: ignore[index]
        elif b["kind"] == "affine":  # type: ignore[index]
            taps = np.zeros((cin, k, k))
            taps[:, k // 2, k // 2] = b["a"]  # type: ignore[index]
            w += _identity_kernel(cin, groups, k, taps)
            bias += b["b"]  # type: ignore[index]
        else:
            o = (k - b["k"]) // 2  # type: ignore[index]
            taps = np.zeros((cin, k, k))
            taps[:, o : k - o, o : k - o] = 1.0 / b["k"] ** 2  # type: ignore[index]
            w += _identity_kernel(cin, groups, k, taps)
    graph = add.graph
    assert graph is not None
    conv = ir.node(
        "Conv",
        [x, initializer(graph, as_f32(w), "weight"), initializer(graph, as_f32(bias), "bias")],
        attributes={
            "kernel_shape": [k, k],
            "strides": list(strides),
            "pads": [k // 2] * 4,
            "group": groups,
            "dilations": [1, 1],
        },
        name=f"{convs[0]['node'].name or add.name}+merged",
    )
    graph.insert_before(add, conv)
    conv.outputs[0].shape, conv.outputs[0].type = add.outputs[0].shape, add.outputs[0].type
    tree = _tree_nodes(add)
    merged = [b["node"] for b in branches if b["node"] is not None] + tree[::-1] + [add]
    record_provenance([conv], merged, "merge_branches")  # type: ignore[arg-type]
    if not bypass(add, conv.outputs[0]):
        graph.remove(conv, safe=True)
        return "the sum is a graph output that cannot be replaced"
    for node in tree + [b["node"] for b in branches if b["node"] is not None]:  # type: ignore[index]
        if node.graph is not None:
            inputs_of = list(node.inputs)
            graph.remove(node, safe=True)
            for value in inputs_of:
                drop_if_orphaned(value)
    return True


def _tree_nodes(add: ir.Node) -> list[ir.Node]:
    """The inner Adds of the tree below `add`, consumers first."""
    out = []
    for value in add.inputs:
        inner = value.producer() if value is not None else None
        if is_op(inner, "Add") and inner is not None and only_consumer(value) is add:  # type: ignore[arg-type]
            out += [inner, *_tree_nodes(inner)]
    return out


class MergeParallelBranches(EdgecPass):
    """An imperative pass (a pattern cannot say "an Add tree of any number of branches"),
    reporting each sum it merged or left alone, and why."""

    name = "merge_parallel_branches"
    RULE = "merge_branches"

    def rewrite(self, model: ir.Model) -> int:
        fired = 0
        for node in reversed(list(model.graph)):  # the root of a sum tree comes last
            if node.graph is None or not is_op(node, "Add"):
                continue
            involved = _involved(node) if self.explain else []  # (gone once merged)
            result = _merge(node)
            if result is True:
                fired += 1
                if self.explain:
                    self.fired(self.RULE, involved)
            elif len(involved) > 1:  # a bare Add of inputs is no candidate
                self.left_alone(self.RULE, involved, str(result))
        return fired


def _involved(add: ir.Node) -> list[ir.Node]:
    """The sum tree under `add` and the producers of its terms: what --explain names."""
    producers = [p for v in _leaves(add) or [] if (p := v.producer()) is not None]
    return [add, *_tree_nodes(add), *producers]
