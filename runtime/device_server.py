"""The edgec device server: TVM's RPC server plus the functions edgec asks devices for.

Runs on the device with only Python, numpy and the TVM runtime (no edgec install needed),
with `op_timers.py` and `machine_peaks.py` beside it (onnxruntime too, for onnxruntime bundles
and the roofline's peaks):

    python3 device_server.py --host 0.0.0.0 --port 9190        # or `edgec device serve`

It is the same program that `edgec device emulate arm64` runs inside qemu. Sessions are forked
from this process (TVM's stock server re-executes sys.executable through a Popen worker, which
under qemu user mode is an arm64 binary the host cannot exec), so the functions registered here
exist in every session:
  edgec.device.info        -> JSON: machine, system, emulation (from EDGEC_DEVICE_EMULATED),
                              versions
  edgec.device.peak_rss_mb -> the session process's peak resident memory
  edgec.device.ort_run     -> runs an uploaded ONNX or ORT-format model with the device's
                              onnxruntime on uploaded inputs (npz), writes the outputs (npz)
  edgec.device.ort_time    -> times it: JSON of the cold start and each timed run (ms)
  edgec.device.ort_ops     -> onnxruntime's per-node times of it (JSON, `op_timers`)
  edgec.device.tvm_ops     -> the per-call times of an uploaded TVM library's `main` (JSON)
  edgec.device.peaks       -> this device's sgemm GFLOP/s and bandwidths (`machine_peaks`,
                              with the three probe models the host uploads)
and, where the runtime lacks it, the random fill MetaSchedule's RPC runner needs.
SIGTERM or SIGINT ends the server and its sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import sys

try:  # run as a script on a device, beside these two files, without edgec installed
    import machine_peaks  # type: ignore[import-not-found]
    import op_timers  # type: ignore[import-not-found]
except ImportError:
    from edgec.runtime import machine_peaks, op_timers


def _version(module: str) -> str:
    """The module's version, or "" where the device does not have it."""
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return ""


def _ort_session(model: str, options_json: str) -> object:
    """An onnxruntime CPU session of an uploaded model, with a bundle's options."""
    import onnxruntime as ort
    import tvm_ffi

    options = json.loads(options_json)
    so = ort.SessionOptions()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so.graph_optimization_level = levels[options.get("graph_optimization_level", "all")]
    so.intra_op_num_threads = int(options.get("threads", 0))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if options.get("profile_prefix"):
        so.enable_profiling = True
        so.profile_file_prefix = options["profile_prefix"]
    if options.get("saved_runtime_optimizations"):
        so.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    path = tvm_ffi.get_global_func("tvm.rpc.server.workpath")(model)
    return ort.InferenceSession(
        path,
        so,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=options.get("disabled_optimizers"),
    )


def _feeds(name: str) -> dict[str, object]:
    import numpy as np
    import tvm_ffi

    with np.load(tvm_ffi.get_global_func("tvm.rpc.server.workpath")(name)) as z:
        return {k: z[k] for k in z.files}


def _register_onnxruntime() -> None:
    """The onnxruntime functions, where the device has onnxruntime (imported here, once, so
    that every session forked from the server has it loaded)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return
    import time

    import numpy as np
    import tvm_ffi

    @tvm_ffi.register_global_func("edgec.device.ort_run", override=True)
    def ort_run(model: str, inputs: str, outputs: str, options: str) -> str:
        session = _ort_session(model, options)
        results = session.run(None, _feeds(inputs))  # type: ignore[attr-defined]
        path = tvm_ffi.get_global_func("tvm.rpc.server.workpath")(outputs)
        np.savez(path, *results)
        return str(len(results))

    @tvm_ffi.register_global_func("edgec.device.ort_time", override=True)
    def ort_time(model: str, inputs: str, options: str, runs: int, warmup: int) -> str:
        start = time.perf_counter()
        session = _ort_session(model, options)
        feeds = _feeds(inputs)
        session.run(None, feeds)  # type: ignore[attr-defined]
        cold_ms = (time.perf_counter() - start) * 1e3
        for _ in range(warmup):
            session.run(None, feeds)  # type: ignore[attr-defined]
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(None, feeds)  # type: ignore[attr-defined]
            times.append((time.perf_counter() - t0) * 1e3)
        return json.dumps({"cold_ms": cold_ms, "times_ms": times})

    @tvm_ffi.register_global_func("edgec.device.ort_ops", override=True)
    def ort_ops(model: str, inputs: str, options: str, runs: int) -> str:
        import tempfile

        parsed = json.loads(options)
        with tempfile.TemporaryDirectory() as tmp:
            parsed["profile_prefix"] = os.path.join(tmp, "ort")
            session = _ort_session(model, json.dumps(parsed))
            feeds = _feeds(inputs)
            for _ in range(runs):
                session.run(None, feeds)  # type: ignore[attr-defined]
            trace = session.end_profiling()  # type: ignore[attr-defined]
            return json.dumps(op_timers.ort_kernel_times(trace, runs))

    @tvm_ffi.register_global_func("edgec.device.peaks", override=True)
    def peaks(threads: int, gemm: str, stream: str, cache: str, sizes: str, repeats: int) -> str:
        workpath = tvm_ffi.get_global_func("tvm.rpc.server.workpath")
        models = []
        for name in (gemm, stream, cache):
            with open(workpath(name), "rb") as f:
                models.append(f.read())
        measured = machine_peaks.measure(
            int(threads),
            *models,
            gemm_sizes=tuple(json.loads(sizes)),
            repeats=int(repeats),
            budget_s=0.0,
        )
        return json.dumps(measured)


def _register() -> None:
    import tvm
    import tvm_ffi

    _register_onnxruntime()

    @tvm_ffi.register_global_func("edgec.device.info", override=True)
    def info() -> str:
        return json.dumps(
            {
                "machine": platform.machine(),
                "system": platform.system(),
                "release": platform.release(),
                "python": platform.python_version(),
                "tvm": tvm.__version__,
                "onnxruntime": _version("onnxruntime"),
                "cpus": os.cpu_count(),
                "emulated": os.environ.get("EDGEC_DEVICE_EMULATED", ""),
            }
        )

    @tvm_ffi.register_global_func("edgec.device.tvm_ops", override=True)
    def tvm_ops(library: str, inputs: str, names: str, runs: int, threads: int) -> str:
        from tvm.runtime.vm import VirtualMachine  # the runtime's own: no compiler here

        if threads > 0:
            tvm_ffi.get_global_func("runtime.config_threadpool")(1, int(threads))
        path = tvm_ffi.get_global_func("tvm.rpc.server.workpath")(library)
        vm = VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
        feeds = _feeds(inputs)
        args = [tvm.runtime.tensor(feeds[n]) for n in json.loads(names)]
        return json.dumps(op_timers.profile_calls(vm, args, int(runs)))

    @tvm_ffi.register_global_func("edgec.device.peak_rss_mb", override=True)
    def peak_rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    # MetaSchedule's RPC runner fills kernel arguments with this; TVM's runtime-only library
    # (what a device loads) lacks the contrib random module that normally provides it.
    if tvm_ffi.get_global_func("tvm.contrib.random.random_fill_for_measure", True) is None:

        @tvm_ffi.register_global_func("tvm.contrib.random.random_fill_for_measure")
        def random_fill(tensor: object) -> None:
            import numpy as np

            rng = np.random.default_rng(0)
            dtype = np.dtype(str(tensor.dtype))  # type: ignore[attr-defined]
            shape = tuple(int(d) for d in tensor.shape)  # type: ignore[attr-defined]
            if dtype.kind == "f":
                data = rng.uniform(-1.0, 1.0, shape).astype(dtype)
            else:
                data = rng.integers(0, 2, shape).astype(dtype)
            tensor.copyfrom(data)  # type: ignore[attr-defined]


def serve(host: str, port: int, executable: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; prints `edgec-device: serving on HOST:PORT` when ready."""
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    if executable:
        sys.executable = executable
    from tvm.rpc import server as rpc_server

    _register()
    state = rpc_server.PopenRPCServerState(host, port, port + 1, silent=True)
    if state.port is None:
        raise SystemExit(f"edgec-device: cannot bind {host}:{port}")

    def stop(signum: int, _frame: object) -> None:
        # end the session processes first (they are children of this process), then exit
        try:
            import psutil

            for child in psutil.Process().children(recursive=True):
                child.kill()
        except ImportError:
            pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"edgec-device: serving on {host}:{state.port}", flush=True)
    while True:
        signal.pause()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9190)
    parser.add_argument("--executable", help="What sys.executable should be (emulation).")
    args = parser.parse_args()
    serve(args.host, args.port, args.executable)


if __name__ == "__main__":
    main()
