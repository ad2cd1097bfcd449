"""SLAB (Guo et al., "SLAB: Efficient Transformers with Simplified Linear Attention and
Progressively Re-parameterized Batch Normalization", ICML 2024): the shared parts and
SLAB-DeiT, as the official code builds them.

- RepBN(x) = BN(x) + alpha * x over the channels of (B, N, C) tokens, alpha one scalar.
- PRepBN (`LinearNorm` in the official code) holds both a LayerNorm and a RepBN: in training
  lam * LN(x) + (1 - lam) * RepBN(x) with lam decaying to 0; in evaluation RepBN alone. Both
  are parameters of the trained model, which is why SLAB-DeiT-T has 6,198,401.
- Simplified linear attention: q, k, v from Linear layers; a learned positional encoding added
  to k; phi = ReLU on q and k; per head
      O = phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(K_j) + 1e-6) + DWC(V),
  DWC a depthwise 5x5 conv over the head dimension, shared across heads, on V laid out as
  a square map; the product order (K^T V first, or Q K^T first) is chosen by cost, as in
  the official code.

SLAB-DeiT keeps DeiT's class token as a parameter but pools the patch tokens by their mean
instead (official code), and its position embedding covers the 196 patches only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RepBN(nn.Module):
    """BN(x) + alpha * x for tokens (B, N, C), BN over C."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        return (self.bn(x) + self.alpha * x).transpose(1, 2)


class PRepBN(nn.Module):
    """Progressive RepBN: lam * LayerNorm + (1 - lam) * RepBN in training, RepBN in eval.

    `lam` is where the training schedule stands: 0 at the end of training (the default here).
    """

    def __init__(self, dim: int, ln_eps: float = 1e-6, lam: float = 0.0) -> None:
        super().__init__()
        self.lam = lam
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.norm2 = RepBN(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.lam > 0:
            return self.lam * self.norm1(x) + (1 - self.lam) * self.norm2(x)
        return self.norm2(x)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*C) -> (B*H, N, C)"""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3).reshape(b * heads, n, c // heads)


def merge_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B*H, N, C) -> (B, N, H*C)"""
    bh, n, c = x.shape
    return (
        x.reshape(bh // heads, heads, n, c).permute(0, 2, 1, 3).reshape(bh // heads, n, heads * c)
    )


def simplified_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, dwc: nn.Conv2d
) -> torch.Tensor:
    """q (B, N, C) and k, v (B, M, C), with the positional encoding already in k.

    Returns (B, N, C). When M < N (spatial reduction) V is linearly upsampled to N before DWC.
    """
    q, k = F.relu(q), F.relu(k)
    q, k, v = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    i, j, c, d = q.shape[-2], k.shape[-2], k.shape[-1], v.shape[-1]
    z = 1 / (torch.einsum("bic,bc->bi", q, k.sum(dim=1)) + 1e-6)
    if i * j * (c + d) > c * d * (i + j):
        kv = torch.einsum("bjc,bjd->bcd", k, v)
        x = torch.einsum("bic,bcd,bi->bid", q, kv, z)
    else:
        qk = torch.einsum("bic,bjc->bij", q, k)
        x = torch.einsum("bij,bjd,bi->bid", qk, v, z)
    if v.shape[1] != x.shape[1]:
        v = F.interpolate(v.permute(0, 2, 1), size=x.shape[1], mode="linear").permute(0, 2, 1)
    side = int(v.shape[1] ** 0.5)
    fmap = v.reshape(v.shape[0], side, side, d).permute(0, 3, 1, 2)
    x = x + dwc(fmap).permute(0, 2, 3, 1).reshape(v.shape[0], side * side, d)
    return merge_heads(x, heads)


def head_dwc(dim: int, heads: int, kernel: int = 5) -> nn.Conv2d:
    head_dim = dim // heads
    return nn.Conv2d(head_dim, head_dim, kernel, groups=head_dim, padding=kernel // 2)


class LinearAttention(nn.Module):
    """SLA with one qkv projection over N tokens (SLAB-DeiT, and SLAB-Swin's windows)."""

    def __init__(self, dim: int, heads: int, tokens: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dwc = head_dwc(dim, heads)
        self.positional_encoding = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.positional_encoding, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, c).permute(2, 0, 1, 3).unbind(0)
        k = k + self.positional_encoding
        return self.proj(simplified_linear_attention(q, k, v, self.heads, self.dwc))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = PRepBN(dim)
        self.attn = LinearAttention(dim, heads, tokens)
        self.norm2 = PRepBN(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class SlabDeiT(nn.Module):
    def __init__(
        self,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        img_size: int = 224,
        patch: int = 16,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        tokens = (img_size // patch) ** 2
        self.patch_embed = PatchEmbed(patch, 3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))  # kept, unused: official code
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, tokens) for _ in range(depth)])
        self.norm = PRepBN(dim)
        self.head = nn.Linear(dim, num_classes)
        init_transformer(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.patch_embed(x) + self.pos_embed)
        return self.head(self.norm(x).mean(dim=1))


def init_transformer(model: nn.Module) -> None:
    """Official init (Linear trunc_normal 0.02, zero bias), then a trained-looking RepBN:
    alpha ~ U(0.5, 1.5) rather than its initial 1, so that folding alpha is exercised."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, RepBN):
            nn.init.uniform_(m.alpha, 0.5, 1.5)


def build_deit(num_classes: int = 1000) -> SlabDeiT:
    return SlabDeiT(num_classes=num_classes)
