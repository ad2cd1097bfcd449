"""A reference evaluator for saved Core ML ML programs, in numpy: runs the program op by op,
on any machine, so that a Core ML bundle's numerics are checked without a Mac.

Each MIL op has an implementation here written from the op's specification in coremltools
(`coremltools.converters.mil.mil.ops.defs`), checked against torch and against coremltools'
own value inference in the tests. Arithmetic is float32: a float16 op's inputs are widened,
the op computed in float32 and its result rounded to float16, as Core ML's CPU and GPU
kernels store fp16 results (they may accumulate differently: fp16 bundles are checked at a
looser tolerance). An op the evaluator lacks is an error naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import special

from edgec.core.errors import BundleError
from edgec.runtime.mil_program import DTYPES, MilProgram, Op, read_program

Args = dict[str, Any]
Impl = Callable[[Args, Op], Any]
TUPLE_PARAMS = {"values"}  # parameters that take several bindings (concat, einsum)
F32 = np.float32


def _f(x: Any) -> np.ndarray:
    """A floating operand, widened to float32 for the computation."""
    a = np.asarray(x)
    return a.astype(F32) if a.dtype.kind == "f" else a


def _scalar(x: Any) -> Any:
    return np.asarray(x).reshape(()).item()


def _list(x: Any) -> list[int]:
    return [int(v) for v in np.asarray(x).reshape(-1)]


# --- elementwise ---------------------------------------------------------------------------

UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, F32(0)),
    "relu6": lambda x: np.clip(x, F32(0), F32(6)),
    "sigmoid": special.expit,  # without exp's overflow for large -x
    "silu": lambda x: x * special.expit(x),
    "tanh": np.tanh,
    "exp": np.exp,
    "exp2": np.exp2,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "sign": np.sign,
    "floor": np.floor,
    "ceil": np.ceil,
    "round": np.round,
    "erf": lambda x: special.erf(x).astype(x.dtype),
    "sin": np.sin,
    "cos": np.cos,
    "square": np.square,
    "softplus": lambda x: np.logaddexp(F32(0), x),
    "softsign": lambda x: x / (F32(1) + np.abs(x)),
    "logical_not": np.logical_not,
    "identity": lambda x: x,
}
BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.divide,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Impl:
    return lambda a, op: fn(_f(a["x"]))


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Impl:
    return lambda a, op: fn(_f(a["x"]), _f(a["y"]))


def _log(a: Args, op: Op) -> np.ndarray:
    return np.log(_f(a["x"]) + F32(a.get("epsilon", 0.0)))


def _rsqrt(a: Args, op: Op) -> np.ndarray:
    return F32(1) / np.sqrt(_f(a["x"]) + F32(a.get("epsilon", 1e-12)))


def _inverse(a: Args, op: Op) -> np.ndarray:
    return F32(1) / (_f(a["x"]) + F32(a.get("epsilon", 1e-4)))


def _gelu(a: Args, op: Op) -> np.ndarray:
    x = _f(a["x"])
    mode = a.get("mode", "EXACT")
    if mode == "TANH_APPROXIMATION":
        inner = F32(math.sqrt(2 / math.pi)) * (x + F32(0.044715) * x**3)
        return F32(0.5) * x * (F32(1) + np.tanh(inner))
    if mode == "SIGMOID_APPROXIMATION":
        return x * special.expit(F32(1.702) * x)
    return F32(0.5) * x * (F32(1) + special.erf(x / F32(math.sqrt(2))).astype(F32))


def _leaky_relu(a: Args, op: Op) -> np.ndarray:
    x = _f(a["x"])
    return np.where(x >= 0, x, F32(a.get("alpha", 0.01)) * x)


def _elu(a: Args, op: Op) -> np.ndarray:
    x = _f(a["x"])
    return np.where(x > 0, x, F32(a.get("alpha", 1.0)) * (np.exp(x) - F32(1)))


def _prelu(a: Args, op: Op) -> np.ndarray:  # alpha per channel (axis 1)
    x = _f(a["x"])
    alpha = _f(a["alpha"]).reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x >= 0, x, alpha * x)


def _sigmoid_hard(a: Args, op: Op) -> np.ndarray:
    x = _f(a["x"])
    return np.clip(F32(a.get("alpha", 0.2)) * x + F32(a.get("beta", 0.5)), F32(0), F32(1))


def _clip(a: Args, op: Op) -> np.ndarray:
    return np.clip(_f(a["x"]), F32(a["alpha"]), F32(a["beta"]))


def _select(a: Args, op: Op) -> np.ndarray:
    return np.where(np.asarray(a["cond"]).astype(bool), _f(a["a"]), _f(a["b"]))


def _cast(a: Args, op: Op) -> np.ndarray:
    x = np.asarray(a["x"])
    dtype = DTYPES[op.outputs[0][1]]
    if np.dtype(dtype).kind in "iu" and x.dtype.kind == "f":
        x = np.trunc(x)
    return x.astype(dtype)


# --- reductions and normalization ------------------------------------------------------------


def _axes(a: Args, rank: int) -> tuple[int, ...]:
    axes = a.get("axes")
    if axes is None:
        return tuple(range(rank))
    return tuple(int(v) % rank for v in np.asarray(axes).reshape(-1))


REDUCE: dict[str, Callable[..., np.ndarray]] = {
    "reduce_mean": lambda x, axes, k: np.mean(x, axis=axes, keepdims=k),
    "reduce_sum": lambda x, axes, k: np.sum(x, axis=axes, keepdims=k),
    "reduce_max": lambda x, axes, k: np.max(x, axis=axes, keepdims=k),
    "reduce_min": lambda x, axes, k: np.min(x, axis=axes, keepdims=k),
    "reduce_prod": lambda x, axes, k: np.prod(x, axis=axes, keepdims=k),
    "reduce_l1_norm": lambda x, axes, k: np.sum(np.abs(x), axis=axes, keepdims=k),
    "reduce_l2_norm": lambda x, axes, k: np.sqrt(np.sum(x * x, axis=axes, keepdims=k)),
    "reduce_sum_square": lambda x, axes, k: np.sum(x * x, axis=axes, keepdims=k),
    "reduce_log_sum": lambda x, axes, k: np.log(np.sum(x, axis=axes, keepdims=k)),
    "reduce_log_sum_exp": lambda x, axes, k: special.logsumexp(x, axis=axes, keepdims=k),
}


def _reduce(name: str) -> Impl:
    def impl(a: Args, op: Op) -> np.ndarray:
        x = _f(a["x"])
        return REDUCE[name](x, _axes(a, x.ndim), bool(a.get("keep_dims", False)))

    return impl


def _arg_reduce(fn: Callable[..., np.ndarray]) -> Impl:
    def impl(a: Args, op: Op) -> np.ndarray:
        x = _f(a["x"])
        axis = int(a.get("axis", -1))
        out = fn(x, axis=axis)
        return np.expand_dims(out, axis) if a.get("keep_dims", False) else out

    return impl


def _softmax(a: Args, op: Op) -> np.ndarray:
    x = _f(a["x"])
    axis = int(a.get("axis", -1))
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _layer_norm(a: Args, op: Op) -> np.ndarray:
    x = _f(a["x"])
    axes = _axes(a, x.ndim)
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + F32(a.get("epsilon", 1e-5)))
    if a.get("gamma") is not None:
        y = y * _f(a["gamma"])
    if a.get("beta") is not None:
        y = y + _f(a["beta"])
    return y


def _channel(v: Any, rank: int) -> np.ndarray:
    return _f(v).reshape((1, -1) + (1,) * (rank - 2))


def _batch_norm(a: Args, op: Op) -> np.ndarray:
    x = _f(a["x"])
    y = (x - _channel(a["mean"], x.ndim)) / np.sqrt(
        _channel(a["variance"], x.ndim) + F32(a.get("epsilon", 1e-5))
    )
    if a.get("gamma") is not None:
        y = y * _channel(a["gamma"], x.ndim)
    if a.get("beta") is not None:
        y = y + _channel(a["beta"], x.ndim)
    return y


def _instance_norm(a: Args, op: Op) -> np.ndarray:
    x = _f(a["x"])
    axes = tuple(range(2, x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + F32(a.get("epsilon", 1e-5)))
    if a.get("gamma") is not None:
        y = y * _channel(a["gamma"], x.ndim)
    if a.get("beta") is not None:
        y = y + _channel(a["beta"], x.ndim)
    return y


# --- convolution and pooling -----------------------------------------------------------------


def _pads(
    a: Args,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: list[int],
    dilations: list[int],
) -> list[tuple[int, int]]:
    kind = a.get("pad_type", "valid")
    if kind == "custom":
        p = _list(a.get("pad", [0] * (2 * len(spatial))))
        return [(p[2 * i], p[2 * i + 1]) for i in range(len(spatial))]
    if kind == "valid":
        return [(0, 0)] * len(spatial)
    pads = []
    for n, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small = total // 2
        pads.append((small, total - small) if kind == "same" else (total - small, small))
    return pads


def conv(
    x: np.ndarray,
    w: np.ndarray,
    strides: list[int],
    dilations: list[int],
    pads: list[tuple[int, int]],
    groups: int,
) -> np.ndarray:
    """N-d grouped convolution (cross-correlation), float32, one kernel offset at a time."""
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    n = x.shape[0]
    o, cg = w.shape[:2]
    kernel = w.shape[2:]
    og = o // groups
    out_sp = [
        (x.shape[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
        for i in range(len(kernel))
    ]
    p = int(np.prod(out_sp, dtype=np.int64))
    xg = x.reshape(n, groups, cg, *x.shape[2:])
    wg = w.reshape(groups, og, cg, *kernel)
    out = np.zeros((n, groups, og, p), F32)
    depthwise = cg == 1 and og == 1
    for offs in np.ndindex(*kernel):
        sl = tuple(
            slice(k * d, k * d + s * (m - 1) + 1, s)
            for k, d, s, m in zip(offs, dilations, strides, out_sp, strict=True)
        )
        patch = xg[(slice(None),) * 3 + sl].reshape(n, groups, cg, p)
        weights = wg[(slice(None),) * 3 + offs]  # [groups, og, cg]
        if depthwise:
            out += patch * weights.reshape(1, groups, 1, 1)
        else:
            out += np.matmul(weights[None], patch)
    return out.reshape(n, o, *out_sp)


def _conv(a: Args, op: Op) -> np.ndarray:
    x, w = _f(a["x"]), _f(a["weight"])
    k = len(w.shape) - 2
    strides = _list(a.get("strides", [1] * k))
    dilations = _list(a.get("dilations", [1] * k))
    pads = _pads(a, x.shape[2:], w.shape[2:], strides, dilations)
    y = conv(x, w, strides, dilations, pads, int(a.get("groups", 1)))
    if a.get("bias") is not None:
        y = y + _channel(a["bias"], y.ndim)
    return y


def _conv_transpose(a: Args, op: Op) -> np.ndarray:
    """The adjoint of `conv`: zeros inserted between inputs (stride), the kernel flipped."""
    x, w = _f(a["x"]), _f(a["weight"])  # w: [C_in, C_out / groups, *k]
    k = len(w.shape) - 2
    groups = int(a.get("groups", 1))
    strides = _list(a.get("strides", [1] * k))
    dilations = _list(a.get("dilations", [1] * k))
    out_shape = op.outputs[0][2]
    n, cin = x.shape[:2]
    dil = np.zeros(
        (n, cin, *[(m - 1) * s + 1 for m, s in zip(x.shape[2:], strides, strict=True)]), F32
    )
    dil[(slice(None), slice(None), *[slice(None, None, s) for s in strides])] = x
    kernel = w.shape[2:]
    full = [(d * (kk - 1), d * (kk - 1)) for kk, d in zip(kernel, dilations, strict=True)]
    cout_g = w.shape[1]
    wf = w.reshape(groups, cin // groups, cout_g, *kernel).swapaxes(1, 2)
    wf = wf.reshape(groups * cout_g, cin // groups, *kernel)[
        (slice(None), slice(None), *[slice(None, None, -1)] * k)
    ]
    y = conv(dil, wf, [1] * k, dilations, full, groups)  # every output position, then cropped
    pads = _pads(a, tuple(out_shape[2:]), kernel, strides, dilations)
    crop = tuple(slice(b, b + m) for (b, _), m in zip(pads, out_shape[2:], strict=True))
    y = y[(slice(None), slice(None), *crop)]
    if a.get("bias") is not None:
        y = y + _channel(a["bias"], y.ndim)
    return y


def _pool(kind: str) -> Impl:
    def impl(a: Args, op: Op) -> np.ndarray:
        x = _f(a["x"])
        kernel = _list(a["kernel_sizes"])
        k = len(kernel)
        strides = _list(a.get("strides", [1] * k))
        spatial = x.shape[2:]
        pads = _pads(a, spatial, tuple(kernel), strides, [1] * k)
        # the output size is Core ML's, as the program declares it (ceil_mode's last window)
        out_sp = list(op.outputs[0][2][2:])
        extra = [
            max((m - 1) * s + kk - (n + b + e), 0)
            for m, n, kk, s, (b, e) in zip(out_sp, spatial, kernel, strides, pads, strict=True)
        ]
        fill = -np.inf if kind == "max" else 0.0
        full = [(b, e + x_) for (b, e), x_ in zip(pads, extra, strict=True)]
        xp = np.pad(x, [(0, 0), (0, 0), *full], constant_values=fill)
        valid = np.pad(np.ones(spatial, F32), full)
        # the input and its explicit pads (what count_include_pad counts), not the ceil overhang
        padded = np.pad(
            np.ones([n + b + e for n, (b, e) in zip(spatial, pads, strict=True)], F32),
            [(0, x_) for x_ in extra],
        )
        acc = np.full((*x.shape[:2], *out_sp), fill, F32)
        count = np.zeros(out_sp, F32)
        exclude = bool(a.get("exclude_padding_from_average", False))
        for offs in np.ndindex(*kernel):
            sl = tuple(
                slice(o, o + s * (m - 1) + 1, s)
                for o, s, m in zip(offs, strides, out_sp, strict=True)
            )
            window = xp[(slice(None), slice(None), *sl)]
            if kind == "max":
                acc = np.maximum(acc, window)
            else:
                acc = acc + window
                count += (valid if exclude else padded)[sl]
        return acc if kind == "max" else acc / np.maximum(count, F32(1))

    return impl


# --- matrix products and attention ------------------------------------------------------------


def _matmul(a: Args, op: Op) -> np.ndarray:
    x, y = _f(a["x"]), _f(a["y"])
    if a.get("transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if a.get("transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _linear(a: Args, op: Op) -> np.ndarray:
    y = np.matmul(_f(a["x"]), _f(a["weight"]).T)
    return y + _f(a["bias"]) if a.get("bias") is not None else y


def _sdpa(a: Args, op: Op) -> np.ndarray:
    q, k, v = _f(a["query"]), _f(a["key"]), _f(a["value"])
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / F32(math.sqrt(q.shape[-1]))
    mask = a.get("attn_mask")
    if mask is not None:
        mask = np.asarray(mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + _f(mask)
    return np.matmul(_softmax({"x": scores, "axis": -1}, op), v)


def _einsum(a: Args, op: Op) -> np.ndarray:
    return np.einsum(str(a["equation"]), *[_f(v) for v in a["values"]])


# --- shapes, slices, gathers --------------------------------------------------------------------


def _reshape(a: Args, op: Op) -> np.ndarray:
    return np.reshape(a["x"], op.outputs[0][2])


def _transpose(a: Args, op: Op) -> np.ndarray:
    return np.transpose(a["x"], _list(a["perm"]))


def _slice_by_index(a: Args, op: Op) -> np.ndarray:
    x = np.asarray(a["x"])
    rank = x.ndim
    begin, end = _list(a["begin"]), _list(a["end"])
    stride = _list(a.get("stride", [1] * rank))
    bm = np.asarray(a.get("begin_mask", [False] * rank)).reshape(-1)
    em = np.asarray(a.get("end_mask", [False] * rank)).reshape(-1)
    sq = np.asarray(a.get("squeeze_mask", [False] * rank)).reshape(-1)
    index: list[Any] = []
    for i in range(rank):
        if sq[i]:
            index.append(begin[i])
            continue
        index.append(slice(None if bm[i] else begin[i], None if em[i] else end[i], stride[i]))
    return x[tuple(index)]


def _slice_by_size(a: Args, op: Op) -> np.ndarray:
    x = np.asarray(a["x"])
    begin, size = _list(a["begin"]), _list(a["size"])
    return x[tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size, strict=True))]


def _gather(a: Args, op: Op) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = int(a.get("axis", 0)) % x.ndim
    idx = np.asarray(a["indices"]).astype(np.int64)
    batch = int(a.get("batch_dims", 0))
    if batch:
        raise BundleError("gather with batch_dims is not in edgec's evaluator")
    return np.take(x, np.where(idx < 0, idx + x.shape[axis], idx), axis=axis)


def _gather_along_axis(a: Args, op: Op) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = int(a.get("axis", 0)) % x.ndim
    idx = np.asarray(a["indices"]).astype(np.int64)
    return np.take_along_axis(x, np.where(idx < 0, idx + x.shape[axis], idx), axis=axis)


def _gather_nd(a: Args, op: Op) -> np.ndarray:
    x = np.asarray(a["x"])
    idx = np.asarray(a["indices"]).astype(np.int64)
    b = int(a.get("batch_dims", 0))
    lead = x.shape[:b]
    xs = x.reshape(-1, *x.shape[b:])
    ids = idx.reshape(xs.shape[0], -1, idx.shape[-1])
    out = np.stack([xs[i][tuple(ids[i].T)] for i in range(xs.shape[0])])
    return out.reshape(*lead, *idx.shape[b:-1], *x.shape[b + idx.shape[-1] :])


def _concat(a: Args, op: Op) -> np.ndarray:
    values = [np.asarray(v) for v in a["values"]]
    return np.concatenate(values, axis=int(a["axis"]))


def _split(a: Args, op: Op) -> tuple[np.ndarray, ...]:
    x = np.asarray(a["x"])
    axis = int(a["axis"]) % x.ndim
    sizes = [o[2][axis] for o in op.outputs]
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _squeeze(a: Args, op: Op) -> np.ndarray:
    return np.reshape(a["x"], op.outputs[0][2])


def _tile(a: Args, op: Op) -> np.ndarray:
    return np.tile(a["x"], _list(a["reps"]))


def _pad(a: Args, op: Op) -> np.ndarray:
    x = _f(a["x"])
    p = _list(a["pad"])
    pairs = [(0, 0)] * (x.ndim - len(p) // 2) + [(p[i], p[i + 1]) for i in range(0, len(p), 2)]
    mode = str(a.get("mode", "constant"))
    if mode == "constant":
        return np.pad(x, pairs, constant_values=F32(a.get("constant_val", 0.0)))
    return np.pad(x, pairs, mode={"reflect": "reflect", "replicate": "edge"}[mode])


def _upsample_nearest(a: Args, op: Op) -> np.ndarray:
    x = np.asarray(a["x"])
    sh, sw = (
        int(_scalar(a.get("scale_factor_height", 1))),
        int(_scalar(a.get("scale_factor_width", 1))),
    )
    return np.repeat(np.repeat(x, sh, axis=-2), sw, axis=-1)


def _source(out: int, size: int, mode: str) -> np.ndarray:
    d = np.arange(out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        src = d * (size - 1) / (out - 1) if out > 1 else np.zeros(out)
    elif mode == "UNALIGN_CORNERS":
        src = (d + 0.5) * size / out - 0.5
    elif mode == "DEFAULT":
        src = d * size / out
    else:
        raise BundleError(f"resize sampling mode {mode} is not in edgec's evaluator")
    return np.clip(src, 0, size - 1)


def _bilinear_axis(x: np.ndarray, axis: int, out: int, mode: str) -> np.ndarray:
    size = x.shape[axis]
    src = _source(out, size, mode)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, size - 1)
    frac = (src - lo).astype(F32)
    shape = [1] * x.ndim
    shape[axis] = out
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (F32(1) - frac) + np.take(x, hi, axis=axis) * frac


def _resize_bilinear(a: Args, op: Op) -> np.ndarray:
    x = _f(a["x"])
    mode = str(a.get("sampling_mode", "DEFAULT"))
    out = op.outputs[0][2]
    y = _bilinear_axis(x, x.ndim - 2, out[-2], mode)
    return _bilinear_axis(y, x.ndim - 1, out[-1], mode)


def _depth_to_blocks(x: np.ndarray, b: int, channels_first: bool) -> np.ndarray:
    """[N, C, H, W] -> [N, C / b^2, H b, W b]: the channel read as (c, i, j) with
    `channels_first` (CRD, pixel_shuffle), else as (i, j, c) (DCR, depth_to_space)."""
    n, c, h, w = x.shape
    if channels_first:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (b * b), h * b, w * b)


def _blocks_to_depth(x: np.ndarray, b: int, channels_first: bool) -> np.ndarray:
    """The inverse of `_depth_to_blocks`."""
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b)
    y = y.transpose(0, 1, 3, 5, 2, 4) if channels_first else y.transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


def _depth_to_space(a: Args, op: Op) -> np.ndarray:
    return _depth_to_blocks(np.asarray(a["x"]), int(a["block_size"]), channels_first=False)


def _pixel_shuffle(a: Args, op: Op) -> np.ndarray:
    return _depth_to_blocks(np.asarray(a["x"]), int(a["upscale_factor"]), channels_first=True)


def _pixel_unshuffle(a: Args, op: Op) -> np.ndarray:
    return _blocks_to_depth(np.asarray(a["x"]), int(a["downscale_factor"]), channels_first=True)


def _space_to_depth(a: Args, op: Op) -> np.ndarray:
    return _blocks_to_depth(np.asarray(a["x"]), int(a["block_size"]), channels_first=False)


# --- constants ---------------------------------------------------------------------------------


def _const(a: Args, op: Op) -> np.ndarray:
    return np.asarray(op.attributes["val"])


def _lut_to_dense(a: Args, op: Op) -> np.ndarray:
    """Palettized weights: iOS 16/17 (lut [P], indices packed into bytes, shape) and iOS 18
    (indices [*shape] of sub-byte type, lut [*blocks, P, vector size])."""
    lut = np.asarray(a["lut"])
    if "shape" in a and a.get("shape") is not None:
        shape = _list(a["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        bits = int(math.log2(lut.shape[0]))
        from_bytes = np.unpackbits(np.asarray(a["indices"], np.uint8), bitorder="little")
        fields = from_bytes[: count * bits].reshape(count, bits).astype(np.int64)
        idx = (fields << np.arange(bits)).sum(axis=1)
        return lut[idx].reshape(shape)
    idx = np.asarray(a["indices"]).astype(np.int64)
    if lut.shape[-1] != 1:
        raise BundleError("vector palettization is not in edgec's evaluator")
    blocks = lut.shape[:-2]
    reps = [s // b for s, b in zip(idx.shape, blocks, strict=True)]
    table = lut[..., 0]  # [*blocks, P]
    out = np.empty(idx.shape, lut.dtype)
    for block in np.ndindex(*blocks):
        region = tuple(slice(b * r, (b + 1) * r) for b, r in zip(block, reps, strict=True))
        out[region] = table[block][idx[region]]
    return out


OPS: dict[str, Impl] = {
    **{k: _unary(fn) for k, fn in UNARY.items()},
    **{k: _binary(fn) for k, fn in BINARY.items()},
    **{k: _reduce(k) for k in REDUCE},
    "log": _log,
    "rsqrt": _rsqrt,
    "inverse": _inverse,
    "gelu": _gelu,
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "prelu": _prelu,
    "sigmoid_hard": _sigmoid_hard,
    "clip": _clip,
    "select": _select,
    "cast": _cast,
    "reduce_argmax": _arg_reduce(np.argmax),
    "reduce_argmin": _arg_reduce(np.argmin),
    "softmax": _softmax,
    "layer_norm": _layer_norm,
    "batch_norm": _batch_norm,
    "instance_norm": _instance_norm,
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "max_pool": _pool("max"),
    "avg_pool": _pool("avg"),
    "matmul": _matmul,
    "linear": _linear,
    "scaled_dot_product_attention": _sdpa,
    "einsum": _einsum,
    "reshape": _reshape,
    "transpose": _transpose,
    "slice_by_index": _slice_by_index,
    "slice_by_size": _slice_by_size,
    "gather": _gather,
    "gather_along_axis": _gather_along_axis,
    "gather_nd": _gather_nd,
    "concat": _concat,
    "split": _split,
    "squeeze": _squeeze,
    "expand_dims": _squeeze,
    "tile": _tile,
    "pad": _pad,
    "upsample_nearest_neighbor": _upsample_nearest,
    "resize_bilinear": _resize_bilinear,
    "depth_to_space": _depth_to_space,
    "space_to_depth": _space_to_depth,
    "pixel_shuffle": _pixel_shuffle,
    "pixel_unshuffle": _pixel_unshuffle,
    "const": _const,
    "constexpr_lut_to_dense": _lut_to_dense,
}


def run_op(op: Op, args: Args) -> list[np.ndarray]:
    """One op on resolved arguments; results in the op's declared output types."""
    impl = OPS.get(op.type)
    if impl is None:
        raise BundleError(f"Core ML op '{op.type}' (op '{op.name}') is not in edgec's evaluator")
    result = impl(args, op)
    results = list(result) if isinstance(result, tuple) else [result]
    return [
        np.asarray(r).astype(DTYPES[dtype]).reshape(shape)
        for r, (_, dtype, shape) in zip(results, op.outputs, strict=True)
    ]


class Evaluator:
    """A saved program, ready to run on inputs by feature name."""

    def __init__(self, package: str | Path) -> None:
        self.program: MilProgram = read_program(package)
        unknown = sorted({op.type for op in self.program.ops if op.type not in OPS})
        if unknown:
            raise BundleError(
                f"Core ML op '{unknown[0]}' is not in edgec's evaluator"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: dict[str, Any] = {}
        for name, dtype, shape in self.program.inputs:
            if name not in feeds:
                raise BundleError(f"the Core ML program's input '{name}' is not given")
            env[name] = np.asarray(feeds[name]).astype(DTYPES[dtype]).reshape(shape)
        for op in self.program.ops:
            # constexpr ops hold their constant parameters as attributes
            args: Args = {k: v for k, v in op.attributes.items() if k != "name"}
            for param, bindings in op.inputs.items():
                values = [env[b] if isinstance(b, str) else b for b in bindings]
                args[param] = values if param in TUPLE_PARAMS else values[0]
            for (name, _, _), value in zip(op.outputs, run_op(op, args), strict=True):
                env[name] = value
        return {name: env[name] for name in self.program.outputs}
