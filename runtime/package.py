"""`edgec package BUNDLE --embed DIR`: a TVM bundle as a C++ project that needs no Python.

    DIR/
      model.so                the bundle's library
      io.txt                  one line per tensor: input|output NAME DTYPE D0 D1 ...
      inputs/NAME.bin         the reference input, raw (run_bundle reads these)
      expected/NAME.bin       the reference output, raw (what run_bundle must reproduce)
      edgec_runtime.hpp       the header-only wrapper over the TVM runtime and tvm-ffi
      run_bundle.cc           the example host program
      include/                the tvm-ffi and DLPack headers
      lib/                    libtvm_runtime.so and libtvm_ffi.so for the bundle's architecture
      build.sh                builds ./run_bundle with g++ (x86_64) or aarch64-linux-gnu-g++

The x86_64 libraries come from this host's TVM wheel; the aarch64 ones from the aarch64 wheels
of the same versions (the emulated device's sysroot when it is prepared, else downloaded once
into the cache). Only the tvm-ffi headers are shipped: the wheel's TVM runtime headers are
incomplete (shared ARM64.md), and the wrapper needs none of them.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import zipfile
from pathlib import Path

from edgec.cache import cache_dir
from edgec.core.errors import BundleError, DeviceError
from edgec.runtime.bundle import Bundle
from edgec.runtime.embed_files import check_empty, write_reference
from edgec.runtime.package_mobile import package_mobile
from edgec.runtime.tvm_backend import bundle_triple

EMBED_SOURCES = Path(__file__).with_name("embed")
LIBS = {"tvm": "libtvm_runtime.so", "tvm_ffi": "libtvm_ffi.so"}
COMPILERS = {"x86_64-linux-gnu": "g++", "aarch64-linux-gnu": "aarch64-linux-gnu-g++"}

BUILD_SH = """#!/bin/sh
# Builds ./run_bundle for {triple}. Then, on the device:
#   mkdir -p out && ./run_bundle model.so io.txt inputs out
# (an arm64 build runs here under qemu:
#   QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64-static ./run_bundle ...)
set -e
cd "$(dirname "$0")"
CXX="${{CXX:-{cxx}}}"
"$CXX" -std=c++17 -O2 -I. -Iinclude -o run_bundle run_bundle.cc \\
  -Llib -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi -Wl,-rpath,'$ORIGIN/lib'
echo "built $(pwd)/run_bundle with $CXX"
"""


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DeviceError(f"the Python package '{module}' is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _host_libs() -> dict[str, Path]:
    return {mod: _package_dir(mod) / "lib" / name for mod, name in LIBS.items()}


def _aarch64_libs() -> dict[str, Path]:
    """The aarch64 TVM runtime libraries at this host's TVM versions."""
    from edgec.runtime.emulator import READY, download_aarch64_wheels, sysroot_dir

    site = sysroot_dir() / "sysroot/usr/lib/python3/dist-packages"
    if (sysroot_dir() / READY).is_file():
        return {mod: site / mod / "lib" / name for mod, name in LIBS.items()}
    folder = cache_dir() / "embed" / "aarch64"
    libs = {mod: folder / name for mod, name in LIBS.items()}
    if all(p.is_file() for p in libs.values()):
        return libs
    wheels = folder / "wheels"
    download_aarch64_wheels(["apache-tvm", "apache-tvm-ffi"], wheels)
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            for mod, name in LIBS.items():
                member = f"{mod}/lib/{name}"
                if member in z.namelist():
                    (folder / name).write_bytes(z.read(member))
    missing = [str(p) for p in libs.values() if not p.is_file()]
    if missing:
        raise DeviceError(f"the aarch64 TVM wheels lack {', '.join(missing)}")
    return libs


def package_embed(bundle: Bundle, out: Path, build: bool = False) -> Path:
    """Write the C++ project for `bundle` into `out` (which must not exist or be empty): a
    mobile bundle's (`package_mobile`) or a TVM bundle's."""
    m = bundle.manifest
    if m.backend_options.get("format") == "ort":
        return package_mobile(bundle, out, build)
    triple = bundle_triple(bundle, "--embed")
    if triple not in COMPILERS:
        raise BundleError(f"bundle '{bundle.path}': no embedding for {triple}")
    check_empty(out)
    libs = _host_libs() if triple == "x86_64-linux-gnu" else _aarch64_libs()
    out.mkdir(parents=True, exist_ok=True)
    (out / "lib").mkdir()
    for path in libs.values():
        shutil.copy2(path, out / "lib" / path.name)
    shutil.copytree(_package_dir("tvm_ffi") / "include", out / "include")
    for name in ("edgec_runtime.hpp", "run_bundle.cc"):
        shutil.copy2(EMBED_SOURCES / name, out / name)
    shutil.copy2(bundle.path / m.artifacts["model"], out / "model.so")
    write_reference(bundle, out)
    script = out / "build.sh"
    script.write_text(BUILD_SH.format(triple=triple, cxx=COMPILERS[triple]))
    script.chmod(0o755)
    if build:
        cxx = COMPILERS[triple]
        if shutil.which(cxx) is None:
            raise DeviceError(
                f"'{cxx}' is not installed (Debian package "
                f"{'g++' if cxx == 'g++' else 'g++-aarch64-linux-gnu'})"
            )
        proc = subprocess.run(["sh", str(script)], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DeviceError(f"building {out / 'run_bundle'} failed: {last}")
    return out
