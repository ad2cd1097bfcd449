"""The TVM template for edgec's softmax attention: one fused TensorIR function per block shape,
the `fused` form of `edgec.passes.lower_attention` (`ai.edgec::FusedAttention`, the canonical
Attention under a name TVM's importer does not already take).

    Attention(Q [B, N, S, H], K [B, N, T, H], V [B, N, T, Hv], bias) <scale>

Per query row (b, n, i), in one parallel loop over all rows: the scores row
s_j = (q_i . k_j) * scale + bias_ij (K transposed to [B, N, H, T] first, so that the row is
computed key-contiguous), its max, e_j = exp(s_j - max) and their sum, then
out_d = sum_j e_j v_jd / sum (value-contiguous). The scores live in a T-long row buffer: the
decomposed form writes S x T scores per head to memory and reads them back in four more
kernels, each of which untuned TVM runs as plain loops on one thread.

The function comes scheduled (`schedule`): it is the same schedule tuned or not, and
MetaSchedule leaves it alone (every block's `schedule_rule` is "None"; it tunes the rest of
the model around it). The bias is read in place, broadcast over its unit dimensions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgec.targets.binary_kernels import call_kernel

ATTR = "edgec.attention_kernel"


def attention_func(
    b: int, n: int, s: int, t: int, h: int, hv: int, bias: tuple[int, ...] | None, scale: float
) -> Any:
    """The fused attention of one block shape (bias: its 4-D shape, or None), unscheduled."""
    from tvm import te

    none = {"schedule_rule": "None"}
    q = te.placeholder([b, n, s, h], "float32", name="q")
    kt = te.placeholder([b, n, h, t], "float32", name="kt")
    v = te.placeholder([b, n, t, hv], "float32", name="v")
    tensors = [q, kt, v]
    bias_t = None
    if bias is not None:
        bias_t = te.placeholder(list(bias), "float32", name="bias")
        tensors.append(bias_t)
    c = te.reduce_axis((0, h), name="c")
    qk = te.compute(
        [b, n, s, t],
        lambda B, N, i, j: te.sum(q[B, N, i, c] * kt[B, N, c, j], axis=c),
        name="qk",
        attrs=none,
    )
    factor = np.float32(scale).item()

    def score(B: Any, N: Any, i: Any, j: Any) -> Any:
        x = qk[B, N, i, j] * factor
        if bias_t is None:
            return x
        idx = [0 if d == 1 else var for d, var in zip(bias or (), (B, N, i, j), strict=True)]
        return x + bias_t[tuple(idx)]

    scores = te.compute([b, n, s, t], score, name="scores", attrs=none)
    jm = te.reduce_axis((0, t), name="jm")
    row_max = te.compute(
        [b, n, s], lambda B, N, i: te.max(scores[B, N, i, jm], axis=jm), name="row_max", attrs=none
    )
    e = te.compute(
        [b, n, s, t],
        lambda B, N, i, j: te.exp(scores[B, N, i, j] - row_max[B, N, i]),
        name="exp",
        attrs=none,
    )
    js = te.reduce_axis((0, t), name="js")
    row_sum = te.compute(
        [b, n, s], lambda B, N, i: te.sum(e[B, N, i, js], axis=js), name="row_sum", attrs=none
    )
    jv = te.reduce_axis((0, t), name="jv")
    acc = te.compute(
        [b, n, s, hv],
        lambda B, N, i, d: te.sum(e[B, N, i, jv] * v[B, N, jv, d], axis=jv),
        name="acc",
        attrs=none,
    )
    out = te.compute(
        [b, n, s, hv],
        lambda B, N, i, d: acc[B, N, i, d] / row_sum[B, N, i],
        name="attention",
        attrs=none,
    )
    return te.create_prim_func([*tensors, out]).with_attr({ATTR: 1})


def schedule(func: Any) -> Any:
    """One parallel loop over the query rows; per row, the scores (key-contiguous), their max,
    exp and sum, and the weighted values (value-contiguous), each in a row buffer."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    out = sch.get_sblock("attention")
    *rows, _d = sch.get_loops(out)
    row = sch.fuse(*rows)
    for name in ("acc", "row_sum", "exp", "row_max", "scores", "qk"):
        sch.compute_at(sch.get_sblock(name), row, preserve_unit_loops=True)
    sch.compute_inline(sch.get_sblock("scores"))
    sch.parallel(row)
    qk = sch.get_sblock("qk")
    j, c = sch.get_loops(qk)[-2:]
    sch.reorder(c, j)  # kt[c, j]: keys contiguous
    sch.decompose_reduction(qk, c)
    acc = sch.get_sblock("acc")
    d, jv = sch.get_loops(acc)[-2:]
    sch.reorder(jv, d)  # v[jv, d]: values contiguous
    sch.decompose_reduction(acc, jv)
    return sch.mod["main"].with_attr({"tir.is_scheduled": True, "tirx.is_scheduled": True})


def convert_attention(bb: Any, inputs: list[Any], attr: dict[str, Any]) -> Any:
    """TVM's ONNX importer's converter for `ai.edgec::FusedAttention`: K transposed, the bias
    reshaped to 4-D (dropped when it is a constant 0), then the fused kernel."""
    import tvm
    from tvm import relax

    q, k, v = inputs[:3]
    bias = inputs[3] if len(inputs) > 3 else None
    qs, ks, vs = (_shape(x) for x in (q, k, v))
    b, n, s, h = qs
    t, hv = ks[2], vs[3]
    bias_shape: tuple[int, ...] | None = None
    if bias is not None:
        if isinstance(bias, tvm.ir.expr.Constant) and not bias.value.numpy().any():
            bias = None
        else:
            dims = _shape(bias)
            bias_shape = (1,) * (4 - len(dims)) + tuple(dims)
            if len(dims) != 4:
                bias = bb.emit(relax.op.reshape(bias, list(bias_shape)))
    kt = bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))
    scale = float(attr.get("scale", 1.0))
    func = schedule(attention_func(b, n, s, t, h, hv, bias_shape, scale))
    args = [q, kt, v] + ([bias] if bias is not None else [])
    return call_kernel(bb, func, "edgec_attention", args, [b, n, s, hv], "float32")


def _shape(expr: Any) -> list[int]:
    return [int(d) for d in expr.ty.shape]
