"""The onnxruntime session: execution-provider choice, input checks and batched embedding.

Any ArcFace-compatible model loads here (input ``N x 3 x S x S``, output ``N x D``); the outputs are
L2-normalised after the run, so models that leave that to the caller (insightface's do) work unchanged.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime as ort

from workloads.face_compare import logs

CPU: Final = "CPUExecutionProvider"
CUDA: Final = "CUDAExecutionProvider"
TENSORRT: Final = "TensorrtExecutionProvider"

log = logs.get("engine")


class EngineError(RuntimeError):
    """The model cannot be served as asked (wrong shape, requested GPU not usable)."""


@dataclass(frozen=True)
class EngineInfo:
    """What was loaded and where it runs; reported by /readyz, the logs and the benchmark."""

    model_path: str
    provider: str
    device: str
    input_name: str
    input_size: int
    embedding_dim: int
    fixed_batch: int | None


def gpu_present() -> bool:
    """Whether an NVIDIA driver is installed (onnxruntime-gpu lists CUDA even on machines without one)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _providers(device: str, *, tensorrt: bool, max_batch_size: int, input_name: str, size: int) -> list[Any]:
    if device == "cpu":
        return [CPU]
    cuda = (CUDA, {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"})
    if not tensorrt:
        return [cuda, CPU]
    shape = f"{input_name}:{{n}}x3x{size}x{size}"
    trt = (
        TENSORRT,
        {
            "device_id": 0,
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": "/tmp/face-compare-trt",
            "trt_profile_min_shapes": shape.format(n=1),
            "trt_profile_opt_shapes": shape.format(n=max_batch_size),
            "trt_profile_max_shapes": shape.format(n=max_batch_size),
        },
    )
    return [trt, cuda, CPU]


class Engine:
    """One loaded model. ``embed`` is safe to call from several threads (onnxruntime sessions are)."""

    def __init__(self, session: ort.InferenceSession, info: EngineInfo) -> None:
        self._session = session
        self.info = info
        self._input_type = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        device: str = "auto",
        tensorrt: bool = False,
        intra_op_threads: int = 0,
        cpu_spinning: bool = False,
        max_batch_size: int = 32,
    ) -> Engine:
        """Open ``path`` on ``device``: ``cuda`` fails unless a GPU provider really runs it; ``auto``
        takes the GPU when there is one and falls back to the CPU (and says so)."""
        if device not in ("auto", "cpu", "cuda"):
            raise EngineError(f"device must be auto, cpu or cuda; got {device!r}")
        cuda_available = CUDA in ort.get_available_providers()
        if device == "cuda" and not cuda_available:
            raise EngineError("device 'cuda' asked for, but this onnxruntime build has no CUDA provider")
        want_gpu = device == "cuda" or (device == "auto" and cuda_available and gpu_present())

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        # Spinning threads wait for work by burning their core; next to an event loop and decode
        # threads on a few cores they steal the time those need, and stragglers stall every operator.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if cpu_spinning else "0")
        options.log_severity_level = 3
        # Probe the input on the CPU provider first: TensorRT needs its name and shape for its profile.
        probe = ort.InferenceSession(str(path), sess_options=options, providers=[CPU])
        input_name, size, fixed_batch = _check_input(probe, path)
        session = probe
        if want_gpu:
            providers = _providers(
                "cuda", tensorrt=tensorrt, max_batch_size=max_batch_size, input_name=input_name, size=size
            )
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        provider = session.get_providers()[0]
        if want_gpu and provider == CPU:
            if device == "cuda":
                raise EngineError(
                    "device 'cuda' asked for, but onnxruntime could not start the CUDA provider"
                )
            log.warning("no usable GPU provider, serving on the CPU", extra={"requested": device})
        outputs = session.get_outputs()
        dim = outputs[0].shape[-1]
        if len(outputs[0].shape) != 2 or not isinstance(dim, int):
            raise EngineError(f"{path}: output must be N x D with a fixed D; got {outputs[0].shape}")
        info = EngineInfo(
            model_path=str(path),
            provider=provider,
            device="cpu" if provider == CPU else "cuda",
            input_name=input_name,
            input_size=size,
            embedding_dim=dim,
            fixed_batch=fixed_batch,
        )
        log.info("model loaded", extra={"engine": info.__dict__})
        return cls(session, info)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) float32 -> (n, D) float32, each row of unit length."""
        n = batch.shape[0]
        step = self.info.fixed_batch or n
        parts = []
        for start in range(0, n, step):
            chunk = batch[start : start + step]
            if len(chunk) < step:  # a model with a fixed batch dimension gets a padded last chunk
                pad = np.zeros((step - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            out = self._session.run(None, {self.info.input_name: chunk.astype(self._input_type, copy=False)})[
                0
            ]
            parts.append(np.asarray(out[: min(step, n - start)], dtype=np.float32))
        embeddings = np.concatenate(parts) if len(parts) > 1 else parts[0]
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        normalised: np.ndarray = embeddings / np.maximum(norms, 1e-12)
        return normalised


def _check_input(session: ort.InferenceSession, path: Path) -> tuple[str, int, int | None]:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise EngineError(f"{path}: the model must have one input; it has {len(inputs)}")
    shape = inputs[0].shape
    ok = len(shape) == 4 and shape[1] == 3 and isinstance(shape[2], int) and shape[2] == shape[3]
    if not ok:
        raise EngineError(f"{path}: input must be N x 3 x S x S (an aligned face crop); got {shape}")
    fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return inputs[0].name, int(shape[2]), fixed
