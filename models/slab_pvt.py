"""SLAB-PVT: the Pyramid Vision Transformer with SLAB's simplified linear attention in all
four stages and PRepBN for every norm (official `slab_pvt_tiny`).

Each stage: a patch embedding (conv, PRepBN), a learned position embedding, then blocks.
The attention takes q from the tokens and k, v from a spatially reduced copy (conv with
kernel = stride = sr, then PRepBN) when sr > 1 (sr = 8, 4, 2, 1); the positional encoding
covers the reduced tokens, and V is linearly upsampled back before the depthwise conv.

The official `_get_pos_embed` resizes every stage's position embedding after the first to the
stage's own size (a bilinear resize to the same size, so an identity); it is kept, so that the
compiler meets, and must remove, the no-op Resize an exporter produces from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgec.models.slab import Mlp, PRepBN, head_dwc, init_transformer, simplified_linear_attention


class ReducedLinearAttention(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int, sr: int) -> None:
        super().__init__()
        self.heads = heads
        self.sr_ratio = sr
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr, stride=sr)
            self.norm = PRepBN(dim)
        self.dwc = head_dwc(dim, heads)
        self.positional_encoding = nn.Parameter(torch.zeros(1, tokens // (sr * sr), dim))
        nn.init.trunc_normal_(self.positional_encoding, std=0.02)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        q = self.q(x)
        if self.sr_ratio > 1:
            x = self.sr(x.permute(0, 2, 1).reshape(b, c, h, w)).reshape(b, c, -1).permute(0, 2, 1)
            x = self.norm(x)
        k, v = self.kv(x).reshape(b, -1, 2, c).permute(2, 0, 1, 3).unbind(0)
        k = k + self.positional_encoding
        return self.proj(simplified_linear_attention(q, k, v, self.heads, self.dwc))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int, sr: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = PRepBN(dim)
        self.attn = ReducedLinearAttention(dim, heads, tokens, sr)
        self.norm2 = PRepBN(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.H = self.W = img_size // patch
        self.num_patches = self.H * self.W
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.norm = PRepBN(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[2] // self.patch, x.shape[3] // self.patch
        return self.norm(self.proj(x).flatten(2).transpose(1, 2)), h, w


class SlabPVT(nn.Module):
    def __init__(
        self,
        dims: tuple[int, ...] = (64, 128, 320, 512),
        heads: tuple[int, ...] = (1, 2, 5, 8),
        mlp_ratios: tuple[int, ...] = (8, 8, 4, 4),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        srs: tuple[int, ...] = (8, 4, 2, 1),
        img_size: int = 224,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.num_stages = len(depths)
        for i in range(self.num_stages):
            embed = PatchEmbed(
                img_size if i == 0 else img_size // 2 ** (i + 1),
                4 if i == 0 else 2,
                3 if i == 0 else dims[i - 1],
                dims[i],
            )
            pos = nn.Parameter(torch.zeros(1, embed.num_patches, dims[i]))
            nn.init.trunc_normal_(pos, std=0.02)
            blocks = nn.ModuleList(
                Block(dims[i], heads[i], embed.num_patches, srs[i], mlp_ratios[i])
                for _ in range(depths[i])
            )
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"pos_embed{i + 1}", pos)
            setattr(self, f"block{i + 1}", blocks)
        self.head = nn.Linear(dims[-1], num_classes)
        init_transformer(self)

    def _pos_embed(self, pos: torch.Tensor, embed: PatchEmbed, h: int, w: int) -> torch.Tensor:
        if h * w == self.patch_embed1.num_patches:
            return pos
        grid = pos.reshape(1, embed.H, embed.W, -1).permute(0, 3, 1, 2)
        return (
            F.interpolate(grid, size=(h, w), mode="bilinear").reshape(1, -1, h * w).permute(0, 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        for i in range(self.num_stages):
            embed = getattr(self, f"patch_embed{i + 1}")
            x, h, w = embed(x)
            x = x + self._pos_embed(getattr(self, f"pos_embed{i + 1}"), embed, h, w)
            for block in getattr(self, f"block{i + 1}"):
                x = block(x, h, w)
            if i != self.num_stages - 1:
                x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return self.head(x.mean(dim=1))


def build(num_classes: int = 1000) -> SlabPVT:
    return SlabPVT(num_classes=num_classes)
