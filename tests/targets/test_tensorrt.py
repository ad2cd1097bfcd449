"""Target `tensorrt`: an ONNX graph TensorRT's parser takes (checked against edgec's operator
table), static shapes, INT64 constants narrowed where exact, attention with the scale on Q,
binary layers as INT8 Q/DQ, fp16 with float32 guards, build_engine.sh, and every bundle run
in onnxruntime against the reference (no TensorRT here: the engine is not built)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.core.errors import VerificationError
from edgec.passes.narrow_int64 import NarrowInt64
from edgec.runtime import Bundle
from edgec.runtime.bundle import load_reference
from edgec.runtime.compare import rel_error
from edgec.targets.tensorrt_ops import TENSORRT_VERSION, node_problem, problems
from tests.passes.graphs import explain


def _onnx(bundle: Bundle) -> onnx.ModelProto:
    return onnx.load(str(bundle.path / bundle.manifest.artifacts["model"]))


def _check(bundle: Bundle, tolerance: float = 1e-4) -> onnx.ModelProto:
    """What every TensorRT bundle must be: parser-clean, static, lint-clean, right in ORT."""
    m = bundle.manifest
    assert (m.target, m.backend) == ("tensorrt", "tensorrt")
    opts = m.backend_options
    assert opts["engine_verified"] is False and opts["tensorrt_version"] == TENSORRT_VERSION
    assert opts["static_check"] == "passed"
    assert opts["lint"]["ran"] and opts["lint"]["failing_nodes"] == []
    model = _onnx(bundle)
    assert problems(ir.serde.deserialize_model(model)) == []
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims), value.name
    # it is still ONNX: onnxruntime, without its fusions, against the stored reference
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), so)
    inputs, expected = load_reference(bundle)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs), strict=True))
    for name, want in expected.items():
        assert rel_error(got[name], want) <= tolerance, name
    script = (bundle.path / "build_engine.sh").read_text()
    for flag in ("--saveEngine=", "--shapes=", "--avgRuns=", "--percentile=50,90,99"):
        assert flag in script
    assert "--dumpProfile" in script and "--separateProfileRun" in script
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vanillanet_5", "tiny_vit_5m", "slab_deit_tiny"])
def test_float_models_compile_for_tensorrt(name: str, tmp_path: Path) -> None:
    bundle = edgec.compile(name, target="tensorrt", output=tmp_path / name)
    model = _check(bundle)
    assert "--noTF32" in (bundle.path / "build_engine.sh").read_text()
    attention = bundle.manifest.backend_options.get("attention", [])
    if name == "tiny_vit_5m":  # softmax attention: the scale on Q, before Q K^T
        assert attention and {a["form"] for a in attention} == {"scaled_q"}
        producers = {o: n for n in model.graph.node for o in n.output}
        qk = [n for n in model.graph.node if n.name.endswith("/qk")]
        assert qk and all(producers[n.input[0]].op_type == "Mul" for n in qk)


@pytest.mark.slow
def test_binary_transformer_as_int8_qdq(tmp_path: Path) -> None:
    bundle = edgec.compile(
        "bit_bert_tiny", target="tensorrt", output=tmp_path / "b", precision="int8-binary"
    )
    model = _check(bundle)
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "MatMulInteger" not in ops
    opts = bundle.manifest.backend_options
    assert opts["precision"] == "int8-binary" and opts["binary_ops"] > 0
    assert opts["binary_form"].startswith("INT8 QuantizeLinear/DequantizeLinear")
    int8 = [t for t in model.graph.initializer if t.data_type == TensorProto.INT8 and t.dims]
    assert int8 and all(set(np.unique(numpy_helper.to_array(t))) <= {-1, 1} for t in int8)
    assert "--stronglyTyped" in (bundle.path / "build_engine.sh").read_text()


@pytest.mark.slow
def test_fp16_keeps_guards_in_float32_and_refuses_flipping_binary_layers(
    tmp_path: Path,
) -> None:
    bundle = edgec.compile(
        "tiny_vit_5m", target="tensorrt", output=tmp_path / "h", precision="fp16"
    )
    assert bundle.manifest.reference["tolerance"] == 2e-2
    model = _check(bundle, tolerance=2e-2)
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmax and all(types.get(n.input[0]) == TensorProto.FLOAT for n in softmax)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(types.get(n.input[1]) == TensorProto.FLOAT16 for n in convs)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT

    with pytest.raises(VerificationError, match="--precision int8-binary"):
        edgec.compile("bit_bert_tiny", target="tensorrt", output=tmp_path / "b", precision="fp16")
    assert not (tmp_path / "b").exists()


def _single_op(op: str, tmp_path: Path, shape: list[int | str], out: list[int | str]) -> Path:
    node = helper.make_node(op, ["x"], ["y"], name=f"my_{op.lower()}")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
    )
    path = tmp_path / f"{op}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_an_operator_tensorrt_cannot_parse_is_named(cli, tmp_path: Path) -> None:
    path = _single_op("Det", tmp_path, [2, 3, 3], [2])
    r = cli("compile", str(path), "--target", "tensorrt", "-o", str(tmp_path / "b"))
    assert r.code == 2 and "Det 'my_det'" in r.err and TENSORRT_VERSION in r.err
    assert len(r.err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_dynamic_shapes_are_refused_naming_the_input(cli, tmp_path: Path) -> None:
    path = _single_op("Relu", tmp_path, ["batch", 4], ["batch", 4])
    r = cli("compile", str(path), "--target", "tensorrt", "-o", str(tmp_path / "b"))
    assert r.code == 2 and "input 'x'" in r.err and "--input-shape" in r.err
    r = cli(
        "compile", str(path), "--target", "tensorrt", "--input-shape", "x=2x4",
        "-o", str(tmp_path / "c"),
    )  # fmt: skip
    assert r.code == 0, r.err


def test_small_model_bundle_and_its_runtime_error_here(
    cli, onnx_file: Path, tmp_path: Path
) -> None:
    r = cli("compile", str(onnx_file), "--target", "tensorrt", "-o", str(tmp_path / "t"))
    assert r.code == 0, r.err
    bundle = Bundle.open(tmp_path / "t")
    _check(bundle)
    assert "not built here" in bundle.manifest.reference["note"]
    # build_engine.sh with a stand-in trtexec that records its arguments: the engine and the
    # reports go beside the bundle, which stays as it was written (it still opens)
    fake = tmp_path / "trtexec"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "args"}\n')
    fake.chmod(0o755)
    done = subprocess.run(
        ["sh", str(tmp_path / "t" / "build_engine.sh")],
        env={**os.environ, "TRTEXEC": str(fake)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "args").read_text().split()
    assert f"--onnx={tmp_path / 't' / 'model.onnx'}" in args
    assert f"--saveEngine={tmp_path / 't.engine' / 'model.engine'}" in args
    assert "--shapes=x:1x3x16x16" in args and "--noTF32" in args
    Bundle.open(tmp_path / "t")
    r = cli("inspect", str(tmp_path / "t"))
    text = " ".join(r.out.split())  # the terminal's width wraps lines anywhere
    assert f"TensorRT {TENSORRT_VERSION} parser table: static check passed" in text
    assert "engine not built or verified here" in text
    r = cli("verify", str(tmp_path / "t"))  # no TensorRT, no GPU: one line, exit 2
    assert r.code == 2 and "TensorRT" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("compile", str(onnx_file), "-o", str(tmp_path / "x"), "--precision", "fp16")
    assert r.code == 2 and "--target tensorrt and coreml only" in r.err


def test_targets_lists_tensorrt_with_what_is_not_verified(cli) -> None:
    rows = {row["name"]: row for row in json.loads(cli("targets", "--json").out)}
    assert "engine_verified false" in rows["tensorrt"]["verified"]
    assert rows["tensorrt"]["pipeline"][-2:] == ["narrow_int64", "infer_shapes"]


def test_narrow_int64_changes_only_what_takes_int32() -> None:
    data = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "data")
    ids = numpy_helper.from_array(np.array([3, 0], np.int64), "ids")
    big = numpy_helper.from_array(np.array([2**40], np.int64), "big")
    shape = numpy_helper.from_array(np.array([3, 2], np.int64), "shape")
    nodes = [
        helper.make_node("Gather", ["data", "ids"], ["g"], name="gather"),
        helper.make_node("Reshape", ["g", "shape"], ["r"], name="reshape"),
        helper.make_node("Cast", ["big"], ["bf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Add", ["r", "bf"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])],
        [data, ids, big, shape],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model, seen = explain(NarrowInt64(), proto)
    gather = next(n for n in model.graph if n.op_type == "Gather")
    reshape = next(n for n in model.graph if n.op_type == "Reshape")
    assert gather.inputs[1].dtype == ir.DataType.INT32  # Gather's Tind takes int32
    assert reshape.inputs[1].dtype == ir.DataType.INT64  # Reshape's shape is int64 only
    reasons = {c.reason for c in seen if not c.fired}
    assert reasons == {"a value does not fit in INT32"}  # Cast's input: 2^40
    out = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString()).run(None, {})
    ref = ort.InferenceSession(proto.SerializeToString()).run(None, {})
    np.testing.assert_array_equal(out[0], ref[0])


@pytest.mark.parametrize(
    ("op", "attrs", "domain", "why"),
    [
        ("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 2]}, "", "dilations"),
        ("Relu", {}, "com.microsoft", "domain 'com.microsoft'"),
        ("Unique", {}, "", "not an operator"),
        ("Resize", {"mode": "cubic"}, "", "mode 'cubic'"),
    ],
)
def test_operator_table_restrictions(op: str, attrs: dict, domain: str, why: str) -> None:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 3, 8, 8]))
    node = ir.node(op, [x], attributes=attrs, domain=domain, name="n")
    problem = node_problem(node)
    assert problem is not None and why in problem
    ok = ir.node("MaxPool", [x], attributes={"kernel_shape": [2, 2]}, name="m")
    assert node_problem(ok) is None


def test_narrow_int64_keeps_a_constant_another_reader_needs_as_int64() -> None:
    """indices read by a Gather and by an int64 Add stay INT64, and explain says why."""
    data = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "data")
    ids = numpy_helper.from_array(np.array([3, 0], np.int64), "ids")
    nodes = [
        helper.make_node("Gather", ["data", "ids"], ["g"], name="gather"),
        helper.make_node("Add", ["ids", "ids"], ["twice"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [],
        [
            helper.make_tensor_value_info("g", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("twice", TensorProto.INT64, [2]),
        ],
        [data, ids],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model, seen = explain(NarrowInt64(), proto)
    gather = next(n for n in model.graph if n.op_type == "Gather")
    assert gather.inputs[1].dtype == ir.DataType.INT64
    assert [c.reason for c in seen if not c.fired] == ["another reader of the constant needs INT64"]
