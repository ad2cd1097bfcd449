"""Core ML lowering rules: reshapes, transposes, slices, gathers, concatenation, splits.

Every shape is static in a Core ML bundle, so ops whose output shape ONNX computes from
inputs (Reshape, Flatten, Squeeze, Unsqueeze, Expand) take the shape the IR inferred;
Shape and Size become constants.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from coremltools.converters.mil.mil import Builder as mb

from edgec.core.errors import UnsupportedOpError
from edgec.targets.coreml_context import (
    Context,
    Mil,
    Rule,
    as_mil_array,
    ints,
    name_of,
    rank_axis,
)

SHAPE_ONLY = ("Shape", "Size")  # ops whose result depends on shapes only, not on values


def fed_from(value: ir.Value) -> str | None:
    """The graph input whose values reach `value` (not only its shape, through Shape or
    Size), or None: a value computed from constants and fixed shapes only."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen or v.const_value is not None:
            continue
        seen.add(id(v))
        node = v.producer()
        if node is None:
            return v.name
        if node.op_type not in SHAPE_ONLY:
            stack.extend(i for i in node.inputs if i is not None)
    return None


def shape_inputs_constant(ctx: Context, node: ir.Node, first: int = 1) -> None:
    """A Core ML program's shapes are fixed: inputs that decide the output's shape (Reshape's
    shape, Unsqueeze's axes, Expand's shape, Split's sizes, Resize's scales) must be
    constants, or computed from fixed shapes only (the IR's inferred output shape then
    stands), never fed at run time."""
    for i, value in enumerate(node.inputs[first:], first):
        if value is None or not value.name or ctx.const(value) is not None:
            continue
        source = fed_from(value)
        if source is not None:
            raise UnsupportedOpError(
                f"{node.op_type} node '{node.name}' takes input {i} ('{value.name}'), which "
                f"decides its output shape, from the values of input '{source}'; Core ML "
                "programs have fixed shapes"
            )
        ctx.shape(node.outputs[0])  # fixed shapes only: a size not inferred is refused


def _reshape_to_output(ctx: Context, node: ir.Node) -> list[Mil]:
    shape_inputs_constant(ctx, node)
    out = ctx.shape(node.outputs[0])
    x = ctx.x(node.inputs[0])
    return [mb.reshape(x=x, shape=np.asarray(out, np.int32), name=name_of(node))]


def _transpose(ctx: Context, node: ir.Node) -> list[Mil]:
    rank = len(ctx.shape(node.inputs[0]))
    perm = ints(node, "perm", list(reversed(range(rank))))
    return [mb.transpose(x=ctx.x(node.inputs[0]), perm=perm, name=name_of(node))]


def _slice(ctx: Context, node: ir.Node) -> list[Mil]:
    shape = ctx.shape(node.inputs[0])
    rank = len(shape)
    if node.attributes.get("starts") is not None:  # opset < 10
        starts, ends = ints(node, "starts") or [], ints(node, "ends") or []
        axes = ints(node, "axes", list(range(len(starts)))) or []
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in ctx.need_const(node, 1, "the starts", raw=True)]
        ends = [int(v) for v in ctx.need_const(node, 2, "the ends", raw=True)]
        has_axes = len(node.inputs) > 3 and node.inputs[3] is not None
        has_steps = len(node.inputs) > 4 and node.inputs[4] is not None
        axes = [int(v) for v in ctx.need_const(node, 3, "the axes", raw=True)] if has_axes else []
        axes = axes or list(range(len(starts)))
        steps = (
            [int(v) for v in ctx.need_const(node, 4, "the steps", raw=True)] if has_steps else []
        )
        steps = steps or [1] * len(starts)
    begin, end, stride = [0] * rank, list(shape), [1] * rank
    begin_mask, end_mask = [True] * rank, [True] * rank
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = rank_axis(a, rank)
        b, f, step = slice(s, e, st).indices(shape[a])  # ONNX clamps as Python does
        begin[a], stride[a], begin_mask[a] = b, step, False
        if step < 0 and f < 0:  # through index 0: MIL's end cannot say "before 0"
            end_mask[a] = True
        else:
            end[a], end_mask[a] = f, False
    return [
        mb.slice_by_index(
            x=ctx.x(node.inputs[0]),
            begin=np.asarray(begin, np.int32),
            end=np.asarray(end, np.int32),
            stride=np.asarray(stride, np.int32),
            begin_mask=begin_mask,
            end_mask=end_mask,
            name=name_of(node),
        )
    ]


def _indices(ctx: Context, node: ir.Node, dim: int) -> Mil:
    """Gather's indices, negative ones made positive (constants here, run-time ones by a
    select)."""
    const = ctx.const(node.inputs[1])
    if const is not None:
        return np.where(const < 0, const + dim, const).astype(np.int32)
    idx = ctx.x(node.inputs[1])
    return mb.select(cond=mb.less(x=idx, y=np.int32(0)), a=mb.add(x=idx, y=np.int32(dim)), b=idx)


def _gather(ctx: Context, node: ir.Node) -> list[Mil]:
    shape = ctx.shape(node.inputs[0])
    axis = rank_axis(node.attributes.get_int("axis", 0), len(shape))
    indices = _indices(ctx, node, shape[axis])
    return [mb.gather(x=ctx.x(node.inputs[0]), indices=indices, axis=axis, name=name_of(node))]


def _gather_elements(ctx: Context, node: ir.Node) -> list[Mil]:
    shape = ctx.shape(node.inputs[0])
    axis = rank_axis(node.attributes.get_int("axis", 0), len(shape))
    indices = _indices(ctx, node, shape[axis])
    return [
        mb.gather_along_axis(
            x=ctx.x(node.inputs[0]), indices=indices, axis=axis, name=name_of(node)
        )
    ]


def _gather_nd(ctx: Context, node: ir.Node) -> list[Mil]:
    batch_dims = node.attributes.get_int("batch_dims", 0)
    kwargs = {"batch_dims": batch_dims} if batch_dims else {}
    x = ctx.x(node.inputs[0])
    const = ctx.const(node.inputs[1])
    if const is not None:  # negative indices count from each indexed axis's end
        dims = np.asarray(ctx.shape(node.inputs[0])[batch_dims : batch_dims + const.shape[-1]])
        indices: Mil = np.where(const < 0, const + dims, const).astype(np.int32)
    else:
        indices = ctx.x(node.inputs[1])
    return [mb.gather_nd(x=x, indices=indices, name=name_of(node), **kwargs)]


def _concat(ctx: Context, node: ir.Node) -> list[Mil]:
    rank = len(ctx.shape(node.outputs[0]))
    axis = rank_axis(node.attributes.get_int("axis", 0), rank)
    values = [ctx.x(v) for v in node.inputs if v is not None and ctx.shape(v)[axis] != 0]
    if len(values) == 1:
        return [mb.identity(x=values[0], name=name_of(node))]
    return [mb.concat(values=values, axis=axis, name=name_of(node))]


def _split(ctx: Context, node: ir.Node) -> list[Mil]:
    shape_inputs_constant(ctx, node)
    rank = len(ctx.shape(node.inputs[0]))
    axis = rank_axis(node.attributes.get_int("axis", 0), rank)
    sizes = [ctx.shape(o)[axis] for o in node.outputs]
    x = ctx.x(node.inputs[0])
    if len(sizes) == 1:
        return [mb.identity(x=x, name=name_of(node))]
    parts = mb.split(x=x, split_sizes=np.asarray(sizes, np.int32), axis=axis, name=name_of(node))
    return list(parts)


def broadcast_to(x: Mil, shape: tuple[int, ...], out: tuple[int, ...], name: str) -> Mil:
    """x (of `shape`) broadcast to `out`: a reshape to its rank, then a tile."""
    if isinstance(x, np.ndarray):
        return mb.const(val=np.ascontiguousarray(np.broadcast_to(x, out)), name=name)
    padded = (1,) * (len(out) - len(shape)) + shape
    if padded != shape:
        x = mb.reshape(x=x, shape=np.asarray(padded, np.int32))
    reps = [o // s if s != o else 1 for s, o in zip(padded, out, strict=True)]
    if all(r == 1 for r in reps):
        return mb.identity(x=x, name=name)
    return mb.tile(x=x, reps=np.asarray(reps, np.int32), name=name)


def _expand(ctx: Context, node: ir.Node) -> list[Mil]:
    shape_inputs_constant(ctx, node)
    shape, out = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    return [broadcast_to(ctx.x(node.inputs[0]), shape, out, name_of(node))]


def _tile(ctx: Context, node: ir.Node) -> list[Mil]:
    reps = ctx.need_const(node, 1, "the repeats")
    return [mb.tile(x=ctx.x(node.inputs[0]), reps=reps.astype(np.int32), name=name_of(node))]


def _static_value(ctx: Context, node: ir.Node) -> list[Mil]:
    """Shape, Size: known at compile time here."""
    shape = ctx.shape(node.inputs[0])
    if node.op_type == "Size":
        value = np.asarray(int(np.prod(shape)), np.int32)
    else:
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get("end")
        value = np.asarray(shape[slice(start, end.as_int() if end else None)], np.int32)
    return [mb.const(val=value, name=name_of(node))]


def _constant_of_shape(ctx: Context, node: ir.Node) -> list[Mil]:
    shape_inputs_constant(ctx, node, first=0)
    out = ctx.shape(node.outputs[0])
    attr = node.attributes.get("value")
    fill = attr.as_tensor().numpy().reshape(-1)[0] if attr is not None else np.float32(0.0)
    value = np.full(out, fill, dtype=fill.dtype)
    return [as_mil_array(value, f"ConstantOfShape node '{node.name}'")]


def _constant(ctx: Context, node: ir.Node) -> list[Mil]:
    const = ctx.const(node.outputs[0])
    if const is None:
        raise UnsupportedOpError(f"Constant node '{node.name}' holds no numeric tensor")
    return [const]


def _depth_to_space(ctx: Context, node: ir.Node) -> list[Mil]:
    """DCR mode is MIL's depth_to_space / space_to_depth; CRD is pixel_(un)shuffle."""
    block = node.attributes.get_int("blocksize", 1)
    x, name = ctx.x(node.inputs[0]), name_of(node)
    crd = node.attributes.get_string("mode", "DCR") == "CRD"
    if node.op_type == "DepthToSpace":
        if crd:
            return [mb.pixel_shuffle(x=x, upscale_factor=block, name=name)]
        return [mb.depth_to_space(x=x, block_size=block, name=name)]
    if crd:
        return [mb.pixel_unshuffle(x=x, downscale_factor=np.uint32(block), name=name)]
    return [mb.space_to_depth(x=x, block_size=block, name=name)]


RULES: dict[str, Rule] = {
    "Reshape": _reshape_to_output,
    "Flatten": _reshape_to_output,
    "Squeeze": _reshape_to_output,
    "Unsqueeze": _reshape_to_output,
    "Transpose": _transpose,
    "Slice": _slice,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "GatherND": _gather_nd,
    "Concat": _concat,
    "Split": _split,
    "Expand": _expand,
    "Tile": _tile,
    "Shape": _static_value,
    "Size": _static_value,
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _depth_to_space,
}
