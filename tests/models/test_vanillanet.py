"""VanillaNet in training form: published parameter count, real BN statistics, and a
full-size compile that matches torch eager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edgec
from edgec import models
from edgec.runtime.compare import rel_error
from edgec.runtime.session import Session

pytestmark = pytest.mark.slow  # full-size VanillaNet


def test_parameter_count_training_form() -> None:
    # MODELS.md: 22,328,800 in training form (the official definition, 1000 classes)
    assert models.count_parameters("vanillanet_5") == 22_328_800
    assert sum(p.numel() for p in models.create("vanillanet_5").parameters()) == 22_328_800


def test_registry_lists_all_depths() -> None:
    assert [n for n in models.list_models() if n.startswith("vanillanet_")] == [
        f"vanillanet_{d}" for d in range(5, 14)
    ]
    info = models.get_info("vanillanet_13")
    assert info.paper.startswith("VanillaNet")


def test_batchnorm_is_not_trivial() -> None:
    model = models.create("vanillanet_5")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 13 and not model.training
    for bn in norms:
        assert bn.eps == 1e-6
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))


def test_seed_is_deterministic() -> None:
    a = models.create("vanillanet_5", seed=3).state_dict()
    b = models.create("vanillanet_5", seed=3).state_dict()
    c = models.create("vanillanet_5", seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["stem1.0.weight"], c["stem1.0.weight"])


def test_act_learn_schedule() -> None:
    model = models.create("vanillanet_5", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        at_one = model(x)
        model.set_act_learn(0.0)
        at_zero = model(x)
    assert all(stage.act_learn == 0.0 for stage in model.stages)
    assert not torch.allclose(at_one, at_zero)


def test_full_size_compile_matches_torch(tmp_path: Path) -> None:
    """The demo's model at 224x224: the bundle against torch eager within 1e-5."""
    bundle = edgec.compile(
        "vanillanet_5", output=tmp_path / "vn5", tolerance=1e-5, backend="onnxruntime"
    )
    model = models.create("vanillanet_5")
    x = np.random.default_rng(9).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = next(iter(Session(bundle).run({"x": x}).values()))
    assert got.shape == (1, 1000)
    assert rel_error(got, expected) < 1e-5
    # the deploy form: BN folded, conv pairs merged, leaky_relu(x, 1) gone (MODELS.md)
    after = bundle.manifest.stats["after"]
    assert after["ops"] == {"Conv": 9, "Relu": 4, "MaxPool": 3, "ReduceMean": 1, "Reshape": 1}
    assert after["parameters"] == 15_523_304
    assert after["macs"] == pytest.approx(5.16e9, rel=0.005)


@pytest.mark.parametrize("name", ["vanillanet_6", "vanillanet_9"])
def test_deeper_configs_build(name: str) -> None:
    dims_strides = models.vanillanet.CONFIGS[name]
    assert len(dims_strides[0]) == len(dims_strides[1]) + 1
    with torch.device("meta"):
        model = models.get_info(name).build().eval()
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
