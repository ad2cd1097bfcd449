"""Core ML lowering rules: convolution, matrix products, normalization, pooling, resize, pad.

ONNX's pads list every axis's begin, then every axis's end; MIL's pad interleaves them per
axis ([b0, e0, b1, e1, ...]).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from coremltools.converters.mil.mil import Builder as mb

from edgec.core.errors import UnsupportedOpError
from edgec.targets.coreml_context import Context, Mil, Rule, ints, name_of, rank_axis
from edgec.targets.coreml_ops_shape import shape_inputs_constant

AUTO_PAD = {"SAME_UPPER": "same", "SAME_LOWER": "same_lower", "VALID": "valid"}


def interleave(pads: list[int]) -> list[int]:
    """ONNX [b0, b1, ..., e0, e1, ...] -> MIL [b0, e0, b1, e1, ...]."""
    n = len(pads) // 2
    return [p for i in range(n) for p in (pads[i], pads[n + i])]


def _padding(node: ir.Node, spatial: int) -> dict[str, object]:
    auto = node.attributes.get_string("auto_pad", "NOTSET")
    if auto in AUTO_PAD:
        return {"pad_type": AUTO_PAD[auto]}
    pads = ints(node, "pads", [0] * (2 * spatial)) or []
    return {"pad_type": "custom", "pad": interleave(pads)}


def _conv(ctx: Context, node: ir.Node) -> list[Mil]:
    w = ctx.need_const(node, 1, "the weight")
    spatial = w.ndim - 2
    kwargs: dict[str, object] = {
        "strides": ints(node, "strides", [1] * spatial),
        "dilations": ints(node, "dilations", [1] * spatial),
        "groups": node.attributes.get_int("group", 1),
        **_padding(node, spatial),
    }
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        kwargs["bias"] = ctx.need_const(node, 2, "the bias")
    x = ctx.x(node.inputs[0])
    return [mb.conv(x=x, weight=w.astype(np.float32), name=name_of(node), **kwargs)]


def _conv_transpose(ctx: Context, node: ir.Node) -> list[Mil]:
    w = ctx.need_const(node, 1, "the weight")
    spatial = w.ndim - 2
    if any(ints(node, "output_padding", [0] * spatial) or []) or node.attributes.get(
        "output_shape"
    ):
        raise UnsupportedOpError(
            f"ConvTranspose node '{node.name}' has output_padding or output_shape"
        )
    kwargs: dict[str, object] = {
        "strides": ints(node, "strides", [1] * spatial),
        "dilations": ints(node, "dilations", [1] * spatial),
        "groups": node.attributes.get_int("group", 1),
        "output_shape": list(ctx.shape(node.outputs[0])),
        **_padding(node, spatial),
    }
    if kwargs["pad_type"] == "same_lower":
        raise UnsupportedOpError(f"ConvTranspose node '{node.name}' pads SAME_LOWER")
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        kwargs["bias"] = ctx.need_const(node, 2, "the bias")
    x = ctx.x(node.inputs[0])
    return [mb.conv_transpose(x=x, weight=w, name=name_of(node), **kwargs)]


def _matmul(ctx: Context, node: ir.Node) -> list[Mil]:
    a, b = ctx.x(node.inputs[0]), ctx.x(node.inputs[1])
    ra, rb = len(ctx.shape(node.inputs[0])), len(ctx.shape(node.inputs[1]))
    if ra > 1 and rb > 1:
        return [mb.matmul(x=a, y=b, name=name_of(node))]
    # a vector operand as numpy does it: a row (first) or a column (second), dropped after
    if ra == 1:
        a = mb.expand_dims(x=a, axes=[0])
    if rb == 1:
        b = mb.expand_dims(x=b, axes=[-1])
    out = np.asarray(ctx.shape(node.outputs[0]), np.int32)
    return [mb.reshape(x=mb.matmul(x=a, y=b), shape=out, name=name_of(node))]


def _gemm(ctx: Context, node: ir.Node) -> list[Mil]:
    alpha = node.attributes.get_float("alpha", 1.0)
    beta = node.attributes.get_float("beta", 1.0)
    ta = bool(node.attributes.get_int("transA", 0))
    tb = bool(node.attributes.get_int("transB", 0))
    a = ctx.x(node.inputs[0])
    b = ctx.const(node.inputs[1])
    c = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    n = ctx.shape(node.outputs[0])[-1]
    has_c = len(node.inputs) > 2 and node.inputs[2] is not None
    if b is not None and not ta and (not has_c or (c is not None and c.size in (1, n))):
        weight = (b if tb else b.T) * np.float32(alpha)
        bias = np.zeros(n, np.float32) if c is None else np.broadcast_to(c.reshape(-1), (n,))
        return [
            mb.linear(
                x=a,
                weight=weight.astype(np.float32),
                bias=(bias * np.float32(beta)).astype(np.float32),
                name=name_of(node),
            )
        ]
    y = mb.matmul(x=a, y=ctx.x(node.inputs[1]), transpose_x=ta, transpose_y=tb)
    if alpha != 1.0:
        y = mb.mul(x=y, y=np.float32(alpha))
    if has_c:
        cv = ctx.x(node.inputs[2])
        y = mb.add(x=y, y=mb.mul(x=cv, y=np.float32(beta)) if beta != 1.0 else cv)
    return [mb.identity(x=y, name=name_of(node))]


def _layer_norm(ctx: Context, node: ir.Node) -> list[Mil]:
    """MIL's layer_norm, with the scale and bias folded in when they are constants of the
    normalized shape, else applied after it (run-time or broadcast ones)."""
    shape = ctx.shape(node.inputs[0])
    axis = rank_axis(node.attributes.get_int("axis", -1), len(shape))
    eps = node.attributes.get_float("epsilon", 1e-5)
    norm_shape = shape[axis:]
    if len(node.outputs) > 1 and any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return _layer_norm_with_statistics(ctx, node, axis, eps)
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    gamma = ctx.const(node.inputs[1])
    beta = ctx.const(node.inputs[2]) if has_bias else np.zeros(norm_shape, np.float32)
    axes = list(range(axis, len(shape)))
    x = ctx.x(node.inputs[0])
    folded = all(
        c is not None and np.broadcast_shapes(c.shape, norm_shape) == norm_shape
        for c in (gamma, beta)
    )
    if folded:
        return [
            mb.layer_norm(
                x=x,
                axes=axes,
                gamma=np.broadcast_to(gamma, norm_shape).astype(np.float32),
                beta=np.broadcast_to(beta, norm_shape).astype(np.float32),
                epsilon=eps,
                name=name_of(node),
            )
        ]
    y = mb.mul(x=mb.layer_norm(x=x, axes=axes, epsilon=eps), y=ctx.x(node.inputs[1]))
    if not has_bias:
        return [mb.identity(x=y, name=name_of(node))]
    return [mb.add(x=y, y=ctx.x(node.inputs[2]), name=name_of(node))]


def _layer_norm_with_statistics(ctx: Context, node: ir.Node, axis: int, eps: float) -> list[Mil]:
    """LayerNormalization whose Mean and InvStdDev outputs are read: computed as ONNX's
    function body does, in the input's type (stash_type float32 on float32 inputs)."""
    x_type = node.inputs[0].dtype
    if x_type != ir.DataType.FLOAT and node.attributes.get_int("stash_type", 1) == 1:
        raise UnsupportedOpError(
            f"LayerNormalization node '{node.name}' keeps float32 statistics of {x_type} values"
        )
    x = ctx.x(node.inputs[0])
    axes = list(range(axis, len(ctx.shape(node.inputs[0]))))
    mean = mb.reduce_mean(x=x, axes=axes, keep_dims=True)
    centered = mb.sub(x=x, y=mean)
    var = mb.reduce_mean(x=mb.mul(x=centered, y=centered), axes=axes, keep_dims=True)
    inv = mb.rsqrt(x=var, epsilon=np.float32(eps))  # 1 / sqrt(var + eps)
    y = mb.mul(x=mb.mul(x=centered, y=inv), y=ctx.x(node.inputs[1]))
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        y = mb.add(x=y, y=ctx.x(node.inputs[2]))
    named = [mb.identity(x=v, name=name_of(node, i)) for i, v in enumerate((y, mean, inv))]
    return named[: len(node.outputs)]


def _batch_norm(ctx: Context, node: ir.Node) -> list[Mil]:
    if node.attributes.get_int("training_mode", 0):
        raise UnsupportedOpError(f"BatchNormalization node '{node.name}' is in training mode")
    gamma, beta, mean, var = (
        ctx.need_const(node, i, w) for i, w in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var"))
    )
    eps = node.attributes.get_float("epsilon", 1e-5)
    return [
        mb.batch_norm(
            x=ctx.x(node.inputs[0]),
            mean=mean,
            variance=var,
            gamma=gamma,
            beta=beta,
            epsilon=eps,
            name=name_of(node),
        )
    ]


def _instance_norm(ctx: Context, node: ir.Node) -> list[Mil]:
    gamma, beta = ctx.need_const(node, 1, "the scale"), ctx.need_const(node, 2, "the bias")
    eps = node.attributes.get_float("epsilon", 1e-5)
    return [
        mb.instance_norm(
            x=ctx.x(node.inputs[0]), gamma=gamma, beta=beta, epsilon=eps, name=name_of(node)
        )
    ]


def _pool(op: str) -> Rule:
    def rule(ctx: Context, node: ir.Node) -> list[Mil]:
        kernel = ints(node, "kernel_shape") or []
        spatial = len(kernel)
        if any(d != 1 for d in ints(node, "dilations", [1] * spatial) or []):
            raise UnsupportedOpError(f"{node.op_type} node '{node.name}' has dilations")
        if node.op_type == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].uses():
            raise UnsupportedOpError(f"MaxPool node '{node.name}' has its indices used")
        kwargs: dict[str, object] = {
            "kernel_sizes": kernel,
            "strides": ints(node, "strides", [1] * spatial),
            "ceil_mode": bool(node.attributes.get_int("ceil_mode", 0)),
            **_padding(node, spatial),
        }
        if op == "avg_pool":
            kwargs["exclude_padding_from_average"] = not node.attributes.get_int(
                "count_include_pad", 0
            )
        y = getattr(mb, op)(x=ctx.x(node.inputs[0]), name=name_of(node), **kwargs)
        if tuple(y.shape) != ctx.shape(node.outputs[0]):  # ceil_mode: the last window
            raise UnsupportedOpError(
                f"{node.op_type} node '{node.name}': Core ML's output size {tuple(y.shape)} "
                f"differs from ONNX's {ctx.shape(node.outputs[0])} (ceil_mode's last window)"
            )
        return [y]

    return rule


def _global_pool(op: str) -> Rule:
    def rule(ctx: Context, node: ir.Node) -> list[Mil]:
        rank = len(ctx.shape(node.inputs[0]))
        return [
            getattr(mb, op)(
                x=ctx.x(node.inputs[0]),
                axes=list(range(2, rank)),
                keep_dims=True,
                name=name_of(node),
            )
        ]

    return rule


def _resize(ctx: Context, node: ir.Node) -> list[Mil]:
    """4-D Resize over H and W: nearest (asymmetric, floor) at integer scales, or bilinear
    (half_pixel / pytorch_half_pixel, align_corners, asymmetric)."""
    shape, out = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    mode = node.attributes.get_string("mode", "nearest")
    transform = node.attributes.get_string("coordinate_transformation_mode", "half_pixel")
    what = f"Resize node '{node.name}' ({mode}, {transform})"
    if len(shape) != 4 or shape[:2] != out[:2]:
        raise UnsupportedOpError(f"{what} resizes other axes than the last two of a 4-D tensor")
    shape_inputs_constant(ctx, node)
    if node.attributes.get_int("antialias", 0):
        raise UnsupportedOpError(f"{what} antialiases")
    scales = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if (
        scales is not None
        and scales.size
        and any(float(f) * n != o for f, n, o in zip(scales.reshape(-1), shape, out, strict=True))
    ):  # ONNX maps coordinates with the scale given, Core ML with output / input size
        raise UnsupportedOpError(f"{what}: a scale that is not output size / input size")
    x, name = ctx.x(node.inputs[0]), name_of(node)
    if mode == "nearest":
        nearest = node.attributes.get_string("nearest_mode", "round_prefer_floor")
        sh, sw = out[2] / shape[2], out[3] / shape[3]
        if transform == "asymmetric" and nearest == "floor" and sh.is_integer() and sw.is_integer():
            return [
                mb.upsample_nearest_neighbor(
                    x=x, scale_factor_height=int(sh), scale_factor_width=int(sw), name=name
                )
            ]
        if (
            transform in ("half_pixel", "pytorch_half_pixel")
            and nearest in ("round_prefer_floor", "round_prefer_ceil")
            and sh.is_integer()
            and sw.is_integer()
        ):
            # at integer upscales rounding (x + 0.5) / s - 0.5 (never a tie) is floor(x / s)
            return [
                mb.upsample_nearest_neighbor(
                    x=x, scale_factor_height=int(sh), scale_factor_width=int(sw), name=name
                )
            ]
        raise UnsupportedOpError(f"{what}: nearest only at integer upscales")
    if mode == "linear":
        sampling = {
            "half_pixel": "UNALIGN_CORNERS",
            "align_corners": "STRICT_ALIGN_CORNERS",
            "asymmetric": "DEFAULT",
        }.get(transform)
        if transform == "pytorch_half_pixel" and out[2] > 1 and out[3] > 1:
            sampling = "UNALIGN_CORNERS"
        if sampling is None:
            raise UnsupportedOpError(f"{what}: no Core ML sampling mode matches")
        return [
            mb.resize_bilinear(
                x=x,
                target_size_height=out[2],
                target_size_width=out[3],
                sampling_mode=sampling,
                name=name,
            )
        ]
    raise UnsupportedOpError(f"{what}: only nearest and linear")


PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def _pad(ctx: Context, node: ir.Node) -> list[Mil]:
    rank = len(ctx.shape(node.inputs[0]))
    mode = node.attributes.get_string("mode", "constant")
    if mode not in PAD_MODES:
        raise UnsupportedOpError(f"Pad node '{node.name}' pads in mode '{mode}'")
    pads = ints(node, "pads")
    if pads is None:
        pads = [int(p) for p in ctx.need_const(node, 1, "the pads").reshape(-1)]
    value = 0.0
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        value = float(ctx.need_const(node, 2, "the value").reshape(-1)[0])
    elif node.attributes.get("value") is not None:
        value = node.attributes.get_float("value", 0.0)
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        axes = [rank_axis(int(a), rank) for a in ctx.need_const(node, 3, "the axes")]
        full = [0] * (2 * rank)
        for i, a in enumerate(axes):
            full[a], full[rank + a] = pads[i], pads[len(axes) + i]
        pads = full
    if any(p < 0 for p in pads):
        raise UnsupportedOpError(f"Pad node '{node.name}' crops (negative pads)")
    mil_pads = interleave(pads)
    if mode != "constant":  # Core ML pads reflect/replicate on the last axes only
        lead = 0
        while lead < len(mil_pads) and mil_pads[lead] == 0:
            lead += 1
        mil_pads = mil_pads[(lead // 2) * 2 :]
    return [
        mb.pad(
            x=ctx.x(node.inputs[0]),
            pad=np.asarray(mil_pads, np.int32),
            mode=PAD_MODES[mode],
            constant_val=np.float32(value),
            name=name_of(node),
        )
    ]


def _einsum_terms(node: ir.Node, count: int) -> tuple[list[str], str]:
    eq = node.attributes.get_string("equation", "").replace(" ", "")
    lhs, _, out = eq.partition("->")
    terms = lhs.split(",")
    if not _ or "." in eq or len(terms) != count or any(len(set(t)) != len(t) for t in terms):
        raise UnsupportedOpError(
            f"Einsum node '{node.name}' ('{eq}'): Core ML lowering takes one or two operands, "
            "an explicit output and no repeated or ellipsis indices"
        )
    return terms, out


def _einsum(ctx: Context, node: ir.Node) -> list[Mil]:
    """Einsum as transpose, reshape and one batched matmul: the indices of both operands and
    the output are batch axes, those of both but not the output are summed by the product,
    those of one operand only are its rows or columns (summed first if not in the output)."""
    terms, out = _einsum_terms(node, len(node.inputs))
    shapes = [
        dict(zip(t, ctx.shape(v), strict=True)) for t, v in zip(terms, node.inputs, strict=True)
    ]
    xs = [ctx.x(v) for v in node.inputs]
    for i, t in enumerate(terms):  # indices in one operand only and not kept: summed away
        others = "".join(terms[:i] + terms[i + 1 :])
        gone = [a for a, c in enumerate(t) if c not in out and c not in others]
        if gone:
            xs[i] = mb.reduce_sum(x=xs[i], axes=gone, keep_dims=False)
            terms[i] = "".join(c for c in t if c not in [t[a] for a in gone])
    if len(terms) == 1:
        perm = [terms[0].index(c) for c in out]
        return [mb.transpose(x=xs[0], perm=perm, name=name_of(node))]
    a, b = terms
    size = {**shapes[0], **shapes[1]}
    batch = [c for c in out if c in a and c in b]
    if any(shapes[0][c] != shapes[1][c] for c in batch):
        raise UnsupportedOpError(f"Einsum node '{node.name}' broadcasts a batch axis")
    summed = [c for c in a if c in b and c not in out]
    rows = [c for c in a if c not in b]
    cols = [c for c in b if c not in a]

    def arrange(x: Mil, term: str, order: list[str], dims: list[int]) -> Mil:
        x = mb.transpose(x=x, perm=[term.index(c) for c in order])
        return mb.reshape(x=x, shape=np.asarray(dims, np.int32))

    nb = [size[c] for c in batch]
    prod = lambda cs: int(np.prod([size[c] for c in cs], dtype=np.int64))  # noqa: E731
    left = arrange(xs[0], a, batch + rows + summed, [*nb, prod(rows), prod(summed)])
    right = arrange(xs[1], b, batch + summed + cols, [*nb, prod(summed), prod(cols)])
    y = mb.matmul(x=left, y=right)
    got = batch + rows + cols
    y = mb.reshape(x=y, shape=np.asarray([size[c] for c in got], np.int32))
    return [mb.transpose(x=y, perm=[got.index(c) for c in out], name=name_of(node))]


RULES: dict[str, Rule] = {
    "Einsum": _einsum,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "LayerNormalization": _layer_norm,
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "MaxPool": _pool("max_pool"),
    "AveragePool": _pool("avg_pool"),
    "GlobalAveragePool": _global_pool("reduce_mean"),
    "GlobalMaxPool": _global_pool("reduce_max"),
    "Resize": _resize,
    "Pad": _pad,
}
