"""SLAB-Swin: the Swin Transformer with SLAB's simplified linear attention in stages 1-2 and
shifted-window softmax attention in stages 3-4 (official `slab_swin_tiny`, attention types
LLSS, window 56), PRepBN (LayerNorm eps 1e-5 + RepBN) for every norm.

With window 56 the linear-attention stages see their whole map (56x56, then 28x28) as one
window; the softmax stages use 7x7 windows, shifted by 3 in every other block, with Swin's
relative position bias table and shift mask.
"""

from __future__ import annotations

import torch
from torch import nn

from edgec.models.slab import LinearAttention, Mlp, PRepBN, init_transformer


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


class WindowAttention(nn.Module):
    """Softmax attention in a window, with Swin's relative position bias."""

    def __init__(self, dim: int, ws: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
        flat = coords.flatten(1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = q @ k.transpose(-2, -1) + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, res: int, heads: int, ws: int, shift: int, linear: bool) -> None:
        super().__init__()
        if res <= ws:  # the window covers the map: no partition, no shift
            ws, shift = res, 0
        self.res, self.ws, self.shift = res, ws, shift
        self.norm1 = PRepBN(dim, ln_eps=1e-5)
        self.linear = linear
        self.attn: nn.Module = (
            LinearAttention(dim, heads, ws * ws) if linear else WindowAttention(dim, ws, heads)
        )
        self.norm2 = PRepBN(dim, ln_eps=1e-5)
        self.mlp = Mlp(dim, dim * 4)
        mask = None
        if shift > 0:
            img = torch.zeros(1, res, res, 1)
            spans = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
            for cnt, (hs, wsl) in enumerate((a, b) for a in spans for b in spans):
                img[:, hs, wsl, :] = cnt
            windows = window_partition(img, ws).squeeze(-1)
            diff = windows.unsqueeze(1) - windows.unsqueeze(2)
            mask = diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = w = self.res
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(y, self.ws)
        windows = self.attn(windows) if self.linear else self.attn(windows, self.attn_mask)
        y = window_reverse(windows, self.ws, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, res: int, dim: int) -> None:
        super().__init__()
        self.res = res
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = PRepBN(4 * dim, ln_eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, self.res, self.res, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SlabSwin(nn.Module):
    def __init__(
        self,
        dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        heads: tuple[int, ...] = (3, 6, 12, 24),
        window: int = 56,
        attn_types: str = "LLSS",
        img_size: int = 224,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, 4, stride=4)
        self.patch_embed.norm = PRepBN(dim, ln_eps=1e-5)
        res = img_size // 4
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            d, r, linear = dim * 2**i, res // 2**i, attn_types[i] == "L"
            ws = window if linear else (7 if window <= 56 else 12)
            layer = nn.Module()
            layer.blocks = nn.ModuleList(
                SwinBlock(d, r, heads[i], ws, 0 if j % 2 == 0 else ws // 2, linear)
                for j in range(depth)
            )
            layer.downsample = PatchMerging(r, d) if i < len(depths) - 1 else None
            self.layers.append(layer)
        self.norm = PRepBN(dim * 2 ** (len(depths) - 1), ln_eps=1e-5)
        self.head = nn.Linear(dim * 2 ** (len(depths) - 1), num_classes)
        init_transformer(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.norm(self.patch_embed.proj(x).flatten(2).transpose(1, 2))
        for layer in self.layers:
            for block in layer.blocks:
                x = block(x)
            if layer.downsample is not None:
                x = layer.downsample(x)
        return self.head(self.norm(x).mean(dim=1))


def build(num_classes: int = 1000) -> SlabSwin:
    return SlabSwin(num_classes=num_classes)
