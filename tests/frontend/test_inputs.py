"""Sample inputs: given (API, --input, --inputs) or generated from what the graph says; the
shapes, dtypes and value types of models from elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.core.errors import InputError, OptionError, UnsupportedTypeError
from edgec.frontend import prepare
from edgec.runtime.bundle import Bundle, load_reference


def _model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _vi(name: str, dtype: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _embedding() -> onnx.ModelProto:
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    return _model(
        [helper.make_node("Gather", ["table", "ids"], ["y"])],
        [_vi("ids", TensorProto.INT64, [1, 64])],
        [_vi("y", TensorProto.FLOAT, [1, 64, 4])],
        [table],
    )


def _reshape_by_input() -> onnx.ModelProto:
    return _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="flatten_it")],
        [_vi("x", TensorProto.FLOAT, [2, 3]), _vi("shape", TensorProto.INT64, [1])],
        [_vi("y", TensorProto.FLOAT, [6])],
    )


def test_generated_indices_stay_within_the_table() -> None:
    ids = prepare(_embedding()).inputs["ids"]
    assert ids.min() >= 0 and ids.max() < 10 and len(np.unique(ids)) > 2


def test_generated_integer_divisor_is_never_zero() -> None:
    model = _model(
        [helper.make_node("Div", ["a", "b"], ["y"])],
        [_vi("a", TensorProto.INT32, [50]), _vi("b", TensorProto.INT32, [50])],
        [_vi("y", TensorProto.INT32, [50])],
    )
    assert (prepare(model).inputs["b"] != 0).all()


def test_declared_scalar_stays_a_scalar(tmp_path: Path) -> None:
    model = _model(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        [_vi("x", TensorProto.FLOAT, [3]), _vi("k", TensorProto.FLOAT, [])],
        [_vi("y", TensorProto.FLOAT, [3])],
    )
    edgec.compile(model, output=tmp_path / "b", backend="onnxruntime")
    inputs, _ = load_reference(Bundle.open(tmp_path / "b"))
    assert inputs["k"].shape == ()
    given = {"x": np.ones(3, np.float32), "k": np.array(2.5, np.float32)}
    bundle = edgec.compile(model, output=tmp_path / "c", backend="onnxruntime", inputs=given)
    assert bundle.manifest.inputs[1].shape == ()
    inputs, outputs = load_reference(Bundle.open(tmp_path / "c"))
    assert float(inputs["k"]) == 2.5 and np.array_equal(outputs["y"], np.full(3, 2.5))


def test_shape_input_needs_real_values(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"node 'flatten_it' \(Reshape\).*--input") as e:
        edgec.compile(_reshape_by_input(), output=tmp_path / "b", backend="onnxruntime")
    assert "\n" not in str(e.value)
    given = {"shape": np.array([6], np.int64)}
    edgec.compile(_reshape_by_input(), output=tmp_path / "b", backend="onnxruntime", inputs=given)
    inputs, _ = load_reference(Bundle.open(tmp_path / "b"))
    assert inputs["shape"].tolist() == [6] and inputs["x"].shape == (2, 3)


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"shape": np.array([6], np.int32)}, "input 'shape' has dtype int32; expected int64"),
        ({"shape": np.array([6, 1], np.int64)}, r"input 'shape' has shape \(2\)"),
        ({"nope": np.zeros(1)}, "input 'nope' is not an input"),
    ],
)
def test_given_inputs_are_checked(given, match: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=match):
        edgec.compile(_reshape_by_input(), output=tmp_path / "b", inputs=given)


def test_cli_inputs_from_files(cli, tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(_reshape_by_input(), src)
    np.save(tmp_path / "shape.npy", np.array([6], np.int64))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.savez(tmp_path / "all.npz", x=x, shape=np.array([6], np.int64))
    r = cli("compile", src, "-o", tmp_path / "a", "--input", f"shape={tmp_path / 'shape.npy'}")
    assert r.code == 0, r.err
    r = cli("compile", src, "-o", tmp_path / "b", "--inputs", tmp_path / "all.npz")
    assert r.code == 0, r.err
    inputs, outputs = load_reference(Bundle.open(tmp_path / "b"))
    assert np.array_equal(inputs["x"], x) and np.array_equal(outputs["y"], x.reshape(6))
    r = cli("compile", src, "-o", tmp_path / "c")
    assert r.code == 2 and "Reshape" in r.err and "--input" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_legacy_minus_one_dimension_is_dynamic(tmp_path: Path) -> None:
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [_vi("x", TensorProto.FLOAT, [-1, 3])],
        [_vi("y", TensorProto.FLOAT, [-1, 3])],
    )
    bundle = edgec.compile(model, output=tmp_path / "b", backend="onnxruntime")
    assert isinstance(bundle.manifest.inputs[0].shape[0], str)
    session = edgec.load(tmp_path / "b")
    assert session.run({"x": np.ones((5, 3), np.float32)})["y"].shape == (5, 3)
    fixed = edgec.compile(
        model, output=tmp_path / "c", backend="onnxruntime", input_shapes=["x=4x3"]
    )
    assert fixed.manifest.inputs[0].shape == (4, 3)


def test_input_shape_dtype_must_match_the_model(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="declares float32"):
        edgec.compile(_reshape_by_input(), output=tmp_path / "b", input_shapes=["x=2x3:int64"])


def test_scalar_input_shape_syntax() -> None:
    from edgec.frontend.sources import parse_input_shape

    name, spec = parse_input_shape("n=scalar:int64")
    assert name == "n" and spec.shape == () and spec.dtype == "int64"
    assert parse_input_shape("x=1x3")[1].dtype is None  # as the model declares it


def test_bfloat16_input_is_refused_clearly(tmp_path: Path) -> None:
    model = _model(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        [_vi("x", TensorProto.BFLOAT16, [2])],
        [_vi("y", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(UnsupportedTypeError, match=r"input 'x'.*bfloat16"):
        edgec.compile(model, output=tmp_path / "b")


def test_sequence_input_and_output(tmp_path: Path) -> None:
    seq = helper.make_tensor_sequence_value_info
    model = _model(
        [helper.make_node("SequenceInsert", ["s", "x"], ["t"])],
        [seq("s", TensorProto.FLOAT, None), _vi("x", TensorProto.FLOAT, [2])],
        [seq("t", TensorProto.FLOAT, None)],
    )
    given = {"s": [np.ones(2, np.float32)], "x": np.full(2, 3.0, np.float32)}
    bundle = edgec.compile(model, output=tmp_path / "b", backend="onnxruntime", inputs=given)
    assert bundle.manifest.inputs[0].kind == "sequence"
    session = edgec.load(tmp_path / "b")
    out = session.run(given)["t"]
    assert len(out) == 2 and np.array_equal(out[1], given["x"])
    assert session.verify().ok  # the sequence round-trips through reference.npz
    with pytest.raises(InputError, match="sequence"):
        session.run({"s": np.ones(2, np.float32), "x": given["x"]})


def test_torch_module_takes_named_inputs(tiny_net, tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((1, 3, 12, 12)).astype(np.float32)
    edgec.compile(tiny_net, output=tmp_path / "b", inputs={"x": x}, backend="onnxruntime")
    inputs, _ = load_reference(Bundle.open(tmp_path / "b"))
    assert np.array_equal(inputs["x"], x)
    with pytest.raises(InputError, match="'y' is not an input"):
        edgec.compile(tiny_net, output=tmp_path / "c", inputs={"y": x})
