"""EcoFormer's hashed attention on TVM: the codes' Gram matrix as popcount kernels.

The `popcount` form computes S = H H^T with edgec's BinaryMatMul (XNOR-popcount on the packed
+-1 codes) and then (S V + bias V) / (rowsum S + offset); `cheapest` takes it where it needs
fewer multiply-adds than the linear form H (H^T V) (short sequences), `--attention-form
hashed=popcount` everywhere. The emulated arm64 check is in tests/runtime/test_device.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch

import edgec
from edgec.core.binary_ops import DOMAIN, HASHED_ATTENTION, ensure_function
from edgec.models.ecoformer import HashedAttention
from edgec.passes import lower_attention
from edgec.passes.lower_attention import HashedShape, cheapest

F32 = ir.TensorType(ir.DataType.FLOAT)


def test_the_cheaper_form_by_count() -> None:
    short, long = HashedShape(1, 2, 16, 16, 16), HashedShape(1, 1, 3136, 16, 32)
    assert cheapest(short)[0] == "popcount"
    form, details = cheapest(long)
    assert form == "matmul"  # pvt_v2_b0's first stage: T^2 grows past T b
    assert details["macs"]["popcount"] > 50 * details["macs"]["matmul"]


def gram_exposed(path: Path, t: int, bits: int, e: int) -> Path:
    """An ONNX file: x [1, 2, t, bits] -> Sign codes H; HashedAttention(H, v) lowered to the
    popcount form; outputs the block's y and the codes' Gram matrix S the popcount made."""

    def value(name: str, dims: list[int]) -> ir.Value:
        return ir.Value(name=name, shape=ir.Shape(dims), type=F32)

    x, v = value("x", [1, 2, t, bits]), value("v", [1, 2, t, e])
    sign = ir.node("Sign", [x])
    h = sign.outputs[0]
    h.shape, h.type = ir.Shape([1, 2, t, bits]), F32
    block = ir.node(
        HASHED_ATTENTION,
        [h, v],
        attributes={"bias": float(bits + 1), "offset": float(t * (bits + 1))},
        domain=DOMAIN,
        name="attn/hashed_attention",
    )
    y = block.outputs[0]
    y.name, y.shape, y.type = "y", ir.Shape([1, 2, t, e]), F32
    graph = ir.Graph(
        [x, v], [y], nodes=[sign, block], opset_imports={"": 18, DOMAIN: 1}, name="hashed"
    )
    model = ir.Model(graph, ir_version=10)
    ensure_function(model, HASHED_ATTENTION)
    chosen = lower_attention.lower(model, lambda _: ("popcount", {}))
    assert chosen[0]["form"] == "popcount"
    gram = next(n for n in model.graph if n.op_type == "BinaryMatMul").outputs[0]
    gram.name, gram.shape, gram.type = "gram", ir.Shape([1, 2, t, t]), F32
    model.graph.outputs.append(gram)
    ir.save(model, path)
    return path


@pytest.mark.slow  # a TVM build
def test_popcount_form_is_exact_on_the_codes(tmp_path: Path) -> None:
    """The x86_64 bundle's Gram matrix equals H H^T of the codes exactly, and its output
    matches the block computed in float64."""
    t, bits, e = 24, 16, 8
    path = gram_exposed(tmp_path / "h.onnx", t, bits, e)
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((1, 2, t, bits)).astype(np.float32),
        "v": rng.standard_normal((1, 2, t, e)).astype(np.float32),
    }
    bundle = edgec.compile(path, target="x86_64", backend="tvm", output=tmp_path / "b")
    assert "ai.edgec::BinaryMatMul" in bundle.manifest.stats["after"]["ops"]
    got = edgec.load(bundle.path).run(feeds)
    h = np.sign(feeds["x"]).astype(np.int64)
    s = h @ np.swapaxes(h, -1, -2)
    np.testing.assert_array_equal(got["gram"], s.astype(np.float32))
    v = feeds["v"].astype(np.float64)
    want = (s @ v + (bits + 1) * v) / (s.sum(-1, keepdims=True) + t * (bits + 1))
    np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # a TVM build
def test_short_blocks_take_popcount_and_match_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = HashedAttention(32, 2).eval()
    bundle = edgec.compile(
        module,
        target="x86_64",
        backend="tvm",
        output=tmp_path / "b",
        example_inputs=(torch.randn(1, 16, 32),),
    )
    [block] = bundle.manifest.backend_options["attention"]
    assert block["form"] == "popcount", block
    assert block["macs"]["popcount"] < block["macs"]["matmul"]
    assert bundle.manifest.reference["max_rel_error"] <= 1e-4  # vs torch eager


@pytest.mark.slow  # a TVM build
def test_requested_popcount_on_ecoformer(cli, tmp_path: Path) -> None:
    """`--attention-form hashed=popcount`: all six hashed blocks of pvt_v2_b0_ecoformer as
    popcount (at 64x64, where its count would not choose it), checked against torch eager."""
    out = tmp_path / "b"
    r = cli(
        "compile", "pvt_v2_b0_ecoformer", "--target", "x86_64", "--backend", "tvm",
        "--input-shape", "x=1x3x64x64", "--attention-form", "hashed=popcount",
        "-o", out, "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    manifest = json.loads(r.out)["manifest"]
    blocks = manifest["backend_options"]["attention"]
    hashed = [b for b in blocks if b["block"].endswith("hashed_attention")]
    assert len(hashed) == 6 and all(b["form"] == "popcount" and b["requested"] for b in hashed)
    assert manifest["reference"]["max_rel_error"] <= 1e-4


def test_a_form_the_back_end_lacks_is_noted(tmp_path: Path) -> None:
    """onnxruntime has no popcount: the block keeps its matmul form and says why."""
    torch.manual_seed(0)
    bundle = edgec.compile(
        HashedAttention(32, 2).eval(),
        backend="onnxruntime",
        output=tmp_path / "b",
        example_inputs=(torch.randn(1, 16, 32),),
        attention_forms={"hashed": "popcount"},
    )
    [block] = bundle.manifest.backend_options["attention"]
    assert block["form"] == "matmul" and "hashed=popcount" in block["note"]


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("hashed", "expected KIND=FORM"),
        ("hashd=popcount", "unknown kind 'hashd'"),
        ("softmax=popcount", "unknown form 'popcount' for softmax attention"),
    ],
)
def test_bad_attention_form_is_a_usage_error(cli, tmp_path: Path, item: str, says: str) -> None:
    r = cli("compile", "vanillanet_5", "--attention-form", item, "-o", tmp_path / "b")
    assert r.code == 2 and says in r.err and "Traceback" not in r.err
    assert not (tmp_path / "b").exists()
