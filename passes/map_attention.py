"""Softmax attention, whatever the exporter wrote, as one canonical `ai.edgec::Attention`.

    Attention(Q, K, V, bias) <scale> = Softmax(Q K^T * scale + bias, last axis) V

The walk starts at each Softmax and reads the block around it (a pattern cannot: the scores
go through chains of any length). Recognized:

- K^T as `Transpose(K, last two swapped)`, as dynamo's `Reshape(Transpose(Reshape(K)))`, or
  any [B, N, H, T] tensor (then K is its transpose);
- the scale as scalar Mul/Div on the scores, on Q, on K^T, or on both (torch's sqrt(scale));
- on the scores, any chain of scalar Mul/Div, Adds of constants (a relative-position bias
  gathered from a table) and Reshapes that come back to the scores' shape (Swin's window
  shift mask, added in 5-D): the constant part of that chain, read at zero scores, is one
  bias [B|1, N|1, S, T]; a run-time mask added just before the Softmax (Hugging Face's
  attention mask) is added to it;
- after the Softmax, Hugging Face's guard `Where(IsNaN(p), 0, p)`, dropped when every bias
  and mask value is finite (no row can be all -inf, so no NaN to guard);
- ONNX's own `Attention` (opset 23 on) in its 4-D multi-head form: Q, K, V [B, N, *, H] of
  one head count, no past key/value, not causal, no softcap, and a mask that is absent, a
  float mask known finite (a constant, or a Where between finite constants), or a constant
  boolean mask that leaves every row some key (then read as a 0 / -inf bias).

Left alone, with the reason (`--explain map_attention`): an `Attention` node in its 3-D form,
with grouped-query heads, a KV cache, causal masking, a softcap, a run-time mask that may be
-inf, or its other outputs read; a softmax over another axis, scores
not made by a 4-D MatMul, a mask of another rank or one that cannot be read as a bias,
probabilities read elsewhere (an `output_attentions` output), a guard the mask does not make
redundant, binary products (`BinaryMatMul` scores stay popcount kernels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from edgec.core.binary_ops import ATTENTION, DOMAIN, ensure_function, supports_functions
from edgec.core.irutil import initializer, run_onnx
from edgec.passes._ir import only_consumer, remove_unread, scalar, static_shape, take_over
from edgec.passes.base import EdgecPass

RULE = "softmax_attention"
ONNX_RULE = "onnx_attention"
_SCORE_STEPS = {"Mul", "Div", "Add", "Reshape"}
_MAX_CHAIN = 12  # score edits between the MatMul and the Softmax


@dataclass
class _Block:
    """What the walk read of one attention block."""

    softmax: ir.Node
    nodes: list[ir.Node] = field(default_factory=list)  # every node the block replaces
    scale: float = 1.0
    q: ir.Value | None = None
    k: ir.Value | None = None  # [B, N, T, H]
    kt: ir.Value | None = None  # [B, N, H, T], when no K was found behind it
    v: ir.Value | None = None
    chain: list[ir.Node] = field(default_factory=list)  # score edits, MatMul to Softmax
    scores: ir.Value | None = None  # Q K^T, the chain's input
    mask: ir.Value | None = None  # a run-time additive mask
    out: ir.Value | None = None  # P V, the block's output
    row_guard: ir.Value | None = None  # the condition of Where(cond, 0, P) after the softmax


class MapAttention(EdgecPass):
    name = "map_attention"

    def rewrite(self, model: ir.Model) -> int:
        if not supports_functions(model):
            return 0
        fired = 0
        for node in list(model.graph):
            if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
                why = _map_onnx_attention(model, node)
                if why:
                    self.left_alone(ONNX_RULE, [node], why)
                else:
                    fired += self.fired(ONNX_RULE, [node])
                continue
            if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
                continue
            if node.graph is None:  # removed with an earlier block
                continue
            block = _Block(node)
            why = _read(block)
            if why:
                self.left_alone(RULE, [*block.nodes, node], why)
                continue
            why = _emit(model, block)
            if why:
                self.left_alone(RULE, [*block.nodes, node], why)
                continue
            fired += self.fired(RULE, block.nodes)
        return fired


def _constant_computable(value: ir.Value | None, depth: int = 0) -> bool:
    """Is `value` computed from initializers only (no graph input, no random op)?"""
    if value is None:
        return True
    if value.const_value is not None:
        return True
    node = value.producer()
    if node is None or depth > 16 or not node.inputs or node.op_type.startswith("Random"):
        return False
    return all(_constant_computable(i, depth + 1) for i in node.inputs)


def _read(b: _Block) -> str:
    """Fill `b` from the graph around its Softmax; the reason it is no attention block, or ""."""
    sm = b.softmax
    x = sm.inputs[0]
    shape = static_shape(sm.outputs[0])
    if x is None or shape is None:
        return "the scores' shape is not static"
    rank = len(shape)
    axis = sm.attributes.get_int("axis", -1)
    if axis % max(rank, 1) != rank - 1:
        return f"softmax over axis {axis} of {rank}, not the keys' axis (the last)"
    if rank != 4:
        return f"scores of rank {rank}, not [B, N, S, T]"
    if x.dtype != ir.DataType.FLOAT:
        return f"the scores are {x.dtype}: the canonical op is float32"
    why = _read_after(b)
    if why:
        return why
    # the score chain, from the Softmax back to Q K^T
    current = x
    for _ in range(_MAX_CHAIN):
        node = current.producer()
        if node is None:
            return "the scores are a graph input, not a product Q K^T"
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
            break
        if node.domain == DOMAIN and node.op_type.startswith("Binary"):
            return f"the scores are {DOMAIN}::{node.op_type} (binary attention: popcount kernels)"
        if node.op_type not in _SCORE_STEPS or node.domain not in ("", "ai.onnx"):
            return f"the scores come from {node.op_type} '{node.name}', not Q K^T"
        if only_consumer(current) is None and current is not x:
            return f"'{current.name}' (between the scores and the softmax) is read elsewhere"
        nxt = _score_operand(b, node)
        if isinstance(nxt, str):
            return nxt
        b.chain.insert(0, node)
        current = nxt
    else:
        return f"more than {_MAX_CHAIN} ops between the scores and the softmax"
    if only_consumer(current) is None:
        return f"the scores '{current.name}' are read elsewhere"
    if static_shape(current) != shape:
        return f"the score chain changes the scores' shape {static_shape(current)} -> {shape}"
    if any(static_shape(n.outputs[0]) is None for n in b.chain):
        return "a shape in the score chain is not static"
    b.scores = current
    qk = current.producer()
    assert qk is not None
    b.nodes[:0] = [qk, *b.chain]
    return _read_qk(b, qk)


def _score_operand(b: _Block, node: ir.Node) -> ir.Value | str:
    """The operand of a score edit that carries the scores (taking in its scale or mask)."""
    if node.op_type == "Reshape":
        data = node.inputs[0]
        if data is None or len(node.inputs) < 2 or not _constant_computable(node.inputs[1]):
            return f"Reshape '{node.name}' in the score chain has a run-time shape"
        return data
    a, c = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    if a is None or c is None:
        return f"{node.op_type} '{node.name}' lacks an operand"
    if node.op_type in ("Mul", "Div"):
        s = scalar(c)
        if s is None and node.op_type == "Mul":
            a, c = c, a
            s = scalar(c)
        if s is None or s == 0.0:
            return f"{node.op_type} '{node.name}' scales the scores by a non-scalar"
        return a
    # Add: a constant bias anywhere in the chain, a run-time mask just before the Softmax
    if _constant_computable(c):
        return a
    if _constant_computable(a):
        return c
    if node.outputs[0].uses()[0].node is not b.softmax or b.mask is not None:
        return f"a run-time mask '{node.name}' inside the score chain (not just before softmax)"
    for scores, mask in ((a, c), (c, a)):
        if _leads_to_matmul(scores):
            shape, mshape = static_shape(node.outputs[0]), mask.shape
            if mshape is None or len(mshape) > 4:
                rank = "unknown" if mshape is None else len(mshape)
                return f"the mask '{mask.name}' has rank {rank}, not at most 4"
            if static_shape(scores) != shape:
                return f"the mask '{mask.name}' broadcasts the scores to a larger shape"
            b.mask = mask
            return scores
    return f"neither operand of '{node.name}' leads back to Q K^T"


def _leads_to_matmul(value: ir.Value) -> bool:
    for _ in range(_MAX_CHAIN):
        node = value.producer()
        if node is None:
            return False
        if node.op_type == "MatMul":
            return True
        if node.op_type not in _SCORE_STEPS or node.inputs[0] is None:
            return False
        value = node.inputs[0]
    return False


def _read_after(b: _Block) -> str:
    """The guard (if any) and P V after the Softmax."""
    p = b.softmax.outputs[0]
    reader = only_consumer(p)
    if reader is None:
        uses = {u.node.op_type for u in p.uses()}
        if uses == {"IsNaN", "Where"} and len(p.uses()) == 2 and not p.is_graph_output():
            isnan = next(u.node for u in p.uses() if u.node.op_type == "IsNaN")
            where = next(u.node for u in p.uses() if u.node.op_type == "Where")
            zero = scalar(where.inputs[1])
            if (
                only_consumer(isnan.outputs[0]) is not where
                or where.inputs[0] is not isnan.outputs[0]
                or where.inputs[2] is not p
                or zero != 0.0
            ):
                return "the softmax's probabilities are read elsewhere"
            b.nodes += [isnan, where]
            p = where.outputs[0]
            reader = only_consumer(p)
        else:
            readers = ", ".join(f"{u.node.op_type} '{u.node.name}'" for u in p.uses()[:3])
            if any(u.node.domain == DOMAIN for u in p.uses()):
                return f"the probabilities are binarized ({readers}): binary attention"
            return f"the softmax's probabilities are read by {len(p.uses())} ops ({readers})"
    if (  # ONNX's Attention function: Where(row all masked, 0, p)
        reader is not None
        and reader.op_type == "Where"
        and reader.inputs[2] is p
        and scalar(reader.inputs[1]) == 0.0
    ):
        b.row_guard = reader.inputs[0]
        b.nodes.append(reader)
        p = reader.outputs[0]
        reader = only_consumer(p)
    if reader is None or reader.op_type != "MatMul" or reader.inputs[0] is not p:
        return "the probabilities are not multiplied by V"
    v = reader.inputs[1]
    vshape = static_shape(v)
    if v is None or vshape is None or len(vshape) != 4:
        return "V is not a static [B, N, T, Hv] tensor"
    b.v, b.out = v, reader.outputs[0]
    b.nodes.append(reader)
    return ""


def _strip_scale(b: _Block, value: ir.Value) -> ir.Value:
    """`value` without its scalar Mul/Div (folded into the block's scale), if only it reads."""
    node = value.producer()
    while node is not None and node.op_type in ("Mul", "Div") and only_consumer(value):
        x, c = node.inputs[0], node.inputs[1]
        s = scalar(c)
        if s is None and node.op_type == "Mul":
            x, s = c, scalar(x)
        if x is None or s is None or s == 0.0:
            break
        b.scale *= s if node.op_type == "Mul" else 1.0 / s
        b.nodes.append(node)
        value = x
        node = value.producer()
    return value


def _read_qk(b: _Block, qk: ir.Node) -> str:
    q, kt = qk.inputs[0], qk.inputs[1]
    if q is None or kt is None:
        return "the scores' MatMul lacks an operand"
    for node in b.chain:  # the chain's scalars scale the scores
        if node.op_type in ("Mul", "Div"):
            s = scalar(node.inputs[1])
            s = scalar(node.inputs[0]) if s is None else s
            assert s is not None
            b.scale *= s if node.op_type == "Mul" else 1.0 / s
    q = _strip_scale(b, q)
    kt = _strip_scale(b, kt)
    qs, kts = static_shape(q), static_shape(kt)
    if qs is None or kts is None or len(qs) != 4 or len(kts) != 4:
        return "Q and K^T are not static 4-D tensors"
    b.q = q
    b.k = _transposed_source(b, kt)
    if b.k is None:
        b.kt = kt
    return ""


def _transposed_source(b: _Block, kt: ir.Value) -> ir.Value | None:
    """K, where K^T is a transpose of the last two axes of it that only the block reads."""
    node = kt.producer()
    if node is None or only_consumer(kt) is None:
        return None
    if node.op_type == "Transpose" and list(node.attributes.get_ints("perm", [])) == [0, 1, 3, 2]:
        b.nodes.append(node)
        return node.inputs[0]
    # dynamo: Reshape(Transpose(Reshape(K, [B*N, T, H]), [0, 2, 1]), [B, N, H, T])
    if node.op_type != "Reshape":
        return None
    t = node.inputs[0].producer() if node.inputs[0] is not None else None
    if t is None or t.op_type != "Transpose" or only_consumer(t.outputs[0]) is None:
        return None
    if list(t.attributes.get_ints("perm", [])) != [0, 2, 1]:
        return None
    r = t.inputs[0].producer() if t.inputs[0] is not None else None
    if r is None or r.op_type != "Reshape" or only_consumer(r.outputs[0]) is None:
        return None
    k, kts = r.inputs[0], static_shape(kt)
    ks = static_shape(k)
    if k is None or ks is None or kts is None or len(ks) != 4:
        return None
    if (ks[0], ks[1], ks[2], ks[3]) != (kts[0], kts[1], kts[3], kts[2]):
        return None
    b.nodes += [node, t, r]
    return k


class _Subgraph:
    """The nodes that compute some values from constants (and named inputs), as a model of
    their own to run in onnxruntime."""

    def __init__(self, model: ir.Model, stop: set[int]) -> None:
        self.opsets = dict(model.graph.opset_imports)
        self.stop = stop  # ids of the values that are the subgraph's inputs
        self.tensors: dict[str, onnx.TensorProto] = {}
        self.nodes: list[onnx.NodeProto] = []

    def add(self, value: ir.Value | None) -> None:
        """`value`'s producers, back to constants and the inputs."""
        if value is None or id(value) in self.stop or (value.name or "") in self.tensors:
            return
        if value.const_value is not None:
            tensor = ir.serde.serialize_tensor(value.const_value)
            tensor.name = value.name or ""
            self.tensors[tensor.name] = tensor
            return
        node = value.producer()
        assert node is not None
        for i in node.inputs:
            self.add(i)
        proto = ir.serde.serialize_node(node)
        if proto not in self.nodes:
            self.nodes.append(proto)

    def run(
        self,
        output: str,
        feeds: dict[str, np.ndarray],
        extra: Sequence[onnx.NodeProto] = (),
        dtype: int = onnx.TensorProto.FLOAT,
    ) -> np.ndarray:
        graph = onnx.helper.make_graph(
            [*self.nodes, *extra],
            "subgraph",
            [
                onnx.helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape)
                for k, v in feeds.items()
            ],
            [onnx.helper.make_tensor_value_info(output, dtype, None)],
            list(self.tensors.values()),
        )
        opsets = [onnx.helper.make_opsetid(d, v) for d, v in self.opsets.items()]
        return run_onnx(onnx.helper.make_model(graph, opset_imports=opsets), feeds)[output]


def _constant(model: ir.Model, value: ir.Value) -> np.ndarray | None:
    """The value of a tensor computed from initializers only (None: it is not one)."""
    if value.const_value is not None:
        return value.const_value.numpy()
    if not _constant_computable(value):
        return None
    sub = _Subgraph(model, set())
    sub.add(value)
    dtype = value.dtype.value if value.dtype is not None else onnx.TensorProto.FLOAT
    try:
        return sub.run(value.name or "", {}, dtype=dtype)
    except Exception:  # onnxruntime cannot evaluate it alone: read as not constant
        return None


def _bias(model: ir.Model, b: _Block) -> np.ndarray | None:
    """The constant part of the score chain: the chain run on zero scores, reduced to size 1
    along every axis it does not vary on. None: no constant part."""
    adds = [n for n in b.chain if n.op_type == "Add" and b.mask not in n.inputs]
    if not adds:
        return None
    assert b.scores is not None
    sub = _Subgraph(model, {id(b.scores)})
    # the chain is affine, chain(x) = scale * x + chain(0): its constant part is the chain on
    # zero scores, without the run-time mask (added just before the softmax, never scaled)
    rename: dict[str, str] = {}
    chain_protos = []
    for node in b.chain:
        carried = _carried(b, node)
        if b.mask is not None and b.mask in node.inputs:
            name = carried.name or ""
            rename[node.outputs[0].name or ""] = rename.get(name, name)
            continue
        for i in node.inputs:
            if i is not carried:
                sub.add(i)
        proto = ir.serde.serialize_node(node)
        proto.input[:] = [rename.get(i, i) for i in proto.input]
        chain_protos.append(proto)
    shape = static_shape(b.scores)
    assert shape is not None
    last = b.chain[-1].outputs[0].name or ""
    last = rename.get(last, last)
    zeros = np.zeros(shape, np.float32)
    bias = sub.run(last, {b.scores.name or "": zeros}, chain_protos)
    for axis in range(bias.ndim):  # size 1 where it does not vary
        first = np.take(bias, [0], axis=axis)
        if bias.shape[axis] > 1 and np.array_equal(bias, np.broadcast_to(first, bias.shape)):
            bias = first
    return np.ascontiguousarray(bias, dtype=np.float32)


def _direct_bias(b: _Block) -> ir.Value | None:
    """The bias term itself, when the chain only scales the scores and then adds it once
    (rank at most 4, float32); None when the chain needs evaluating."""
    steps = [n for n in b.chain if b.mask is None or b.mask not in n.inputs]
    if not steps or steps[-1].op_type != "Add":
        return None
    if any(n.op_type not in ("Mul", "Div") for n in steps[:-1]):
        return None
    carried = _carried(b, steps[-1])
    term = steps[-1].inputs[1] if steps[-1].inputs[0] is carried else steps[-1].inputs[0]
    if term is None or term.shape is None or len(term.shape) > 4:
        return None
    return term if term.dtype == ir.DataType.FLOAT else None


def _carried(b: _Block, node: ir.Node) -> ir.Value:
    """The input of a score edit that carries the scores (the one from the MatMul's side)."""
    for value in node.inputs:
        if value is b.scores or (value is not None and value.producer() in b.chain):
            return value
    raise AssertionError(f"'{node.name}' carries no scores")


def _finite_mask(mask: ir.Value | None) -> bool:
    """Is every value of a run-time mask finite (a Where between two finite constants)?"""
    if mask is None:
        return True
    node = mask.producer()
    while node is not None and node.op_type in ("Cast", "Expand", "Unsqueeze", "Reshape"):
        node = node.inputs[0].producer() if node.inputs[0] is not None else None
    if node is None or node.op_type != "Where":
        return False
    values = [scalar(node.inputs[1]), scalar(node.inputs[2])]
    return all(v is not None and np.isfinite(v) for v in values)


def _never_masked(model: ir.Model, cond: ir.Value) -> bool:
    """Is the guard's condition false everywhere: a constant all False, or ONNX's
    Equal(ReduceMax(mask), -inf) on a mask whose values are finite?"""
    value = _constant(model, cond)
    if value is not None:
        return not bool(np.any(value))
    equal = cond.producer()
    if equal is None or equal.op_type != "Equal":
        return False
    reduce, limit = (equal.inputs[0].producer() if equal.inputs[0] else None), equal.inputs[1]
    bound = scalar(limit)
    if reduce is None or reduce.op_type != "ReduceMax" or bound != -np.inf:
        return False
    mask = reduce.inputs[0]
    if mask is None:
        return False
    array = _constant(model, mask)
    return bool(np.all(np.isfinite(array))) if array is not None else _finite_mask(mask)


def _emit(model: ir.Model, b: _Block) -> str:
    """Replace the block by one Attention node; the reason it cannot be, or ""."""
    graph = model.graph
    direct = _direct_bias(b)
    try:
        bias = _bias(model, b) if direct is None else _constant(model, direct)
    except Exception as e:  # onnxruntime cannot run the chain alone: leave the block
        return f"the score chain's constant part cannot be evaluated ({type(e).__name__})"
    guarded = any(n.op_type == "IsNaN" for n in b.nodes)
    if bias is not None and not np.all(np.isfinite(bias)):
        return "the bias holds non-finite values"
    if guarded and not _finite_mask(b.mask):
        return "the softmax's NaN guard stays: the mask may hold -inf (a row all masked)"
    if b.row_guard is not None and not _never_masked(model, b.row_guard):
        return "the all-masked-row guard stays: its condition may be true"
    if b.mask is not None and b.mask.dtype != ir.DataType.FLOAT:
        return f"the mask '{b.mask.name}' is {b.mask.dtype}, not float32"
    if b.q is None or b.v is None or b.out is None:
        return "the block is incomplete"
    kv = b.k if b.k is not None else b.kt
    dtypes = {x.dtype for x in (b.q, kv, b.v) if x is not None}
    if dtypes != {ir.DataType.FLOAT}:
        names = ", ".join(sorted(str(d) for d in dtypes))
        return f"Q, K, V are {names}: the canonical op is float32"
    where = b.softmax.name or "attention"
    module = where.rsplit("/", 1)[0] if "/" in where else where
    new: list[ir.Node] = []
    k = b.k
    if k is None:
        assert b.kt is not None
        t = ir.node("Transpose", [b.kt], attributes={"perm": [0, 1, 3, 2]})
        t.name = f"{module}/attention_k"
        new.append(t)
        k = t.outputs[0]
    total: ir.Value
    if bias is None and b.mask is None:
        total = initializer(graph, np.zeros((), np.float32), "attention_no_bias")
    elif bias is None:
        assert b.mask is not None
        total = b.mask
    else:
        # a bias added once after the scale is read as it is computed (TinyViT's table
        # gather: materialized it would be S x T per head); a chain, evaluated once
        if direct is not None:
            total = direct
        else:
            total = initializer(graph, bias, f"{module}.attention_bias")
        if b.mask is not None:
            add = ir.node("Add", [total, b.mask])
            add.name = f"{module}/attention_mask"
            new.append(add)
            total = add.outputs[0]
    attention = ir.node(
        ATTENTION,
        [b.q, k, b.v, total],
        attributes={"scale": float(b.scale)},
        domain=DOMAIN,
        name=f"{module}/attention",
    )
    new.append(attention)
    out = attention.outputs[0]
    out.name = f"{b.out.name}_attention"
    out.shape, out.type = b.out.shape, b.out.type
    matmul_pv = b.out.producer()
    assert matmul_pv is not None
    graph.insert_before(matmul_pv, new)
    ensure_function(model, ATTENTION)
    take_over(b.out, out)
    remove_unread(graph, [*b.nodes, b.softmax])
    return ""


# the attributes of Attention as opsets 23 and 24 define it (25 adds sliding windows)
_ONNX_ATTENTION_ATTRIBUTES = {
    "is_causal",
    "kv_num_heads",
    "q_num_heads",
    "qk_matmul_output_mode",
    "scale",
    "softcap",
    "softmax_precision",
}


def _map_onnx_attention(model: ir.Model, node: ir.Node) -> str:
    """ONNX's `Attention` as the canonical op; the reason it cannot be, or ""."""
    q, k, v = (node.inputs[i] if len(node.inputs) > i else None for i in range(3))
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    if any(i is not None for i in node.inputs[4:]):
        return "a KV cache or padded key lengths (past_key, past_value, nonpad_kv_seqlen)"
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return "its present_key, present_value or qk_matmul_output output is read"
    attrs = node.attributes
    unread = sorted(set(attrs) - _ONNX_ATTENTION_ATTRIBUTES)
    if unread:
        return f"attribute '{unread[0]}' (a later Attention than this pass reads)"
    if attrs.get_int("is_causal", 0):
        return "causal masking (is_causal=1)"
    if attrs.get_float("softcap", 0.0):
        return "a softcap on the scores"
    if attrs.get_int("softmax_precision", 1) != 1:
        return "softmax in another precision than float32"
    shapes = [static_shape(x) for x in (q, k, v)]
    if any(s is None or len(s) != 4 for s in shapes):
        return "not the 4-D form [B, N, S, H] with static shapes (3-D: heads in attributes)"
    if any(x is None or x.dtype != ir.DataType.FLOAT for x in (q, k, v)):
        return "not float32"
    qs, ks, vs = shapes
    assert qs is not None and ks is not None and vs is not None
    if qs[1] != ks[1] or ks[1] != vs[1]:
        return f"grouped-query heads ({qs[1]} query heads, {ks[1]} key/value heads)"
    mask_shape = static_shape(mask) if mask is not None else ()
    if mask_shape is None or len(mask_shape) > 4:
        return "a mask of unknown shape or rank above 4"
    if mask_shape and mask_shape[-1] not in (1, ks[2]):
        return f"a mask over {mask_shape[-1]} keys for {ks[2]} (padded with -inf by the op)"
    graph = model.graph
    name = node.name or "attention"
    bias: ir.Value
    if mask is None:
        bias = initializer(graph, np.zeros((), np.float32), f"{name}/no_bias")
    elif mask.dtype == ir.DataType.BOOL:
        allowed = _constant(model, mask)
        if allowed is None:
            return "a run-time boolean mask (a row may allow no key)"
        full = np.broadcast_to(allowed, np.broadcast_shapes(allowed.shape, (1, 1, qs[2], ks[2])))
        if not full.any(axis=-1).all():
            return "a boolean mask that allows no key in some row"
        array = np.where(allowed, np.float32(0), np.float32(-np.inf)).astype(np.float32)
        bias = initializer(graph, array, f"{name}/bias")
    elif mask.dtype == ir.DataType.FLOAT:
        array = _constant(model, mask)
        finite = bool(np.isfinite(array).all()) if array is not None else _finite_mask(mask)
        if not finite:
            return "a float mask that may be -inf (a whole row masked is not the canonical op)"
        bias = mask
    else:
        return f"a mask of type {mask.dtype}"
    scale = attrs.get_float("scale", float(1.0 / np.sqrt(qs[3])))
    attention = ir.node(
        ATTENTION, [q, k, v, bias], attributes={"scale": scale}, domain=DOMAIN, name=name
    )
    out = attention.outputs[0]
    out.shape, out.type = node.outputs[0].shape, node.outputs[0].type
    graph.insert_before(node, attention)
    ensure_function(model, ATTENTION)
    take_over(node.outputs[0], out)
    remove_unread(graph, [node])
    return ""
