"""The TVM binary kernels against the NumPy reference: exact integers on random packed inputs,
reduction lengths on and off the 64-bit word, both code forms on each side."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import onnx
import onnx_ir as ir
import tvm
from onnx import helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from edgec.core import binary_ops as B
from edgec.core.errors import UnsupportedOpError
from edgec.targets import binary_kernels as K
from edgec.targets.tvm_import import EdgecConverterError, import_onnx
from edgec.targets.tvm_targets import host_target

pytestmark = pytest.mark.slow  # TVM kernel builds and a tuning search

TARGET = host_target(None, 1)


def _build(func: object, scheduled: bool) -> tvm.runtime.Module:
    if scheduled:
        func = K.default_schedule(func, 8)
    return tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(TARGET))


def _run(lib: tvm.runtime.Module, *arrays: np.ndarray, out: tuple, dtype: str) -> np.ndarray:
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    result = tvm.runtime.tensor(np.zeros(out, dtype), dev)
    lib["main"](*args, result)
    return result.numpy()


@pytest.mark.parametrize("k", [64, 100, 192, 7])
@pytest.mark.parametrize("scheduled", [False, True])
def test_pack_matches_numpy(k: int, scheduled: bool) -> None:
    rng = np.random.default_rng(k)
    x = rng.standard_normal((5, k)).astype(np.float32)
    offset = (rng.standard_normal(k) * 0.3).astype(np.float32)
    x[0, :3] = -offset[:3]  # exact ties: x + offset == 0 must give bit 1
    lib = _build(K.pack_func([5, k], 1.0, 0.0, True, True), scheduled)
    got = _run(lib, x, offset, out=(5, B.words(k)), dtype="uint64")
    want = B.pack_bits(B.code_bits(x, offset=offset))
    np.testing.assert_array_equal(got, want)


def test_pack_step_form_and_columns() -> None:
    rng = np.random.default_rng(1)
    alpha = 0.25
    x = (rng.random((3, 70, 9)) * 0.5).astype(np.float32)
    x[0, 0, 0] = 0.125  # exactly 0.5 alpha: clamp(round(0.5)) = 0
    lib = _build(K.pack_func([3, 70, 9], alpha, B.STEP_THRESHOLD, False, False), True)
    got = _run(lib, x, out=(3, 9, B.words(70)), dtype="uint64")
    bits = np.clip(np.round(x / np.float32(alpha)), 0, 1) > 0  # BiT's own expression
    np.testing.assert_array_equal(got, B.pack_bits(np.swapaxes(bits, 1, 2)))


@pytest.mark.parametrize("k", [64, 100, 768, 33])
@pytest.mark.parametrize("low", [-1.0, 0.0])
@pytest.mark.parametrize("scheduled", [False, True])
def test_dense_exact(k: int, low: float, scheduled: bool) -> None:
    rng = np.random.default_rng(k)
    m, n = 7, 48
    xb = rng.integers(0, 2, (m, k)).astype(bool)
    wb = rng.integers(0, 2, (n, k)).astype(bool)
    scale = np.ones(1, np.float32)
    bias = np.zeros(n, np.float32)
    lib = _build(K.dense_func([m], n, k, low, 1), scheduled)
    wt = np.ascontiguousarray(B.pack_bits(wb).T)
    got = _run(lib, B.pack_bits(xb), wt, scale, bias, out=(m, n), dtype="float32")
    want = np.where(xb, 1, int(low)) @ np.where(wb, 1, -1).T  # integer codes, integer sum
    np.testing.assert_array_equal(got, want.astype(np.float32))
    np.testing.assert_array_equal(got, B.binary_dot(B.pack_bits(xb), B.pack_bits(wb), k, low, -1))


@pytest.mark.parametrize(("a_low", "b_low"), [(-1, -1), (0, -1), (-1, 0), (0, 0)])
@pytest.mark.parametrize("k", [64, 50, 197])
def test_batch_matmul_exact(a_low: int, b_low: int, k: int) -> None:
    rng = np.random.default_rng(k)
    batch, m, n = 3, 5, 16
    ab = rng.integers(0, 2, (batch, m, k)).astype(bool)
    bb = rng.integers(0, 2, (batch, n, k)).astype(bool)
    lib = _build(K.batch_matmul_func([batch], m, n, k, a_low, b_low), True)
    got = _run(lib, B.pack_bits(ab), B.pack_bits(bb), out=(batch, m, n), dtype="float32")
    want = np.where(ab, 1, a_low) @ np.swapaxes(np.where(bb, 1, b_low), 1, 2)
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_gather_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    rows, dim = 50, 100
    bits = rng.integers(0, 2, (rows, dim)).astype(bool)
    scale = rng.random(rows).astype(np.float32)
    ids = rng.integers(0, rows, (2, 9)).astype(np.int64)
    lib = _build(K.gather_func(rows, dim, [2, 9], "int64"), True)
    got = _run(lib, B.pack_bits(bits), scale, ids, out=(2, 9, dim), dtype="float32")
    want = np.where(bits, 1.0, -1.0).astype(np.float32)[ids] * scale[ids][..., None]
    np.testing.assert_array_equal(got, want)


def binary_linear_arrays() -> tuple[np.ndarray, ...]:
    """x (2, 3, 100), the weight bits (16, 100), scale, bias and input offset."""
    rng = np.random.default_rng(0)
    k, n = 100, 16
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    wb = rng.integers(0, 2, (n, k)).astype(bool)
    scale = rng.random(n).astype(np.float32)
    bias = rng.random(n).astype(np.float32)
    offset = (rng.standard_normal(k) * 0.1).astype(np.float32)
    return x, wb, scale, bias, offset


def binary_linear_model(domain: str = B.DOMAIN) -> onnx.ModelProto:
    """One BinaryLinear node (of `domain`) on a (2, 3, 100) input; its arrays are
    `binary_linear_arrays()`."""
    wb, scale, bias, offset = binary_linear_arrays()[1:]
    k, n = wb.shape[1], wb.shape[0]
    inits = [
        numpy_helper.from_array(a, name)
        for a, name in [(B.pack_bits(wb), "w"), (scale, "s"), (bias, "b"), (offset, "o")]
    ]
    node = helper.make_node(
        "BinaryLinear",
        ["x", "w", "s", "b", "o"],
        ["y"],
        name="layer.fc",
        domain=domain,
        in_features=k,
        step=1.0,
        threshold=0.0,
        low=-1.0,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", 1, (2, 3, k))],
        [helper.make_tensor_value_info("y", 1, (2, 3, n))],
        inits,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(domain, 1)],
        functions=[B.function_proto("BinaryLinear", 20)] if domain == B.DOMAIN else [],
    )


def test_importer_lowers_the_ops_to_kernels() -> None:
    """BinaryLinear through TVM's ONNX importer: the kernels, not the function body."""
    proto = binary_linear_model()
    x, wb, scale, bias, offset = binary_linear_arrays()
    mod = import_onnx(ir.serde.deserialize_model(proto))
    kinds = {
        str(f.attrs[K.KERNEL_ATTR])
        for f in mod.functions.values()
        if getattr(f, "attrs", None) is not None and K.KERNEL_ATTR in f.attrs
    }
    assert kinds == {"pack", "dense"}
    with tvm.target.Target(TARGET):
        mod = relax.get_pipeline("zero")(mod)
    mod = K.schedule_untuned(mod, TARGET)
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(TARGET)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    codes = np.where(B.code_bits(x, offset=offset), 1.0, -1.0).astype(np.float32)
    want = (codes @ np.where(wb, 1.0, -1.0).T.astype(np.float32)) * scale + bias
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_tuning_searches_the_binary_design_space(tmp_path) -> None:
    """MetaSchedule tunes the kernels through edgec's rule (row blocking and vector width as
    sampled decisions); the tuned bundle still matches torch."""
    import torch

    import edgec
    from edgec.models.binary import BitLinear

    torch.manual_seed(0)
    bundle = edgec.compile(
        BitLinear(100, 32).eval(),
        target="x86_64",
        output=tmp_path / "tuned",
        backend="tvm",
        threads=1,
        example_inputs=(torch.randn(1, 20, 100),),
        tune=8,
    )
    tuning = bundle.manifest.backend_options["tuning"]
    assert tuning["trials_ok"] > 0 and tuning["tuned"], tuning
    assert bundle.manifest.reference["max_rel_error"] <= 1e-4


def test_the_importer_is_restored_on_any_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """edgec's converters live only for one import; a failing one is edgec's fault (an
    internal error), never "TVM cannot take this model"."""
    original = onnx_frontend._get_convert_map
    import_onnx(ir.serde.deserialize_model(binary_linear_model()))
    assert onnx_frontend._get_convert_map is original

    def broken(bb: object, inputs: object, attr: object) -> None:
        raise IndexError("a bug")

    monkeypatch.setitem(K.CONVERTERS, "BinaryLinear", broken)
    with pytest.raises(EdgecConverterError, match=r"ai.edgec::BinaryLinear failed: IndexError"):
        import_onnx(ir.serde.deserialize_model(binary_linear_model()))
    assert onnx_frontend._get_convert_map is original


def test_an_op_of_another_domain_is_not_taken_for_edgecs() -> None:
    message = r"'com.example::BinaryLinear' \(node 'layer.fc'\)"
    with pytest.raises(UnsupportedOpError, match=message):
        import_onnx(ir.serde.deserialize_model(binary_linear_model("com.example")))
