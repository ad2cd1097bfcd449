"""map_attention: softmax attention from several exporters and configurations recognized as one
`ai.edgec::Attention`, lowered per target, and equal to the unmodified model; near misses left
alone with their reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
import transformers
from torch import nn

import edgec
from edgec.core.binary_ops import ATTENTION, DOMAIN
from edgec.core.irutil import copy_model, run_onnx
from edgec.passes import lower_attention
from edgec.passes.cleanup import InferShapes
from edgec.passes.map_attention import MapAttention
from edgec.passes.pipelines import cleanup


def _hf(kind: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A small Hugging Face model built from a config (random weights, no download)."""
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=100,
            max_position_embeddings=64,
        )
        mask = torch.ones(1, 16, dtype=torch.long)
        mask[0, 12:] = 0  # padded tokens: an additive finfo.min mask from an input
        return transformers.BertModel(config).eval(), (torch.randint(0, 100, (1, 16)), mask)
    if kind == "vit":
        config = transformers.ViTConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=32,
            patch_size=8,
        )
        return transformers.ViTModel(config).eval(), (torch.randn(1, 3, 32, 32),)
    # Swin: windowed attention, relative-position bias from a table, the shift mask in 5-D
    # (transformers' sdpa path for Swin does not export: its eager attention is used)
    config = transformers.SwinConfig(
        image_size=32,
        patch_size=2,
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=4,
        attn_implementation="eager",
    )
    return transformers.SwinModel(config).eval(), (torch.randn(1, 3, 32, 32),)


def _export(module: nn.Module, args: tuple, path: Path, **kw) -> Path:
    torch.onnx.export(module, args, path, **kw)
    return path


def _attention_count(model: ir.Model) -> int:
    return sum(n.domain == DOMAIN and n.op_type == ATTENTION for n in model.graph)


def _mapped(path: Path) -> tuple[ir.Model, MapAttention]:
    model = ir.from_proto(onnx.load(path))  # external data read in
    InferShapes()(model)
    cleanup()(model)
    InferShapes()(model)
    mapping = MapAttention()
    mapping.explain = True
    mapping(model)
    InferShapes()(model)  # for the lowering, as the cpu pipeline ends
    return model, mapping


@pytest.mark.parametrize(
    ("kind", "exporter", "blocks"),
    [
        ("bert", {"dynamo": True}, 2),  # sdpa decomposed, sqrt scale on Q and K, IsNaN guard
        ("vit", {"dynamo": True}, 2),
        pytest.param(  # two windowed blocks with the shift mask
            "swin", {"dynamo": True}, 4, marks=pytest.mark.slow
        ),
        ("vit", {"dynamo": False, "opset_version": 17}, 2),  # the legacy exporter
    ],
)
def test_hugging_face_attention_is_mapped_and_exact(
    kind: str, exporter: dict, blocks: int, tmp_path: Path
) -> None:
    module, args = _hf(kind)
    path = _export(module, args, tmp_path / f"{kind}.onnx", **exporter)
    feeds = {i.name: a.numpy() for i, a in zip(onnx.load(path).graph.input, args, strict=False)}
    reference = run_onnx(str(path), feeds)
    model, mapping = _mapped(path)
    assert _attention_count(model) == blocks, mapping.explained
    assert "Softmax" not in {n.op_type for n in model.graph}
    for name, got in run_onnx(model, feeds).items():  # the function bodies
        np.testing.assert_allclose(got, reference[name], rtol=1e-5, atol=1e-5)
    for form in ("decomposed", "mha", "scaled_q"):  # scaled_q: TensorRT's pattern
        lowered = copy_model(model)
        chosen = lower_attention.lower(lowered, lambda shape, f=form: (f, {}))
        assert {c["form"] for c in chosen} == {form}
        ops = {f"{n.domain}::{n.op_type}" for n in lowered.graph}
        assert (f"{DOMAIN}::{ATTENTION}" in ops) is False
        assert ("com.microsoft::MultiHeadAttention" in ops) == (form == "mha")
        for name, got in run_onnx(lowered, feeds).items():
            np.testing.assert_allclose(got, reference[name], rtol=1e-4, atol=1e-5)


def test_the_bert_mask_reaches_the_block(tmp_path: Path) -> None:
    """A padded position must change nothing in the unpadded ones: the mask is in the block."""
    module, (ids, mask) = _hf("bert")
    path = _export(module, (ids, mask), tmp_path / "bert.onnx", dynamo=True)
    model, _ = _mapped(path)
    block = next(n for n in model.graph if n.op_type == ATTENTION)
    assert block.inputs[3] is not None and block.inputs[3].const_value is None  # run-time mask
    other = ids.clone()
    other[0, 13] = (int(ids[0, 13]) + 1) % 100  # a padded token changes
    names = [i.name for i in onnx.load(path).graph.input]
    a = run_onnx(model, dict(zip(names, (ids.numpy(), mask.numpy()), strict=True)))
    b = run_onnx(model, dict(zip(names, (other.numpy(), mask.numpy()), strict=True)))
    first = next(iter(a))
    np.testing.assert_allclose(a[first][0, :12], b[first][0, :12], rtol=1e-5, atol=1e-6)


class _Attention(nn.Module):
    """Hand-written attention in the forms model code uses."""

    def __init__(self, scale_on: str = "scores", axis: int = -1, bias_rank: int = 0) -> None:
        super().__init__()
        self.qkv = nn.Linear(32, 96)
        self.scale_on, self.axis = scale_on, axis
        self.bias = (
            nn.Parameter(torch.randn(*([1] * (bias_rank - 2)), 10, 10)) if bias_rank else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
        s = 8**-0.5
        if self.scale_on == "q":
            scores = (q * s) @ k.transpose(-2, -1)
        elif self.scale_on == "both":
            scores = (q * s**0.5) @ (k.transpose(-2, -1) * s**0.5)
        elif self.scale_on == "sdpa":
            out = nn.functional.scaled_dot_product_attention(q, k, v)
            return out.transpose(1, 2).reshape(b, n, 32)
        else:
            scores = (q @ k.transpose(-2, -1)) / (1 / s)
        if self.bias is not None:
            scores = scores + self.bias
        p = scores.softmax(dim=self.axis)
        return (p @ v).transpose(1, 2).reshape(b, n, 32)


@pytest.mark.parametrize("scale_on", ["scores", "q", "both", "sdpa"])
def test_scale_anywhere_is_one_scale(scale_on: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _Attention(scale_on).eval()
    x = torch.randn(2, 10, 32)
    model, mapping = _mapped(_export(module, (x,), tmp_path / "a.onnx", dynamo=True))
    assert _attention_count(model) == 1, mapping.explained
    block = next(n for n in model.graph if n.op_type == ATTENTION)
    assert block.attributes.get_float("scale") == pytest.approx(8**-0.5, rel=1e-6)
    got = next(iter(run_onnx(model, {"x": x.numpy()}).values()))
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_near_misses_are_left_alone_with_their_reason(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 10, 32)
    wrong_axis = _Attention(axis=-2).eval()
    model, mapping = _mapped(_export(wrong_axis, (x,), tmp_path / "a.onnx", dynamo=True))
    assert _attention_count(model) == 0
    reasons = [c.reason for c in mapping.explained if not c.fired]
    assert any("softmax over axis -2 of 4, not the keys' axis" in r for r in reasons), reasons
    got = next(iter(run_onnx(model, {"x": x.numpy()}).values()))
    np.testing.assert_allclose(got, wrong_axis(x).detach().numpy(), rtol=1e-5, atol=1e-5)

    wide_mask = _Attention(bias_rank=5).eval()  # a rank-5 mask: the scores become 5-D
    model, mapping = _mapped(_export(wide_mask, (x,), tmp_path / "b.onnx", dynamo=True))
    assert _attention_count(model) == 0
    reasons = [c.reason for c in mapping.explained if not c.fired]
    assert any("scores of rank 5" in r for r in reasons), reasons


def test_probabilities_read_elsewhere_stay(tmp_path: Path) -> None:
    class Returns(nn.Module):
        def forward(self, q, k, v):
            p = (q @ k.transpose(-2, -1)).softmax(-1)
            return p @ v, p

    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    model, mapping = _mapped(_export(Returns(), (q, k, v), tmp_path / "a.onnx", dynamo=True))
    assert _attention_count(model) == 0
    assert any("read by" in c.reason for c in mapping.explained), mapping.explained


@pytest.mark.slow  # two seed models compiled and timed per block shape
@pytest.mark.parametrize(("name", "blocks"), [("tiny_vit_5m", 10), ("slab_swin_tiny", 8)])
def test_seed_transformers_compile_with_mapped_attention(
    name: str, blocks: int, tmp_path: Path
) -> None:
    """Windowed attention with relative-position bias (and Swin's shift mask): mapped,
    lowered by measurement on cpu, checked against torch eager."""
    bundle = edgec.compile(name, output=tmp_path / name, backend="onnxruntime", threads=1)
    report = next(p for p in bundle.manifest.passes if p["name"] == "map_attention")
    assert report["rewrites"] == blocks
    every = bundle.manifest.backend_options["attention"]
    chosen = [c for c in every if c["block"].endswith("/attention")]  # softmax blocks
    assert len(chosen) == blocks and all(c["form"] in ("decomposed", "mha") for c in chosen)
    for c in chosen:
        assert c["form"] == min(c["p50_ms"], key=c["p50_ms"].get)
    assert all(c["block"].endswith(".attn/attention") for c in chosen)
    assert bundle.manifest.reference["max_rel_error"] <= 1e-4  # vs torch eager


@pytest.mark.slow
def test_tvm_imports_mapped_attention(tmp_path: Path) -> None:
    module, args = _hf("vit")
    path = _export(module, args, tmp_path / "vit.onnx", dynamo=True)
    bundle = edgec.compile(path, target="x86_64", backend="tvm", output=tmp_path / "b")
    report = next(p for p in bundle.manifest.passes if p["name"] == "map_attention")
    assert report["rewrites"] == 2
    assert bundle.manifest.reference["max_rel_error"] <= 1e-4


class _Sdpa(nn.Module):
    def forward(self, q, k, v, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _onnx_attention(
    path: Path,
    mask: np.ndarray | str | None,
    q_heads: int = 2,
    kv_heads: int = 2,
    **attrs,
) -> Path:
    """Q [1, q_heads, 8, 16], K and V [1, kv_heads, 10, 16] -> ONNX `Attention` (opset 23);
    `mask`: a constant, "input" (a float mask input), "finite" (Where between finite
    constants on a boolean input), or None."""
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("q", f, [1, q_heads, 8, 16]),
        helper.make_tensor_value_info("k", f, [1, kv_heads, 10, 16]),
        helper.make_tensor_value_info("v", f, [1, kv_heads, 10, 16]),
    ]
    nodes, inits, names = [], [], ["q", "k", "v"]
    if isinstance(mask, np.ndarray):
        inits.append(numpy_helper.from_array(mask, "mask"))
        names.append("mask")
    elif mask == "input":
        inputs.append(helper.make_tensor_value_info("mask", f, [8, 10]))
        names.append("mask")
    elif mask == "finite":
        inputs.append(helper.make_tensor_value_info("keep", TensorProto.BOOL, [1, 1, 8, 10]))
        inits += [
            numpy_helper.from_array(np.float32(0.0), "zero"),
            numpy_helper.from_array(np.float32(np.finfo(np.float32).min), "low"),
        ]
        nodes.append(helper.make_node("Where", ["keep", "zero", "low"], ["mask"]))
        names.append("mask")
    nodes.append(helper.make_node("Attention", names, ["y"], name="blk", **attrs))
    out = helper.make_tensor_value_info("y", f, None)
    graph = helper.make_graph(nodes, "g", inputs, [out], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), path)
    return path


def _feeds(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for i in onnx.load(path).graph.input:
        dims = tuple(d.dim_value for d in i.type.tensor_type.shape.dim)
        if i.type.tensor_type.elem_type == onnx.TensorProto.BOOL:
            feeds[i.name] = np.arange(np.prod(dims)).reshape(dims) % 3 != 0
        else:
            feeds[i.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


BOOL_MASK = np.tril(np.ones((8, 10), bool), 2)  # every row keeps some key


@pytest.mark.parametrize(
    ("mask", "attrs"),
    [
        (None, {}),
        (None, {"scale": 0.5}),
        (np.random.default_rng(1).standard_normal((1, 2, 8, 10)).astype(np.float32), {}),
        (BOOL_MASK, {}),
        ("finite", {}),
    ],
    ids=["no-mask", "scale", "float-bias", "bool-mask", "finite-runtime-mask"],
)
def test_onnx_attention_is_mapped_and_exact(mask, attrs: dict, tmp_path: Path) -> None:
    path = _onnx_attention(tmp_path / "a.onnx", mask, **attrs)
    feeds = _feeds(path)
    reference = run_onnx(str(path), feeds)["y"]  # onnxruntime's own Attention kernel
    model, mapping = _mapped(path)
    assert _attention_count(model) == 1, mapping.explained
    assert "Attention" not in {n.op_type for n in model.graph if n.domain == ""}
    np.testing.assert_allclose(run_onnx(model, feeds)["y"], reference, rtol=1e-5, atol=1e-6)
    for form in ("decomposed", "mha", "scaled_q"):
        lowered = copy_model(model)
        lower_attention.lower(lowered, lambda shape, f=form: (f, {}))
        got = run_onnx(lowered, feeds)["y"]
        np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)


def test_torch_opset_23_export_is_mapped(tmp_path: Path) -> None:
    """torch's exporter at opset 23 writes sdpa as ONNX's Attention; here with a float mask
    input, left alone (it may be -inf), and with a constant one, mapped."""
    args = (torch.randn(1, 2, 8, 16), torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16))
    mask = torch.randn(8, 10)
    path = _export(_Sdpa(), (*args, mask), tmp_path / "in.onnx", dynamo=True, opset_version=23)
    assert "Attention" in {n.op_type for n in onnx.load(path).graph.node}
    model, mapping = _mapped(path)
    assert _attention_count(model) == 0
    assert any("may be -inf" in c.reason for c in mapping.explained), mapping.explained

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, q, k, v):
            return _Sdpa()(q, k, v, self.mask)

    path = _export(Constant(), args, tmp_path / "c.onnx", dynamo=True, opset_version=23)
    feeds = {i.name: a.numpy() for i, a in zip(onnx.load(path).graph.input, args, strict=True)}
    model, mapping = _mapped(path)
    assert _attention_count(model) == 1, mapping.explained
    want = _Sdpa()(*args, mask).numpy()
    got = next(iter(run_onnx(model, feeds).values()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"mask": None, "is_causal": 1}, "causal masking"),
        ({"mask": None, "q_heads": 4, "kv_heads": 2}, "grouped-query heads"),
        ({"mask": None, "softcap": 30.0}, "softcap"),
        ({"mask": "input"}, "may be -inf"),
        ({"mask": np.zeros((8, 10), bool)}, "allows no key in some row"),
    ],
)
def test_onnx_attention_near_misses_stay(kw: dict, reason: str, tmp_path: Path) -> None:
    mask = kw.pop("mask")
    path = _onnx_attention(tmp_path / "a.onnx", mask, **kw)
    model, mapping = _mapped(path)
    assert _attention_count(model) == 0
    assert "Attention" in {n.op_type for n in model.graph}
    assert any(reason in c.reason for c in mapping.explained), mapping.explained


def test_a_later_attention_attribute_is_not_guessed(tmp_path: Path) -> None:
    """Opset 25's sliding window (ONNX's own conformance case): left alone, not misread."""
    path = _onnx_attention(tmp_path / "a.onnx", None, left_window_size=1, right_window_size=2)
    model = onnx.load(path)
    model.opset_import[0].version = 25
    onnx.save(model, path)
    model, mapping = _mapped(path)
    assert _attention_count(model) == 0
    assert any("left_window_size" in c.reason for c in mapping.explained), mapping.explained
