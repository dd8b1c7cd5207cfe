"""One face-compare process: the engine, the batcher, the gallery, and the lifecycle that ties them.

States: ``starting`` (model loading, warm-up) -> ``ready`` -> ``draining`` (SIGTERM: readiness off, no
new work, queued and in-flight requests finish) -> ``stopped``; ``failed`` when the model cannot load.
The HTTP layer (api.py) asks this object; nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from workloads.face_compare import logs, reference_model
from workloads.face_compare.batcher import Batcher
from workloads.face_compare.engine import Engine
from workloads.face_compare.gallery import Gallery
from workloads.face_compare.images import ImageError, ImageLimits, preprocess
from workloads.face_compare.metrics import WorkloadMetrics
from workloads.face_compare.settings import Settings

State = Literal["starting", "ready", "draining", "stopped", "failed"]

log = logs.get("service")


class NotReadyError(Exception):
    """The service is starting, draining or failed; the message says which."""


@dataclass(frozen=True)
class BadImage:
    loc: str
    code: str
    message: str


class BadImagesError(Exception):
    """One or more images of a request were refused; every one of them is listed."""

    def __init__(self, problems: list[BadImage]) -> None:
        super().__init__("; ".join(f"{p.loc}: {p.message}" for p in problems))
        self.problems = problems


def load_engine(settings: Settings) -> Engine:
    """The configured model, or the reference model (generated once into the cache)."""
    path = settings.model_path or reference_model.ensure()
    return Engine.load(
        Path(path),
        device=settings.device,
        tensorrt=settings.tensorrt,
        intra_op_threads=settings.intra_op_threads,
        cpu_spinning=settings.cpu_spinning,
        max_batch_size=settings.max_batch_size,
    )


class FaceCompareService:
    def __init__(
        self,
        settings: Settings,
        *,
        engine_loader: Callable[[], Engine] | None = None,
        metrics: WorkloadMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or WorkloadMetrics(placement=settings.placement, pool=settings.pool)
        self._engine_loader = engine_loader or (lambda: load_engine(settings))
        self.state: State = "starting"
        self.failure: str | None = None
        self.engine: Engine | None = None
        self.gallery: Gallery | None = None
        self.batcher: Batcher | None = None
        self.inflight = 0
        self._startup: asyncio.Task[None] | None = None
        # Decoding runs off the event loop: a large JPEG takes milliseconds the loop should spend on I/O.
        self._decode = ThreadPoolExecutor(2, thread_name_prefix="decode")
        self.started_at = time.monotonic()

    # Lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading and warming up in the background; /healthz answers meanwhile."""
        self._startup = asyncio.create_task(self._load_and_warm_up(), name="startup")

    async def _load_and_warm_up(self) -> None:
        try:
            engine = await asyncio.to_thread(self._engine_loader)
            self.engine = engine
            self.gallery = Gallery(
                engine.info.embedding_dim,
                max_size=self.settings.gallery_max_size,
                path=self.settings.gallery_path,
            )
            self.batcher = Batcher(
                engine.embed,
                max_batch_size=self.settings.max_batch_size,
                max_queue_delay_s=self.settings.max_queue_delay_us / 1e6,
                max_queue_size=self.settings.max_queue_size,
                queue_timeout_s=self.settings.queue_timeout_s,
                max_queue_wait_s=self.settings.max_queue_wait_s,
                instances=self.settings.instances,
                metrics=self.metrics,
            )
            self.batcher.start()
            await self._warm_up(engine)
        except Exception as e:
            self.state = "failed"
            self.failure = f"{type(e).__name__}: {e}"
            log.exception("startup failed")
            return
        if self.state == "starting":
            self.state = "ready"
            self.metrics.ready.set(1)
            log.info(
                "ready",
                extra={
                    "startup_s": round(time.monotonic() - self.started_at, 3),
                    "provider": engine.info.provider,
                },
            )

    async def _warm_up(self, engine: Engine) -> None:
        """Run the batch shapes traffic will bring once, so the first users do not pay for lazy setup
        (allocator growth, cuDNN algorithm choice, TensorRT engine build)."""
        size = engine.info.input_size
        sizes = sorted({1, self.settings.max_batch_size})[: max(self.settings.warmup_batches, 0)]
        for n in sizes:
            started = time.monotonic()
            await asyncio.to_thread(engine.embed, np.zeros((n, 3, size, size), dtype=np.float32))
            log.info(
                "warm-up batch", extra={"batch_size": n, "seconds": round(time.monotonic() - started, 4)}
            )

    def begin_drain(self) -> None:
        """Readiness off and no new work; what was accepted finishes. Safe to call from a signal handler."""
        if self.state in ("draining", "stopped"):
            return
        self.state = "draining"
        self.metrics.ready.set(0)
        # Admission (api.py) refuses new requests from now on. The batcher stays open: a request
        # admitted a moment ago may still be decoding its images and has yet to queue them.
        log.info("draining", extra={"inflight": self.inflight})

    @property
    def idle(self) -> bool:
        return self.inflight == 0

    async def stop(self) -> None:
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
            await asyncio.gather(self._startup, return_exceptions=True)
        self.state = "stopped" if self.state != "failed" else "failed"
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop()
        self._decode.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")

    def healthy(self) -> bool:
        """Liveness: the process can make progress (the batcher runs, or is not started yet)."""
        if self.state == "failed":
            return False
        return self.batcher is None or self.batcher.running or self.state == "stopped"

    # Request accounting ------------------------------------------------------------------------------

    def request_started(self) -> None:
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)

    def request_finished(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.set(self.inflight)

    def check_accepting(self) -> None:
        if self.state != "ready":
            reason = {
                "starting": "the service is starting (loading and warming up the model)",
                "draining": "the service is shutting down; retry on another replica",
                "stopped": "the service is stopped",
                "failed": f"the model failed to load: {self.failure}",
            }[self.state]
            raise NotReadyError(reason)

    # Work --------------------------------------------------------------------------------------------

    @property
    def limits(self) -> ImageLimits:
        s = self.settings
        size = self.engine.info.input_size if self.engine else 112
        return ImageLimits(
            max_bytes=s.max_image_bytes,
            max_pixels=s.max_image_pixels,
            min_side=s.min_image_side,
            size=size,
            mean=s.input_mean,
            std=s.input_std,
        )

    async def embed(self, images: list[tuple[str, str]], tier: str) -> np.ndarray:
        """Embed (location, base64) images; refuses the whole request if any image is bad."""
        batcher = self.batcher
        if batcher is None:
            raise NotReadyError("the service is starting (loading and warming up the model)")
        batcher.admit(len(images), tier)  # before decoding: refusing the excess must cost little
        loop = asyncio.get_running_loop()
        tensors = await loop.run_in_executor(self._decode, self._decode_all, images, self.limits)
        return await batcher.submit(tensors, tier)

    @staticmethod
    def _decode_all(images: list[tuple[str, str]], limits: ImageLimits) -> np.ndarray:
        tensors, problems = [], []
        for loc, text in images:
            try:
                tensors.append(preprocess(text, limits))
            except ImageError as e:
                problems.append(BadImage(loc, e.code, e.message))
        if problems:
            raise BadImagesError(problems)
        return np.stack(tensors)

    async def search(self, embedding: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        assert self.gallery is not None
        return await asyncio.to_thread(self.gallery.search, embedding, top_k)
