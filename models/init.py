"""Deterministic weights for built-in models, since none can be downloaded.

BatchNorm layers get non-trivial affine parameters and running statistics calibrated on a
random batch in training mode, so that folding them is really exercised: an identity
BatchNorm would make a wrong fold pass every numerical test.
"""

from __future__ import annotations

import torch
from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@torch.no_grad()
def randomize_affine(model: nn.Module, generator: torch.Generator) -> None:
    """BN gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1); conv biases ~ N(0, 0.02)."""
    for m in model.modules():
        if isinstance(m, _NORMS) and m.affine:
            m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.02)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batch: torch.Tensor) -> None:
    """Set every BN's running statistics to the statistics of `batch` (one train-mode pass)."""
    norms = [m for m in model.modules() if isinstance(m, _NORMS)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly its statistics
    model.train()
    model(batch)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.eval()
