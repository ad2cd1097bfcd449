"""VanillaNet (Chen et al., "VanillaNet: the Power of Minimalism in Deep Learning", NeurIPS 2023).

Training form, as in the official code: every conv followed by BatchNorm (eps 1e-6); stem,
blocks and head each hold two 1x1-joined convs with `leaky_relu(x, lam)` between them, where
the deep-training schedule takes `lam` from 0 to 1; and the series-informed activation

    SIA(x) = BN(DWConv_kxk(ReLU(x))),  k = 2n + 1, n = 3, no conv bias.

At lam = 1, leaky_relu is the identity and each pair of convs composes into one, which is
what the deploy form is: every BN folded, the pairs merged (W = W2 W1, b = W2 b1 + b2), SIA
a ReLU and a biased depthwise conv. edgec's passes derive that form from this one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SeriesActivation(nn.Module):
    """SIA: ReLU, then a depthwise (2n+1)x(2n+1) conv without bias, then BN."""

    def __init__(self, dim: int, act_num: int = 3) -> None:
        super().__init__()
        self.act_num = act_num
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(dim, 1, 2 * act_num + 1, 2 * act_num + 1))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.bn = nn.BatchNorm2d(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.conv2d(F.relu(x), self.weight, padding=self.act_num, groups=self.dim))


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride),
        nn.BatchNorm2d(cout, eps=1e-6),
    )


class Block(nn.Module):
    """Conv1x1+BN, leaky_relu(lam), Conv1x1+BN, MaxPool(stride) or identity, SIA."""

    def __init__(self, dim: int, dim_out: int, stride: int, act_num: int = 3) -> None:
        super().__init__()
        self.act_learn = 1.0
        self.conv1 = conv_bn(dim, dim)
        self.conv2 = conv_bn(dim, dim_out)
        self.pool = nn.Identity() if stride == 1 else nn.MaxPool2d(stride)
        self.act = SeriesActivation(dim_out, act_num)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = F.leaky_relu(x, self.act_learn)
        x = self.conv2(x)
        return self.act(self.pool(x))


class VanillaNet(nn.Module):
    def __init__(
        self,
        dims: list[int],
        strides: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        act_num: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.act_learn = 1.0
        self.stem1 = conv_bn(in_chans, dims[0], kernel=4, stride=4)
        self.stem2 = nn.Sequential(*conv_bn(dims[0], dims[0]), SeriesActivation(dims[0], act_num))
        self.stages = nn.ModuleList(
            Block(dims[i], dims[i + 1], strides[i], act_num) for i in range(len(strides))
        )
        self.cls1 = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Dropout(drop_rate),
            nn.Conv2d(dims[-1], num_classes, 1),
            nn.BatchNorm2d(num_classes, eps=1e-6),
        )
        self.cls2 = nn.Sequential(nn.Conv2d(num_classes, num_classes, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def set_act_learn(self, lam: float) -> None:
        """The deep-training schedule: lam = 0 is ReLU-like, lam = 1 the identity (deployable)."""
        self.act_learn = lam
        for stage in self.stages:
            stage.act_learn = lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem1(x)
        x = F.leaky_relu(x, self.act_learn)
        x = self.stem2(x)
        for stage in self.stages:
            x = stage(x)
        x = self.cls1(x)
        x = F.leaky_relu(x, self.act_learn)
        x = self.cls2(x)
        return x.flatten(1)


CONFIGS: dict[str, tuple[list[int], list[int]]] = {
    "vanillanet_5": ([512, 1024, 2048, 4096], [2, 2, 2]),
    "vanillanet_6": ([512, 1024, 2048, 4096, 4096], [2, 2, 2, 1]),
    "vanillanet_7": ([512, 512, 1024, 2048, 4096, 4096], [1, 2, 2, 2, 1]),
    "vanillanet_8": ([512, 512, 1024, 2048, 2048, 4096, 4096], [1, 2, 2, 1, 2, 1]),
}
for _depth in range(9, 14):  # 9 to 13: one more 2048-wide stride-1 block each
    _extra = _depth - 8
    CONFIGS[f"vanillanet_{_depth}"] = (
        [512, 512, 1024, *([2048] * (2 + _extra)), 4096, 4096],
        [1, 2, 2, *([1] * _extra), 1, 2, 1],
    )


def build(name: str, num_classes: int = 1000, lam: float = 1.0) -> VanillaNet:
    dims, strides = CONFIGS[name]
    model = VanillaNet(dims, strides, num_classes=num_classes)
    model.set_act_learn(lam)
    return model
