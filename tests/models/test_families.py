"""The seed architectures: published parameter counts, export through the IR into onnxruntime
(matching torch eager within 1e-4 relative on a fixed input), and the training-form structure
each family's deploy form is folded from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgec
from edgec import models
from edgec.models import binary, ecoformer, fmvit, slab
from edgec.runtime.compare import rel_error
from edgec.runtime.session import Session

pytestmark = pytest.mark.slow  # every built-in model exported against torch

# MODELS.md, from instantiating the official definitions (1000 classes, 224x224)
PUBLISHED = {
    "vanillanet_5": 22_328_800,
    "tiny_vit_5m": 5_392_764,
    "slab_deit_tiny": 6_198_401,
    "slab_pvt_tiny": 13_353_218,
    "slab_swin_tiny": 29_216_605,
    "pvt_v2_b0_ecoformer": 3_136_328,
    # DeiT-Tiny's own count: BiViT binarizes DeiT-T without adding parameters
    "bivit_deit_tiny": 5_717_416,
}


@pytest.mark.parametrize(("name", "count"), PUBLISHED.items())
def test_published_parameter_count(name: str, count: int) -> None:
    assert models.count_parameters(name) == count


def test_bit_bert_base_backbone() -> None:
    with torch.device("meta"):
        model = binary.build_bert("bit_bert_base")
    assert sum(p.numel() for p in model.bert.parameters()) == 109_593_721


def test_bipft_adds_its_estimators_to_the_binary_bert() -> None:
    """BiT's backbone without its three unused move_q/k/v biases, plus five rank-one
    estimators per attention layer and the pooler's LayerNorm."""
    estimators = 12 * 5 * (768 + 1)
    unused_moves = 12 * 3 * 768
    expected = models.count_parameters("bit_bert_base") - unused_moves + estimators + 2 * 768
    assert models.count_parameters("bipft_base") == expected == 109_615_287


def test_every_model_is_listed_with_a_paper() -> None:
    names = models.list_models()
    for family in (
        "vanillanet_5",
        "tiny_vit_5m",
        "tiny_vit_11m",
        "tiny_vit_21m",
        "slab_deit_tiny",
        "slab_pvt_tiny",
        "slab_swin_tiny",
        "pvt_v2_b0_ecoformer",
        "bit_bert_base",
        "bit_bert_tiny",
        "bipft_base",
        "bipft_tiny",
        "bivit_deit_tiny",
        "fmvit_tiny",
    ):
        assert family in names
        assert models.get_info(family).paper


def _fixed_input(name: str) -> dict[str, np.ndarray]:
    spec = next(iter(models.get_info(name).inputs.items()))
    key, shape = spec[0], spec[1]
    rng = np.random.default_rng(2024)
    if shape.dtype == "int64":
        return {key: rng.integers(0, 1000, shape.shape).astype(np.int64)}
    return {key: rng.standard_normal(shape.shape).astype(np.float32)}


def _eager(model: nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(v) for v in feeds.values())).numpy()


EXPORTED = [
    "tiny_vit_5m",
    "slab_deit_tiny",
    "slab_pvt_tiny",
    "slab_swin_tiny",
    "pvt_v2_b0_ecoformer",
    "bit_bert_tiny",
    "bipft_tiny",
    "bivit_deit_tiny",
    "fmvit_tiny",
]


@pytest.mark.parametrize("name", EXPORTED)
def test_exports_and_matches_torch(name: str, tmp_path: Path) -> None:
    bundle = edgec.compile(name, output=tmp_path / name, backend="onnxruntime")
    assert bundle.manifest.reference["max_rel_error"] <= 1e-4
    feeds = _fixed_input(name)
    got = next(iter(Session(bundle).run(feeds).values()))
    expected = _eager(models.create(name), feeds)
    assert got.shape == expected.shape
    assert rel_error(got, expected) <= 1e-4


def test_training_form_structure() -> None:
    tiny = models.create("tiny_vit_5m")
    convs = [m for m in tiny.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)  # Conv2d_BN: BN carries the bias
    deit = models.create("slab_deit_tiny")
    assert sum(isinstance(m, slab.PRepBN) for m in deit.modules()) == 25
    fm = models.create("fmvit_tiny")
    assert any(isinstance(m, fmvit.RepBranches) for m in fm.modules())
    assert any(isinstance(m, fmvit.PooledAttention) for m in fm.modules())


def test_slab_eval_uses_repbn_alone() -> None:
    model = models.create("slab_deit_tiny")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
        for m in model.modules():
            if isinstance(m, slab.PRepBN):
                m.norm1.weight.mul_(3.0)  # the LayerNorm half: unused at lam = 0 and in eval
        after = model(x)
    assert torch.equal(before, after)
    alphas = [m.norm2.alpha.item() for m in model.modules() if isinstance(m, slab.PRepBN)]
    assert len(set(alphas)) > 1 and all(a != 1.0 for a in alphas)


def test_ecoformer_hash_buffers_are_fixed_and_codes_binary() -> None:
    model = models.create("pvt_v2_b0_ecoformer")
    hashes = [m for m in model.modules() if isinstance(m, ecoformer.KernelHash)]
    assert len(hashes) == 6  # two blocks in each of stages 1-3
    codes: list[torch.Tensor] = []
    handles = [h.register_forward_hook(lambda _m, _i, out: codes.append(out)) for h in hashes]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for h in handles:
        h.remove()
    for ksh, c in zip(hashes, codes, strict=True):
        assert ksh.anchor.abs().sum() > 0 and ksh.mvec.abs().sum() > 0
        assert c.shape[-1] == ecoformer.NBITS
        assert set(torch.unique(c).tolist()) <= {-1.0, 1.0}
    again = models.create("pvt_v2_b0_ecoformer")
    assert torch.equal(again.block1[0].attn.ksh.anchor, hashes[0].anchor)  # deterministic


def _binarized_outputs(model: nn.Module, *inputs: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    kinds = (binary.ElasticBinarizer, binary.SignBinarizer, binary.SoftmaxBinarizer)
    seen: list[tuple[str, torch.Tensor]] = []
    handles = [
        m.register_forward_hook(lambda mod, _i, out, n=n: seen.append((n, out)))
        for n, m in model.named_modules()
        if isinstance(m, kinds)
    ]
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return seen


def test_bit_bert_is_really_binary() -> None:
    model = models.create("bit_bert_tiny")
    seen = _binarized_outputs(model, torch.randint(0, 30522, (1, 128)))
    # per layer: 6 linear inputs, Q, K, V, attention probabilities; plus the pooler
    assert len(seen) == 4 * 10 + 1
    for name, out in seen:
        values = set(torch.unique(out).tolist())
        quantizer = model.get_submodule(name)
        allowed = {-1.0, 1.0} if quantizer.signed else {0.0, 1.0}
        assert values <= allowed and len(values) == 2, (name, values)
    for m in model.modules():
        if isinstance(m, binary.BitLinear):
            codes, scale = binary.bwn(m.weight)
            assert set(torch.unique(codes).tolist()) == {-1.0, 1.0} and scale.numel() == 1
            assert len(torch.unique(codes * scale)) == 2  # two values per tensor
    emb = model.bert.embeddings.word_embeddings
    codes, scale = binary.bwn(emb.weight, per_row=True)
    assert scale.shape == (emb.num_embeddings, 1)
    assert all(len(torch.unique(row)) == 2 for row in (codes * scale)[:50])


def test_bit_linear_computes_the_binarized_product() -> None:
    """(codes_x codes_W^T) * (alpha m) + b equals BiT's
    (alpha sign(x + move)) (m sign(W - mean W))^T + b."""
    model = models.create("bit_bert_tiny")
    layer = model.bert.encoder.layer[0].intermediate.dense
    x = torch.randn(2, 5, layer.in_features)
    with torch.no_grad():
        alpha = layer.act_quantizer.step()
        xb = alpha * torch.sign(x + layer.move.bias)
        wb = layer.weight.abs().mean() * torch.sign(layer.weight - layer.weight.mean())
        expected = xb @ wb.T + layer.bias
        got = layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_bivit_is_really_binary() -> None:
    model = models.create("bivit_deit_tiny")
    seen = _binarized_outputs(model, torch.randn(1, 3, 224, 224))
    assert len(seen) == 12 * 6  # qkv, proj, fc1, fc2 inputs; Q/K/V; attention, per block
    for name, out in seen:
        values = set(torch.unique(out).tolist())
        allowed = {0.0, 1.0} if name.endswith("attn_quant") else {-1.0, 1.0}
        assert values <= allowed and len(values) == 2, (name, values)
    for m in model.modules():
        if isinstance(m, binary.BiViTLinear):
            codes, scale = binary.channel_sign(m.weight)
            assert scale.shape == (m.out_features,)
            per_row = codes * scale[:, None]
            assert all(len(torch.unique(row)) == 2 for row in per_row[:20])


def test_weights_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = models.create("tiny_vit_5m", seed=7)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"model": source.state_dict()}, tmp_path / "w.pt")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = source(x)
        for path in ("w.safetensors", "w.pt"):
            loaded = models.create("tiny_vit_5m", seed=0, weights=tmp_path / path)
            assert torch.equal(loaded(x), expected)


def test_weights_errors(tmp_path: Path) -> None:
    from edgec.core.errors import SourceError

    state = models.create("tiny_vit_5m").state_dict()
    bad_shape = dict(state)
    bad_shape["head.weight"] = torch.zeros(10, 320)
    torch.save(bad_shape, tmp_path / "shape.pt")
    with pytest.raises(SourceError, match=r"'head.weight' has shape \(10, 320\); the model"):
        models.create("tiny_vit_5m", weights=tmp_path / "shape.pt")
    missing = {k: v for k, v in state.items() if k != "norm_head.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(SourceError, match=r"lack 'norm_head.bias'"):
        models.create("tiny_vit_5m", weights=tmp_path / "missing.pt")
    extra = {**state, "extra.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(SourceError, match=r"have 'extra.weight'"):
        models.create("tiny_vit_5m", weights=tmp_path / "extra.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(SourceError, match=r"cannot read weights"):
        models.create("tiny_vit_5m", weights=tmp_path / "junk.pt")
    with pytest.raises(SourceError, match=r"does not exist"):
        models.create("tiny_vit_5m", weights=tmp_path / "none.safetensors")
