"""The TensorRT back end of the runtime: the bundle's engine loaded from BUNDLE.engine/
model.engine (what the bundle's build_engine.sh writes, beside the bundle: never into it), or
built from its ONNX when there is none, and run on the GPU.

Needs the `tensorrt` Python package and a CUDA GPU (through torch's CUDA tensors, which
Jetson's and NVIDIA's PyTorch builds have); where either is missing, opening the bundle is a
one-line BundleError saying so. Not run where edgec is developed (no TensorRT, no GPU): this
path is unverified there, which the manifest records as `engine_verified: false`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from edgec.core.errors import BundleError

ENGINE = "model.engine"  # what build_engine.sh writes into BUNDLE.engine/


def engine_path(bundle_path: Path) -> Path:
    return bundle_path.with_name(bundle_path.name + ".engine") / ENGINE


def _require(bundle_path: Path) -> tuple[Any, Any]:
    """(tensorrt, torch) with a CUDA device, or a BundleError naming what is missing."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        raise BundleError(
            f"bundle '{bundle_path}' runs on TensorRT, and this host has no 'tensorrt' Python "
            "package: run it on a Jetson or an NVIDIA GPU machine with TensorRT "
            "(its build_engine.sh builds the engine there)"
        ) from None
    torch = importlib.import_module("torch")
    if not torch.cuda.is_available():
        raise BundleError(
            f"bundle '{bundle_path}' runs on TensorRT, which needs a CUDA GPU; this host has none"
        )
    return trt, torch


def _build(trt: Any, logger: Any, onnx_path: Path, precision: str) -> bytes:
    builder = trt.Builder(logger)
    flags = 0
    if precision != "fp32":  # the ONNX's own types decide (fp16 guards, INT8 Q/DQ)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0) if parser.num_errors else "unknown error"
        raise BundleError(f"TensorRT cannot parse '{onnx_path}': {first}")
    config = builder.create_builder_config()
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise BundleError(f"TensorRT could not build an engine from '{onnx_path}'")
    return bytes(engine)


class TrtRunner:
    """Runs a TensorRT bundle's engine on the first CUDA device."""

    def __init__(self, bundle_path: Path, model: str, options: dict[str, Any]) -> None:
        trt, self.torch = _require(bundle_path)
        self.trt = trt
        logger = trt.Logger(trt.Logger.ERROR)
        engine_file = engine_path(bundle_path)
        if engine_file.is_file():
            serialized = engine_file.read_bytes()
        else:
            serialized = _build(trt, logger, bundle_path / model, options.get("precision", "fp32"))
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise BundleError(f"TensorRT cannot load the engine of bundle '{bundle_path}'")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.OUTPUT
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        keep = []
        for name, array in feeds.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            keep.append(tensor)
            self.context.set_tensor_address(name, tensor.data_ptr())
        results = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, self._np_dtype(name))).dtype
            out = torch.empty(shape, dtype=dtype, device="cuda")
            results.append(out)
            self.context.set_tensor_address(name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BundleError("TensorRT failed to run the engine")
        stream.synchronize()
        return [r.cpu().numpy() for r in results]

    def _np_dtype(self, name: str) -> np.dtype:
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
