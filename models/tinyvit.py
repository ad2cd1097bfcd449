"""TinyViT (Wu et al., "TinyViT: Fast Pretraining Distillation for Small Vision Transformers",
ECCV 2022), in its training form, as the official definition builds it.

- Conv2d_BN: a conv without bias followed by BatchNorm (folded at deploy).
- Patch embed: Conv2d_BN 3x3 s2 (3 -> C0/2), GELU, Conv2d_BN 3x3 s2 (-> C0).
- Stage 1: MBConv blocks (1x1 expand x4, GELU, depthwise 3x3, GELU, 1x1, + shortcut, GELU).
- PatchMerging between stages: 1x1 Conv2d_BN, GELU, depthwise 3x3 s2 Conv2d_BN, GELU, 1x1.
- Stages 2-4: x + WindowAttention(x) (LayerNorm inside; qkv Linear with bias; key dim =
  head dim; a learned bias table (heads, window^2) gathered by |dx|, |dy| offsets), then a
  depthwise 3x3 Conv2d_BN (no residual), then x + MLP (LayerNorm, fc x4, GELU, fc).
- Head: mean over tokens, LayerNorm, Linear.

tiny_vit_5m has 5,392,764 parameters (MODELS.md).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


class Conv2dBN(nn.Sequential):
    def __init__(
        self, cin: int, cout: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, dim // 2, 3, 2, 1), nn.GELU(), Conv2dBN(dim // 2, dim, 3, 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    def __init__(self, dim: int, expand_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, 2, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # tokens (B, H*W, C) -> (B, C, H, W)
            h, w = self.resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.conv3(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention over one window, with a learned bias per (|dy|, |dx|) offset."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: tuple[int, int]):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.d = key_dim  # attn_ratio = 1
        self.dh = self.d * num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, self.dh + 2 * key_dim * num_heads)
        self.proj = nn.Linear(self.dh, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        n = len(points)
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs).view(n, n), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.dh))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = Attention(dim, dim // num_heads, num_heads, (window, window))
        self.mlp = Mlp(dim, dim * 4)
        self.local_conv = Conv2dBN(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, n, c = x.shape
        ws = self.window
        if h == ws and w == ws:
            y = self.attn(x)
        else:
            y = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            y = self.attn(y)
            y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            if pad_b or pad_r:
                y = y[:, :h, :w].contiguous()
            y = y.view(b, n, c)
        x = x + y
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class TinyViT(nn.Module):
    def __init__(
        self,
        dims: list[int],
        heads: list[int],
        depths: tuple[int, ...] = (2, 2, 6, 2),
        windows: tuple[int, ...] = (7, 7, 14, 7),
        img_size: int = 224,
        num_classes: int = 1000,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, dims[0])
        res = img_size // 4
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            r = (res // 2**i, res // 2**i)
            down = PatchMerging(r, dims[i], dims[i + 1]) if i < len(depths) - 1 else None
            if i == 0:
                blocks: list[nn.Module] = [MBConv(dims[0]) for _ in range(depth)]
            else:
                blocks = [TinyViTBlock(dims[i], r, heads[i], windows[i]) for _ in range(depth)]
            stage = nn.Module()
            stage.blocks = nn.ModuleList(blocks)
            stage.downsample = down
            self.layers.append(stage)
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Attention):
                nn.init.trunc_normal_(m.attention_biases, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for stage in self.layers:
            for block in stage.blocks:
                x = block(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        return self.head(self.norm_head(x.mean(1)))


CONFIGS: dict[str, tuple[list[int], list[int]]] = {
    "tiny_vit_5m": ([64, 128, 160, 320], [2, 4, 5, 10]),
    "tiny_vit_11m": ([64, 128, 256, 448], [2, 4, 8, 14]),
    "tiny_vit_21m": ([96, 192, 384, 576], [3, 6, 12, 18]),
}


def build(name: str, num_classes: int = 1000) -> TinyViT:
    dims, heads = CONFIGS[name]
    return TinyViT(dims, heads, num_classes=num_classes)
