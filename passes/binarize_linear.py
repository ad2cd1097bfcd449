"""binarize_linear: a linear layer whose weight takes two values +-s_n per output channel and
whose input is binarized becomes one `ai.edgec::BinaryLinear` with the weight packed 1 bit
each.

    (c(x) @ (s * C)) * a + b  =  BinaryLinear(x, pack(C > 0), scale = s * a, bias = b)

with C in {-1, +1}^(K x N), s per channel or per tensor (usually 1: the exporters keep the
codes and apply the scale after the product), a and b the constant Mul and Add that follow.
The input's binarization (sign with an offset, or the {0, 1} clamp-round form, see
`binary_codes`) is fused in, its offset too. With s = 1 this is the model's arithmetic
exactly: an integer sum of +-1, then the same multiply and add.

A Gemm (alpha, beta, C, transB) is read the same way.

Left alone, with the reason (`edgec compile --explain`): weights with more than two values
in a channel, or two values that are not +-s (an offset weight), inputs that are not
binarized (weight-only binarization is not a bit operation), MatMuls with a constant A, Gemm
with transA.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.core.binary_ops import insert_binary_linear, supports_functions
from edgec.passes._ir import bypass, is_op, layer_name, live_nodes, only_consumer
from edgec.passes.base import EdgecPass
from edgec.passes.binary_codes import (
    ActivationCode,
    ConstantEvaluator,
    activation_code,
    drop_dead,
    replay,
)


def two_level(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(codes > 0 as bool (N, K), s (N,)) when every row of w (N, K) is +-s_n, s_n > 0."""
    s = np.abs(w).max(axis=1)
    if not np.all(s > 0) or not np.all(np.abs(w) == s[:, None]):
        return None
    return w > 0, s.astype(np.float32)


def _channel_const(array: np.ndarray | None, n: int) -> np.ndarray | None:
    """A Mul/Add constant that acts per output channel: scalar, (N,), (1, .., N)."""
    if array is None or array.size not in (1, n):
        return None
    if array.size == n and (array.ndim == 0 or array.shape[-1] != n):
        return None
    return np.broadcast_to(array.reshape(-1), (n,)).astype(np.float32)


def _compact(scale: np.ndarray) -> np.ndarray:
    """One scale for the tensor when every channel has the same."""
    return scale[:1] if np.all(scale == scale[0]) else scale


RULE = "binary_linear"


class BinarizeLinear(EdgecPass):
    name = "binarize_linear"

    def rewrite(self, model: ir.Model) -> int:
        if not supports_functions(model):  # no body to give the ops
            return 0
        evaluate = ConstantEvaluator(model)
        count = 0
        for node in live_nodes(model):
            gemm = is_op(node, "Gemm")
            if not (gemm or is_op(node, "MatMul")) or node.inputs[0] is None:
                continue
            found = self._match(node, gemm, evaluate)
            if isinstance(found, str):
                self.left_alone(RULE, [node], found)
            elif found is not None:
                self._replace(model, node, *found, evaluate)
                self.fired(RULE, [node])
                count += 1
        return count

    def _match(
        self, node: ir.Node, gemm: bool, evaluate: ConstantEvaluator
    ) -> tuple[ActivationCode, np.ndarray, np.ndarray, np.ndarray | None] | str | None:
        """(code, bits, scale, Gemm bias) of a binary layer; why not, for a near miss; or None
        for a product that is no candidate (an unbinarized input; with explain, the ones
        whose weight is two-level are near misses, found at the cost of reading the weight)."""
        code = activation_code(node.inputs[0])  # type: ignore[arg-type]
        if code is None and not self.explain:
            return None
        if gemm and node.attributes.get_int("transA", 0):
            return None if code is None else "the Gemm transposes its input (transA)"
        w = evaluate(node.inputs[1])
        if w is None or w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
            return None if code is None else "the weight is not a 2-D floating-point constant"
        trans_b = gemm and node.attributes.get_int("transB", 0)
        levels = two_level(w if trans_b else w.T)
        if code is None:
            weight_only = "two-level weights but an input that is not binarized: not a bit op"
            return None if levels is None else weight_only
        if levels is None:
            return "a weight channel takes more than two values, or two that are not +-s"
        if not gemm:
            return code, *levels, None
        c = evaluate(node.inputs[2]) if len(node.inputs) > 2 else None
        if len(node.inputs) > 2 and node.inputs[2] is not None and c is None:
            return "the Gemm's bias is not a constant"
        bias = _channel_const(c, levels[0].shape[0])
        if c is not None and bias is None:
            return "the Gemm's bias does not act per output channel"
        alpha = node.attributes.get_float("alpha", 1.0)
        scale = (levels[1] * np.float32(alpha)).astype(np.float32)
        if bias is not None:
            bias = (bias * np.float32(node.attributes.get_float("beta", 1.0))).astype(np.float32)
        return code, levels[0], scale, bias

    def _replace(
        self,
        model: ir.Model,
        matmul: ir.Node,
        code: ActivationCode,
        bits: np.ndarray,
        scale: np.ndarray,
        gemm_bias: np.ndarray | None,
        evaluate: ConstantEvaluator,
    ) -> None:
        n, k = bits.shape
        bias = np.zeros(n, np.float32) if gemm_bias is None else gemm_bias
        last = matmul
        chain = [matmul]
        mul = only_consumer(matmul.outputs[0]) if gemm_bias is None else None
        if is_op(mul, "Mul") and mul is not None:
            other = mul.inputs[1] if mul.inputs[0] is matmul.outputs[0] else mul.inputs[0]
            a = _channel_const(evaluate(other), n)
            if a is not None:
                scale = (scale * a).astype(np.float32)  # exact when s = 1, as exported
                last = mul
                chain.append(mul)
        add = only_consumer(last.outputs[0]) if gemm_bias is None else None
        if is_op(add, "Add") and add is not None:
            other = add.inputs[1] if add.inputs[0] is last.outputs[0] else add.inputs[0]
            b = _channel_const(evaluate(other), n)
            if b is not None:
                bias, last = b, add
                chain.append(add)
        graph = model.graph
        fuse = code.offset is not None and not code.movement
        x = replay(code, matmul, fuse_offset=fuse)
        offset = np.zeros(k, np.float32)
        if fuse:
            assert code.offset is not None
            offset = np.broadcast_to(code.offset, (k,)).astype(np.float32)
        out = insert_binary_linear(
            model,
            matmul,
            x,
            bits,
            _compact(scale),
            bias,
            offset,
            (code.step, code.threshold, code.low),
            layer_name(matmul, "linear"),
        )
        out.shape = last.outputs[0].shape
        bypass(last, out)
        for dead in reversed(chain[:-1]):
            graph.remove(dead, safe=True)
        drop_dead(code)
