"""`edgec package BUNDLE --embed DIR` for a mobile bundle: what an app needs to run it.

    DIR/
      model.ort                   the ORT-format model
      required_operators.config   the operators and types it uses (a reduced build's input)
      build_onnxruntime.sh        the reduced onnxruntime build's command lines (Android, iOS,
                                  Linux arm64), from onnxruntime's source tree
      run_ort_model.cc            a minimal C++ program on onnxruntime's C++ API
      build.sh                    builds it against ORT_HOME (include/ and lib/ of a build)
      io.txt, inputs/, expected/  the reference input and output, raw
      README.txt

Not built here: onnxruntime's C/C++ headers are in no package of the registries this project
can reach (the PyPI wheel ships none; npm's onnxruntime-node ships libonnxruntime.so.1 for
linux-arm64 but no headers), so `--build` says so instead of building.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnxruntime

from edgec.core.errors import DeviceError
from edgec.runtime.bundle import Bundle
from edgec.runtime.embed_files import check_empty, write_reference

EMBED_SOURCES = Path(__file__).with_name("embed")

BUILD_SH = """#!/bin/sh
# Builds ./run_ort_model against an onnxruntime build: ORT_HOME holds include/ (with
# onnxruntime_cxx_api.h) and lib/ (libonnxruntime.so), e.g. the reduced build of
# build_onnxruntime.sh or a release package. Then:
#   mkdir -p out && ./run_ort_model model.ort io.txt inputs out
set -e
cd "$(dirname "$0")"
: "${{ORT_HOME:?set ORT_HOME to an onnxruntime build (include/ and lib/)}}"
CXX="${{CXX:-{cxx}}}"
"$CXX" -std=c++17 -O2 -I"$ORT_HOME/include" -I"$ORT_HOME/include/onnxruntime" \\
  -o run_ort_model run_ort_model.cc -L"$ORT_HOME/lib" -lonnxruntime \\
  -Wl,-rpath,"$ORT_HOME/lib"
echo "built $(pwd)/run_ort_model with $CXX"
"""

BUILD_ORT_SH = """#!/bin/sh
# A reduced onnxruntime for this model: only the kernels and types in
# required_operators.config (made from the converted model.ort, so the kernels the converter
# introduced are in it). Run from a checkout of onnxruntime's source at version {version}:
#   sh /path/to/build_onnxruntime.sh android|ios|linux-arm64
# `--minimal_build extended` keeps what NNAPI, Core ML and saved runtime optimizations need.
set -e
CONFIG="$(cd "$(dirname "$0")" && pwd)/required_operators.config"
COMMON="--config MinSizeRel --parallel --skip_tests --build_shared_lib \\
  --minimal_build extended --disable_ml_ops --disable_rtti \\
  --include_ops_by_config $CONFIG --enable_reduced_operator_type_support"
case "$1" in
  android)
    # ANDROID_HOME and ANDROID_NDK_HOME: the SDK and NDK
    ./build.sh $COMMON --android --android_sdk_path "$ANDROID_HOME" \\
      --android_ndk_path "$ANDROID_NDK_HOME" --android_abi arm64-v8a --android_api 27 \\
      --use_nnapi --use_xnnpack ;;
  ios)
    ./build.sh $COMMON --ios --apple_sysroot iphoneos --osx_arch arm64 \\
      --apple_deploy_target 15.1 --use_coreml --use_xnnpack ;;
  linux-arm64)
    # natively on the board (or in an arm64 container)
    ./build.sh $COMMON --use_xnnpack ;;
  *)
    echo "usage: build_onnxruntime.sh android|ios|linux-arm64" >&2; exit 2 ;;
esac
"""

README = """edgec mobile package: {source}

model.ort                  onnxruntime ORT format ({style} optimization style{replay})
required_operators.config  the operators and types it needs: build_onnxruntime.sh makes a
                           reduced onnxruntime from it
run_ort_model.cc, build.sh a minimal C++ program on onnxruntime's C++ API: with ORT_HOME set
                           to an onnxruntime build, `./build.sh`, then
                           `mkdir -p out && ./run_ort_model model.ort io.txt inputs out`
                           and compare out/*.bin with expected/*.bin (float32, tolerance
                           {tolerance:g} relative to the largest magnitude)
inputs/, expected/, io.txt the reference input and the reference output, raw little-endian

Checked by edgec: the model against the reference with onnxruntime {version} when the
bundle was compiled; on an arm64 device with the device's onnxruntime by
`edgec verify BUNDLE --device HOST:PORT`. Not checked by edgec: this C++ program (not built
where edgec was developed: no package registry there ships onnxruntime's headers) and the
reduced build.
"""


def package_mobile(bundle: Bundle, out: Path, build: bool = False) -> Path:
    """Write the app project of a mobile bundle into `out` (missing or empty)."""
    m = bundle.manifest
    check_empty(out)
    if build:
        raise DeviceError(
            "--build: a mobile package builds against onnxruntime's C/C++ headers and library, "
            "which no package registry reachable here ships; build it with ORT_HOME set "
            "(see README.txt in the package)"
        )
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(bundle.path / m.artifacts["model"], out / "model.ort")
    shutil.copy2(bundle.path / m.artifacts["operators"], out / "required_operators.config")
    shutil.copy2(EMBED_SOURCES / "run_ort_model.cc", out / "run_ort_model.cc")
    write_reference(bundle, out)
    scripts = {
        "build.sh": BUILD_SH.format(cxx="g++"),
        "build_onnxruntime.sh": BUILD_ORT_SH.format(version=onnxruntime.__version__),
    }
    for name, text in scripts.items():
        (out / name).write_text(text)
        os.chmod(out / name, 0o755)
    replay = m.backend_options.get("saved_runtime_optimizations")
    (out / "README.txt").write_text(
        README.format(
            source=m.source.get("name", bundle.path.name),
            style=m.backend_options.get("optimization_style", "fixed"),
            replay=(
                "; set EDGEC_SAVED_RUNTIME_OPTIMIZATIONS=1 to replay its saved optimizations"
                if replay
                else ""
            ),
            tolerance=float(m.reference["tolerance"]),
            version=onnxruntime.__version__,
        )
    )
    return out
