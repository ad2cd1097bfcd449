"""BiPFT (Xing et al., "BiPFT: Binary Pre-trained Foundation Transformer with Low-rank
Estimation of Binarization Residual Polynomials", AAAI 2024), as the official pretraining code
(Xingrun-Xing/BiPFT, `binary_pretraining/bipft.py`) builds it, in its training form.

BiT's quantizers (`edgec.models.binary`: 1-bit weights with one scale per matrix, elastic
binarization of every linear layer's moved input, binary Q, K, V and attention probabilities,
binary word embeddings), and in each self-attention the low-rank estimators of the
binarization residual: five full-precision rank-one projections of the layer's input,
q_p, k_p, q_m, k_m (hidden -> 1) and v_p (hidden -> 1), shared by all heads, with

    scores  = (Q_b K_b^T + q_m k_p^T + q_p k_m^T + q_p k_p^T) / sqrt(d) + mask
    context = P_b V_b + P_b v_p

(q_p k_p^T estimates the residual-by-residual term of (Q_b + R_q)(K_b + R_k)^T, the two
others the cross terms). Unlike BiT, the feed-forward activation is GELU (erf form), and the
second FFN layer binarizes its input by sign; LayerNorms are torch's (epsilon 1e-12); the
pooler is tanh(LayerNorm(dense(h_0)) + h_0).

As in `edgec.models.binary`, a binary product is computed as integer codes times the scales,
so that its value is exact whatever the summation order. Geometry: BERT-base for
`bipft_base` (the paper's), a 4-layer 312-wide encoder for `bipft_tiny` (the TinyBERT
geometry that `bit_bert_tiny` uses).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgec.models.binary import (
    BitBertClassifier,
    BitBertModel,
    BitLayer,
    BitLinear,
    ElasticBinarizer,
)

CONFIGS: dict[str, dict[str, int]] = {
    "bipft_base": {"dim": 768, "depth": 12, "heads": 12, "ffn": 3072},
    "bipft_tiny": {"dim": 312, "depth": 4, "heads": 12, "ffn": 1200},
}


class BiPFTSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.query = BitLinear(dim, dim)
        self.key = BitLinear(dim, dim)
        self.value = BitLinear(dim, dim)
        # the low-rank estimators of the binarization residual (rank one, full precision)
        self.q_p = nn.Linear(dim, 1)
        self.k_p = nn.Linear(dim, 1)
        self.q_m = nn.Linear(dim, 1)
        self.k_m = nn.Linear(dim, 1)
        self.v_p = nn.Linear(dim, 1)
        self.clip_query = ElasticBinarizer(signed=True)
        self.clip_key = ElasticBinarizer(signed=True)
        self.clip_value = ElasticBinarizer(signed=True)
        self.clip_attn = ElasticBinarizer(signed=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        res_q, res_k = self.q_p(x), self.k_p(x)  # (B, N, 1)
        low_q, low_k = self.q_m(x), self.k_m(x)
        residual = (
            low_q @ res_k.transpose(-1, -2)
            + res_q @ low_k.transpose(-1, -2)
            + res_q @ res_k.transpose(-1, -2)
        ).unsqueeze(1)  # (B, 1, N, N): one estimate for all heads
        res_v = self.v_p(x).unsqueeze(1)  # (B, 1, N, 1)
        q = self.clip_query(self._heads(self.query(x)))
        k = self.clip_key(self._heads(self.key(x)))
        v = self.clip_value(self._heads(self.value(x)))
        binary = (q @ k.transpose(-1, -2)) * (self.clip_query.step() * self.clip_key.step())
        scores = (binary + residual) / math.sqrt(self.head_dim) + mask
        probs = self.clip_attn(scores.softmax(dim=-1))  # 0/1 codes, step applied below
        step = self.clip_attn.step()
        ctx = (probs @ v) * (step * self.clip_value.step()) + (probs @ res_v) * step
        ctx = ctx.permute(0, 2, 1, 3)
        return ctx.reshape(ctx.shape[0], ctx.shape[1], -1)


def _layer_norm(dim: int) -> nn.Module:
    return nn.LayerNorm(dim, eps=1e-12)


class BiPFTLayer(BitLayer):
    """BiT's layer with BiPFT's attention, torch's LayerNorm and GELU (its output binarized by
    sign in the second FFN layer)."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__(dim, heads, ffn, BiPFTSelfAttention, _layer_norm, F.gelu)


class BiPFTModel(BitBertModel):
    """The BiPFT backbone: BiT's embeddings and encoder shape, BiPFT's layers, and the pooler
    tanh(LayerNorm(dense(h_0)) + h_0)."""

    def __init__(
        self, vocab: int, dim: int, depth: int, heads: int, ffn: int, max_positions: int
    ) -> None:
        super().__init__(vocab, dim, depth, heads, ffn, max_positions, BiPFTLayer, _layer_norm)
        self.pooler.LayerNorm = _layer_norm(dim)

    def pool(self, first: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pooler.LayerNorm(self.pooler.dense(first)) + first)


class BiPFTClassifier(BitBertClassifier):
    """The BiPFT backbone and a float sequence classifier (GLUE fine-tuning's form)."""

    def __init__(self, num_classes: int = 2, **geometry: int) -> None:
        super().__init__(num_classes=num_classes, backbone=BiPFTModel, **geometry)

    @torch.no_grad()
    def calibrate(self, batch: torch.Tensor | None, generator: torch.Generator) -> None:
        """BiT's calibration (step sizes from one batch, trained-looking `move` biases), and
        trained-looking values for the estimators' weights."""
        for name, p in self.named_parameters():
            if name.endswith(("_p.weight", "_m.weight")):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
        super().calibrate(batch, generator)


def build(name: str, num_classes: int = 2, **overrides: int) -> BiPFTClassifier:
    return BiPFTClassifier(num_classes=num_classes, **{**CONFIGS[name], **overrides})
