"""The edgec device server: TVM's RPC server plus two functions edgec asks devices for.

Runs on the device with only Python, numpy and the TVM runtime (no edgec install needed):

    python3 device_server.py --host 0.0.0.0 --port 9190        # or `edgec device serve`

It is the same program that `edgec device emulate arm64` runs inside qemu. Sessions are forked
from this process (TVM's stock server re-executes sys.executable through a Popen worker, which
under qemu user mode is an arm64 binary the host cannot exec), so the functions registered here
exist in every session:
  edgec.device.info        -> JSON: machine, system, emulation (from EDGEC_DEVICE_EMULATED),
                              versions
  edgec.device.peak_rss_mb -> the session process's peak resident memory
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


def _register() -> None:
    import tvm
    import tvm_ffi

    @tvm_ffi.register_global_func("edgec.device.info", override=True)
    def info() -> str:
        return json.dumps(
            {
                "machine": platform.machine(),
                "system": platform.system(),
                "release": platform.release(),
                "python": platform.python_version(),
                "tvm": tvm.__version__,
                "cpus": os.cpu_count(),
                "emulated": os.environ.get("EDGEC_DEVICE_EMULATED", ""),
            }
        )

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
