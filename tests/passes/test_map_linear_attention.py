"""map_linear_attention: SLAB's simplified linear attention (both product orders, any Einsum
letters) as one `ai.edgec::LinearAttention`, lowered in every form, equal to the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from torch import nn

import edgec
from edgec.core.binary_ops import DOMAIN, LINEAR_ATTENTION
from edgec.core.irutil import copy_model, run_onnx
from edgec.models.slab import head_dwc, simplified_linear_attention
from edgec.passes import lower_attention
from edgec.passes.cleanup import InferShapes
from edgec.passes.map_linear_attention import MapLinearAttention, canonical
from edgec.passes.pipelines import cleanup


class _Sla(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.dwc = head_dwc(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return simplified_linear_attention(q, k, v, self.heads, self.dwc)


class _OtherLetters(nn.Module):
    """The same attention written with other Einsum letters, and a normaliser without eps."""

    def __init__(self, eps: float | None) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k = torch.relu(q), torch.relu(k)
        dot = torch.einsum("xnf,xf->xn", q, k.sum(dim=1))
        z = 1 / (dot + self.eps) if self.eps is not None else 1 / dot
        kv = torch.einsum("xmf,xmg->xfg", k, v)
        return torch.einsum("xnf,xfg,xn->xng", q, kv, z)


def _mapped(module: nn.Module, args: tuple, path: Path) -> tuple[ir.Model, MapLinearAttention]:
    torch.onnx.export(module.eval(), args, path, dynamo=True)
    model = ir.from_proto(onnx.load(path))
    InferShapes()(model)
    cleanup()(model)
    InferShapes()(model)
    mapping = MapLinearAttention()
    mapping.explain = True
    mapping(model)
    InferShapes()(model)
    return model, mapping


def _count(model: ir.Model) -> int:
    return sum(n.domain == DOMAIN and n.op_type == LINEAR_ATTENTION for n in model.graph)


def test_equations_are_read_whatever_their_letters() -> None:
    assert canonical("bic,bcd,bi->bid") == canonical("bij,bjd,bi->bid") == "abc,acd,ab->abd"
    assert canonical("xmf,xmg->xfg") == canonical("bjc,bjd->bcd")


@pytest.mark.parametrize("tokens", [64, 4])  # 64: K^T V first; 4 tokens: Q K^T first
def test_slab_attention_is_mapped_and_every_form_is_exact(tokens: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _Sla()
    x = torch.randn(1, tokens, 32)
    model, mapping = _mapped(module, (x,), tmp_path / "sla.onnx")
    assert _count(model) == 1, mapping.explained
    assert "Einsum" not in {n.op_type for n in model.graph}
    want = module(x).detach().numpy()
    got = next(iter(run_onnx(model, {"x": x.numpy()}).values()))  # the function body
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for form in ("kv_first", "qk_first", "einsum_kv_first", "einsum_qk_first"):
        lowered = copy_model(model)
        assert lower_attention.lower(lowered, lambda _, f=form: (f, {}))[0]["form"] == form
        assert _count(lowered) == 0
        got = next(iter(run_onnx(lowered, {"x": x.numpy()}).values()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    shape = lower_attention.LinearShape(2, tokens, tokens, 16, 16)
    assert lower_attention.decomposed(shape)[0] == ("kv_first" if tokens == 64 else "qk_first")


def test_other_letters_and_a_normaliser_without_eps(tmp_path: Path) -> None:
    q, k, v = (torch.randn(3, 20, 8) for _ in range(3))
    model, mapping = _mapped(_OtherLetters(1e-6), (q, k, v), tmp_path / "a.onnx")
    assert _count(model) == 1, mapping.explained
    model, mapping = _mapped(_OtherLetters(None), (q, k, v), tmp_path / "b.onnx")
    assert _count(model) == 0
    reasons = [c.reason for c in mapping.explained]
    assert any("not 1 / (q . sum k + eps)" in r for r in reasons), reasons


@pytest.mark.slow  # a seed model compiled and timed per block shape
def test_slab_pvt_compiles_with_mapped_linear_attention(tmp_path: Path) -> None:
    bundle = edgec.compile("slab_pvt_tiny", output=tmp_path / "b", backend="onnxruntime")
    report = next(p for p in bundle.manifest.passes if p["name"] == "map_linear_attention")
    assert report["rewrites"] == 8
    chosen = bundle.manifest.backend_options["attention"]
    orders = {"kv_first", "qk_first", "einsum_kv_first", "einsum_qk_first"}
    assert len(chosen) == 8 and {c["form"] for c in chosen} <= orders
    for c in chosen:
        assert c["form"] == min(c["p50_ms"], key=c["p50_ms"].get)
    assert bundle.manifest.reference["max_rel_error"] <= 1e-4  # vs torch eager


@pytest.mark.slow  # a seed model compiled and timed per block shape
def test_ecoformer_hashed_attention_is_mapped_and_exact(tmp_path: Path) -> None:
    """EcoFormer's stages 1-3: hashed attention over +-1 codes (6 blocks), stage 4 softmax
    (2 blocks); the bundle matches torch eager."""
    bundle = edgec.compile(
        "pvt_v2_b0_ecoformer", output=tmp_path / "b", backend="onnxruntime", threads=1
    )
    passes = {p["name"]: p for p in bundle.manifest.passes}
    assert passes["map_linear_attention"]["rewrites"] == 6
    assert passes["map_attention"]["rewrites"] == 2
    assert passes["fold_square_sum"]["rewrites"] == 6  # the hash's squared distances
    forms = [c["form"] for c in bundle.manifest.backend_options["attention"]]
    assert forms.count("matmul") == 6
    ops = {n.op_type for n in onnx.load(bundle.path / "model.onnx").graph.node}
    assert "ReduceSumSquare" in ops and "Pow" not in ops
    assert bundle.manifest.reference["max_rel_error"] <= 1e-4  # vs torch eager


def test_hashed_attention_needs_codes(tmp_path: Path) -> None:
    from edgec.models.ecoformer import HashedAttention

    torch.manual_seed(0)
    module = HashedAttention(32, 2).eval()
    x = torch.randn(1, 49, 32)
    model, mapping = _mapped(module, (x,), tmp_path / "h.onnx")
    hashed = [n for n in model.graph if n.op_type == "HashedAttention"]
    assert len(hashed) == 1, mapping.explained
    want = module(x).detach().numpy()
    lowered = copy_model(model)
    lower_attention.lower(lowered)
    for m in (model, lowered):
        got = next(iter(run_onnx(m, {"x": x.numpy()}).values()))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    class NoSign(HashedAttention):  # real-valued "codes": not hashed attention
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.ksh.forward = lambda t: torch.tanh(t[..., :16])  # type: ignore[method-assign]
            return super().forward(x)

    model, mapping = _mapped(NoSign(32, 2).eval(), (x,), tmp_path / "n.onnx")
    assert not [n for n in model.graph if n.op_type == "HashedAttention"]
    assert any("not made by Sign" in c.reason for c in mapping.explained), mapping.explained
