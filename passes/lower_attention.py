"""`ai.edgec::Attention` lowered to a target's form, chosen per block shape by measurement.

Forms:
- `decomposed`: Transpose(K), MatMul, Mul (scale), Add (bias), Softmax, MatMul: what every
  runtime runs (onnxruntime fuses the scale into its FusedMatMul).
- `fused` (TVM): `ai.edgec::FusedAttention`, which the TVM targets build as one TensorIR
  function per block shape (`edgec.targets.attention_kernel`): the scores stay in a row
  buffer instead of five kernels over S x T per head.
- `mha`: onnxruntime's `com.microsoft.MultiHeadAttention` (query [B, S, N*H], key and value
  [B, N, T, H], `attention_bias` [B|1, N|1, S, T], output [B, S, N*Hv]); the Transpose and
  Reshape that made Q from [B, S, N*H] and that undo them after the block are read through.
- linear attention: `kv_first` / `qk_first` (MatMuls in that product order) or onnxruntime's
  Einsum in either order (`einsum_kv_first` / `einsum_qk_first`).
- hashed attention: `matmul` (the linear form H (H^T V), float MatMuls on the +-1 codes) or,
  on TVM, `popcount`: the codes' Gram matrix H H^T as edgec's `BinaryMatMul` (XNOR-popcount
  on the bit-packed codes, an exact integer), then (S V + bias V) / (rowsum S + offset). It
  costs T^2 (e + 1 + words) against the linear form's T b (2e + 1): cheaper only for short
  sequences (T below about 2b tokens), and chosen by that count (`cheapest`).

`onnxruntime_forms` times both on the block's shapes in onnxruntime, on the threads the
bundle runs with, interleaved, medians, once per distinct shape; measured on these machines
the fused kernel is rarely faster (shared ATTENTION.md), so the choice is recorded per block.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.core.binary_ops import (
    ATTENTION,
    DOMAIN,
    FUSED_ATTENTION,
    HASHED_ATTENTION,
    LINEAR_ATTENTION,
    drop_unused_edgec_ops,
    ensure_function,
    words,
)
from edgec.core.irutil import copy_model, initializer, ort_session
from edgec.passes._ir import static_shape, take_over

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class Shape:
    """What the choice of form depends on."""

    b: int
    n: int
    s: int
    t: int
    h: int
    hv: int
    bias: tuple[int, ...] | None  # None: no bias
    bsd_in: bool  # Q is read through a Transpose(Reshape(x [B, S, N*H]))
    bsd_out: bool  # the output goes on through Transpose and Reshape to [B, S, N*Hv]


@dataclass(frozen=True)
class LinearShape:
    """A LinearAttention's shape: Q [b, i, c], K [b, j, c], V [b, j, d]."""

    b: int
    i: int
    j: int
    c: int
    d: int

    @property
    def kv_first(self) -> bool:
        """K^T V first is cheaper (SLAB's rule: i j (c + d) > c d (i + j))."""
        return self.i * self.j * (self.c + self.d) > self.c * self.d * (self.i + self.j)


@dataclass(frozen=True)
class HashedShape:
    """A HashedAttention's shape: H [b, n, t, bits] (+-1 codes), V [b, n, t, e]."""

    b: int
    n: int
    t: int
    bits: int
    e: int

    def macs(self, form: str) -> int:
        """Multiply-adds of `form` (a popcount of one 64-bit word counts as one)."""
        if form == "popcount":  # S = H H^T; S V; rowsum S
            per_head = self.t * self.t * (words(self.bits) + self.e + 1)
        else:  # H^T V; H (H^T V); H sum_t H_t
            per_head = self.t * self.bits * (2 * self.e + 1)
        return self.b * self.n * per_head


AnyShape = Shape | LinearShape | HashedShape
# the forms each kind of block has, per back end (`--attention-form KIND=FORM`)
KINDS = {"softmax": ATTENTION, "linear": LINEAR_ATTENTION, "hashed": HASHED_ATTENTION}
ONNXRUNTIME_FORMS = {
    "softmax": ("decomposed", "mha"),
    "linear": ("kv_first", "qk_first", "einsum_kv_first", "einsum_qk_first"),
    "hashed": ("matmul",),
}
TVM_FORMS = {
    "softmax": ("fused", "decomposed"),
    "linear": ("kv_first", "qk_first"),
    "hashed": ("matmul", "popcount"),
}
# TensorRT fuses softmax attention written as MatMul(Q * scale, K^T) [+ mask] -> Softmax ->
# MatMul(., V) in the [B, N, S, H] layout: the scale on Q, before the first batched matmul
TENSORRT_FORMS = {
    "softmax": ("scaled_q", "decomposed"),
    "linear": ("kv_first", "qk_first"),
    "hashed": ("matmul",),
}


# Core ML: softmax attention as MIL's scaled_dot_product_attention (iOS 18; the node is kept
# for `targets.coreml_ops_edgec`), or decomposed (iOS 17)
COREML_FORMS = {
    "softmax": ("sdpa", "decomposed"),
    "linear": ("kv_first", "qk_first"),
    "hashed": ("matmul",),
}


def kind_of(shape: AnyShape) -> str:
    if isinstance(shape, LinearShape):
        return "linear"
    return "hashed" if isinstance(shape, HashedShape) else "softmax"


def forms(shape: AnyShape) -> list[str]:
    """The forms a block of `shape` can be lowered to on onnxruntime, the default first."""
    if isinstance(shape, HashedShape):
        return ["matmul"]
    if isinstance(shape, LinearShape):
        order = "kv_first" if shape.kv_first else "qk_first"
        return [order, f"einsum_{order}"]  # onnxruntime's Einsum against its MatMuls
    return ["decomposed", "mha"] if mha_possible(shape) else ["decomposed"]


def onnxruntime_forms(shape: AnyShape) -> list[str]:
    """Every form a block of `shape` can take on onnxruntime (`forms` are the ones timed)."""
    if isinstance(shape, LinearShape):
        return [*forms(shape), *(f for f in ONNXRUNTIME_FORMS["linear"] if f not in forms(shape))]
    return forms(shape)


def tvm_forms(shape: AnyShape) -> list[str]:
    """The forms a block of `shape` can be lowered to on TVM, the cheapest first."""
    if isinstance(shape, HashedShape):
        return sorted(TVM_FORMS["hashed"], key=shape.macs)
    if isinstance(shape, LinearShape):
        return ["kv_first", "qk_first"] if shape.kv_first else ["qk_first", "kv_first"]
    return ["fused", "decomposed"]


def tensorrt_forms(shape: AnyShape) -> list[str]:
    """The forms a block of `shape` can take for TensorRT, its fused pattern first."""
    if isinstance(shape, HashedShape):
        return ["matmul"]
    if isinstance(shape, LinearShape):
        return ["kv_first", "qk_first"] if shape.kv_first else ["qk_first", "kv_first"]
    return list(TENSORRT_FORMS["softmax"])


def tensorrt(shape: AnyShape) -> tuple[str, dict[str, Any]]:
    """TensorRT's choice: its fused attention pattern, linear attention in the cheaper order."""
    return tensorrt_forms(shape)[0], {}


def coreml_forms(shape: AnyShape) -> list[str]:
    """The forms a block of `shape` can take for Core ML, the default first."""
    if isinstance(shape, LinearShape | HashedShape):
        return tensorrt_forms(shape)
    return list(COREML_FORMS["softmax"])


def coreml(shape: AnyShape) -> tuple[str, dict[str, Any]]:
    """Core ML's choice: MIL's fused attention op, linear attention in the cheaper order."""
    return coreml_forms(shape)[0], {}


def form_problem(requested: dict[str, str]) -> str | None:
    """What is wrong with `--attention-form` choices (None: every one names a kind of block and
    a form some back end has)."""
    for kind, form in requested.items():
        if kind not in KINDS:
            kinds = ", ".join(KINDS)
            return f"--attention-form {kind}={form}: unknown kind '{kind}' (one of {kinds})"
        known = dict.fromkeys(
            ONNXRUNTIME_FORMS[kind] + TVM_FORMS[kind] + TENSORRT_FORMS[kind] + COREML_FORMS[kind]
        )
        if form not in known:
            return (
                f"--attention-form {kind}={form}: unknown form '{form}' for {kind} attention "
                f"(one of {', '.join(known)})"
            )
    return None


def attention_nodes(model: ir.Model) -> list[ir.Node]:
    """The canonical attention ops of the main graph (softmax, linear, hashed)."""
    kinds = (ATTENTION, LINEAR_ATTENTION, HASHED_ATTENTION)
    return [n for n in model.graph if n.domain == DOMAIN and n.op_type in kinds]


Choice = Callable[[AnyShape], tuple[str, dict[str, Any]]]


def decomposed(shape: AnyShape) -> tuple[str, dict[str, Any]]:
    """Every runtime's form: MatMuls, linear attention in the cheaper product order, hashed
    attention in its linear form."""
    return forms(shape)[0], {}


def cheapest(shape: AnyShape) -> tuple[str, dict[str, Any]]:
    """TVM's choice: softmax attention fused, linear attention in the cheaper product order,
    hashed attention in the form with fewer multiply-adds (popcount for short sequences),
    with both counts."""
    if isinstance(shape, HashedShape):
        return tvm_forms(shape)[0], {"macs": {f: shape.macs(f) for f in TVM_FORMS["hashed"]}}
    return tvm_forms(shape)[0], {}


def forced(
    choose: Choice, requested: dict[str, str], available: Callable[[AnyShape], list[str]]
) -> Choice:
    """`choose`, except for the kinds of block in `requested` (kind -> form), which get that
    form where `available` lists it for the block's shape (and a note saying why not where it
    does not)."""

    def pick(shape: AnyShape) -> tuple[str, dict[str, Any]]:
        kind = kind_of(shape)
        want = requested.get(kind)
        if want is None:
            return choose(shape)
        possible = available(shape)
        if want in possible:
            return want, {**choose(shape)[1], "requested": True}
        form, details = choose(shape)
        note = f"{kind}={want} is not a form of this block here (forms: {', '.join(possible)})"
        return form, {**details, "note": note}

    return pick


def lower(model: ir.Model, choose: Choice = decomposed) -> list[dict[str, Any]]:
    """Lower every Attention node of `model` (in place) to the form `choose` picks for its
    shape; returns what was chosen per block, with what `choose` says of it."""
    chosen = []
    for node in attention_nodes(model):
        if node.op_type == HASHED_ATTENTION:
            hashed = _hashed_shape(node)
            form, details = choose(hashed) if hashed is not None else ("matmul", {})
            if form == "popcount":
                _hashed_popcount(model, node)
            else:
                _hashed(model.graph, node)
            chosen.append({"block": node.name or "", "form": form, **details})
            continue
        if node.op_type == LINEAR_ATTENTION:
            linear = _linear_shape(node)
            form, details = choose(linear) if linear is not None else ("kv_first", {})
            _linear(model.graph, node, form)
            chosen.append({"block": node.name or "", "form": form, **details})
            continue
        shape = _shape(node)
        form, details = choose(shape) if shape is not None else ("decomposed", {})
        if form == "sdpa":  # kept: the Core ML lowering maps it to its attention op
            chosen.append({"block": node.name or "", "form": form, **details})
            continue
        if form == "mha" and shape is not None:
            _mha(model.graph, node, shape)
        elif form == "fused" and shape is not None:
            _fused(model, node)
        else:
            _decomposed(model.graph, node, scale_q=form == "scaled_q")
        chosen.append({"block": node.name or "", "form": form, **details})
    drop_unused_edgec_ops(model)
    return chosen


def lowered_copy(
    model: ir.Model,
    choose: Choice,
    requested: dict[str, str],
    available: Callable[[AnyShape], list[str]],
) -> tuple[ir.Model, list[dict[str, Any]]]:
    """A target's view of `model` (whose IR the back ends share): a copy with every attention
    block lowered to `choose`'s form, or to the `requested` one (`--attention-form`) where
    `available` lists it; the model itself and no blocks when it has none."""
    if not attention_nodes(model):
        return model, []
    copy = copy_model(model)
    return copy, lower(copy, forced(choose, requested, available))


def timed(threads: int) -> Choice:
    """A `choose` that times every possible form of each new shape in onnxruntime, on
    `threads`, and picks the fastest (the p50 of each form goes with it)."""
    timings: dict[AnyShape, dict[str, float]] = {}

    def choose(shape: AnyShape) -> tuple[str, dict[str, Any]]:
        if shape not in timings:
            timings[shape] = _time_forms(shape, threads)
        best = min(timings[shape], key=lambda f: timings[shape][f])
        return best, {"p50_ms": timings[shape]} if len(timings[shape]) > 1 else {}

    return choose


def _bias_shape(node: ir.Node) -> tuple[int, ...] | None:
    bias = node.inputs[3]
    if bias is None:
        return None
    const = bias.const_value
    if const is not None and const.size == 1 and float(const.numpy().reshape(())) == 0.0:
        return None
    return static_shape(bias) or (-1,)


def _q_source(node: ir.Node) -> ir.Value | None:
    """x, where Q = Transpose(Reshape(x [B, S, N*H], [B, S, N, H]), [0, 2, 1, 3])."""
    t = node.inputs[0].producer() if node.inputs[0] is not None else None
    if (
        t is None
        or t.op_type != "Transpose"
        or list(t.attributes.get_ints("perm", [])) != [0, 2, 1, 3]
    ):
        return None
    r = t.inputs[0].producer() if t.inputs[0] is not None else None
    if r is None or r.op_type != "Reshape":
        return None
    x = r.inputs[0]
    xs, qs = static_shape(x), static_shape(node.inputs[0])
    if xs is None or qs is None or xs != (qs[0], qs[2], qs[1] * qs[3]):
        return None
    return x


def _out_sink(node: ir.Node) -> ir.Value | None:
    """y, where the output goes on only through Transpose [0, 2, 1, 3] and Reshape to
    y [B, S, N*Hv]."""
    out = node.outputs[0]
    uses = out.uses()
    if len(uses) != 1 or out.is_graph_output():
        return None
    t = uses[0].node
    if t.op_type != "Transpose" or list(t.attributes.get_ints("perm", [])) != [0, 2, 1, 3]:
        return None
    tu = t.outputs[0].uses()
    if len(tu) != 1 or t.outputs[0].is_graph_output() or tu[0].node.op_type != "Reshape":
        return None
    y = tu[0].node.outputs[0]
    ys, os_ = static_shape(y), static_shape(out)
    if ys is None or os_ is None or ys != (os_[0], os_[2], os_[1] * os_[3]):
        return None
    return y


def _shape(node: ir.Node) -> Shape | None:
    q, k, v = (static_shape(node.inputs[i]) for i in range(3))
    if q is None or k is None or v is None:
        return None
    return Shape(
        q[0],
        q[1],
        q[2],
        k[2],
        q[3],
        v[3],
        _bias_shape(node),
        _q_source(node) is not None,
        _out_sink(node) is not None,
    )


def _mha_bias(shape: Shape) -> tuple[int, ...] | None:
    """The bias as attention_bias [B|1, N|1, S, T], or None when it cannot be one."""
    if shape.bias is None:
        return None
    dims = (1,) * (4 - len(shape.bias)) + shape.bias
    if len(dims) != 4 or dims[0] not in (1, shape.b) or dims[1] not in (1, shape.n):
        return None
    return (dims[0], dims[1], shape.s, shape.t)


def mha_possible(shape: Shape) -> bool:
    """Can onnxruntime's MultiHeadAttention take it? (key and value of one shape; a bias
    that reads as attention_bias)"""
    if shape.h != shape.hv or (shape.bias is not None and -1 in shape.bias):
        return False
    return shape.bias is None or _mha_bias(shape) is not None


def _decomposed(graph: ir.Graph, node: ir.Node, scale_q: bool = False) -> None:
    """MatMuls and Softmax; the scale on the scores, or with `scale_q` on Q before the first
    MatMul (TensorRT's fused pattern: the same product up to rounding)."""
    q, k, v, bias = node.inputs[:4]
    scale = node.attributes.get_float("scale", 1.0)
    base = node.name or "attention"
    nodes = []
    if scale_q and scale != 1.0:
        c = _scalar_init(graph, scale, f"{base}/scale")
        nodes.append(ir.node("Mul", [q, c], name=f"{base}/scale_q"))
        q, scale = nodes[-1].outputs[0], 1.0
    nodes.append(ir.node("Transpose", [k], attributes={"perm": [0, 1, 3, 2]}, name=f"{base}/k_t"))
    nodes.append(ir.node("MatMul", [q, nodes[-1].outputs[0]], name=f"{base}/qk"))
    if scale != 1.0:
        c = _scalar_init(graph, scale, f"{base}/scale")
        nodes.append(ir.node("Mul", [nodes[-1].outputs[0], c], name=f"{base}/scale"))
    if bias is not None and _bias_shape(node) is not None:
        nodes.append(ir.node("Add", [nodes[-1].outputs[0], bias], name=f"{base}/bias"))
    nodes.append(ir.node("Softmax", [nodes[-1].outputs[0]], attributes={"axis": -1}, name=base))
    nodes.append(ir.node("MatMul", [nodes[-1].outputs[0], v], name=f"{base}/pv"))
    _replace(graph, node, nodes, node.outputs[0], nodes[-1].outputs[0])


def _fused(model: ir.Model, node: ir.Node) -> None:
    """The block as one `FusedAttention` (TVM's fused template, `targets.attention_kernel`)."""
    fused = ir.node(
        FUSED_ATTENTION,
        list(node.inputs),
        attributes={"scale": node.attributes.get_float("scale", 1.0)},
        domain=DOMAIN,
        name=node.name,
    )
    ensure_function(model, FUSED_ATTENTION)
    _replace(model.graph, node, [fused], node.outputs[0], fused.outputs[0])


def _linear_shape(node: ir.Node) -> LinearShape | None:
    q, k, v = (static_shape(node.inputs[i]) for i in range(3))
    if q is None or k is None or v is None:
        return None
    return LinearShape(q[0], q[1], k[1], k[2], v[2])


def _linear(graph: ir.Graph, node: ir.Node, form: str) -> None:
    """LinearAttention in `form`: `kv_first` / `qk_first` (MatMuls in that product order) or
    `einsum_kv_first` / `einsum_qk_first` (onnxruntime's Einsum, as SLAB's code writes it)."""
    q, k, v = node.inputs[:3]
    eps = node.attributes.get_float("eps", 0.0)
    base = node.name or "linear_attention"
    e = _scalar_init(graph, eps, f"{base}/eps")
    if form.startswith("einsum_"):
        ksum = ir.node("ReduceSum", [k, _ints(graph, [1], base)], attributes={"keepdims": 0})
        dot = ir.node("Einsum", [q, ksum.outputs[0]], attributes={"equation": "bic,bc->bi"})
        den = ir.node("Add", [dot.outputs[0], e])
        z = ir.node("Reciprocal", [den.outputs[0]])
        if form == "einsum_kv_first":
            kv = ir.node("Einsum", [k, v], attributes={"equation": "bjc,bjd->bcd"})
            y = ir.node(
                "Einsum",
                [q, kv.outputs[0], z.outputs[0]],
                attributes={"equation": "bic,bcd,bi->bid"},
                name=base,
            )
        else:
            kv = ir.node("Einsum", [q, k], attributes={"equation": "bic,bjc->bij"})
            y = ir.node(
                "Einsum",
                [kv.outputs[0], v, z.outputs[0]],
                attributes={"equation": "bij,bjd,bi->bid"},
                name=base,
            )
        _replace(graph, node, [ksum, dot, den, z, kv, y], node.outputs[0], y.outputs[0])
        return
    kt = ir.node("Transpose", [k], attributes={"perm": [0, 2, 1]}, name=f"{base}/k_t")
    if form == "kv_first":
        kv = ir.node("MatMul", [kt.outputs[0], v], name=f"{base}/kv")
        num = ir.node("MatMul", [q, kv.outputs[0]], name=f"{base}/q_kv")
    else:
        kv = ir.node("MatMul", [q, kt.outputs[0]], name=f"{base}/qk")
        num = ir.node("MatMul", [kv.outputs[0], v], name=f"{base}/qk_v")
    ksum = ir.node(
        "ReduceSum", [k, _ints(graph, [1], base)], attributes={"keepdims": 1}, name=f"{base}/k_sum"
    )
    kst = ir.node("Transpose", [ksum.outputs[0]], attributes={"perm": [0, 2, 1]})
    dot = ir.node("MatMul", [q, kst.outputs[0]], name=f"{base}/normaliser")
    den = ir.node("Add", [dot.outputs[0], e])
    z = ir.node("Reciprocal", [den.outputs[0]])
    y = ir.node("Mul", [num.outputs[0], z.outputs[0]], name=base)
    nodes = [kt, kv, num, ksum, kst, dot, den, z, y]
    _replace(graph, node, nodes, node.outputs[0], y.outputs[0])


def _scalar_init(graph: ir.Graph, value: float, name: str) -> ir.Value:
    return initializer(graph, np.array(value, np.float32), name)


def _hashed_shape(node: ir.Node) -> HashedShape | None:
    h, v = (static_shape(node.inputs[i]) for i in range(2))
    if h is None or v is None or len(h) != 4 or len(v) != 4:
        return None
    return HashedShape(h[0], h[1], h[2], h[3], v[3])


def _hashed_popcount(model: ir.Model, node: ir.Node) -> None:
    """HashedAttention with the codes' Gram matrix S = H H^T as a `BinaryMatMul` (exact on the
    codes: bit = H >= 0, so a Sign code of exactly 0 would count as +1), then
    (S V + bias V) / (rowsum S + offset)."""
    graph = model.graph
    h, v = node.inputs[:2]
    base = node.name or "hashed_attention"
    bias = _scalar_init(graph, node.attributes.get_float("bias", 0.0), f"{base}/bias")
    offset = _scalar_init(graph, node.attributes.get_float("offset", 0.0), f"{base}/offset")
    ht = ir.node("Transpose", [h], attributes={"perm": [0, 1, 3, 2]}, name=f"{base}/h_t")
    code = {"step": 1.0, "threshold": 0.0, "low": -1.0}
    gram = ir.node(
        "BinaryMatMul",
        [h, ht.outputs[0]],
        attributes={f"{side}_{k}": x for side in "ab" for k, x in code.items()},
        domain=DOMAIN,
        name=f"{base}/codes_gram",
    )
    ensure_function(model, "BinaryMatMul")
    s = gram.outputs[0]
    num = ir.node("MatMul", [s, v], name=f"{base}/sv")
    vb = ir.node("Mul", [v, bias])
    top = ir.node("Add", [num.outputs[0], vb.outputs[0]])
    rows = ir.node("ReduceSum", [s, _ints(graph, [-1], base)], attributes={"keepdims": 1})
    den = ir.node("Add", [rows.outputs[0], offset], name=f"{base}/normaliser")
    z = ir.node("Reciprocal", [den.outputs[0]])
    y = ir.node("Mul", [top.outputs[0], z.outputs[0]], name=base)
    nodes = [ht, gram, num, vb, top, rows, den, z, y]
    _replace(graph, node, nodes, node.outputs[0], y.outputs[0])


def _hashed(graph: ir.Graph, node: ir.Node) -> None:
    """HashedAttention as MatMuls, H^T V first (the linear form; the codes' products with
    real values are exact in float)."""
    h, v = node.inputs[:2]
    base = node.name or "hashed_attention"
    bias = _scalar_init(graph, node.attributes.get_float("bias", 0.0), f"{base}/bias")
    offset = _scalar_init(graph, node.attributes.get_float("offset", 0.0), f"{base}/offset")
    ht = ir.node("Transpose", [h], attributes={"perm": [0, 1, 3, 2]}, name=f"{base}/h_t")
    ctx = ir.node("MatMul", [ht.outputs[0], v], name=f"{base}/hv")
    num = ir.node("MatMul", [h, ctx.outputs[0]], name=f"{base}/h_hv")
    vb = ir.node("Mul", [v, bias])
    top = ir.node("Add", [num.outputs[0], vb.outputs[0]])
    hsum = ir.node("ReduceSum", [h, _ints(graph, [2], base)], attributes={"keepdims": 1})
    hst = ir.node("Transpose", [hsum.outputs[0]], attributes={"perm": [0, 1, 3, 2]})
    dot = ir.node("MatMul", [h, hst.outputs[0]], name=f"{base}/normaliser")
    den = ir.node("Add", [dot.outputs[0], offset])
    z = ir.node("Reciprocal", [den.outputs[0]])
    y = ir.node("Mul", [top.outputs[0], z.outputs[0]], name=base)
    nodes = [ht, ctx, num, vb, top, hsum, hst, dot, den, z, y]
    _replace(graph, node, nodes, node.outputs[0], y.outputs[0])


def _mha(graph: ir.Graph, node: ir.Node, shape: Shape) -> None:
    q, k, v, bias = node.inputs[:4]
    base = node.name or "attention"
    nodes: list[ir.Node] = []
    x = _q_source(node)
    if x is None:
        t = ir.node("Transpose", [q], attributes={"perm": [0, 2, 1, 3]}, name=f"{base}/q_bsnh")
        r = ir.node(
            "Reshape", [t.outputs[0], _ints(graph, [shape.b, shape.s, shape.n * shape.h], base)]
        )
        nodes += [t, r]
        x = r.outputs[0]
    inputs: list[ir.Value | None] = [x, k, v, None, None, None]
    bias_dims = _mha_bias(shape)
    if bias_dims is not None and bias is not None:
        if bias.const_value is not None:
            array = np.broadcast_to(
                bias.const_value.numpy().reshape(
                    (1,) * (4 - len(shape.bias or ())) + tuple(shape.bias or ())
                ),
                bias_dims,
            )
            inputs[5] = initializer(graph, np.ascontiguousarray(array), f"{base}/attention_bias")
        else:
            e = ir.node("Expand", [bias, _ints(graph, list(bias_dims), base)], name=f"{base}/bias4")
            nodes.append(e)
            inputs[5] = e.outputs[0]
    mha = ir.node(
        "MultiHeadAttention",
        inputs,
        attributes={"num_heads": shape.n, "scale": node.attributes.get_float("scale", 1.0)},
        domain=MS_DOMAIN,
        name=base,
    )
    nodes.append(mha)
    graph.opset_imports.setdefault(MS_DOMAIN, 1)
    sink = _out_sink(node)
    if sink is not None:
        _replace(graph, node, nodes, sink, mha.outputs[0])
        return
    r = ir.node(
        "Reshape", [mha.outputs[0], _ints(graph, [shape.b, shape.s, shape.n, shape.hv], base)]
    )
    t = ir.node("Transpose", [r.outputs[0]], attributes={"perm": [0, 2, 1, 3]})
    nodes += [r, t]
    _replace(graph, node, nodes, node.outputs[0], t.outputs[0])


def _ints(graph: ir.Graph, values: list[int], base: str) -> ir.Value:
    return initializer(graph, np.array(values, np.int64), f"{base}/shape")


def _replace(
    graph: ir.Graph, node: ir.Node, nodes: list[ir.Node], old: ir.Value, new: ir.Value
) -> None:
    """Insert `nodes` before `node`, let `new` take `old`'s readers (and name, if an output),
    and drop what only `old` needed."""
    graph.insert_before(node, nodes)
    new.shape, new.type = old.shape, old.type
    take_over(old, new)
    dead = [n for n in (old.producer(),) if n is not None]
    while dead:
        n = dead.pop()
        if n.graph is None or any(o.uses() or o.is_graph_output() for o in n.outputs):
            continue
        producers = [i.producer() for i in n.inputs if i is not None]
        graph.remove(n, safe=True)
        dead += [p for p in producers if p is not None and p.graph is graph]


def _time_forms(shape: AnyShape, threads: int) -> dict[str, float]:
    """p50 ms of each possible form on random inputs of `shape`, interleaved."""
    candidates = forms(shape)
    if len(candidates) == 1:
        return {candidates[0]: 0.0}
    rng = np.random.default_rng(0)
    sessions, feeds = {}, {}
    for form in candidates:
        if isinstance(shape, LinearShape):
            model, feed = _micro_linear(shape, form, rng)
        else:
            assert isinstance(shape, Shape)  # hashed attention has one form on onnxruntime
            model, feed = _micro_model(shape, form, rng)
        sessions[form] = ort_session(model, optimize=True, threads=threads)
        feeds = feed
    times: dict[str, list[float]] = {f: [] for f in candidates}
    for s in sessions.values():
        s.run(None, feeds)
    for _ in range(15):
        for form, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[form].append(time.perf_counter() - t0)
    return {f: round(float(np.median(t)) * 1e3, 4) for f, t in times.items()}


def _micro_model(shape: Shape, form: str, rng: np.random.Generator) -> tuple[ir.Model, dict]:
    """One block of `shape` alone, in `form`, with the Transposes it would carry in place."""
    b, n, s, t, h, hv = shape.b, shape.n, shape.s, shape.t, shape.h, shape.hv
    f32 = ir.TensorType(ir.DataType.FLOAT)

    def value(name: str, dims: tuple[int, ...]) -> ir.Value:
        return ir.Value(name=name, shape=ir.Shape(list(dims)), type=f32)

    feeds: dict[str, np.ndarray] = {}
    graph = ir.Graph([], [], nodes=[], opset_imports={"": 18, DOMAIN: 1}, name="block")
    inputs = []
    if shape.bsd_in:
        x = value("x", (b, s, n * h))
        r = ir.node("Reshape", [x, _ints(graph, [b, s, n, h], "q")])
        tq = ir.node("Transpose", [r.outputs[0]], attributes={"perm": [0, 2, 1, 3]})
        graph.extend([r, tq])
        q = tq.outputs[0]
        q.shape, q.type = ir.Shape([b, n, s, h]), f32
        inputs.append(x)
    else:
        q = value("x", (b, n, s, h))
        inputs.append(q)
    k, v = value("k", (b, n, t, h)), value("v", (b, n, t, hv))
    inputs += [k, v]
    if shape.bias is None:
        bias = value("bias0", ())
        bias.const_value = ir.tensor(np.float32(0.0))
        graph.register_initializer(bias)
    else:
        bias = value("bias", shape.bias)
        inputs.append(bias)
    for i in inputs:
        feeds[i.name or ""] = rng.standard_normal(tuple(i.shape), dtype=np.float32)
    node = ir.node(
        ATTENTION, [q, k, v, bias], attributes={"scale": float(1.0 / np.sqrt(h))}, domain=DOMAIN
    )
    out = node.outputs[0]
    out.shape, out.type = ir.Shape([b, n, s, hv]), f32
    graph.append(node)
    y = out
    if shape.bsd_out:
        to = ir.node("Transpose", [out], attributes={"perm": [0, 2, 1, 3]})
        ro = ir.node("Reshape", [to.outputs[0], _ints(graph, [b, s, n * hv], "y")])
        graph.extend([to, ro])
        y = ro.outputs[0]
        y.shape, y.type = ir.Shape([b, s, n * hv]), f32
    graph.inputs.extend(inputs)
    graph.outputs.append(y)
    model = ir.Model(graph, ir_version=10)
    lower(model, lambda _: (form, {}))
    return model, feeds


def _micro_linear(shape: LinearShape, form: str, rng: np.random.Generator) -> tuple[ir.Model, dict]:
    """One LinearAttention of `shape` alone, in `form`, on non-negative inputs (ReLU'd)."""
    f32 = ir.TensorType(ir.DataType.FLOAT)
    dims = {"q": (shape.b, shape.i, shape.c), "k": (shape.b, shape.j, shape.c)}
    dims["v"] = (shape.b, shape.j, shape.d)
    inputs = [ir.Value(name=n, shape=ir.Shape(list(d)), type=f32) for n, d in dims.items()]
    node = ir.node(LINEAR_ATTENTION, inputs, attributes={"eps": 1e-6}, domain=DOMAIN)
    out = node.outputs[0]
    out.shape, out.type = ir.Shape([shape.b, shape.i, shape.d]), f32
    graph = ir.Graph(inputs, [out], nodes=[node], opset_imports={"": 18, DOMAIN: 1}, name="b")
    model = ir.Model(graph, ir_version=10)
    lower(model, lambda _: (form, {}))
    feeds = {n: np.abs(rng.standard_normal(d, dtype=np.float32)) for n, d in dims.items()}
    return model, feeds
