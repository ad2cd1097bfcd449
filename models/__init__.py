"""Built-in efficient architectures, in their training form (unfolded), with seeded weights.

    model = edgec.models.create("vanillanet_5")   # nn.Module in eval mode
    edgec.models.list_models()

Each family's file holds a faithful definition of the official model (see its docstring and
shared/MODELS.md). No weights can be downloaded here: `create` builds deterministic random
weights from `seed`, sets the state a trained model has (BatchNorm statistics, binarizer step
sizes, hash anchors) from one random batch, or loads a user's weights file.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from edgec.core.specs import TensorSpec
from edgec.models import (
    binary,
    bipft,
    ecoformer,
    fmvit,
    slab,
    slab_pvt,
    slab_swin,
    tinyvit,
    vanillanet,
)
from edgec.models.init import calibrate_batchnorm, randomize_affine
from edgec.models.registry import ModelInfo, get_info, list_models, register
from edgec.models.weights import load_weights

__all__ = [
    "ModelInfo",
    "count_macs",
    "count_parameters",
    "create",
    "get_info",
    "list_models",
]

_IMAGE = {"x": TensorSpec.requested((1, 3, 224, 224), "float32")}
_TOKENS = {"input_ids": TensorSpec.requested((1, 128), "int64")}

_PAPERS = {
    "VanillaNet": "VanillaNet: the Power of Minimalism in Deep Learning (NeurIPS 2023)",
    "TinyViT": "TinyViT: Fast Pretraining Distillation for Small Vision Transformers (ECCV 2022)",
    "SLAB": "SLAB: Efficient Transformers with Simplified Linear Attention and Progressive "
    "Re-parameterized Batch Normalization (ICML 2024)",
    "EcoFormer": "EcoFormer: Energy-Saving Attention with Linear Complexity (NeurIPS 2022)",
    "BiT": "BiT: Robustly Binarized Multi-distilled Transformer (NeurIPS 2022)",
    "BiViT": "BiViT: Extremely Compressed Binary Vision Transformers (ICCV 2023)",
    "BiPFT": "BiPFT: Binary Pre-trained Foundation Transformer with Low-rank Estimation of "
    "Binarization Residual Polynomials (AAAI 2024)",
    "FMViT": "FMViT: A multiple-frequency mixing Vision Transformer (2023), an interpretation",
}


def _add(
    name: str,
    family: str,
    build: Callable[..., nn.Module],
    description: str,
    inputs: dict[str | None, TensorSpec] | None = None,
    **defaults: object,
) -> None:
    register(
        ModelInfo(
            name=name,
            family=family,
            build=build,
            inputs=dict(inputs or _IMAGE),
            description=description,
            paper=_PAPERS[family],
            defaults=dict(defaults),
        )
    )


for _name in vanillanet.CONFIGS:
    _add(
        _name,
        "VanillaNet",
        lambda num_classes=1000, _n=_name, **kw: vanillanet.build(_n, num_classes, **kw),
        "plain conv net in deep-training form (BN everywhere, conv pairs), lam = 1",
    )
for _name in tinyvit.CONFIGS:
    _add(
        _name,
        "TinyViT",
        lambda num_classes=1000, _n=_name: tinyvit.build(_n, num_classes),
        "MBConv stage, then windowed attention with Conv2d_BN local convs",
    )
_add("slab_deit_tiny", "SLAB", slab.build_deit, "DeiT-T with simplified linear attention, PRepBN")
_add("slab_pvt_tiny", "SLAB", slab_pvt.build, "PVT-T with simplified linear attention, PRepBN")
_add("slab_swin_tiny", "SLAB", slab_swin.build, "Swin-T: linear attention (stages 1-2), PRepBN")
_add(
    "pvt_v2_b0_ecoformer",
    "EcoFormer",
    ecoformer.build,
    "PVTv2-B0 with hashed binary linear attention in stages 1-3",
)
for _name in binary.BERT_CONFIGS:
    _add(
        _name,
        "BiT",
        lambda num_classes=2, _n=_name, **kw: binary.build_bert(_n, num_classes, **kw),
        "binary BERT encoder (1-bit weights and activations), sequence classifier",
        inputs=_TOKENS,
        num_classes=2,
    )
for _name in bipft.CONFIGS:
    _add(
        _name,
        "BiPFT",
        lambda num_classes=2, _n=_name, **kw: bipft.build(_n, num_classes, **kw),
        "binary BERT with rank-one estimators of the attention's binarization residual",
        inputs=_TOKENS,
        num_classes=2,
    )
_add("bivit_deit_tiny", "BiViT", binary.build_bivit, "binary DeiT-T: 1-bit weights, attention")
_add("fmvit_tiny", "FMViT", fmvit.build, "multi-frequency mixing ViT (interpretation)")


def create(
    name: str,
    num_classes: int | None = None,
    seed: int = 0,
    weights: str | os.PathLike[str] | None = None,
    **overrides: object,
) -> nn.Module:
    """Build a built-in model in eval mode: seeded random weights, or `weights` loaded."""
    info = get_info(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = info.build(**_build_options(info, num_classes, overrides))
    if weights is not None:
        load_weights(model, weights)
        return model.eval()
    generator = torch.Generator().manual_seed(seed + 1)
    randomize_affine(model, generator)
    spec = next(iter(info.inputs.values()))
    batch = None
    if spec.dtype.startswith("float"):
        batch = torch.randn((2, *spec.shape[1:]), generator=generator)
    calibrate = getattr(model, "calibrate", None)
    if calibrate is not None:  # family-specific trained state (hash anchors, step sizes)
        calibrate(batch, generator)
    if batch is not None and any(
        isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules()
    ):
        calibrate_batchnorm(model, batch)
    return model.eval()


def _build_options(
    info: ModelInfo, num_classes: int | None, overrides: dict[str, object]
) -> dict[str, object]:
    """The builder's keyword arguments: the model's defaults, then overrides, then num_classes."""
    options = {**info.defaults, **overrides}
    if num_classes is not None:
        options["num_classes"] = num_classes
    return options


def _meta_model(name: str, num_classes: int | None) -> nn.Module:
    info = get_info(name)
    with torch.device("meta"):
        return info.build(**_build_options(info, num_classes, {})).eval()


def count_parameters(name: str, num_classes: int | None = None) -> int:
    """Parameters of a built-in model, counted on the meta device (no memory, no init cost)."""
    return sum(p.numel() for p in _meta_model(name, num_classes).parameters())


def count_macs(name: str, num_classes: int | None = None) -> int:
    """Multiply-accumulates of one forward at the default input (torch's flop counter / 2),
    counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    info = get_info(name)
    model = _meta_model(name, num_classes)
    with torch.device("meta"):
        args = [
            torch.zeros(spec.shape, dtype=getattr(torch, spec.dtype))
            for spec in info.inputs.values()
        ]
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(*args)
    return counter.get_total_flops() // 2
