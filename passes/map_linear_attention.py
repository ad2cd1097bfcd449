"""Linear attention (SLAB's simplified linear attention, and any model written the same way) as
one canonical `ai.edgec::LinearAttention`; EcoFormer's hashed attention as one
`ai.edgec::HashedAttention`.

    LinearAttention(Q, K, V) <eps> = (Q (K^T V)) / (Q sum_j K_j + eps)    per row of Q

Q, K, V are [B, N, C] (heads folded into B), after the kernel (ReLU) that stays outside. The
walk starts at the product that makes the output and reads, whatever letters the Einsum
equations use:

- K^T V first:  Y = Einsum(bic,bcd,bi->bid)(Q, Einsum(bjc,bjd->bcd)(K, V), Z)
- Q K^T first:  Y = Einsum(bij,bjd,bi->bid)(Einsum(bic,bjc->bij)(Q, K), V, Z)
- the normaliser Z = Reciprocal(Einsum(bic,bc->bi)(Q, ReduceSum(K, tokens)) + eps).

Hashed attention (EcoFormer): H = sign(...) the +-1 hash codes of the tokens (queries and
keys share them), per head

    HashedAttention(H, V) <bias, offset> = (H (H^T V) + bias V) / (H sum_j H_j + offset)

read from Einsum(bhde,bhnd->bhne)(Einsum(bhnd,bhne->bhde)(H, V), H) + V * bias, times
Unsqueeze(1 / (Einsum(bhnd,bhd->bhn)(H, ReduceSum(H, tokens)) + offset)). H has to come from a
Sign. The codes multiply real values (V, and sums of codes), so the products are not
code-by-code products: popcount kernels do not apply to this linear form (the only
code-by-code product, H H^T, is the quadratic form, N^2 b bit operations and N^2 e MACs
against 2 N b e MACs). In MatMuls the code products are exact.

The product order the model was written with is not kept: each target lowers the op in the
cheaper order for its shape (`lower_attention`). The depthwise conv on V that SLAB adds to the
output is ordinary convolution outside the op. Left alone, with the reason: another
normaliser, a product read elsewhere, shapes that are not static.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.core.binary_ops import (
    DOMAIN,
    HASHED_ATTENTION,
    LINEAR_ATTENTION,
    ensure_function,
    supports_functions,
)
from edgec.passes._ir import only_consumer, remove_unread, scalar, static_shape, take_over
from edgec.passes.base import EdgecPass

RULE = "linear_attention"
# the equations with their letters renamed in order of appearance (both orders' output
# products, bic,bcd,bi->bid and bij,bjd,bi->bid, read the same)
OUTPUT = "abc,acd,ab->abd"
KV = "abc,abd->acd"
QK = "abc,adc->abd"
NORM = "abc,ac->ab"
HASHED_OUT = "abcd,abec->abed"  # bhde,bhnd->bhne: (H^T V)^T-side product with H
HASHED_CTX = "abcd,abce->abde"  # bhnd,bhne->bhde: H^T V
HASHED_NORM = "abcd,abd->abc"  # bhnd,bhd->bhn: H . sum_j H_j
HASHED = "hashed_attention"


def canonical(equation: str) -> str:
    """The equation with its letters renamed a, b, c... in order of first appearance."""
    names: dict[str, str] = {}
    out = []
    for ch in equation.replace(" ", ""):
        if ch.isalpha():
            out.append(names.setdefault(ch, chr(ord("a") + len(names))))
        else:
            out.append(ch)
    return "".join(out)


def _einsum(value: ir.Value | None, equation: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "Einsum" or node.domain not in ("", "ai.onnx"):
        return None
    if canonical(node.attributes.get_string("equation", "")) != equation:
        return None
    return node


class MapLinearAttention(EdgecPass):
    name = "map_linear_attention"

    def rewrite(self, model: ir.Model) -> int:
        if not supports_functions(model):
            return 0
        fired = 0
        for node in list(model.graph):
            if node.op_type == "Einsum" and node.graph is not None and len(node.inputs) == 2:
                if canonical(node.attributes.get_string("equation", "")) == HASHED_OUT:
                    hashed = _read_hashed(node)
                    if isinstance(hashed, str):
                        self.left_alone(HASHED, [node], hashed)
                        continue
                    _emit_hashed(model, *hashed)
                    fired += self.fired(HASHED, hashed[-1])
                continue
            if node.op_type != "Einsum" or node.graph is None or len(node.inputs) != 3:
                continue
            if canonical(node.attributes.get_string("equation", "")) != OUTPUT:
                continue
            found = _read(node)
            if isinstance(found, str):
                self.left_alone(RULE, [node], found)
                continue
            q, k, v, eps, nodes = found
            _emit(model, node, q, k, v, eps, nodes)
            fired += self.fired(RULE, nodes)
        return fired


def _read(
    y: ir.Node,
) -> tuple[ir.Value, ir.Value, ir.Value, float, list[ir.Node]] | str:
    """Q, K, V, eps and the block's nodes, for the final product `y`; or why not."""
    a, b, z = y.inputs
    # K^T V first: y(Q, KV, Z); Q K^T first: y(QK, V, Z), the same equation shape
    kv = _einsum(b, KV)
    qk = _einsum(a, QK)
    if kv is not None and only_consumer(kv.outputs[0]) is y:
        q, k, v = a, kv.inputs[0], kv.inputs[1]
        product = kv
    elif qk is not None and only_consumer(qk.outputs[0]) is y:
        q, k, v = qk.inputs[0], qk.inputs[1], b
        product = qk
    else:
        return "the output is not Q (K^T V) nor (Q K^T) V read only here"
    if q is None or k is None or v is None or z is None:
        return "an operand is missing"
    recip = z.producer()
    if recip is None or recip.op_type != "Reciprocal" or only_consumer(z) is not y:
        return "the normaliser is not a Reciprocal that only the output reads"
    add = recip.inputs[0].producer() if recip.inputs[0] is not None else None
    if add is None or add.op_type != "Add" or only_consumer(add.outputs[0]) is not recip:
        return "the normaliser is not 1 / (q . sum k + eps)"
    eps = None
    for dot_in, c in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        if c is not None and c.const_value is not None and c.const_value.size == 1:
            eps, dot_value = float(c.const_value.numpy().reshape(())), dot_in
            break
    if eps is None:
        return "the normaliser adds no scalar constant"
    dot = _einsum(dot_value, NORM)
    if dot is None or dot.inputs[0] is not q or only_consumer(dot.outputs[0]) is not add:
        return "the normaliser's dot product is not with Q"
    ksum = dot.inputs[1].producer() if dot.inputs[1] is not None else None
    if ksum is None or ksum.op_type != "ReduceSum" or ksum.inputs[0] is not k:
        return "the normaliser does not sum K"
    axes = ksum.inputs[1].const_value if len(ksum.inputs) > 1 and ksum.inputs[1] else None
    if axes is None or [int(x) % 3 for x in axes.numpy().ravel()] != [1]:
        return "the normaliser sums K over another axis than the tokens"
    if ksum.attributes.get_int("keepdims", 1) != 0 or only_consumer(ksum.outputs[0]) is not dot:
        return "the sum of K is kept or read elsewhere"
    shapes = [static_shape(x) for x in (q, k, v)]
    if any(s is None or len(s) != 3 for s in shapes):
        return "Q, K and V are not static [B, N, C] tensors"
    if {x.dtype for x in (q, k, v)} != {ir.DataType.FLOAT}:
        return "Q, K and V are not float32 (the canonical op's type)"
    return q, k, v, eps, [ksum, dot, add, recip, product, y]


def _emit(
    model: ir.Model,
    y: ir.Node,
    q: ir.Value,
    k: ir.Value,
    v: ir.Value,
    eps: float,
    nodes: list[ir.Node],
) -> None:
    graph = model.graph
    where = y.name or "linear_attention"
    module = where.rsplit("/", 1)[0] if "/" in where else where
    node = ir.node(
        LINEAR_ATTENTION,
        [q, k, v],
        attributes={"eps": float(np.float32(eps))},
        domain=DOMAIN,
        name=f"{module}/linear_attention",
    )
    out = node.outputs[0]
    out.shape, out.type = y.outputs[0].shape, y.outputs[0].type
    out.name = f"{y.outputs[0].name}_linear"
    graph.insert_before(y, node)
    ensure_function(model, LINEAR_ATTENTION)
    take_over(y.outputs[0], out)
    remove_unread(graph, nodes)


def _other(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The other operand of a binary node that reads `value`."""
    a, b = node.inputs[0], node.inputs[1]
    return b if a is value else a if b is value else None


def _read_hashed(
    o: ir.Node,
) -> tuple[ir.Value, ir.Value, float, float, ir.Value, list[ir.Node]] | str:
    """H, V, bias, offset, the block's output and nodes, for the product `o`; or why not."""
    ctx, h = o.inputs
    ctx_node = _einsum(ctx, HASHED_CTX)
    if h is None or ctx_node is None or ctx_node.inputs[0] is not h:
        return "the output product is not H (H^T V)"
    sign = h.producer()
    if sign is None or sign.op_type != "Sign":
        return "the codes are not made by Sign (not +-1)"
    v = ctx_node.inputs[1]
    add = only_consumer(o.outputs[0])
    if v is None or add is None or add.op_type != "Add":
        return "no bias term V * bias is added to H (H^T V)"
    vb = _other(add, o.outputs[0])
    vb_node = vb.producer() if vb is not None else None
    if vb_node is None or vb_node.op_type != "Mul" or v not in vb_node.inputs:
        return "the added term is not V times a constant"
    bias = scalar(_other(vb_node, v))
    mul = only_consumer(add.outputs[0])
    if bias is None or mul is None or mul.op_type != "Mul":
        return "the sum is not scaled by the normaliser"
    unsq = _other(mul, add.outputs[0])
    unsq_node = unsq.producer() if unsq is not None else None
    if unsq_node is None or unsq_node.op_type != "Unsqueeze":
        return "the normaliser is not unsqueezed onto the last axis"
    recip = unsq_node.inputs[0].producer() if unsq_node.inputs[0] is not None else None
    den = recip.inputs[0].producer() if recip is not None and recip.inputs[0] else None
    if recip is None or recip.op_type != "Reciprocal" or den is None or den.op_type != "Add":
        return "the normaliser is not 1 / (H . sum H + offset)"
    offset, dot_value = None, None
    for a, c in ((den.inputs[0], den.inputs[1]), (den.inputs[1], den.inputs[0])):
        if scalar(c) is not None:
            offset, dot_value = scalar(c), a
    dot = _einsum(dot_value, HASHED_NORM)
    if offset is None or dot is None or dot.inputs[0] is not h:
        return "the normaliser's dot product is not with the codes"
    hsum = dot.inputs[1].producer() if dot.inputs[1] is not None else None
    if hsum is None or hsum.op_type != "ReduceSum" or hsum.inputs[0] is not h:
        return "the normaliser does not sum the codes"
    axes = hsum.inputs[1].const_value if len(hsum.inputs) > 1 and hsum.inputs[1] else None
    if axes is None or [int(x) % 4 for x in axes.numpy().ravel()] != [2]:
        return "the normaliser sums the codes over another axis than the tokens"
    nodes = [hsum, dot, den, recip, unsq_node, ctx_node, o, vb_node, add, mul]
    for n in nodes[:-1]:
        if any(len(x.uses()) != 1 or x.is_graph_output() for x in n.outputs):
            return f"'{n.name}' is read outside the block"
    shapes = [static_shape(x) for x in (h, v)]
    if any(s is None or len(s) != 4 for s in shapes):
        return "the codes and V are not static [B, H, N, C] tensors"
    if {x.dtype for x in (h, v)} != {ir.DataType.FLOAT}:
        return "the codes and V are not float32 (the canonical op's type)"
    return h, v, bias, offset, mul.outputs[0], nodes


def _emit_hashed(
    model: ir.Model,
    h: ir.Value,
    v: ir.Value,
    bias: float,
    offset: float,
    out: ir.Value,
    nodes: list[ir.Node],
) -> None:
    graph = model.graph
    last = nodes[-1]
    where = last.name or HASHED
    module = where.rsplit("/", 1)[0] if "/" in where else where
    node = ir.node(
        HASHED_ATTENTION,
        [h, v],
        attributes={"bias": float(np.float32(bias)), "offset": float(np.float32(offset))},
        domain=DOMAIN,
        name=f"{module}/hashed_attention",
    )
    new = node.outputs[0]
    new.shape, new.type, new.name = out.shape, out.type, f"{out.name}_hashed"
    graph.insert_before(last, node)
    ensure_function(model, HASHED_ATTENTION)
    take_over(out, new)
    remove_unread(graph, nodes)
