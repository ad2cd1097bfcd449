"""MetaSchedule tuning: trials really run, the database is reused, every task gets trials."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edgec
from edgec.runtime.compare import rel_error
from edgec.runtime.session import Session
from edgec.targets.tuning import database_dir, target_key
from tests.conftest import make_onnx_model

pytestmark = pytest.mark.slow  # MetaSchedule tuning


def test_tuning_runs_trials_and_a_second_compile_reuses_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEC_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    kwargs = {"target": "x86_64", "backend": "tvm", "threads": 1}
    bundle = edgec.compile(path, output=tmp_path / "b1", tune=6, **kwargs)
    t = bundle.manifest.backend_options["tuning"]
    assert t["tasks"] >= 2 and t["tasks_from_database"] == 0
    # the budget is split so that every task gets trials, and they were measured
    assert t["per_task_cap"] == max(1, 6 // t["tasks"])
    assert t["trials_run"] >= t["tasks"] and t["trials_ok"] >= t["tasks"]
    assert t["tuned"] and t["tasks_untuned"] == []
    records = Path(t["database"]) / "database_tuning_record.json"
    assert len(records.read_text().splitlines()) >= t["tasks"]
    assert Path(t["database"]) == database_dir(bundle.manifest.backend_options["target"])

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert rel_error(Session(bundle).run({"x": x})["y"], expected) < 1e-4

    # the second compile finds every task in the database: it runs no trial (no wall time is
    # asserted; the trial count is what shows the reuse)
    again = edgec.compile(path, output=tmp_path / "b2", tune=6, **kwargs)
    t2 = again.manifest.backend_options["tuning"]
    assert t2["tasks_from_database"] == t2["tasks"] == t["tasks"]
    assert t2["trials_run"] == 0 and t2["tuned"]
    assert rel_error(Session(again).run({"x": x})["y"], expected) < 1e-4


def test_database_key_separates_targets() -> None:
    a = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4", "num-cores": 1}
    b = dict(a, **{"num-cores": 2})
    assert target_key(a) != target_key(b)
    assert target_key(a).startswith("x86_64-linux-gnu-znver4-1c-")
    assert target_key(a) == target_key(json.loads(json.dumps(a)))


def test_negative_budget_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    with pytest.raises(edgec.EdgecError, match="--tune"):
        edgec.compile(path, target="x86_64", backend="tvm", output=tmp_path / "b", tune=-1)
    assert not (tmp_path / "b").exists()
