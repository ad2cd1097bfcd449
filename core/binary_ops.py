"""edgec's operators (domain `ai.edgec`): the binary ones and the canonical attention, their
meaning as ONNX functions, and the bit layout the binary ones share.

Every op carries an ONNX function body in standard ops, added to the model as a model-local
function: onnxruntime runs the body (so every bundle keeps its own reference), and the TVM
targets lower the op to XNOR/AND-popcount kernels instead (`edgec.targets.binary_kernels`).

Codes. An activation x becomes a code c(x) in {low, +1} (low = -1 for sign binarization,
0 for the {0, 1} form):

    bit(x)  = ((x + offset) / step) >= threshold
    c(x)    = +1 if bit(x) else low

which covers BiT's sign(x + move) (step 1, threshold 0, low -1), its clamp(round((x + move) /
alpha), 0, 1) (threshold = the float after 0.5, since round(0.5) = 0 rounds half to even,
low 0), BiViT's sign(x) and any {0, 1} tensor (threshold 0.5, low 0). Weights are +-1 codes
times a scale per output channel (or one per tensor).

Packing. Bits go into uint64 words along the reduction axis K: KW = ceil(K / 64) words, bit b
of word w holds element b * KW + w (so packing 64 consecutive words is 64 vector lanes), and
the padding bits are 0.

Ops:
- BinaryLinear(X[..., K], W[N, KW] uint64, scale[N] or [1], bias[N], offset[K])
  <in_features = K, step, threshold, low> = (c(X) @ c(W)^T) * scale + bias, c(W) in {-1, +1}.
- BinaryMatMul(A[..., M, K], B[..., K, N]) <a_step, a_threshold, a_low, b_step, b_threshold,
  b_low> = c_a(A) @ c_b(B): both operands binarized at run time (Q K^T, P V); an exact integer.
- BinaryGather(W[V, KW] uint64, scale[V], ids) <dim> = c(W)[ids] * scale[ids, None]: an
  embedding table binarized per row.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir

from edgec.core.irutil import initializer

DOMAIN = "ai.edgec"
OPSET = 1
WORD_BITS = 64
WORD_DTYPE = np.uint64
# bit of clamp(round(y), 0, 1): round half to even makes y = 0.5 a zero, so y > 0.5, i.e.
# y >= the next float32 after 0.5
STEP_THRESHOLD = float(np.nextafter(np.float32(0.5), np.float32(1.0)))

_SHIFTS = ", ".join(str(i) for i in range(WORD_BITS))


def _unpack(words: str, size_attr: str, out: str) -> str:
    """Body lines: `out` = the +-1 codes (float) of the packed `words` along the last axis."""
    return f"""
    {out}_ax = Constant <value_ints = [-2]> ()
    {out}_w3 = Unsqueeze ({words}, {out}_ax)
    {out}_sh = Constant <value = uint64[{WORD_BITS}, 1] {{{_SHIFTS}}}> ()
    {out}_shifted = BitShift <direction = "RIGHT"> ({out}_w3, {out}_sh)
    {out}_two_u = Constant <value = uint64[1] {{2}}> ()
    {out}_bits = Mod ({out}_shifted, {out}_two_u)
    {out}_shape = Shape ({words})
    {out}_zero0 = Constant <value_ints = [0]> ()
    {out}_minus1 = Constant <value_ints = [-1]> ()
    {out}_lead = Slice ({out}_shape, {out}_zero0, {out}_minus1)
    {out}_flat_shape = Concat <axis = 0> ({out}_lead, {out}_minus1)
    {out}_flat = Reshape ({out}_bits, {out}_flat_shape)
    {out}_k0 = Constant <value_int: int = @{size_attr}> ()
    {out}_zero = Constant <value_ints = [0]> ()
    {out}_k = Unsqueeze ({out}_k0, {out}_zero)
    {out}_kept = Slice ({out}_flat, {out}_zero, {out}_k, {out}_minus1)
    {out}_f = Cast <to = 1> ({out}_kept)
    {out}_two = Constant <value_float = 2.0> ()
    {out}_f1 = Constant <value_float = 1.0> ()
    {out}_2f = Mul ({out}_f, {out}_two)
    {out} = Sub ({out}_2f, {out}_f1)"""


def _code(x: str, prefix: str, out: str, offset: str | None = None) -> str:
    """Body lines: `out` = c(x) with the attributes <prefix>step, threshold, low."""
    moved = x
    lines = ""
    if offset is not None:
        moved = f"{out}_moved"
        lines += f"\n    {moved} = Add ({x}, {offset})"
    return (
        lines
        + f"""
    {out}_step = Constant <value_float: float = @{prefix}step> ()
    {out}_thr = Constant <value_float: float = @{prefix}threshold> ()
    {out}_low = Constant <value_float: float = @{prefix}low> ()
    {out}_hi = Constant <value_float = 1.0> ()
    {out}_ratio = Div ({moved}, {out}_step)
    {out}_bit = GreaterOrEqual ({out}_ratio, {out}_thr)
    {out} = Where ({out}_bit, {out}_hi, {out}_low)"""
    )


MIN_OPSET = 13  # the bodies' ops in their current form (Unsqueeze, Slice, Mod, BitShift)
_HEADER = f'<domain: "{DOMAIN}", opset_import: ["" : {MIN_OPSET}]>'

FUNCTION_TEXT: dict[str, str] = {
    "BinaryLinear": f"""{_HEADER}
BinaryLinear <in_features, step, threshold, low> (X, W, scale, bias, offset) => (Y) {{
    {_code("X", "", "xc", offset="offset")}
    {_unpack("W", "in_features", "wc")}
    wt = Transpose ({"wc"})
    dot = MatMul (xc, wt)
    scaled = Mul (dot, scale)
    Y = Add (scaled, bias)
}}""",
    "BinaryMatMul": f"""{_HEADER}
BinaryMatMul <a_step, a_threshold, a_low, b_step, b_threshold, b_low> (A, B) => (Y) {{
    {_code("A", "a_", "ac")}
    {_code("B", "b_", "bc")}
    Y = MatMul (ac, bc)
}}""",
    "BinaryGather": f"""{_HEADER}
BinaryGather <dim> (W, scale, ids) => (Y) {{
    rows = Gather <axis = 0> (W, ids)
    {_unpack("rows", "dim", "codes")}
    s = Gather <axis = 0> (scale, ids)
    last = Constant <value_ints = [-1]> ()
    s1 = Unsqueeze (s, last)
    Y = Mul (codes, s1)
}}""",
}


# Attention(Q[B, N, S, H], K[B, N, T, H], V[B, N, T, Hv], bias) <scale> =
#   Softmax(Q K^T * scale + bias, last axis) V: every softmax attention block that
#   `edgec.passes.map_attention` recognizes; bias broadcasts to [B, N, S, T] (0 for none).
# Not a bit-packed op: the targets lower it to their fastest form (`passes.lower_attention`).
ATTENTION = "Attention"
_ATTENTION_TEXT = f"""{_HEADER}
Attention <scale> (Q, K, V, bias) => (Y) {{
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    qk = MatMul (Q, kt)
    s = Constant <value_float: float = @scale> ()
    scaled = Mul (qk, s)
    biased = Add (scaled, bias)
    p = Softmax <axis = -1> (biased)
    Y = MatMul (p, V)
}}"""

# LinearAttention(Q[B, N, C], K[B, M, C], V[B, M, D]) <eps> = (Q (K^T V)) / (Q sum_j K_j + eps):
# `edgec.passes.map_linear_attention`; the body computes K^T V first.
LINEAR_ATTENTION = "LinearAttention"
_LINEAR_ATTENTION_TEXT = f"""{_HEADER}
LinearAttention <eps> (Q, K, V) => (Y) {{
    kt = Transpose <perm = [0, 2, 1]> (K)
    kv = MatMul (kt, V)
    num = MatMul (Q, kv)
    axes = Constant <value_ints = [1]> ()
    ksum = ReduceSum <keepdims = 1> (K, axes)
    kst = Transpose <perm = [0, 2, 1]> (ksum)
    dot = MatMul (Q, kst)
    e = Constant <value_float: float = @eps> ()
    den = Add (dot, e)
    z = Reciprocal (den)
    Y = Mul (num, z)
}}"""
# HashedAttention(H[B, N, T, b] +-1 codes, V[B, N, T, e]) <bias, offset> =
#   (H (H^T V) + bias V) / (H sum_t H_t + offset): EcoFormer (`map_linear_attention`).
HASHED_ATTENTION = "HashedAttention"
_HASHED_ATTENTION_TEXT = f"""{_HEADER}
HashedAttention <bias, offset> (H, V) => (Y) {{
    ht = Transpose <perm = [0, 1, 3, 2]> (H)
    ctx = MatMul (ht, V)
    num = MatMul (H, ctx)
    b = Constant <value_float: float = @bias> ()
    vb = Mul (V, b)
    top = Add (num, vb)
    axes = Constant <value_ints = [2]> ()
    hsum = ReduceSum <keepdims = 1> (H, axes)
    hst = Transpose <perm = [0, 1, 3, 2]> (hsum)
    dot = MatMul (H, hst)
    o = Constant <value_float: float = @offset> ()
    den = Add (dot, o)
    z = Reciprocal (den)
    Y = Mul (top, z)
}}"""
# FusedAttention: Attention under a name of its own, the form the TVM targets lower it to
# (`edgec.targets.attention_kernel`): TVM's importer dispatches on op names alone and already
# takes "Attention" for onnxruntime's contrib op.
FUSED_ATTENTION = "FusedAttention"
_OTHER_TEXT = {
    ATTENTION: _ATTENTION_TEXT,
    FUSED_ATTENTION: _ATTENTION_TEXT.replace("\nAttention <scale>", "\nFusedAttention <scale>", 1),
    LINEAR_ATTENTION: _LINEAR_ATTENTION_TEXT,
    HASHED_ATTENTION: _HASHED_ATTENTION_TEXT,
}


def function_proto(op_type: str, opset: int = MIN_OPSET) -> onnx.FunctionProto:
    """The op's body, importing the standard domain at the model's `opset` (runtimes inline a
    body at the model's version; its ops mean the same from MIN_OPSET on)."""
    text = _OTHER_TEXT.get(op_type) or FUNCTION_TEXT[op_type]
    text = text.replace(f'["" : {MIN_OPSET}]', f'["" : {opset}]', 1)
    return onnx.parser.parse_function(text)


def has_binary_ops(model: ir.Model) -> bool:
    """Does the main graph hold one of the bit-packed ops (`FUNCTION_TEXT`)?"""
    return any(n.domain == DOMAIN and n.op_type in FUNCTION_TEXT for n in model.graph)


def supports_functions(model: ir.Model) -> bool:
    """Whether the ops' bodies can be expressed at the model's opset."""
    return model.opset_imports.get("", 1) >= MIN_OPSET


def ensure_function(model: ir.Model, op_type: str) -> None:
    """Add the op's function body (and the domain's opset import) to the model once."""
    model.opset_imports.setdefault(DOMAIN, OPSET)
    model.graph.opset_imports.setdefault(DOMAIN, OPSET)
    key = (DOMAIN, op_type, "")
    if key not in model.functions:
        opset = model.opset_imports.get("", MIN_OPSET)
        model.functions[key] = ir.serde.deserialize_function(function_proto(op_type, opset))


def insert_binary_linear(
    model: ir.Model,
    before: ir.Node,
    x: ir.Value,
    bits: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    offset: np.ndarray,
    code: tuple[float, float, float],
    name: str,
) -> ir.Value:
    """A BinaryLinear node before `before`: weight codes `bits` (N, K) packed here, the input's
    binarization `code` = (step, threshold, low); returns its output."""
    graph = model.graph
    step, threshold, low = code
    node = ir.Node(
        DOMAIN,
        "BinaryLinear",
        [
            x,
            initializer(graph, pack_bits(bits), f"{name}.weight_bits"),
            initializer(graph, scale, f"{name}.scale"),
            initializer(graph, bias, f"{name}.bias"),
            initializer(graph, offset, f"{name}.offset"),
        ],
        attributes=[
            ir.AttrInt64("in_features", bits.shape[1]),
            ir.AttrFloat32("step", step),
            ir.AttrFloat32("threshold", threshold),
            ir.AttrFloat32("low", low),
        ],
        name=f"{name}/binary_linear",
    )
    graph.insert_before(before, node)
    node.outputs[0].dtype = ir.DataType.FLOAT
    ensure_function(model, "BinaryLinear")
    return node.outputs[0]


def drop_unused_edgec_ops(model: ir.Model) -> None:
    """Remove the bodies of edgec's ops no node uses any more, and the domain's opset import
    once nothing uses it (a graph for a runtime without edgec's ops must not import it)."""
    used = {(n.domain, n.op_type) for n in model.graph.all_nodes()}
    for key in list(model.functions):
        domain, op_type, _ = key
        if domain == DOMAIN and (domain, op_type) not in used:
            del model.functions[key]
    if not any(d == DOMAIN for d, _ in used) and not any(k[0] == DOMAIN for k in model.functions):
        model.opset_imports.pop(DOMAIN, None)
        model.graph.opset_imports.pop(DOMAIN, None)


def words(k: int) -> int:
    return -(-k // WORD_BITS)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """bool (..., K) -> uint64 (..., ceil(K / 64)): bit b of word w is element b * KW + w."""
    k = bits.shape[-1]
    kw = words(k)
    padded = np.zeros((*bits.shape[:-1], WORD_BITS * kw), dtype=WORD_DTYPE)
    padded[..., :k] = bits
    planes = padded.reshape(*bits.shape[:-1], WORD_BITS, kw)
    shifts = np.arange(WORD_BITS, dtype=WORD_DTYPE)[:, None]
    return np.bitwise_or.reduce(planes << shifts, axis=-2)


def unpack_bits(packed: np.ndarray, k: int) -> np.ndarray:
    """uint64 (..., KW) -> bool (..., K), the inverse of `pack_bits`."""
    shifts = np.arange(WORD_BITS, dtype=WORD_DTYPE)[:, None]
    planes = (packed[..., None, :] >> shifts) & WORD_DTYPE(1)
    return planes.reshape(*packed.shape[:-1], -1)[..., :k].astype(bool)


def code_bits(
    x: np.ndarray, step: float = 1.0, threshold: float = 0.0, offset: np.ndarray | None = None
) -> np.ndarray:
    """bit(x) of the module docstring, in float32 as every runtime computes it."""
    moved = x if offset is None else (x + offset).astype(np.float32)
    return (moved / np.float32(step)).astype(np.float32) >= np.float32(threshold)


def popcount(words_: np.ndarray) -> np.ndarray:
    return np.bitwise_count(words_).astype(np.int64)


def binary_dot(a: np.ndarray, b: np.ndarray, k: int, a_low: float, b_low: float) -> np.ndarray:
    """Integer c_a . c_b^T over packed rows: a (..., M, KW), b (..., N, KW) -> (..., M, N),
    by XNOR-popcount (both +-1) or AND-popcount (a {0, 1} side); the NumPy reference the
    kernels must match exactly."""
    a4 = a[..., :, None, :]
    b4 = b[..., None, :, :]
    if a_low == -1 and b_low == -1:
        return k - 2 * popcount(a4 ^ b4).sum(-1)
    both = popcount(a4 & b4).sum(-1)
    if a_low == 0 and b_low == 0:
        return both
    if a_low == 0:  # c_b = 2 b - 1: sum over a's ones of c_b
        return 2 * both - popcount(a).sum(-1)[..., :, None]
    return 2 * both - popcount(b).sum(-1)[..., None, :]
