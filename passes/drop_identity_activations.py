"""op(x) -> x for ops that compute the identity at inference.

    LeakyRelu(x, alpha=1) = x        (VanillaNet's activations at the end of deep training)
    Dropout(x)            = x        (inference; its mask output unread)
    Identity(x)           = x
    x * 1 = x,  x / 1 = x,  x + 0 = x,  x - 0 = x    (the constant must not broadcast x larger)
    Reshape(x, s) = x                (when s is x's own static shape)
    Resize(x) = x                    (to x's own static shape, any mode but tf_crop_and_resize)
    Transpose(x, perm=identity) = x, Cast(x, to=dtype(x)) = x, Expand(x, shape(x)) = x

Left alone: a node whose output is a graph output that x cannot become (x an input or an
initializer), a constant that would broadcast x to a larger shape, Dropout in training mode,
and shapes that are not static.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.passes._ir import bypass, const, is_op, live_nodes, static_shape
from edgec.passes.base import EdgecPass

_NEUTRAL = {"Mul": 1.0, "Div": 1.0, "Add": 0.0, "Sub": 0.0}


def _same_shape(node: ir.Node) -> bool:
    a, b = static_shape(node.inputs[0]), static_shape(node.outputs[0])
    return a is not None and a == b


def _identity_or_why(node: ir.Node) -> ir.Value | str | None:
    """The input `node` passes through; or why a node of an identity-capable kind is not one
    (a string, for --explain); or None for a node no rule here looks at."""
    x = node.inputs[0] if node.inputs else None
    if x is None:
        return None
    op = node.op_type
    if is_op(node, "LeakyRelu"):
        alpha = node.attributes.get_float("alpha", 0.01)
        return x if alpha == 1.0 else f"alpha {alpha:g}, not 1: not the identity"
    if is_op(node, "Identity"):
        return x
    if is_op(node, "Dropout"):
        training = const(node.inputs[2]) if len(node.inputs) > 2 else None
        if training is None or not bool(training):
            return x
        return "Dropout in training mode"
    if is_op(node, *_NEUTRAL):
        c = const(node.inputs[1])
        if c is None and op in ("Mul", "Add"):  # commutative: the constant may come first
            x, c = node.inputs[1], const(node.inputs[0])
        if x is None or c is None or not np.all(c == _NEUTRAL[op]):
            return None
        out, xs = static_shape(node.outputs[0]), static_shape(x)
        if out is not None and xs is not None:
            return x if out == xs else f"the constant {_NEUTRAL[op]:g} broadcasts x to {out}"
        return x if c.ndim == 0 else "the constant may broadcast x (shapes unknown)"
    if is_op(node, "Reshape", "Expand"):
        return x if _same_shape(node) else None
    if is_op(node, "Resize"):
        mode = node.attributes.get_string("coordinate_transformation_mode", "half_pixel")
        return x if _same_shape(node) and mode != "tf_crop_and_resize" else None
    if is_op(node, "Transpose"):
        perm = node.attributes.get_ints("perm", None)
        return x if perm is not None and list(perm) == sorted(perm) else None
    if is_op(node, "Cast"):
        to = node.attributes.get_int("to", -1)
        return x if x.dtype is not None and int(x.dtype) == to else None
    return None


class DropIdentityActivations(EdgecPass):
    """Reports the near misses too: a LeakyRelu whose alpha is not 1 (VanillaNet before its
    activations have finished learning), Dropout in training mode, x*1 that broadcasts."""

    name = "drop_identity_activations"
    RULE = "identity"

    def rewrite(self, model: ir.Model) -> int:
        fired = 0
        for node in live_nodes(model):
            found = _identity_or_why(node)
            if isinstance(found, str):
                self.left_alone(self.RULE, [node], found)
            elif found is not None:
                if bypass(node, found):
                    fired += self.fired(self.RULE, [node])
                else:
                    self.left_alone(self.RULE, [node], "its output is a graph output x cannot be")
        return fired
