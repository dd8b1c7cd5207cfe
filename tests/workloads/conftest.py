"""Fixtures for the face-compare tests: the reference model (generated once per session), a CPU engine,
synthetic face crops, and real uvicorn servers on free loopback ports."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from workloads.face_compare import api, reference_model
from workloads.face_compare.engine import Engine
from workloads.face_compare.service import FaceCompareService
from workloads.face_compare.settings import Settings


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference_model.ensure(tmp_path_factory.mktemp("model") / "reference.onnx")


@pytest.fixture(scope="session")
def engine(model_path: Path) -> Engine:
    return Engine.load(model_path, device="cpu")


def face(seed: int, size: int = 112, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A synthetic face-crop-sized image: smooth colour regions plus detail, distinct per seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(7, 7, 3))
    pixels = np.kron(coarse, np.ones((size // 7 + 1, size // 7 + 1, 1)))[:size, :size]
    pixels = np.clip(pixels + rng.normal(0, 10, size=pixels.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, *, bits: int = 1, complete: bool = True) -> bytes:
    """A grey PNG of any declared size. Complete ones are valid (1-bit zeros compress to almost
    nothing, so 20000x20000 is ~40 kB); incomplete ones carry only the header and a stub of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    if complete:
        row = b"\x00" * (1 + (width * bits + 7) // 8)
        data = zlib.compress(row * height, 9)
    else:
        data = zlib.compress(b"\x00" * 64)
    tail = _png_chunk(b"IEND", b"") if complete else b""
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data) + tail


@pytest.fixture(scope="session")
def zero_png() -> bytes:
    return png_bytes(0, 0, bits=8, complete=False)


@pytest.fixture(scope="session")
def png_20000() -> bytes:
    return png_bytes(20000, 20000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    def __init__(self, service: FaceCompareService, url: str) -> None:
        self.service = service
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=60)


@contextmanager
def running_server(
    settings: Settings, load: Callable[[], Engine], *, wait_ready: bool = True
) -> Iterator[RunningServer]:
    """A real uvicorn server in a thread (the lifecycle tests use a subprocess and real signals)."""
    service = FaceCompareService(settings, engine_loader=load)
    port = free_port()
    config = uvicorn.Config(
        api.create_app(service), host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    running = RunningServer(service, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while True:
        try:
            status = running.client.get("/readyz").status_code
            if status == 200 or not wait_ready:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"server did not become ready (state {service.state}: {service.failure})")
        time.sleep(0.02)
    try:
        yield running
    finally:
        running.client.close()
        server.should_exit = True
        thread.join(timeout=30)


def make_settings(**overrides: object) -> Settings:
    """Settings independent of the developer's environment."""
    return Settings.from_env({}, **{"placement": "burst", "pool": "test-pool", **overrides})


@pytest.fixture(scope="session")
def settings_for() -> Callable[..., Settings]:
    return make_settings


@pytest.fixture(scope="session")
def make_face() -> Callable[..., bytes]:
    return face


@pytest.fixture(scope="session")
def start_server() -> Callable[..., AbstractContextManager[RunningServer]]:
    return running_server


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[RunningServer]:
    settings = make_settings(max_images_per_request=8, max_body_bytes=1024 * 1024)
    with running_server(settings, lambda: engine) as s:
        yield s
