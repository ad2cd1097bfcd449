"""`edgec compare`: two builds of one model, interleaved, with a confidence interval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import edgec
from edgec.runtime.compare_bundles import bootstrap_ratio, module_deltas
from edgec.runtime.op_profile import ModuleTime


class LinearChain(nn.Module):
    """Eight Linear layers with nothing between them: merge_serial_linear folds the chain into
    one layer, an eighth of the multiply-adds."""

    def __init__(self, width: int = 512, depth: int = 8) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@pytest.fixture(scope="module")
def folded_and_unfolded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = LinearChain().eval()
    out = tmp_path_factory.mktemp("compare")
    options = {"input_shapes": {"x": (64, 512)}, "backend": "onnxruntime", "threads": 1}
    unfolded = edgec.compile(model, output=out / "unfolded", passes=False, **options)
    folded = edgec.compile(model, output=out / "folded", **options)
    return unfolded.path, folded.path


def test_compare_finds_the_folded_bundle_at_least_twice_as_fast(
    cli, folded_and_unfolded: tuple[Path, Path]
) -> None:
    unfolded, folded = folded_and_unfolded
    assert json.loads((unfolded / "manifest.json").read_text())["passes"] == []
    r = cli("compare", unfolded, folded, "--rounds", "12", "--runs", "3", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    # 8 layers' work against 1: the interval's low end is well above 2 on any machine
    assert report["ci_low"] >= 2.0, report
    assert report["ci_low"] <= report["ratio"] <= report["ci_high"]
    assert report["a_p50_ms"] > 2 * report["b_p50_ms"]
    assert report["max_output_error"] < 1e-4
    modules = {m["module"]: m for m in report["modules"]}
    # the unfolded bundle spends time in every layer, the folded one in the merged layer only
    assert {f"layers.{i}" for i in range(8)} <= set(modules)
    assert sum(m["b_ms"] for m in modules.values()) < sum(m["a_ms"] for m in modules.values())
    r = cli("compare", unfolded, folded, "--rounds", "4", "--runs", "2")
    assert r.code == 0 and "B faster" in r.out and "95% CI" in r.out


def test_compare_refuses_bundles_of_different_models(
    cli, tiny_bundle: Path, folded_and_unfolded: tuple[Path, Path]
) -> None:
    r = cli("compare", tiny_bundle, folded_and_unfolded[1], "--rounds", "2")
    assert r.code == 2 and "compare takes two builds of one model" in r.err
    assert "Traceback" not in r.err
    r = cli("compare", tiny_bundle, tiny_bundle, "--rounds", "1")
    assert r.code == 2 and "--rounds" in r.err


def test_bootstrap_interval_and_module_deltas() -> None:
    ratio, low, high = bootstrap_ratio([2.0] * 9 + [2.2])
    assert ratio == 2.0 and low == 2.0 and 2.0 <= high <= 2.2
    ratio, low, high = bootstrap_ratio([1.0, 3.0, 2.0, 2.5, 1.5])
    assert low < ratio < high
    deltas = module_deltas(
        [ModuleTime("a", 3.0, 0.75, 1, 0), ModuleTime("b", 1.0, 0.25, 1, 0)],
        [ModuleTime("a", 1.0, 0.5, 1, 0), ModuleTime("c", 1.0, 0.5, 1, 0)],
    )
    assert [(d.module, d.delta_ms) for d in deltas] == [("a", -2.0), ("b", -1.0), ("c", 1.0)]
