"""Whole models through the cpu pipeline: training-time structure folds away, exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgec
from edgec.runtime.compare import rel_error
from edgec.runtime.session import Session
from tests.conftest import with_bn_statistics

pytestmark = pytest.mark.slow  # the pipeline on whole built-in models


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class RepVGGBlock(nn.Module):
    """ReLU(BN(conv3x3) + BN(conv1x1) + BN(x)) (identity only when shapes agree)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.dense = conv_bn(cin, cout, 3, stride)
        self.pointwise = conv_bn(cin, cout, 1, stride)
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return torch.relu(y)


class MobileOneBlock(nn.Module):
    """Depthwise: k 3x3 branches + 1x1 + BN(x), ReLU; pointwise: k 1x1 branches + BN(x), ReLU."""

    def __init__(self, c: int, k: int = 3) -> None:
        super().__init__()
        self.dw = nn.ModuleList(conv_bn(c, c, 3, groups=c) for _ in range(k))
        self.dw_scale = conv_bn(c, c, 1, groups=c)
        self.dw_skip = nn.BatchNorm2d(c)
        self.pw = nn.ModuleList(conv_bn(c, c, 1) for _ in range(k))
        self.pw_skip = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw_scale(x) + self.dw_skip(x)
        for branch in self.dw:
            y = y + branch(x)
        y = torch.relu(y)
        z = self.pw_skip(y)
        for branch in self.pw:
            z = z + branch(y)
        return torch.relu(z)


class RepNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.Sequential(
            RepVGGBlock(3, 16, stride=2),
            RepVGGBlock(16, 16),
            MobileOneBlock(16),
            RepVGGBlock(16, 32, stride=2),
            MobileOneBlock(32, k=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


def test_repvgg_and_mobileone_fold_to_a_plain_chain(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = with_bn_statistics(RepNet())
    bundle = edgec.compile(model, output=tmp_path / "b", input_shapes=["x=1x3x32x32"], verify=True)
    ops = bundle.manifest.stats["after"]["ops"]
    # 5 blocks: RepVGG -> 1 conv each, MobileOne -> 2 convs each; nothing else but ReLUs
    assert ops == {"Conv": 7, "Relu": 7}
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = next(iter(Session(bundle).run({"x": x}).values()))
    assert rel_error(got, expected) < 1e-4
    fired = {p["name"] for p in bundle.manifest.passes if p["rewrites"]}
    assert {"fold_batchnorm", "merge_parallel_branches"} <= fired


@pytest.mark.parametrize("name", ["tiny_vit_5m", "slab_pvt_tiny", "slab_swin_tiny", "fmvit_tiny"])
def test_no_batchnorm_left(name: str, tmp_path: Path) -> None:
    bundle = edgec.compile(name, output=tmp_path / name, backend="onnxruntime")
    after = bundle.manifest.stats["after"]
    assert "BatchNormalization" not in after["ops"]
    assert after["nodes"] < bundle.manifest.stats["before"]["nodes"]
    assert bundle.manifest.reference["max_rel_error"] <= 1e-4
