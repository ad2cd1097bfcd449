"""Run, verify and profile a bundle on a device over TVM RPC: a TVM bundle's library, or an
onnxruntime bundle's model (ONNX or the mobile target's ORT format) with the device's own
onnxruntime.

    with connect("192.168.1.20:9190") as device:      # `edgec device serve` on the board
        report = device.verify(bundle)
        timing = device.profile(bundle, runs=50)

A TVM library is uploaded, loaded into a Relax VM on the device, fed the bundle's stored
reference input and compared here against the stored output; timings come from the device's own
timer (`time_evaluator`), so RPC round trips are not in them. An onnxruntime model is uploaded
with the inputs as npz, run by the device server's `edgec.device.ort_run` / `ort_time`
(`runtime/device_server.py`), timed there with its clock. A device that says it is emulated
(`edgec device emulate`) has its latency labelled as emulated: it is not device latency.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgec.core.errors import BundleError, DeviceError, OptionError
from edgec.runtime import roofline
from edgec.runtime.bundle import Bundle, load_reference, sha256_file
from edgec.runtime.compare import rel_error
from edgec.runtime.machine_peaks import GEMM_SIZES
from edgec.runtime.op_profile import OpTime, from_ort, from_tvm, load_op_map
from edgec.runtime.profile import (
    ProfileReport,
    check_counts,
    check_per_op,
    make_report,
    with_breakdown,
)
from edgec.runtime.session import VerifyReport

CONNECT_TIMEOUT_S = 15.0
SESSION_TIMEOUT_S = 1800.0


def parse_device(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise OptionError(f"--device must be HOST:PORT (got '{text}')")
    return host, int(port)


@dataclass
class DeviceInfo:
    address: str
    machine: str
    emulated: str  # how, or "" for real hardware
    raw: dict[str, Any]

    def describe(self) -> str:
        how = f", emulated: {self.emulated}" if self.emulated else ""
        return f"{self.machine} device at {self.address}{how}"


class RemoteDevice:
    """An open RPC session with a device running `edgec device serve` (or the emulator)."""

    def __init__(self, address: str, session: Any) -> None:
        self.address = address
        self.session = session
        self._uploaded: set[str] = set()
        raw = json.loads(session.get_function("edgec.device.info")())
        self.info = DeviceInfo(address, raw["machine"], raw.get("emulated", ""), raw)

    def _check_bundle(self, bundle: Bundle) -> None:
        from edgec.runtime.tvm_backend import bundle_triple

        if bundle.manifest.backend != "tvm":
            raise BundleError(
                f"bundle '{bundle.path}' runs on {bundle.manifest.backend}, which an edgec device "
                "server does not run: run it where that back end is (`edgec verify BUNDLE` there)"
            )
        triple = bundle_triple(bundle, "a device")
        if not triple.startswith(self.info.machine):
            raise BundleError(
                f"bundle '{bundle.path}' is built for {triple}; the device at {self.address} "
                f"is {self.info.machine}"
            )

    def _upload(self, bundle: Bundle, name: str) -> str:
        """Upload one of the bundle's files; returns its name on the device, which is named by
        content: the device's loader keeps a library by its path, so two bundles uploaded as
        'model.so' in one session would run the first one's code. A file is uploaded once
        per session: writing over a library the session has loaded would crash it."""
        digest = bundle.manifest.files.get(name) or sha256_file(bundle.path / name)
        remote_name = f"{digest[:16]}-{name}"
        if remote_name not in self._uploaded:
            self.session.upload(str(bundle.path / name), target=remote_name)
            self._uploaded.add(remote_name)
        return remote_name

    def _load(self, bundle: Bundle, threads: int = 0) -> tuple[Any, Any]:
        from tvm import relax

        self._check_bundle(bundle)
        if threads > 0:
            self.session.get_function("runtime.config_threadpool")(1, threads)
        lib = self.session.load_module(self._upload(bundle, bundle.manifest.artifacts["model"]))
        dev = self.session.cpu()
        return relax.VirtualMachine(lib, dev), dev

    def _args(self, bundle: Bundle, feeds: dict[str, np.ndarray], dev: Any) -> list[Any]:
        import tvm

        names = [s.name for s in bundle.manifest.inputs]
        return [tvm.runtime.tensor(np.ascontiguousarray(feeds[n]), device=dev) for n in names]

    @staticmethod
    def _call(vm: Any, args: list[Any]) -> list[np.ndarray]:
        """Run `main` and fetch its outputs: through the VM's stateful calls, which read a
        tuple of outputs item by item (a tuple returned over RPC is a remote object that
        cannot be iterated here)."""
        vm.set_input("main", *args)
        vm.invoke_stateful("main")
        result = vm.get_outputs("main")
        items = [result] if hasattr(result, "numpy") else list(result)
        return [r.numpy() for r in items]

    def _ort_upload(self, bundle: Bundle, feeds: dict[str, np.ndarray]) -> tuple[str, str]:
        """The model (and its external weights) and the inputs, uploaded for the device's
        onnxruntime; returns their names there."""
        if not self.info.raw.get("onnxruntime"):
            raise DeviceError(
                f"the device at {self.address} has no onnxruntime, which bundle "
                f"'{bundle.path}' needs: install it beside the device server"
            )
        artifacts = bundle.manifest.artifacts
        weights = artifacts.get("weights")
        if weights is not None:  # the model names it: it keeps its own name
            key = f"{weights}@{bundle.manifest.files.get(weights, '')}"
            if key not in self._uploaded:
                self.session.upload(str(bundle.path / weights), target=weights)
                self._uploaded.add(key)
        model = self._upload(bundle, artifacts["model"])
        return model, self._upload_inputs(model, feeds)

    def _upload_inputs(self, artifact: str, feeds: dict[str, np.ndarray]) -> str:
        """The inputs as npz on the device, named after the artifact they are for."""
        buffer = io.BytesIO()
        np.savez(buffer, **feeds)  # type: ignore[arg-type]
        inputs = f"{artifact}.inputs.npz"
        self.session.upload(bytearray(buffer.getvalue()), target=inputs)
        return inputs

    @staticmethod
    def _ort_options(bundle: Bundle, threads: int) -> str:
        keys = ("graph_optimization_level", "disabled_optimizers", "saved_runtime_optimizations")
        options = bundle.manifest.backend_options
        return json.dumps({**{k: options[k] for k in keys if k in options}, "threads": threads})

    def _ort_run(self, bundle: Bundle, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        model, inputs = self._ort_upload(bundle, feeds)
        outputs = f"{model}.outputs.npz"
        count = int(
            self.session.get_function("edgec.device.ort_run")(
                model, inputs, outputs, self._ort_options(bundle, 0)
            )
        )
        with np.load(io.BytesIO(bytes(self.session.download(outputs)))) as z:
            return [z[f"arr_{i}"] for i in range(count)]

    def run(self, bundle: Bundle, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if bundle.manifest.backend == "onnxruntime":
            outs = self._ort_run(bundle, feeds)
        else:
            vm, dev = self._load(bundle)
            outs = self._call(vm, self._args(bundle, feeds, dev))
        return {s.name: o for s, o in zip(bundle.manifest.outputs, outs, strict=True)}

    def verify(
        self,
        bundle: Bundle,
        inputs: dict[str, np.ndarray] | None = None,
        expected: dict[str, np.ndarray] | None = None,
        tolerance: float | None = None,
    ) -> VerifyReport:
        """Run the reference input on the device and compare with the reference output."""
        if inputs is None or expected is None:
            inputs, expected = load_reference(bundle)
        got = self.run(bundle, inputs)
        tol = tolerance if tolerance is not None else bundle.manifest.reference["tolerance"]
        return VerifyReport({k: rel_error(got[k], v) for k, v in expected.items()}, float(tol))

    def profile(
        self,
        bundle: Bundle,
        runs: int = 100,
        warmup: int = 10,
        threads: int = 1,
        per_op: bool = False,
        with_roofline: bool = True,
    ) -> ProfileReport:
        """The same report as a local run, timed by the device's clock: with `per_op`, the
        per-op breakdown measured on the device; with `with_roofline`, the device's own peaks."""
        check_counts(runs, warmup, threads)
        if per_op:
            check_per_op(bundle)
        feeds, _ = load_reference(bundle)
        if bundle.manifest.backend == "onnxruntime":
            report = self._ort_profile(bundle, feeds, runs, warmup, threads)
        else:
            report = self._tvm_profile(bundle, feeds, runs, warmup, threads)
        peaks = self.peaks(threads) if with_roofline else None
        ops = self.op_breakdown(bundle, feeds, threads, min(runs, 20), peaks) if per_op else []
        return with_breakdown(report, bundle, ops, peaks)

    def peaks(self, threads: int) -> dict[str, Any] | None:
        """The device's sgemm throughput and bandwidth with `threads` threads (0: all), measured
        there once and cached here per device; None where it has no onnxruntime to time them."""
        if not self.info.raw.get("onnxruntime"):
            return None
        count = threads or int(self.info.raw.get("cpus") or 1)

        # qemu runs a 1024 x 1024 sgemm in about ten seconds: smaller and fewer there
        sizes, repeats = ((128, 256), 2) if self.info.emulated else (GEMM_SIZES, 5)

        def measure(n: int) -> dict[str, Any]:
            names = ["edgec-peaks-gemm.onnx", "edgec-peaks-stream.onnx", "edgec-peaks-cache.onnx"]
            for name, data in zip(names, roofline.probe_models(), strict=True):
                self.session.upload(bytearray(data), target=name)
            peaks = self.session.get_function("edgec.device.peaks")
            measured = json.loads(peaks(n, *names, json.dumps(sizes), repeats))
            return {**measured, "emulated": bool(self.info.emulated)}

        key = f"device-{self.info.machine}-{self.address}-{self.info.emulated or 'real'}"
        return roofline.cached(key, count, measure)

    def op_breakdown(
        self,
        bundle: Bundle,
        feeds: dict[str, np.ndarray],
        threads: int,
        runs: int,
        peaks: dict[str, Any] | None = None,
    ) -> list[OpTime]:
        """The per-op times of `bundle` measured on the device, mapped to the source."""
        check_per_op(bundle)
        op_map = load_op_map(bundle)
        if bundle.manifest.backend == "onnxruntime":
            model, inputs = self._ort_upload(bundle, feeds)
            records = json.loads(
                self.session.get_function("edgec.device.ort_ops")(
                    model, inputs, self._ort_options(bundle, threads), runs
                )
            )
            return from_ort(records, op_map, peaks)
        self._check_bundle(bundle)
        library = self._upload(bundle, bundle.manifest.artifacts["model"])
        inputs = self._upload_inputs(library, feeds)
        names = json.dumps([s.name for s in bundle.manifest.inputs])
        calls = json.loads(
            self.session.get_function("edgec.device.tvm_ops")(library, inputs, names, runs, threads)
        )
        return from_tvm(calls, op_map, peaks)

    def _tvm_profile(
        self, bundle: Bundle, feeds: dict[str, np.ndarray], runs: int, warmup: int, threads: int
    ) -> ProfileReport:
        start = time.perf_counter()
        vm, dev = self._load(bundle, threads)
        args = self._args(bundle, feeds, dev)
        self._call(vm, args)
        cold_ms = (time.perf_counter() - start) * 1e3  # upload + load + first run, over RPC
        for _ in range(warmup):
            vm["main"](*args)
        timer = vm.time_evaluator("main", dev, number=1, repeat=runs)
        return make_report(
            bundle,
            [float(t) * 1e3 for t in timer(*args).results],
            cold_ms,
            threads,
            warmup,
            float(self.session.get_function("edgec.device.peak_rss_mb")()),
            device=self.info.describe(),
            emulated=bool(self.info.emulated),
        )

    def _ort_profile(
        self, bundle: Bundle, feeds: dict[str, np.ndarray], runs: int, warmup: int, threads: int
    ) -> ProfileReport:
        start = time.perf_counter()
        model, inputs = self._ort_upload(bundle, feeds)
        upload_ms = (time.perf_counter() - start) * 1e3
        timed = json.loads(
            self.session.get_function("edgec.device.ort_time")(
                model, inputs, self._ort_options(bundle, threads), runs, warmup
            )
        )
        return make_report(
            bundle,
            [float(t) for t in timed["times_ms"]],
            upload_ms + float(timed["cold_ms"]),  # upload, session creation, first run
            threads,
            warmup,
            float(self.session.get_function("edgec.device.peak_rss_mb")()),
            device=self.info.describe(),
            emulated=bool(self.info.emulated),
        )


@contextlib.contextmanager
def connect(device: str, timeout_s: float = CONNECT_TIMEOUT_S) -> Iterator[RemoteDevice]:
    """Open an RPC session; a dead or unreachable device is a DeviceError within `timeout_s`."""
    host, port = parse_device(device)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise DeviceError(
            f"device {device} is unreachable ({e.strerror or e}); start it with "
            "`edgec device serve` or `edgec device emulate arm64`"
        ) from None
    result: dict[str, Any] = {}

    def open_session() -> None:
        try:
            from tvm import rpc

            session = rpc.connect(host, port, session_timeout=SESSION_TIMEOUT_S)
            result["device"] = RemoteDevice(device, session)
        except Exception as e:
            result["error"] = e

    worker = threading.Thread(target=open_session, daemon=True)
    worker.start()
    worker.join(3 * timeout_s)  # TVM's import and the handshake, then the info call
    if worker.is_alive():
        raise DeviceError(f"device {device} accepted the connection but did not answer")
    if "error" in result:
        first = str(result["error"]).strip().splitlines()
        raise DeviceError(
            f"device {device} is not an edgec device server: {first[-1] if first else ''}"
        )
    remote: RemoteDevice = result["device"]
    try:
        yield remote
    finally:
        remote.session = None
        # the session closes when its last reference goes; TVM's VirtualMachine holds its
        # module in a reference cycle once its stateful calls ran, and the device server
        # answers no one else until the session is closed
        gc.collect()
