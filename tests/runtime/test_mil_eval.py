"""edgec's MIL evaluator, op by op: against coremltools' own value inference where coremltools
computes the op on constants, and against torch for the ops it does not (convolution,
pooling, normalization, resize); then whole saved programs read back from `.mlpackage`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import Function, types
from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import (
    constexpr_lut_to_dense as lut16,
)
from coremltools.converters.mil.mil.ops.defs.iOS18.compression import (
    constexpr_lut_to_dense as lut18_op,
)
from onnx import helper
from onnx.reference import ReferenceEvaluator

from edgec.core.errors import BundleError
from edgec.runtime.mil_eval import OPS, Evaluator, run_op
from edgec.runtime.mil_program import MIL_pb2, Op, read_program, unpack_sub_byte

T = MIL_pb2.DataType
CODES = {
    np.dtype(np.float32): T.FLOAT32,
    np.dtype(np.float16): T.FLOAT16,
    np.dtype(np.int32): T.INT32,
    np.dtype(np.bool_): T.BOOL,
}
rng = np.random.default_rng(0)


def _x(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def evaluate(op: str, outputs: list[np.ndarray], **args: Any) -> list[np.ndarray]:
    """The evaluator's result for one op with the output types and shapes `outputs` have."""
    declared = [(f"out{i}", CODES[o.dtype], tuple(o.shape)) for i, o in enumerate(outputs)]
    return run_op(Op(op, {}, declared), args)


def value_inferred(op: str, opset: Any = ct.target.iOS18, **args: Any) -> list[np.ndarray]:
    """coremltools' value of the op on constant inputs."""
    with Function({}, opset_version=opset):
        out = getattr(mb, op)(**args)
    outs = list(out) if isinstance(out, tuple | list) else [out]
    vals = [o.val for o in outs]
    assert all(v is not None for v in vals), f"coremltools has no value inference for {op}"
    return [np.asarray(v) for v in vals]


A, B = _x(2, 3, 4), _x(2, 3, 4)
POS = np.abs(_x(2, 3, 4)) + 0.1
CASES: list[tuple[str, dict[str, Any]]] = [
    *[(op, {"x": A, "y": B}) for op in ("add", "sub", "mul", "real_div", "maximum", "minimum")],
    ("pow", {"x": POS, "y": np.float32(1.7)}),
    *[(op, {"x": A, "y": B}) for op in ("less", "greater_equal", "equal", "not_equal")],
    *[
        (op, {"x": A})
        for op in (
            "relu",
            "sigmoid",
            "tanh",
            "exp",
            "abs",
            "sign",
            "floor",
            "ceil",
            "erf",
            "softplus",
            "square",
            "relu6",
        )
    ],
    *[(op, {"x": POS}) for op in ("sqrt", "rsqrt", "inverse", "log")],
    *[
        ("gelu", {"x": A, "mode": m})
        for m in ("EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION")
    ],
    ("leaky_relu", {"x": A, "alpha": 0.1}),
    ("elu", {"x": A, "alpha": 0.7}),
    ("sigmoid_hard", {"x": A, "alpha": 1 / 6, "beta": 0.5}),
    ("clip", {"x": A, "alpha": -0.5, "beta": 0.7}),
    ("select", {"cond": A > 0, "a": A, "b": B}),
    ("cast", {"x": A * 3, "dtype": "int32"}),
    *[
        (r, {"x": A, "axes": [1, -1], "keep_dims": k})
        for r in (
            "reduce_mean",
            "reduce_sum",
            "reduce_max",
            "reduce_min",
            "reduce_l2_norm",
            "reduce_sum_square",
            "reduce_log_sum_exp",
            "reduce_l1_norm",
            "reduce_prod",
        )
        for k in (True, False)
    ],
    ("reduce_argmax", {"x": A, "axis": 2, "keep_dims": True}),
    ("softmax", {"x": A, "axis": 1}),
    ("layer_norm", {"x": A, "axes": [2], "gamma": _x(4), "beta": _x(4), "epsilon": 1e-5}),
    ("matmul", {"x": A, "y": _x(2, 4, 5)}),
    ("matmul", {"x": A, "y": _x(5, 4), "transpose_y": True}),
    ("linear", {"x": A, "weight": _x(5, 4), "bias": _x(5)}),
    (
        "scaled_dot_product_attention",
        {
            "query": _x(2, 3, 5, 8),
            "key": _x(2, 3, 6, 8),
            "value": _x(2, 3, 6, 4),
            "attn_mask": _x(3, 5, 6),
        },
    ),
    (
        "scaled_dot_product_attention",
        {
            "query": _x(1, 2, 5, 8),
            "key": _x(1, 2, 6, 8),
            "value": _x(1, 2, 6, 8),
            "attn_mask": _x(5, 6) > -1,
        },
    ),
    ("reshape", {"x": A, "shape": np.array([6, 4], np.int32)}),
    ("transpose", {"x": A, "perm": [2, 0, 1]}),
    (
        "slice_by_index",
        {
            "x": A,
            "begin": np.array([0, 1, 3], np.int32),
            "end": np.array([2, 3, 0], np.int32),
            "stride": np.array([1, 1, -2], np.int32),
            "begin_mask": [True, False, False],
            "end_mask": [False, False, True],
        },
    ),
    (
        "slice_by_size",
        {"x": A, "begin": np.array([1, 0, 1], np.int32), "size": np.array([1, -1, 2], np.int32)},
    ),
    ("gather", {"x": A, "indices": np.array([[2, 0], [1, 1]], np.int32), "axis": 1}),
    (
        "gather_along_axis",
        {"x": A, "indices": rng.integers(0, 3, (2, 2, 4)).astype(np.int32), "axis": 1},
    ),
    ("concat", {"values": [A, B], "axis": -1}),
    ("split", {"x": A, "split_sizes": np.array([1, 3], np.int32), "axis": 2}),
    ("squeeze", {"x": A[:, :1], "axes": [1]}),
    ("expand_dims", {"x": A, "axes": [0, -1]}),
    ("tile", {"x": A, "reps": np.array([1, 2, 1], np.int32)}),
    (
        "pad",
        {
            "x": A,
            "pad": np.array([0, 0, 1, 2, 0, 1], np.int32),
            "mode": "constant",
            "constant_val": np.float32(0.5),
        },
    ),
    ("pad", {"x": A, "pad": np.array([1, 1, 2, 1], np.int32), "mode": "reflect"}),
    ("pad", {"x": A, "pad": np.array([1, 2], np.int32), "mode": "replicate"}),
]


@pytest.mark.parametrize(("op", "args"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_op_matches_coremltools_value_inference(op: str, args: dict[str, Any]) -> None:
    expected = value_inferred(op, **args)
    got = evaluate(op, expected, **args)
    for e, g in zip(expected, got, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        if e.dtype.kind == "f":
            np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6)
        else:
            np.testing.assert_array_equal(g, e)


def _onnx_op(op: str, x: np.ndarray) -> torch.Tensor:
    """ONNX's reference implementation (DepthToSpace in its default DCR mode, as MIL's)."""
    node = helper.make_node(op, ["x"], ["y"], blocksize=2)
    return _t(ReferenceEvaluator(node).run(None, {"x": x})[0])


X4 = _x(1, 8, 4, 6)
G = np.array([[1, 2], [0, 0], [1, 0]], np.int32)
TORCH_CASES: list[tuple[str, dict[str, Any], Any]] = [  # op, arguments, reference
    ("silu", {"x": A}, lambda: F.silu(_t(A))),
    ("gather_nd", {"x": A, "indices": G}, lambda: _t(A)[_t(G[:, 0]).long(), _t(G[:, 1]).long()]),
    (
        "gather_nd",
        {"x": A, "indices": np.array([[[1]], [[2]]], np.int32), "batch_dims": 1},
        lambda: torch.stack([_t(A)[0, 1:2], _t(A)[1, 2:3]]),
    ),
    ("einsum", {"values": [_x(2, 3, 4, 4), X4[0, :3, :4, :4]], "equation": "abcd,bde->abce"}, None),
    ("depth_to_space", {"x": X4, "block_size": 2}, lambda: _onnx_op("DepthToSpace", X4)),
    ("pixel_shuffle", {"x": X4, "upscale_factor": 2}, lambda: F.pixel_shuffle(_t(X4), 2)),
    ("space_to_depth", {"x": X4, "block_size": 2}, lambda: _onnx_op("SpaceToDepth", X4)),
    (
        "upsample_nearest_neighbor",
        {"x": X4, "scale_factor_height": 2, "scale_factor_width": 3},
        lambda: F.interpolate(_t(X4), scale_factor=(2, 3), mode="nearest"),
    ),
]


@pytest.mark.parametrize(("op", "args", "ref"), TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_op_matches_torch(op: str, args: dict[str, Any], ref: Any) -> None:
    """The ops coremltools computes no value for, against torch."""
    if ref is None:  # einsum
        a, b = (_t(v) for v in args["values"])
        expected = torch.einsum(args["equation"], a, b).numpy()
    else:
        expected = ref().numpy()
    got = evaluate(op, [expected], **args)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_palettized_weights_both_deployment_forms() -> None:
    bits = rng.integers(0, 2, (5, 13)).astype(np.uint8)
    lut = np.array([-1.0, 1.0], np.float32)
    packed = np.packbits(bits.reshape(-1), bitorder="little")
    shape = np.array([5, 13], np.uint32)
    old = lut16.decompress(lut, packed, shape)  # coremltools' own decompression
    np.testing.assert_array_equal(old, np.where(bits > 0, 1.0, -1.0))
    np.testing.assert_array_equal(
        evaluate("constexpr_lut_to_dense", [old], lut=lut, indices=packed, shape=shape)[0], old
    )
    indices = bits.astype(types.np_uint1_dtype)
    lut18 = lut.reshape(1, 1, 2, 1)
    new = lut18_op.decompress(indices, lut18, None)
    np.testing.assert_array_equal(new, old)
    np.testing.assert_array_equal(
        evaluate("constexpr_lut_to_dense", [new], indices=bits, lut=lut18)[0], new
    )


def test_sub_byte_unpacking() -> None:
    values = rng.integers(0, 16, 11).astype(np.uint8)
    packed = np.packbits(
        np.unpackbits(values[:, None], axis=1, bitorder="little")[:, :4].reshape(-1),
        bitorder="little",
    )
    np.testing.assert_array_equal(unpack_sub_byte(packed, 4, 11, signed=False), values)
    signed = unpack_sub_byte(packed, 4, 11, signed=True)
    np.testing.assert_array_equal(signed, np.where(values >= 8, values.astype(int) - 16, values))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


CONVS = [  # (x shape, weight shape, strides, dilations, MIL pad, pad_type, groups)
    ((1, 4, 9, 11), (6, 4, 3, 3), [1, 1], [1, 1], [1, 1, 1, 1], "custom", 1),
    ((2, 6, 10, 7), (6, 1, 5, 5), [2, 1], [1, 1], [2, 2, 2, 2], "custom", 6),
    ((1, 4, 12, 12), (8, 2, 3, 3), [2, 2], [2, 1], [0, 1, 2, 0], "custom", 2),
    ((1, 3, 8, 8), (5, 3, 4, 4), [4, 4], [1, 1], None, "valid", 1),
    ((1, 3, 9, 8), (5, 3, 3, 2), [2, 3], [1, 1], None, "same", 1),
    ((1, 3, 17), (4, 3, 5), [2], [2], [3, 1], "custom", 1),
]


@pytest.mark.parametrize("case", CONVS, ids=[str(i) for i in range(len(CONVS))])
def test_conv_matches_torch(case: tuple[Any, ...]) -> None:
    xs, ws, strides, dilations, pad, pad_type, groups = case
    x, w, b = _x(*xs), _x(*ws), _x(ws[0])
    if pad_type == "same":  # TF-style: the extra row and column at the end
        pads = []
        for n, kk, s in zip(xs[2:], ws[2:], strides, strict=True):
            total = max((-(-n // s) - 1) * s + kk - n, 0)
            pads += [total // 2, total - total // 2]
        pad_flat = pads
    else:
        pad_flat = pad or [0] * (2 * (len(xs) - 2))
    torch_pad = [
        p for i in reversed(range(len(pad_flat) // 2)) for p in pad_flat[2 * i : 2 * i + 2]
    ]
    conv = F.conv1d if len(xs) == 3 else F.conv2d
    ref = conv(
        F.pad(_t(x), torch_pad), _t(w), _t(b), stride=strides, dilation=dilations, groups=groups
    ).numpy()
    args = {
        "x": x,
        "weight": w,
        "bias": b,
        "strides": strides,
        "dilations": dilations,
        "groups": groups,
        "pad_type": pad_type,
        **({"pad": pad} if pad else {}),
    }
    got = evaluate("conv", [ref], **args)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("stride", "pad", "groups"), [(2, [1, 1, 1, 1], 1), (1, [0, 0, 0, 0], 2), (3, [1, 1, 0, 0], 1)]
)
def test_conv_transpose_matches_torch(stride: int, pad: list[int], groups: int) -> None:
    x, w = _x(1, 4, 5, 6), _x(4, 3, 3, 3)
    ref = F.conv_transpose2d(
        _t(x), _t(w), stride=stride, padding=(pad[0], pad[2]), groups=groups
    ).numpy()
    got = evaluate(
        "conv_transpose",
        [ref],
        x=x,
        weight=w,
        strides=[stride, stride],
        pad_type="custom",
        pad=pad,
        groups=groups,
    )[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


POOLS = [  # kernel, stride, pad (MIL order), ceil_mode, exclude padding
    ([3, 3], [2, 2], [1, 1, 1, 1], False, True),
    ([3, 3], [2, 2], [1, 1, 1, 1], True, False),
    ([2, 2], [2, 2], [0, 0, 0, 0], True, True),
    ([3, 2], [1, 2], [1, 1, 0, 0], False, False),
]


@pytest.mark.parametrize("case", POOLS, ids=[str(i) for i in range(len(POOLS))])
def test_pooling_matches_torch(case: tuple[Any, ...]) -> None:
    kernel, stride, pad, ceil, exclude = case
    x = _x(1, 3, 9, 10)
    padding = (pad[0], pad[2])
    mx = F.max_pool2d(_t(x), kernel, stride, padding, ceil_mode=ceil).numpy()
    av = F.avg_pool2d(
        _t(x), kernel, stride, padding, ceil_mode=ceil, count_include_pad=not exclude
    ).numpy()
    args = {
        "x": x,
        "kernel_sizes": kernel,
        "strides": stride,
        "pad_type": "custom",
        "pad": pad,
        "ceil_mode": ceil,
    }
    np.testing.assert_allclose(evaluate("max_pool", [mx], **args)[0], mx, rtol=1e-6)
    got = evaluate("avg_pool", [av], exclude_padding_from_average=exclude, **args)[0]
    np.testing.assert_allclose(got, av, rtol=1e-5, atol=1e-6)


def test_normalizations_match_torch() -> None:
    x = _x(2, 4, 5, 6)
    mean, var, g, b = _x(4), np.abs(_x(4)) + 0.5, _x(4), _x(4)
    ref = F.batch_norm(_t(x), _t(mean), _t(var), _t(g), _t(b), eps=1e-3).numpy()
    got = evaluate("batch_norm", [ref], x=x, mean=mean, variance=var, gamma=g, beta=b, epsilon=1e-3)
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-5)
    ref = F.instance_norm(_t(x), weight=_t(g), bias=_t(b), eps=1e-5).numpy()
    got = evaluate("instance_norm", [ref], x=x, gamma=g, beta=b, epsilon=1e-5)
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("mode", "align"), [("UNALIGN_CORNERS", False), ("STRICT_ALIGN_CORNERS", True)]
)
def test_resize_bilinear_matches_torch(mode: str, align: bool) -> None:
    x = _x(1, 3, 5, 7)
    for size in ((10, 14), (3, 4), (9, 7)):
        ref = F.interpolate(_t(x), size=size, mode="bilinear", align_corners=align).numpy()
        got = evaluate(
            "resize_bilinear",
            [ref],
            x=x,
            target_size_height=size[0],
            target_size_width=size[1],
            sampling_mode=mode,
        )[0]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_every_op_an_edgec_lowering_emits_is_evaluated() -> None:
    """The MIL ops the lowering rules and coremltools' passes produce have implementations."""
    needed = {
        "conv",
        "conv_transpose",
        "linear",
        "matmul",
        "layer_norm",
        "batch_norm",
        "softmax",
        "max_pool",
        "avg_pool",
        "reduce_mean",
        "gelu",
        "sigmoid_hard",
        "resize_bilinear",
        "upsample_nearest_neighbor",
        "pad",
        "gather",
        "gather_nd",
        "slice_by_index",
        "split",
        "concat",
        "select",
        "cast",
        "scaled_dot_product_attention",
        "constexpr_lut_to_dense",
        "const",
        "reshape",
        "transpose",
        "tile",
        "squeeze",
        "expand_dims",
        "real_div",
    }
    assert needed <= set(OPS)


def test_saved_program_read_back_and_run(tmp_path: Path) -> None:
    """A program with fp16 weights in the blob file, run end to end: the reader and the
    evaluator against torch."""
    w, x = _x(8, 3, 3, 3), _x(1, 3, 10, 10)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 10, 10))], opset_version=ct.target.iOS17)
    def prog(a: Any) -> Any:
        y = mb.conv(x=a, weight=w, pad_type="same", name="conv")
        return mb.max_pool(
            x=mb.relu(x=y), kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", name="out"
        )

    model = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS17,
        skip_model_load=True,
    )  # fp16 compute by default
    model.save(str(tmp_path / "m.mlpackage"))
    program = read_program(tmp_path / "m.mlpackage")
    assert any(op.type == "cast" for op in program.ops)  # coremltools' fp16 casts
    got = Evaluator(tmp_path / "m.mlpackage").run({"a": x})["out"]
    ref = F.max_pool2d(F.relu(F.conv2d(_t(x), _t(w), padding=1)), 2).numpy()
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert got.dtype == np.float32 and err < 5e-3  # computed in fp16


def test_unknown_op_is_named(tmp_path: Path) -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(4,))], opset_version=ct.target.iOS17)
    def prog(a: Any) -> Any:
        return mb.topk(x=a, k=2, name="out")[0]

    model = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS17,
        compute_precision=ct.precision.FLOAT32,
        skip_model_load=True,
    )
    model.save(str(tmp_path / "m.mlpackage"))
    with pytest.raises(BundleError, match="'topk' is not in edgec's evaluator"):
        Evaluator(tmp_path / "m.mlpackage")
