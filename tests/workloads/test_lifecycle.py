"""The process lifecycle, as Kubernetes and the controller's local adapter drive it: the real
``python -m workloads.face_compare serve`` command, real HTTP, real signals."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(
    model: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    full_env = {
        **os.environ,
        "GPUBURST_PLACEMENT": "burst",
        "GPUBURST_POOL": "lifecycle-pool",
        "FACECOMPARE_INTRA_OP_THREADS": "1",
        **(env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "workloads.face_compare",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    command += ["--model", str(model), "--device", "cpu", *extra]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process, f"http://127.0.0.1:{port}", log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited while starting"
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("server did not become ready")


def log_lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_sigterm_drains_in_flight_and_queued_requests_then_exits_zero(
    model_path: Path, tmp_path: Path, make_face: Callable[..., bytes]
) -> None:
    images = [base64.b64encode(make_face(200 + i)).decode() for i in range(8)]
    requests = 16  # x 8 images: far more work than one batch, so most of it is queued at SIGTERM
    with serve(model_path, tmp_path, "--max-batch-size", "8") as (process, url, log):
        wait_ready(url, process)
        client = httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=64))
        pool = ThreadPoolExecutor(requests)
        try:
            answers: list[Future[httpx.Response]] = [
                pool.submit(client.post, "/v1/embed", json={"images": images}) for _ in range(requests)
            ]
            # Wait until the server has accepted every request, then signal.
            deadline = time.monotonic() + 30
            while client.get("/readyz").json()["detail"]["inflight"] < requests:
                assert time.monotonic() < deadline, "requests were not accepted"
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)

            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["state"] == "draining"
            metrics_text = client.get("/metrics").text
            assert 'facecompare_ready{placement="burst",pool="lifecycle-pool"} 0.0' in metrics_text
            late = client.post("/v1/embed", json={"images": images[:1]})
            assert late.status_code == 503 and late.headers["retry-after"] == "1"
            assert late.json()["error"]["code"] == "not_ready"
            # Most of the work was still queued or running when readiness flipped: the check meant something.
            assert sum(a.done() for a in answers) < requests // 2

            results = [a.result(timeout=120) for a in answers]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            client.close()
        assert [r.status_code for r in results] == [200] * requests
        assert all(len(r.json()["embeddings"]) == 8 for r in results)
        assert process.wait(timeout=60) == 0
    messages = [line["msg"] for line in log_lines(log)]
    assert "signal received: draining" in messages
    assert "drained: every accepted request was answered" in messages
    assert all(line.get("pool") == "lifecycle-pool" for line in log_lines(log))


def test_warm_up_runs_every_batch_shape_before_ready_and_an_idle_sigterm_exits_zero(
    model_path: Path, tmp_path: Path
) -> None:
    with serve(model_path, tmp_path, "--max-batch-size", "16") as (process, url, log):
        wait_ready(url, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    messages = [(line["msg"], line.get("batch_size")) for line in log_lines(log)]
    warm_ups = [m for m in messages if m[0] == "warm-up batch"]
    assert warm_ups == [("warm-up batch", 1), ("warm-up batch", 16)]
    assert messages.index(warm_ups[-1]) < messages.index(("ready", None))


def test_a_model_that_cannot_load_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    with serve(tmp_path / "missing.onnx", tmp_path) as (process, _, log):
        assert process.wait(timeout=60) == 1
    failures = [line for line in log_lines(log) if line["msg"] == "exiting: the model failed to load"]
    assert failures and "missing.onnx" in str(failures[0]["failure"])


def test_bad_settings_exit_2_and_say_which(tmp_path: Path, model_path: Path) -> None:
    with serve(model_path, tmp_path, env={"FACECOMPARE_MAX_BATCH_SIZ": "8"}) as (process, _, log):
        assert process.wait(timeout=60) == 2
    assert "max_batch_siz" in log.read_text()


@pytest.mark.parametrize("placement", ["private", "burst"])
def test_manifests_command_prints_what_render_returns(placement: str) -> None:
    import yaml

    from workloads.face_compare import manifests

    args = [sys.executable, "-m", "workloads.face_compare", "manifests", placement, "--image", "img:1"]
    if placement == "burst":
        args += ["--pool", "p1"]
    out = subprocess.run(args, cwd=REPO, check=True, capture_output=True, text=True).stdout
    pool = "p1" if placement == "burst" else None
    assert list(yaml.safe_load_all(out)) == manifests.render(placement, pool=pool, image="img:1")
