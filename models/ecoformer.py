"""EcoFormer (Liu et al., "EcoFormer: Energy-Saving Attention with Linear Complexity",
NeurIPS 2022) on PVTv2-B0, as the official code builds `pvt_v2_b0` with attn_type ecoformer.

Stages 1-3 use hashed linear attention; stage 4 keeps softmax attention. The attention has
one projection shared by queries and keys (`to_qk`), one for values, and the output `proj`;
PVTv2's spatial-reduction conv is gone. Per head, q = k are L2-normalised and hashed to b = 16
bits by kernelized hashing over m = 25 anchors:

    kappa_j(x) = exp(-||x - a_j||^2 / (2 sigma)),  sigma = mean_{n,j} ||x_n - a_j||^2
    h(x) = sign(A (kappa(x) - mu))
    out_i = [h(q_i)^T sum_j h(k_j) v_j^T + (b + 1) v_i] / [h(q_i)^T sum_j h(k_j) + N (b + 1)]

sigma is computed from the tokens at run time, as in the official forward. A (heads, b, m), mu
and the anchors are fixed buffers after training. Here they are set the way the official code
sets them on its first batch (`calibrate`: anchors are m tokens of the batch, mu the mean kernel
value); A keeps its random normal initialisation, since optimizing it needs the supervised
similarity targets of training. The official attention also carries a Performer projection
buffer its forward never reads; it is left out.

pvt_v2_b0_ecoformer has 3,136,328 parameters (the softmax baseline 3,666,760).
"""

from __future__ import annotations

import torch
from torch import nn

NBITS = 16
ANCHORS = 25


class KernelHash(nn.Module):
    """h(x) = sign(A (kappa(x) - mu)) per head; x (B, H, N, D) -> codes (B, H, N, NBITS)."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        self.register_buffer("A", torch.randn(heads, NBITS, ANCHORS))
        self.register_buffer("mvec", torch.zeros(1, heads, 1, ANCHORS))
        self.register_buffer("anchor", torch.zeros(1, heads, ANCHORS, head_dim))

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        sqd = ((x.unsqueeze(-2) - self.anchor.unsqueeze(-3)) ** 2).sum(-1)  # (B, H, N, m)
        sigma = sqd.mean(-1).mean(-1)
        return torch.exp(-sqd / (2 * sigma.unsqueeze(-1).unsqueeze(-1)))

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, generator: torch.Generator) -> None:
        perm = torch.randperm(x.shape[2], generator=generator)[:ANCHORS]
        self.anchor.copy_(x[0:1, :, perm])
        self.mvec.copy_(self.kernel(x).mean(-2, keepdim=True).mean(0, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bhnm,hkm->bhnk", self.kernel(x) - self.mvec, self.A)
        return torch.sign(y)


class HashedAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_qk = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ksh = KernelHash(heads, dim // heads)
        self.calibrating: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qk = self.to_qk(x).reshape(b, n, self.heads, -1).permute(0, 2, 1, 3)
        v = self.to_v(x).reshape(b, n, self.heads, -1).permute(0, 2, 1, 3)
        qk = qk / torch.norm(qk, 2, dim=-1, keepdim=True)
        if self.calibrating is not None:
            self.ksh.calibrate(qk, self.calibrating)
        h = self.ksh(qk)
        bias = NBITS + 1
        d_inv = 1.0 / (torch.einsum("bhnd,bhd->bhn", h, h.sum(dim=-2)) + n * bias)
        context = torch.einsum("bhnd,bhne->bhde", h, v)
        out = torch.einsum("bhde,bhnd->bhne", context, h) + v * bias
        out = out * d_inv.unsqueeze(-1)
        return self.proj(out.permute(0, 2, 1, 3).reshape(b, n, c))


class SoftmaxAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (qkv[0] @ qkv[1].transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ qkv[2]).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1, depthwise 3x3 conv on the token map, GELU, fc2 (PVTv2)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Module()
        self.dwconv.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, _, c = x.shape
        x = self.dwconv.dwconv(x.transpose(1, 2).view(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, hashed: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = HashedAttention(dim, heads) if hashed else SoftmaxAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x), h, w)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, patch: int, stride: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EcoPVTv2(nn.Module):
    def __init__(
        self,
        dims: tuple[int, ...] = (32, 64, 160, 256),
        heads: tuple[int, ...] = (1, 2, 5, 8),
        mlp_ratios: tuple[int, ...] = (8, 8, 4, 4),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.num_stages = len(depths)
        for i in range(self.num_stages):
            embed = OverlapPatchEmbed(
                7 if i == 0 else 3, 4 if i == 0 else 2, 3 if i == 0 else dims[i - 1], dims[i]
            )
            hashed = i != self.num_stages - 1
            blocks = nn.ModuleList(
                Block(dims[i], heads[i], mlp_ratios[i], hashed) for _ in range(depths[i])
            )
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dims[i], eps=1e-6))
        self.head = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, (2.0 / fan_out) ** 0.5)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def calibrate(self, batch: torch.Tensor | None, generator: torch.Generator) -> None:
        """Fix every hash's anchors and mean kernel from one batch, stage by stage."""
        if batch is None:
            batch = torch.randn(2, 3, 224, 224, generator=generator)
        hashed = [m for m in self.modules() if isinstance(m, HashedAttention)]
        for m in hashed:
            m.calibrating = generator
        try:
            self.eval()(batch)
        finally:
            for m in hashed:
                m.calibrating = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        for i in range(self.num_stages):
            x, h, w = getattr(self, f"patch_embed{i + 1}")(x)
            for block in getattr(self, f"block{i + 1}"):
                x = block(x, h, w)
            x = getattr(self, f"norm{i + 1}")(x)
            if i != self.num_stages - 1:
                x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return self.head(x.mean(dim=1))


def build(num_classes: int = 1000) -> EcoPVTv2:
    return EcoPVTv2(num_classes=num_classes)
