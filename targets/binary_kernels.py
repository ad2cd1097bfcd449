"""TVM kernels for edgec's binary ops (`edgec.core.binary_ops`): XNOR/AND-popcount TensorIR.

Each op becomes Relax calls of PrimFuncs built here, one per stage:
- `edgec_pack`: floats -> uint64 words, bit b of word w = bit(x[b * KW + w]) (consecutive
  words read consecutive floats, so the packing vectorizes); padding bits are 0.
- `edgec_binary_dense` / `edgec_binary_batch_matmul`: per output, popcounts over the words:
  K - 2 popcount(a ^ b) when both sides are +-1, 2 popcount(a & b) - popcount(a) when one is
  {0, 1}, popcount(a & b) when both are; then the float epilogue (scale, bias).
- `edgec_binary_gather`: rows of a packed table, unpacked and scaled.

The weights are packed at compile time (by the pass), transposed to (KW, N) here so that the
dense kernel reads N-consecutive words per reduction step. The PrimFuncs are opaque to Relax's
operator fusion (so their block structure is the one the default schedules and tuning see), and
a module holds one per distinct kernel. MetaSchedule tunes them in edgec's own design space
(`register_tuning_rules`), and `default_schedule` gives those without a tuning record a
vectorized, parallel schedule (vectorized before the reduction is decomposed).

The bit decision is computed as the reference computes it: (x + offset) / step >= threshold
in float32, no reassociation, so the integer results agree exactly with the ONNX body.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from edgec.core.binary_ops import WORD_BITS, words

KERNEL_ATTR = "edgec.binary_kernel"
ROW_BLOCK = 4  # rows of the activations that share each loaded weight vector
ACC = "int64"  # popcount sums: vpopcntq lanes add without narrowing
OPAQUE = 8  # relax's OpPatternKind.kOpaque


def _rule(kind: str | None) -> dict[str, str]:
    """The block's MetaSchedule rule: edgec's design space (see `register_tuning_rules`), or
    "None" for a block that rule schedules along with its main block."""
    register_tuning_rules()
    return {"schedule_rule": f"edgec_binary_{kind}" if kind else "None"}


def _prim_func(tensors: list[Any], kind: str) -> Any:
    from tvm import te

    func = te.create_prim_func(tensors)
    return func.with_attr({"op_pattern": OPAQUE, KERNEL_ATTR: kind})


def _bit(value: Any, step: float, threshold: float, offset: Any | None) -> Any:
    if offset is not None:
        value = value + offset
    if step != 1.0:
        value = value / np.float32(step).item()
    return value >= np.float32(threshold).item()


def pack_func(
    shape: list[int], step: float, threshold: float, with_offset: bool, axis_last: bool
) -> Any:
    """x (*lead, K) packed along K [axis_last], or x (*batch, K, N) packed along K into
    (*batch, N, KW)."""
    import tvm
    from tvm import te, tirx

    k = shape[-1] if axis_last else shape[-2]
    kw = words(k)
    lead = shape[:-1] if axis_last else [*shape[:-2], shape[-1]]
    x = te.placeholder(shape, "float32", name="x")
    offset = te.placeholder([k], "float32", name="offset") if with_offset else None
    b = te.reduce_axis((0, WORD_BITS), name="b")

    def word(*idx: Any) -> Any:
        *outer, w = idx
        kk = b * kw + w
        safe = tvm.te.min(kk, k - 1) if k % WORD_BITS else kk
        v = x[(*outer, safe)] if axis_last else x[(*outer[:-1], safe, outer[-1])]
        bit = _bit(v, step, threshold, None if offset is None else offset[safe])
        if k % WORD_BITS:
            bit = tirx.all(kk < k, bit)
        one = tirx.const(1, "uint64")
        return te.sum(tirx.Select(bit, one << b.var.astype("uint64"), tirx.const(0, "uint64")), b)

    out = te.compute([*lead, kw], word, name="pack", attrs=_rule("pack"))
    args = [x] + ([offset] if offset is not None else []) + [out]
    return _prim_func(args, "pack")


def _popcount(v: Any) -> Any:
    from tvm import tirx

    return tirx.popcount(v).astype(ACC)


def dense_func(lead: list[int], n: int, k: int, x_low: float, scale_size: int) -> Any:
    """BinaryLinear's product: packed a (*lead, KW) by the packed weight, stored (KW, N);
    out (*lead, N) = dot * scale + bias."""
    from tvm import te

    kw = words(k)
    w = te.reduce_axis((0, kw), name="w")
    pa = te.placeholder([*lead, kw], "uint64", name="a")
    wt = te.placeholder([kw, n], "uint64", name="weight")
    scale = te.placeholder([scale_size], "float32", name="scale")
    bias = te.placeholder([n], "float32", name="bias")

    def count(*idx: Any) -> Any:
        *i, j = idx
        a = pa[(*i, w)]
        return te.sum(_popcount(a & wt[w, j] if x_low == 0 else a ^ wt[w, j]), w)

    c = te.compute([*lead, n], count, name="popcount", attrs=_rule("dense"))
    rows = _row_counts(pa, lead) if x_low == 0 else None

    def finish(*idx: Any) -> Any:
        *i, j = idx
        dot = _combine(c[idx], k, x_low, -1.0, rows, None, tuple(i), ())
        return dot * scale[j if scale_size > 1 else 0] + bias[j]

    out = te.compute([*lead, n], finish, name="epilogue", attrs=_rule(None))
    return _prim_func([pa, wt, scale, bias, out], "dense")


def batch_matmul_func(batch: list[int], m: int, n: int, k: int, a_low: float, b_low: float) -> Any:
    """BinaryMatMul's product: packed a (*batch, M, KW), packed b (*batch, N, KW) ->
    (*batch, M, N) float, the exact integer dot of the codes."""
    from tvm import te

    kw = words(k)
    w = te.reduce_axis((0, kw), name="w")
    pa = te.placeholder([*batch, m, kw], "uint64", name="a")
    pb = te.placeholder([*batch, n, kw], "uint64", name="b")

    def count(*idx: Any) -> Any:
        *bt, i, j = idx
        a, b = pa[(*bt, i, w)], pb[(*bt, j, w)]
        return te.sum(_popcount(a ^ b if a_low == -1 and b_low == -1 else a & b), w)

    c = te.compute([*batch, m, n], count, name="popcount", attrs=_rule("dense"))
    rows_a = _row_counts(pa, [*batch, m]) if a_low == 0 and b_low == -1 else None
    rows_b = _row_counts(pb, [*batch, n]) if b_low == 0 and a_low == -1 else None

    def finish(*idx: Any) -> Any:
        *bt, i, j = idx
        return _combine(c[idx], k, a_low, b_low, rows_a, rows_b, (*bt, i), (*bt, j))

    out = te.compute([*batch, m, n], finish, name="epilogue", attrs=_rule(None))
    return _prim_func([pa, pb, out], "batch_matmul")


def _row_counts(packed: Any, lead: list[int]) -> Any:
    from tvm import te

    kw = packed.shape[-1]
    r = te.reduce_axis((0, kw), name="r")
    return te.compute(
        lead,
        lambda *i: te.sum(_popcount(packed[(*i, r)]), r),
        name="rowcount",
        attrs=_rule(None),
    )


def _combine(
    c: Any, k: int, a_low: float, b_low: float, rows_a: Any, rows_b: Any, ai: tuple, bi: tuple
) -> Any:
    """The integer dot of the codes from the popcount c (see the module docstring)."""
    if a_low == -1 and b_low == -1:
        dot = k - 2 * c
    elif a_low == 0 and b_low == 0:
        dot = c
    elif a_low == 0:
        dot = 2 * c - rows_a[ai]
    else:
        dot = 2 * c - rows_b[bi]
    return dot.astype("float32")


def gather_func(rows: int, dim: int, ids_shape: list[int], ids_dtype: str) -> Any:
    from tvm import te, tirx

    kw = words(dim)
    table = te.placeholder([rows, kw], "uint64", name="table")
    scale = te.placeholder([rows], "float32", name="scale")
    ids = te.placeholder(ids_shape, ids_dtype, name="ids")

    def value(*i: Any) -> Any:
        *lead, d = i
        raw = ids[tuple(lead)].astype("int64")
        row = tirx.Select(raw < 0, raw + rows, raw)
        word = table[row, d % kw]
        bit = (word >> (d // kw).astype("uint64")) & tirx.const(1, "uint64")
        code = tirx.Select(bit == tirx.const(1, "uint64"), 1.0, -1.0).astype("float32")
        return code * scale[row]

    out = te.compute([*ids_shape, dim], value, name="gather", attrs=_rule("gather"))
    return _prim_func([table, scale, ids, out], "gather")


# ---- default schedules -----------------------------------------------------------------


def default_schedule(func: Any, lanes: int) -> Any:
    """A vectorized, parallel schedule for one of the kernels above (untuned)."""
    from tvm import s_tir

    kind = str(func.attrs[KERNEL_ATTR])
    sch = s_tir.Schedule(func)
    if kind == "pack":
        _schedule_pack(sch, lanes)
    elif kind in ("dense", "batch_matmul"):
        _schedule_dense(sch, lanes)
    else:
        _schedule_gather(sch)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def _schedule_pack(sch: Any, lanes: int, decompose: bool = True) -> None:
    block = sch.get_sblock("pack")
    *outer, w, b = sch.get_loops(block)
    extent = int(sch.get(w).extent)
    if extent >= lanes:
        w_o, w_i = sch.split(w, [None, lanes])
        sch.reorder(w_o, b, w_i)
        sch.vectorize(w_i)
    else:
        sch.reorder(b, w)
        sch.vectorize(w)
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    if decompose:  # (under tuning, MetaSchedule's postprocessor decomposes reductions)
        sch.decompose_reduction(block, b)


def _vector_tiles(n: int, lanes: int) -> list[int]:
    return [t for t in (lanes, 2 * lanes, 4 * lanes) if n % t == 0]


def _schedule_dense(
    sch: Any, lanes: int, rows_per_step: Any = None, tile: Any = None, decompose: bool = True
) -> None:
    """Rows of the activations blocked (`rows_per_step` share each loaded weight vector),
    outputs vectorized `tile` wide, the word loop unrolled; the factors are fixed by default
    or sampled by MetaSchedule (the tuning rule)."""
    count = sch.get_sblock("popcount")
    epilogue = sch.get_sblock("epilogue")
    rows = None
    with contextlib.suppress(Exception):  # only the {0, 1} x +-1 products count a side's ones
        rows = sch.get_sblock("rowcount")
    if rows is not None:
        r_loops = sch.get_loops(rows)
        sch.parallel(sch.fuse(*r_loops[:-1]) if len(r_loops) > 2 else r_loops[0])
    *lead, i, j, w = sch.get_loops(count)
    n = int(sch.get(j).extent)
    tiles = _vector_tiles(n, lanes)
    if tile is None and tiles:
        tile = 2 * lanes if 2 * lanes in tiles else tiles[0]
    if rows_per_step is None:
        rows_per_step = ROW_BLOCK if int(sch.get(i).extent) >= ROW_BLOCK else 1
    i_o, i_i = sch.split(i, [None, rows_per_step])
    if tiles:
        j_o, j_i = sch.split(j, [None, tile])
        sch.reorder(*lead, i_o, j_o, w, i_i, j_i)  # a weight vector serves several rows
        sch.unroll(i_i)
        sch.vectorize(j_i)
        if int(sch.get(w).extent) <= 16:
            sch.unroll(w)
    else:
        sch.reorder(*lead, i_o, j, w, i_i)
    if rows is None:
        sch.reverse_compute_at(epilogue, j_o if tiles else j)
        if tiles:
            sch.vectorize(sch.get_loops(epilogue)[-1])
    else:
        e_loops = sch.get_loops(epilogue)
        sch.parallel(sch.fuse(*e_loops[:-1]) if len(e_loops) > 2 else e_loops[0])
    outer = [*lead, i_o]
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    if decompose:
        sch.decompose_reduction(count, w)


def _schedule_gather(sch: Any) -> None:
    loops = sch.get_loops(sch.get_sblock("gather"))
    sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 1 else loops[0])


_REGISTERED: list[bool] = []


def register_tuning_rules() -> None:
    """MetaSchedule's design space for the binary kernels (block annotation `schedule_rule`):
    the default schedules with the row blocking and the vector width as sampled decisions, so
    tuning searches around the default instead of from TVM's generic rules (which, measured,
    found schedules slower than the default within 64 trials)."""
    if _REGISTERED:
        return
    import tvm

    for key, lanes in (("cpu", 8), ("arm_cpu", 2)):

        def dense(sch: Any, _block: Any, lanes: int = lanes) -> list[Any]:
            i = sch.get_loops(sch.get_sblock("popcount"))[-3]
            n = int(sch.get(sch.get_loops(sch.get_sblock("popcount"))[-2]).extent)
            # no unit factors: a unit extent changes how many loops reverse_compute_at makes,
            # and a mutated trace would not replay
            steps = [r for r in (2, 4, 8) if r <= int(sch.get(i).extent)] or [1]
            rows = sch.sample_categorical(steps, [1.0 / len(steps)] * len(steps))
            tiles = _vector_tiles(n, lanes)
            tile = sch.sample_categorical(tiles, [1.0 / len(tiles)] * len(tiles)) if tiles else None
            _schedule_dense(sch, lanes, rows, tile, decompose=False)
            return [sch]

        def pack(sch: Any, _block: Any, lanes: int = lanes) -> list[Any]:
            _schedule_pack(sch, lanes, decompose=False)
            return [sch]

        def gather(sch: Any, _block: Any) -> list[Any]:
            _schedule_gather(sch)
            return [sch]

        for name, fn in (("dense", dense), ("pack", pack), ("gather", gather)):
            tvm.register_global_func(
                f"s_tir.meta_schedule.{key}.edgec_binary_{name}", fn, override=True
            )
    _REGISTERED.append(True)


def schedule_untuned(mod: Any, target: dict[str, Any]) -> Any:
    """Give every binary kernel that has no schedule yet its default one."""
    from tvm import s_tir

    lanes = 8 if target.get("mtriple", "").startswith("x86_64") else 2
    updates = {}
    for gv, func in mod.functions.items():
        attrs = getattr(func, "attrs", None)
        if attrs is None or KERNEL_ATTR not in attrs or "tir.is_scheduled" in attrs:
            continue
        try:
            updates[gv] = default_schedule(func, lanes)
        except s_tir.ScheduleError:  # a tuning record scheduled it (its blocks are renamed)
            continue
    for gv, func in updates.items():
        mod[gv] = func
    return mod


# ---- the ONNX importer's converters ------------------------------------------------------


def _shape(expr: Any) -> list[int]:
    return [int(d) for d in expr.ty.shape]


def _is_const(expr: Any) -> bool:
    import tvm

    return isinstance(expr, tvm.ir.expr.Constant)


def _const(expr: Any) -> np.ndarray:
    if not _is_const(expr):
        raise ValueError("a binary op's packed weights must be constants")
    return expr.value.numpy()


# one PrimFunc per distinct kernel in a module (12 identical layers share theirs: one task to
# tune, one function to build), keyed by structure; set while the importer runs
_KERNELS: dict[tuple[int, int], tuple[Any, Any]] = {}


def call_kernel(
    bb: Any, func: Any, name: str, args: list[Any], shape: list[int], dtype: str
) -> Any:
    """Emit a call of the PrimFunc `func` (one function per distinct kernel in the module)."""
    import tvm_ffi
    from tvm import relax

    key = (id(bb), tvm_ffi.structural_hash(func))
    same = _KERNELS.get(key)
    if same is not None and tvm_ffi.structural_equal(same[1], func):
        gv = same[0]
    else:
        gv = bb.add_func(func, name)
        bb.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
        _KERNELS[key] = (gv, func)
    return bb.emit(relax.call_tir(gv, args, relax.TensorType(shape, dtype)))


def _pack(bb: Any, x: Any, step: float, thr: float, offset: Any, axis_last: bool) -> Any:
    shape = _shape(x)
    k = shape[-1] if axis_last else shape[-2]
    out = [*shape[:-1], words(k)] if axis_last else [*shape[:-2], shape[-1], words(k)]
    func = pack_func(shape, step, thr, offset is not None, axis_last)
    args = [x] + ([offset] if offset is not None else [])
    return call_kernel(bb, func, "edgec_pack", args, out, "uint64")


def convert_binary_linear(bb: Any, inputs: list[Any], attr: dict[str, Any]) -> Any:
    from tvm import relax

    x, w, scale, bias, offset = inputs[:5]
    k = int(attr["in_features"])
    lead = _shape(x)[:-1]
    offset_value = _const(offset) if _is_const(offset) else None
    fused_offset = None if offset_value is not None and not offset_value.any() else offset
    packed = _pack(bb, x, float(attr["step"]), float(attr["threshold"]), fused_offset, True)
    weight = relax.const(np.ascontiguousarray(_const(w).T))  # (KW, N)
    n = int(weight.ty.shape[1])
    func = dense_func(lead, n, k, float(attr["low"]), int(_shape(scale)[0]))
    args = [packed, weight, scale, bias]
    return call_kernel(bb, func, "edgec_binary_dense", args, [*lead, n], "float32")


def convert_binary_matmul(bb: Any, inputs: list[Any], attr: dict[str, Any]) -> Any:
    a, b = inputs[:2]
    sa, sb = _shape(a), _shape(b)
    k, m, n = sa[-1], sa[-2], sb[-1]
    pa = _pack(bb, a, float(attr["a_step"]), float(attr["a_threshold"]), None, True)
    pb = _pack(bb, b, float(attr["b_step"]), float(attr["b_threshold"]), None, False)
    func = batch_matmul_func(sa[:-2], m, n, k, float(attr["a_low"]), float(attr["b_low"]))
    return call_kernel(bb, func, "edgec_binary_batch_matmul", [pa, pb], [*sa[:-2], m, n], "float32")


def convert_binary_gather(bb: Any, inputs: list[Any], attr: dict[str, Any]) -> Any:
    table, scale, ids = inputs[:3]
    rows = _shape(table)[0]
    ids_shape = _shape(ids)
    dim = int(attr["dim"])
    func = gather_func(rows, dim, ids_shape, str(ids.ty.dtype))
    return call_kernel(
        bb, func, "edgec_binary_gather", [table, scale, ids], [*ids_shape, dim], "float32"
    )


CONVERTERS = {
    "BinaryLinear": convert_binary_linear,
    "BinaryMatMul": convert_binary_matmul,
    "BinaryGather": convert_binary_gather,
}


def clear_kernels() -> None:
    """Forget the PrimFuncs of the last import (a module holds one per distinct kernel)."""
    _KERNELS.clear()
