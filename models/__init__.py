"""Built-in efficient architectures, in their training form (unfolded), with seeded weights.

    model = edgec.models.create("vanillanet_5")   # nn.Module in eval mode
    edgec.models.list_models()

No weights can be downloaded here: `create` builds deterministic random weights from `seed`
and calibrates BatchNorm statistics (see `models/init.py`), so the compiler's folds have real
work to do and can be checked against torch.
"""

from __future__ import annotations

import torch
from torch import nn

from edgec.frontend.sources import InputSpec
from edgec.models import vanillanet
from edgec.models.init import calibrate_batchnorm, randomize_affine
from edgec.models.registry import ModelInfo, get_info, list_models, register

__all__ = ["ModelInfo", "count_macs", "count_parameters", "create", "get_info", "list_models"]

_IMAGE = {"x": InputSpec((1, 3, 224, 224))}

for _name in vanillanet.CONFIGS:
    register(
        ModelInfo(
            name=_name,
            family="VanillaNet",
            build=lambda num_classes=1000, _n=_name, **kw: vanillanet.build(_n, num_classes, **kw),
            inputs=dict(_IMAGE),
            description=f"{_name}: plain conv net, deep-training lam = 1 (deploy-ready)",
            paper="VanillaNet: the Power of Minimalism in Deep Learning (NeurIPS 2023)",
        )
    )


def create(name: str, num_classes: int = 1000, seed: int = 0, **overrides: object) -> nn.Module:
    """Build a built-in model in eval mode with deterministic weights from `seed`."""
    info = get_info(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = info.build(num_classes=num_classes, **{**info.defaults, **overrides})
    generator = torch.Generator().manual_seed(seed + 1)
    randomize_affine(model, generator)
    spec = next(iter(info.inputs.values()))
    if spec.dtype.startswith("float") and any(
        isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules()
    ):
        batch = torch.randn((2, *spec.shape[1:]), generator=generator)
        calibrate_batchnorm(model, batch)
    return model.eval()


def count_parameters(name: str, num_classes: int = 1000) -> int:
    """Parameters of a built-in model, counted on the meta device (no memory, no init cost)."""
    info = get_info(name)
    with torch.device("meta"):
        model = info.build(num_classes=num_classes, **info.defaults)
    return sum(p.numel() for p in model.parameters())


def count_macs(name: str, num_classes: int = 1000) -> int:
    """Multiply-accumulates of one forward at the default input (torch's flop counter / 2),
    counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    info = get_info(name)
    with torch.device("meta"):
        model = info.build(num_classes=num_classes, **info.defaults).eval()
        args = [
            torch.zeros(spec.shape, dtype=getattr(torch, spec.dtype))
            for spec in info.inputs.values()
        ]
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(*args)
    return counter.get_total_flops() // 2
