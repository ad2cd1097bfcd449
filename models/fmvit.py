"""FMViT (Tan et al., "FMViT: A multiple-frequency mixing Vision Transformer", 2023): an
interpretation. No official code was published and the paper's tables were not available, so
this is built from the parts its abstract names; every choice below is an assumption, and no
parameter count is claimed.

Assumptions:
1. Layout: a conv stem (two 3x3 stride-2 Conv+BN, ReLU), four stages at strides 4-32 with
   dims (48, 96, 192, 384) and depths (2, 2, 4, 2), a 3x3 stride-2 Conv+BN between stages, then
   global average pooling and a Linear head. ReLU throughout the convolutional parts (the
   paper targets TensorRT and Core ML, where ReLU is the cheap activation).
2. Convolutional multi-group reparameterization (the paper's gMLP): a channel MLP whose
   middle layer (x3 wide, groups of 16 channels) is a sum of parallel branches on one input,
   all with the same groups: a 3x3 grouped Conv+BN, a 1x1 grouped Conv+BN, and a BatchNorm
   identity. At deploy the branches
   fold into one 3x3 grouped conv (RepVGG-style), which is what makes it cheap.
3. Convolutional fusion block (CFB), used in stages 1-2: a reparameterizable depthwise token
   mixer (3x3 depthwise Conv+BN + 1x1 depthwise Conv+BN + BN identity, summed), ReLU, a 1x1
   Conv+BN, with a residual; then the gMLP with a residual.
4. Lightweight multi-head self-attention (RLMHSA): queries from every token; keys and values
   from an average-pooled copy of the map (pool r), through one shared projection (K = V),
   softmax attention with head dim 32, output 1x1 projection.
5. Multiple-frequency mixing block (FMB), used in stages 3-4: the channels are split in three;
   the high-frequency third goes through a 3x3 depthwise Conv+BN, the other two through RLMHSA
   at pooling 2 (middle frequency) and 4 (low frequency); the three are concatenated and fused
   by a 1x1 Conv+BN, with a residual; then the gMLP with a residual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class RepBranches(nn.Module):
    """sum(BN(conv_k(x)) for k in kernels) + BN(x): parallel branches, same groups and stride."""

    def __init__(self, dim: int, groups: int, kernels: tuple[int, ...] = (3, 1)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(conv_bn(dim, dim, k, groups=groups) for k in kernels)
        self.identity = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.identity(x)
        for branch in self.branches:
            out = out + branch(x)
        return out


class GroupMLP(nn.Module):
    """1x1 Conv+BN (x ratio), ReLU, multi-group reparameterized 3x3, ReLU, 1x1 Conv+BN."""

    def __init__(self, dim: int, ratio: int = 3, group_width: int = 16) -> None:
        super().__init__()
        hidden = dim * ratio
        self.fc1 = conv_bn(dim, hidden, 1)
        self.mix = RepBranches(hidden, groups=hidden // group_width)
        self.fc2 = conv_bn(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.mix(F.relu(self.fc1(x)))))


class ConvFusionBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token_mixer = RepBranches(dim, groups=dim)
        self.pw = conv_bn(dim, dim, 1)
        self.mlp = GroupMLP(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pw(F.relu(self.token_mixer(x)))
        return x + self.mlp(x)


class PooledAttention(nn.Module):
    """RLMHSA: full-resolution queries; keys = values from the map average-pooled by r."""

    def __init__(self, dim: int, pool: int, head_dim: int = 32) -> None:
        super().__init__()
        self.heads = max(dim // head_dim, 1)
        self.scale = (dim // self.heads) ** -0.5
        self.pool = pool
        self.q = nn.Conv2d(dim, dim, 1)
        self.kv = nn.Conv2d(dim, dim, 1)  # shared: K = V
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, self.heads, d, h * w).transpose(-2, -1)
        low = (
            F.avg_pool2d(x, self.pool, self.pool)
            if min(h, w) >= self.pool
            else x.mean((2, 3), keepdim=True)
        )
        kv = self.kv(low).reshape(b, self.heads, d, -1)
        attn = (q @ kv * self.scale).softmax(dim=-1)
        out = (attn @ kv.transpose(-2, -1)).transpose(-2, -1).reshape(b, c, h, w)
        return self.proj(out)


class FrequencyMixingBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.split = (dim // 3, dim // 3, dim - 2 * (dim // 3))
        self.high = conv_bn(self.split[0], self.split[0], 3, groups=self.split[0])
        self.mid = PooledAttention(self.split[1], pool=2)
        self.low = PooledAttention(self.split[2], pool=4)
        self.fuse = conv_bn(dim, dim, 1)
        self.mlp = GroupMLP(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hi, mid, low = torch.split(x, self.split, dim=1)
        mixed = torch.cat([self.high(hi), self.mid(mid), self.low(low)], dim=1)
        x = x + self.fuse(mixed)
        return x + self.mlp(x)


class FMViT(nn.Module):
    def __init__(
        self,
        dims: tuple[int, ...] = (48, 96, 192, 384),
        depths: tuple[int, ...] = (2, 2, 4, 2),
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv_bn(3, dims[0] // 2, 3, 2), nn.ReLU(), conv_bn(dims[0] // 2, dims[0], 3, 2)
        )
        self.stages = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            block = ConvFusionBlock if i < 2 else FrequencyMixingBlock
            layers: list[nn.Module] = [] if i == 0 else [conv_bn(dims[i - 1], dim, 3, 2)]
            layers += [block(dim) for _ in range(depth)]
            self.stages.append(nn.Sequential(*layers))
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return self.head(x.mean((2, 3)))


def build(num_classes: int = 1000) -> FMViT:
    return FMViT(num_classes=num_classes)
