"""The service's settings: one validated object, read from ``FACECOMPARE_*`` and ``GPUBURST_*`` env vars.

Command-line flags override the environment; the Kubernetes manifests set the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

ENV_PREFIX = "FACECOMPARE_"
Device = Literal["auto", "cpu", "cuda"]
Placement = Literal["private", "burst"]


class Settings(BaseModel):
    """Limits and knobs of one face-compare process. Defaults suit one GPU replica."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Model and engine.
    model_path: Path | None = Field(None, description="ONNX model; None: the generated reference model")
    device: Device = "auto"
    tensorrt: bool = Field(False, description="put the TensorRT provider before CUDA (GPU only)")
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime CPU threads; 0: its default")
    cpu_spinning: bool = Field(False, description="let onnxruntime's CPU threads spin while waiting")
    instances: int = Field(1, ge=1, le=8, description="model instances executing batches concurrently")
    input_mean: float = 127.5
    input_std: float = 127.5

    # Dynamic batching (TF-Serving / Triton semantics). The queue counts images, not requests.
    max_batch_size: int = Field(32, ge=1, le=1024)
    max_queue_delay_us: int = Field(5000, ge=0, le=10_000_000)
    max_queue_size: int = Field(512, ge=1)
    queue_timeout_s: float = Field(10.0, gt=0)
    max_queue_wait_s: float = Field(
        0.25,
        gt=0,
        description="refuse a request whose estimated queue wait exceeds this: half the 0.5 s latency "
        "SLO, the rest is for its own batch, decoding and the network",
    )

    # Request limits.
    max_images_per_request: int = Field(16, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(2 * 1024 * 1024, ge=64)
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    min_image_side: int = Field(16, ge=1)
    max_top_k: int = Field(100, ge=1)

    # Matching.
    match_threshold: float = Field(0.35, ge=-1.0, le=1.0)

    # Gallery.
    gallery_path: Path | None = Field(None, description="npz snapshot loaded at start, saved on change")
    gallery_max_size: int = Field(1_000_000, ge=1)

    # Lifecycle.
    drain_timeout_s: float = Field(25.0, ge=0)
    warmup_batches: int = Field(2, ge=0)

    # Where this replica runs: every metric series carries these two labels.
    placement: Placement = "private"
    pool: str = Field("private", min_length=1, max_length=63)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_images_per_request > self.max_queue_size:
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) must not exceed max_queue_size "
                f"({self.max_queue_size}): such a request could never be queued"
            )
        if self.input_std == 0:
            raise ValueError("input_std must not be 0")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``FACECOMPARE_<FIELD>`` and ``GPUBURST_PLACEMENT``/``GPUBURST_POOL``.

        Unknown ``FACECOMPARE_*`` variables are an error, so that a typo in a manifest fails at start
        instead of silently leaving a default in place.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for key, value in env.items():
            if key.startswith(ENV_PREFIX):
                values[key.removeprefix(ENV_PREFIX).lower()] = value
        if "GPUBURST_PLACEMENT" in env:
            values["placement"] = env["GPUBURST_PLACEMENT"]
        if "GPUBURST_POOL" in env:
            values["pool"] = env["GPUBURST_POOL"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
