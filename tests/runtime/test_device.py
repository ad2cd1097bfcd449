"""arm64: bundles cross-compiled here, checked on the emulated device over RPC; the C++ host.

The emulated device (`edgec device emulate arm64`) runs TVM's RPC server inside qemu user mode,
with an aarch64 Python sysroot prepared on first use. Needs the Debian packages of the README's
set-up (cross compilers, qemu-user-static).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil
import pytest
import torch

import edgec
from edgec import frontend
from edgec.core.errors import DeviceError
from edgec.core.irutil import run_onnx
from edgec.runtime.bundle import Bundle, load_reference
from edgec.runtime.compare import rel_error
from edgec.runtime.remote import connect
from tests.conftest import make_onnx_model
from tests.targets.test_hashed_attention import gram_exposed
from tests.targets.test_tvm import TinyTransformer

pytestmark = pytest.mark.slow  # emulated arm64, tuning on it, the C++ host

EDGEC = str(Path(sys.executable).with_name("edgec"))


def start_emulator(port: int = 0) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [EDGEC, "device", "emulate", "arm64", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 900  # the first start prepares the sysroot
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(r"serving on (\S+):(\d+)", line)
        if found:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, f"{found.group(1)}:{found.group(2)}"
    proc.kill()
    raise AssertionError("the emulated device did not start:\n" + "".join(seen[-20:]))


def server_processes(address: str) -> list[psutil.Process]:
    port = address.rpartition(":")[2]
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "device_server.py" in cmd and f"--port {port}" in cmd:
            found.append(p)
    return found


@pytest.fixture(scope="module")
def device() -> Iterator[str]:
    proc, address = start_emulator()
    yield address
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def test_emulator_starts_serves_and_stops_cleanly() -> None:
    proc, address = start_emulator()
    with connect(address) as remote:
        assert remote.info.machine == "aarch64" and "qemu" in remote.info.emulated
    assert server_processes(address), "the server should be running under qemu"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    time.sleep(1)
    assert server_processes(address) == [], "processes were left behind"
    with socket.socket() as s:
        assert s.connect_ex(tuple_of(address)) != 0


def tuple_of(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def test_arm64_conv_net_matches_onnxruntime_on_the_device(device: str, tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    bundle = edgec.compile(path, target="arm64", mcpu="cortex-a55", output=tmp_path / "b")
    m = bundle.manifest
    assert m.backend_options["triple"] == "aarch64-linux-gnu"
    assert "+dotprod" in m.backend_options["target"]["mattr"]
    assert m.reference["max_rel_error"] is None and "--device" in m.reference["note"]
    r = subprocess.run(
        [EDGEC, "verify", str(bundle.path), "--device", device, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and report["max_rel_error"] < 1e-4
    # and on an input of its own, against onnxruntime on the unmodified model
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    with connect(device) as remote:
        got = remote.run(Bundle.open(bundle.path), {"x": x})["y"]
    assert rel_error(got, expected) < 1e-4


def test_arm64_transformer_checked_at_compile_time_on_the_device(
    device: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    prepared = frontend.prepare(model, input_shapes=["x=2x16x32"])
    x = np.random.default_rng(1).standard_normal((2, 16, 32)).astype(np.float32)
    expected = next(iter(run_onnx(prepared.model, {"x": x}).values()))
    bundle = edgec.compile(
        model, target="arm64", output=tmp_path / "b", input_shapes=["x=2x16x32"], device=device
    )
    assert bundle.manifest.reference["max_rel_error"] < 1e-4
    assert device in bundle.manifest.reference["note"]
    with connect(device) as remote:
        got = next(iter(remote.run(Bundle.open(bundle.path), {"x": x}).values()))
    assert rel_error(got, expected) < 1e-4


def test_profile_on_the_device_is_labelled_emulated(device: str, tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    edgec.compile(path, target="arm64", output=tmp_path / "b")
    r = subprocess.run(
        [EDGEC, "profile", str(tmp_path / "b"), "--device", device, "--runs", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["emulated"] is True and "emulated" in report["device"]
    assert report["runs"] == 5 and 0 < report["min_ms"] <= report["p50_ms"] <= report["max_ms"]
    assert report["peak_rss_mb"] > 0
    r = subprocess.run(
        [EDGEC, "profile", str(tmp_path / "b"), "--device", device, "--runs", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "emulated latency" in r.stdout


def test_arm64_bundle_cannot_run_on_this_host(cli, tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    edgec.compile(path, target="arm64", output=tmp_path / "b")
    r = cli("verify", tmp_path / "b")
    assert r.code == 2 and "built for aarch64-linux-gnu" in r.err and "--device" in r.err


def test_unreachable_device_is_a_clear_error_soon(cli, tiny_bundle: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: nothing answers there
    start = time.monotonic()
    r = cli("verify", tiny_bundle, "--device", f"127.0.0.1:{port}")
    assert r.code == 2 and "unreachable" in r.err and len(r.err.strip().splitlines()) == 1
    assert time.monotonic() - start < 20


def test_a_silent_device_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts, never speaks RPC
    try:
        start = time.monotonic()
        with (
            pytest.raises(DeviceError, match="did not answer"),
            connect(f"127.0.0.1:{listener.getsockname()[1]}", timeout_s=2),
        ):
            pass
        assert time.monotonic() - start < 30
    finally:
        listener.close()


def test_malformed_device_address(cli, tiny_bundle: Path) -> None:
    r = cli("verify", tiny_bundle, "--device", "nohost")
    assert r.code == 2 and "HOST:PORT" in r.err


@pytest.mark.parametrize("target", ["x86_64", "arm64"])
def test_cpp_host_runs_the_bundle_and_matches(target: str, tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    bundle = edgec.compile(path, target=target, backend="tvm", output=tmp_path / "b")
    r = subprocess.run(
        [EDGEC, "package", str(bundle.path), "--embed", str(tmp_path / "e"), "--build"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    e = tmp_path / "e"
    assert {"model.so", "io.txt", "build.sh", "edgec_runtime.hpp", "run_bundle"} <= {
        p.name for p in e.iterdir()
    }
    (e / "out").mkdir()
    cmd = ["./run_bundle", "model.so", "io.txt", "inputs", "out"]
    env = dict(os.environ)
    if target == "arm64":
        cmd = ["qemu-aarch64-static", *cmd]
        env["QEMU_LD_PREFIX"] = "/usr/aarch64-linux-gnu"
    run = subprocess.run(cmd, cwd=e, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = np.fromfile(e / "out" / "y.bin", dtype=np.float32)
    inputs, _ = load_reference(bundle)
    # against onnxruntime on the unmodified model, on the packaged (reference) input
    expected = ort.InferenceSession(str(path)).run(None, inputs)[0].ravel()
    assert got.shape == expected.shape
    assert rel_error(got, expected) < 1e-4


def test_arm64_tuning_measures_on_the_device(
    device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEC_CACHE", str(tmp_path / "cache"))  # a database of its own
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    bundle = edgec.compile(path, target="arm64", output=tmp_path / "b", tune=4, device=device)
    t = bundle.manifest.backend_options["tuning"]
    assert t["trials_ok"] >= t["tasks"] > 0 and t["tuned"]
    assert "aarch64-linux-gnu" in t["database"]
    assert "emulated" in t["records_measured_on"]
    assert bundle.manifest.reference["max_rel_error"] < 1e-4
    # without the device, a later compile reads the records measured on it
    again = edgec.compile(path, target="arm64", output=tmp_path / "c")
    t2 = again.manifest.backend_options["tuning"]
    assert t2["tasks_from_database"] == t2["tasks"] and t2["database"] == t["database"]


def test_missing_debian_packages_are_named(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent), EDGEC_CACHE=str(tmp_path))
    r = subprocess.run(
        [EDGEC, "device", "emulate", "arm64", "--prepare-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2 and "qemu-user-static" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    r = subprocess.run(
        [EDGEC, "compile", str(path), "--target", "arm64", "-o", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 2 and "gcc-aarch64-linux-gnu" in r.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("name", "options"), [("bit_bert_tiny", {}), ("bivit_deit_tiny", {"depth": 4})]
)
def test_binary_models_on_emulated_arm64(
    device: str, tmp_path: Path, name: str, options: dict
) -> None:
    """The popcount kernels cross-compiled for arm64 (NEON), checked on the device against
    torch eager of the binary model (BiViT at 4 blocks: see tests/models/test_binary_models)."""
    bundle = edgec.compile(
        name, target="arm64", output=tmp_path / name, device=device, model_options=options
    )
    assert bundle.manifest.backend_options["triple"] == "aarch64-linux-gnu"
    assert "ai.edgec::BinaryLinear" in bundle.manifest.stats["after"]["ops"]
    error = bundle.manifest.reference["max_rel_error"]
    assert error is not None and error <= 1e-4


def test_hashed_attention_as_popcount_on_emulated_arm64(device: str, tmp_path: Path) -> None:
    """EcoFormer's hashed attention with the codes' products as popcount kernels on arm64:
    the Gram matrix of the codes exact on the device, and pvt_v2_b0_ecoformer (its six hashed
    blocks as popcount, at 64x64) against torch eager, checked there."""
    t, bits, e = 24, 16, 8
    path = gram_exposed(tmp_path / "h.onnx", t, bits, e)
    bundle = edgec.compile(path, target="arm64", output=tmp_path / "h", device=device)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, t, bits)).astype(np.float32)
    v = rng.standard_normal((1, 2, t, e)).astype(np.float32)
    with connect(device) as remote:
        got = remote.run(Bundle.open(bundle.path), {"x": x, "v": v})
    h = np.sign(x).astype(np.int64)
    np.testing.assert_array_equal(got["gram"], (h @ np.swapaxes(h, -1, -2)).astype(np.float32))

    bundle = edgec.compile(
        "pvt_v2_b0_ecoformer",
        target="arm64",
        output=tmp_path / "pvt",
        input_shapes=["x=1x3x64x64"],
        attention_forms={"hashed": "popcount"},
        device=device,
    )
    forms = [b["form"] for b in bundle.manifest.backend_options["attention"]]
    assert forms.count("popcount") == 6
    error = bundle.manifest.reference["max_rel_error"]
    assert error is not None and error <= 1e-4 and device in bundle.manifest.reference["note"]


def test_mobile_bundles_verify_and_profile_on_emulated_arm64(device: str, tmp_path: Path) -> None:
    """The mobile target's ORT-format model run by the device's own onnxruntime (the aarch64
    wheel): bit_bert_tiny's int8 binary layers checked there against torch eager at compile
    time, then verified and profiled through the CLI (latency labelled emulated); a small conv
    net in the 'runtime' optimization style on an input of its own, against onnxruntime on the
    unmodified model."""
    bundle = edgec.compile("bit_bert_tiny", target="mobile", output=tmp_path / "bit", device=device)
    assert bundle.manifest.backend_options["binary_form"] == "int8 MatMulInteger"
    error = bundle.manifest.reference["max_rel_error"]
    assert error is not None and error <= 1e-4 and device in bundle.manifest.reference["note"]
    r = subprocess.run(
        [EDGEC, "verify", str(bundle.path), "--device", device, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"]
    r = subprocess.run(
        [EDGEC, "profile", str(bundle.path), "--device", device, "--runs", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["emulated"] is True and report["runs"] == 3
    assert 0 < report["min_ms"] <= report["max_ms"] and report["peak_rss_mb"] > 0

    path = tmp_path / "small.onnx"
    onnx.save(make_onnx_model(), path)
    small = edgec.compile(
        path, target="mobile", output=tmp_path / "small", optimization_style="runtime"
    )
    x = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    with connect(device) as remote:
        got = remote.run(Bundle.open(small.path), {"x": x})["y"]
    assert rel_error(got, expected) < 1e-4


def _profile_json(bundle: Path, device: str, *extra: str) -> dict:
    r = subprocess.run(
        [EDGEC, "profile", str(bundle), "--device", device, "--runs", "3", "--json", *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_per_op_profiles_on_the_device_map_to_torch_modules(device: str, tmp_path: Path) -> None:
    """A TVM library's calls timed by the Relax VM's instrument on the (emulated) device, and
    the mobile target's ORT-format model by the device's onnxruntime profiler: both mapped to
    TinyNet's modules, with the device's own roofline peaks (labelled emulated)."""
    from tests.conftest import TinyNet, with_bn_statistics

    torch.manual_seed(0)
    net = with_bn_statistics(TinyNet())
    shapes = {"x": (1, 3, 16, 16)}
    arm64 = edgec.compile(net, target="arm64", output=tmp_path / "arm64", input_shapes=shapes)
    report = _profile_json(arm64.path, device, "--per-op")
    kernels = [o for o in report["per_op"] if o["op_type"] == "kernel"]
    assert {"stem.0", "block.0", "head"} <= {o["module"] for o in kernels}
    assert any(p.startswith("bn_into_conv") for o in kernels for p in o["passes"])
    assert all(o["mean_ms"] > 0 for o in kernels)
    roof = report["roofline"]
    assert roof["emulated"] is True and roof["sgemm_gflops"] > 0 and roof["fraction"] > 0
    assert report["emulated"] is True

    # compare on the device: the same net without edgec's passes, interleaved with the folded
    unfolded = edgec.compile(
        net, target="arm64", output=tmp_path / "unfolded", input_shapes=shapes, passes=False
    )
    options = ["--device", device, "--rounds", "3", "--runs", "2", "--json"]
    r = subprocess.run(
        [EDGEC, "compare", str(unfolded.path), str(arm64.path), *options],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    compared = json.loads(r.stdout)
    assert "emulated" in compared["device"] and compared["max_output_error"] < 1e-4
    assert compared["ci_low"] <= compared["ratio"] <= compared["ci_high"]
    assert {"stem.0", "block.0", "head"} <= {m["module"] for m in compared["modules"]}

    mobile = edgec.compile(net, target="mobile", output=tmp_path / "mobile", input_shapes=shapes)
    assert mobile.manifest.artifacts["model"].endswith(".ort")
    report = _profile_json(mobile.path, device, "--per-op", "--no-roofline")
    assert {"stem.0", "block.0", "head"} <= {o["module"] for o in report["per_op"]}
    assert report["roofline"] is None
    assert sum(o["share"] for o in report["per_op"]) == pytest.approx(1.0)
    assert {m["module"] for m in report["per_module"]} >= {"stem.0", "head"}
