"""An emulated arm64 device: an aarch64 Python sysroot run under qemu user mode, serving TVM RPC.

    edgec device emulate arm64 --port 9190      # prepares once (cached), then serves until ^C

Preparing (the recipe measured in shared/ARM64.md, nothing on the host changes):
  1. Debian's arm64 python3.11, its standard library and libstdc++, downloaded by apt with a
     private state folder and architecture, unpacked with `dpkg -x` into the sysroot;
  2. the aarch64 wheels of numpy, TVM, tvm-ffi and onnxruntime at the host's versions (and what
     TVM's RPC server needs), installed into the sysroot's site-packages;
  3. bytecode precompiled with the host's python3.11 (58 s under emulation, 7 s here), and an
     ARM-format /proc/cpuinfo in the sysroot (onnxruntime reads it at import; qemu's prefix
     redirects the path there).
The sysroot lives in `<cache>/devices/arm64/` and is marked complete only at the end, so an
interrupted preparation starts again. Latency measured on this device is emulated latency.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from edgec.cache import cache_dir
from edgec.core.errors import DeviceError

log = logging.getLogger("edgec.device")

QEMU = "qemu-aarch64-static"
QEMU_PACKAGE = "qemu-user-static"
DEBIAN_PACKAGES = ["python3.11-minimal", "libpython3.11-stdlib", "libstdc++6"]
# pinned to the host's versions where the host has them
WHEELS = [
    "numpy",
    "apache-tvm",
    "apache-tvm-ffi",
    "onnxruntime",
    "cloudpickle",
    "psutil",
    "typing_extensions",
    "ml_dtypes",
    "packaging",
    "flatbuffers",
    "protobuf",
]
PYTHON_TAG = "3.11"
READY = "ready"  # the marker file of a complete sysroot
SERVER_SCRIPT = Path(__file__).with_name("device_server.py")

CPUINFO = """processor\t: {n}
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

"""


def sysroot_dir() -> Path:
    return cache_dir() / "devices" / "arm64"


def require_tool(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise DeviceError(
            f"'{tool}' is not installed (Debian package {package}; `make install` installs it)"
        )
    return path


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DeviceError(f"{what} failed (exit {proc.returncode}): {tail[0]}")


def _host_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


PLATFORM_OPTS = [
    "--only-binary=:all:",
    *("--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64"),
    *("--python-version", PYTHON_TAG, "--implementation", "cp"),
]


def download_aarch64_wheels(dists: list[str], dest: Path) -> None:
    """pip download the aarch64 wheels of `dists`, at the host's versions where it has them."""
    specs = []
    for dist in dists:
        version = _host_version(dist)
        specs.append(f"{dist}=={version}" if version else dist)
    _run(
        [
            *(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest)),
            *PLATFORM_OPTS,
            *specs,
        ],
        "pip download of the aarch64 wheels " + ", ".join(specs),
    )


def prepare(report: Callable[[str], None] | None = None, force: bool = False) -> Path:
    """Build the arm64 sysroot once; returns its path (reused while it is complete)."""
    root = sysroot_dir()
    sysroot = root / "sysroot"
    if (root / READY).is_file() and not force:
        return sysroot
    require_tool(QEMU, QEMU_PACKAGE)
    apt = require_tool("apt-get", "apt")
    require_tool("dpkg", "dpkg")

    def say(text: str) -> None:
        log.info(text)
        if report is not None:
            report(text)

    t0 = time.perf_counter()
    if root.exists():
        shutil.rmtree(root)
    state = root / "apt"
    (state / "var/lib/dpkg").mkdir(parents=True)
    (state / "var/lib/dpkg/status").touch()
    (state / "var/cache/apt/archives/partial").mkdir(parents=True)
    (state / "etc/apt/sources.list.d").mkdir(parents=True)
    for src in Path("/etc/apt/sources.list.d").glob("*"):
        if src.suffix in (".sources", ".list"):
            shutil.copy(src, state / "etc/apt/sources.list.d" / src.name)
    if Path("/etc/apt/sources.list").is_file():
        shutil.copy("/etc/apt/sources.list", state / "etc/apt/sources.list")
    if Path("/etc/apt/trusted.gpg.d").is_dir():
        shutil.copytree("/etc/apt/trusted.gpg.d", state / "etc/apt/trusted.gpg.d")
    apt_opts = [
        f"-o=Dir={state}",
        f"-o=Dir::State::status={state}/var/lib/dpkg/status",
        "-o=APT::Architecture=arm64",
        "-o=APT::Architectures::=arm64",
        "-o=Debug::NoLocking=1",
    ]
    say("device arm64: fetching the Debian package lists (arm64)")
    _run([apt, *apt_opts, "update"], "apt-get update for arm64")
    say(f"device arm64: downloading {', '.join(DEBIAN_PACKAGES)} and what they need")
    _run(
        [
            apt,
            *apt_opts,
            "install",
            "-y",
            "--download-only",
            "--no-install-recommends",
            *DEBIAN_PACKAGES,
        ],
        "apt-get download of the arm64 Python",
    )
    debs = sorted((state / "var/cache/apt/archives").glob("*.deb"))
    if not debs:
        raise DeviceError("apt-get downloaded no arm64 packages")
    sysroot.mkdir(parents=True)
    say(f"device arm64: unpacking {len(debs)} packages into the sysroot")
    for deb in debs:
        _run(["dpkg", "-x", str(deb), str(sysroot)], f"dpkg -x {deb.name}")

    wheels = root / "wheels"
    say("device arm64: downloading the aarch64 wheels of " + ", ".join(WHEELS))
    download_aarch64_wheels(WHEELS, wheels)
    site = sysroot / "usr/lib/python3/dist-packages"
    _run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"),
            *("--target", str(site), *PLATFORM_OPTS),
            *(str(w) for w in sorted(wheels.glob("*.whl"))),
        ],
        "installing the aarch64 wheels into the sysroot",
    )
    shutil.rmtree(wheels, ignore_errors=True)  # installed: the wheels themselves are not needed
    say("device arm64: precompiling bytecode")
    compiler = shutil.which(f"python{PYTHON_TAG}") or sys.executable
    subprocess.run(
        [compiler, "-m", "compileall", "-q", "-j", "0", str(site), str(sysroot / "usr/lib")],
        capture_output=True,
    )
    (sysroot / "proc").mkdir(exist_ok=True)
    (sysroot / "proc/cpuinfo").write_text("".join(CPUINFO.format(n=i) for i in range(4)))
    _write_wrapper(sysroot)
    shutil.rmtree(state, ignore_errors=True)
    (root / READY).write_text(f"{time.perf_counter() - t0:.1f}\n")
    say(f"device arm64: sysroot ready in {time.perf_counter() - t0:.0f} s ({sysroot})")
    return sysroot


def _write_wrapper(sysroot: Path) -> None:
    """`python3` for the sysroot: the emulated interpreter, started through qemu.

    TVM's RPC tools re-execute sys.executable; under qemu user mode that is an arm64 binary the
    host cannot exec, so sys.executable points here.
    """
    wrapper = sysroot.parent / "python3-arm64"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'export QEMU_LD_PREFIX="{sysroot}"\n'
        "export TVM_USE_RUNTIME_LIB=1\n"
        f'exec {shutil.which(QEMU) or QEMU} "{sysroot}/usr/bin/python{PYTHON_TAG}" "$@"\n'
    )
    wrapper.chmod(0o755)


def python_command(sysroot: Path) -> list[str]:
    return [str(sysroot.parent / "python3-arm64")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def emulate(port: int = 0, startup_s: float = 120.0) -> Iterator[tuple[str, int]]:
    """Start the RPC server under qemu on 127.0.0.1; yields (host, port); stops it after.

    The server runs in its own process group, so stopping it ends its session workers too.
    """
    sysroot = prepare()
    port = port or free_port()
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["EDGEC_DEVICE_EMULATED"] = "qemu-aarch64 user mode"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.Popen(
        [
            *python_command(sysroot),
            str(SERVER_SCRIPT),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--executable",
            python_command(sysroot)[0],
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_ready(proc, startup_s)
        yield "127.0.0.1", port
    finally:
        stop(proc)


def _wait_ready(proc: subprocess.Popen[str], timeout_s: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("edgec-device: serving"):
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            return
    raise DeviceError(
        "the emulated arm64 device did not start: " + (lines[-1] if lines else "no output")
    )


def _drain(stream: IO[str]) -> None:
    """Keep reading the server's output, so that a full pipe never blocks it."""
    for line in stream:
        log.debug("device: %s", line.rstrip())


def stop(proc: subprocess.Popen[str], grace_s: float = 10.0) -> None:
    """End the server and every process of its group (session workers included)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
