"""``bench``: what one replica sustains, measured end to end; its answer is a scenario's ``gpu_rps``.

1. Raw engine throughput by batch size: onnxruntime alone, preprocessed inputs, no HTTP.
2. Served throughput and latency: the real ``serve`` command in a subprocess, driven open-loop (Poisson
   arrivals at a fixed offered rate, latency measured from the scheduled send time, so a slow server
   cannot slow the load down and hide its own queueing) with ``/v1/identify`` requests, one face each,
   against a small gallery, at offered loads stepping up through the raw engine's throughput.
3. ``gpu_rps``: the highest offered load whose p99 latency stays within the SLO with every request
   answered 200. Batching gain: best served throughput with dynamic batching over that with
   ``max_batch_size`` 1. Efficiency: served throughput over raw engine throughput at the batch size the
   server actually ran (from its ``facecompare_batch_size`` histogram).

The load generator shares the machine with the server; on a small CPU host its own cost (a lean h11
client, about 0.3 ms of CPU a request) lowers the served figures a little, so they are a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h11
import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from workloads.face_compare import metrics, reference_model
from workloads.face_compare.engine import Engine, EngineInfo

RAW_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
LOAD_FRACTIONS = (0.15, 0.3, 0.45, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)
QUICK_FRACTIONS = (0.5, 0.9, 1.2)
GALLERY_SUBJECTS = 100
CLIENT_TIMEOUT_S = 30.0
KEEPALIVE_REUSE_S = 2.0  # below the server's 5 s keep-alive timeout


@dataclass
class Step:
    offered_rps: float
    sent: int
    ok: int
    errors: dict[str, int]
    served_rps: float
    p50_ms: float | None
    p99_ms: float | None
    mean_batch_size: float | None
    server_cpu_ms_per_request: float | None

    def within(self, slo_ms: float) -> bool:
        return self.ok == self.sent and self.p99_ms is not None and self.p99_ms <= slo_ms


def synthetic_faces(count: int, seed: int = 7, size: int = 112) -> list[bytes]:
    """Distinct JPEG images of face-crop size: smooth colour fields with detail, like photos compress."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, size=(7, 7, 3))
        pixels = np.kron(coarse, np.ones((size // 7, size // 7, 1)))
        pixels += rng.normal(0, 12, size=pixels.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def raw_throughput(
    engine: Engine, batch_sizes: tuple[int, ...], seconds: float
) -> tuple[dict[int, float], dict[int, float]]:
    """Faces per second of the engine alone at each batch size, and its CPU milliseconds per face."""
    size = engine.info.input_size
    inputs = reference_model.calibration_images(max(batch_sizes), seed=3)
    if size != inputs.shape[-1]:
        inputs = np.zeros((max(batch_sizes), 3, size, size), dtype=np.float32)
    rates: dict[int, float] = {}
    cpu_ms: dict[int, float] = {}
    for n in batch_sizes:
        batch = inputs[:n]
        engine.embed(batch)  # first run of this shape
        # Best of three: on a shared host the slowest windows measure the neighbours, not the model.
        windows = []
        for _ in range(3):
            done, started, cpu_started = 0, time.perf_counter(), time.process_time()
            while (elapsed := time.perf_counter() - started) < seconds / 3 or done < 2 * n:
                engine.embed(batch)
                done += n
            windows.append((done / elapsed, 1000 * (time.process_time() - cpu_started) / done))
        rates[n], cpu_ms[n] = max(windows)
        print(
            f"  engine batch {n:>3}: {rates[n]:8.1f} faces/s  {cpu_ms[n]:5.1f} CPU ms/face", file=sys.stderr
        )
    return rates, cpu_ms


def _process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, all threads (Linux /proc); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interpolate(table: dict[int, float], batch: float) -> float:
    """Raw throughput at a fractional batch size, linear between the measured sizes."""
    sizes = sorted(table)
    return float(np.interp(batch, sizes, [table[s] for s in sizes]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoadClient:
    """A lean HTTP/1.1 keep-alive client (h11 over asyncio streams) for the open-loop generator.

    The generator shares the host with the server; httpx costs ~2.5 ms of CPU per request here, which
    on two cores would come straight out of the server's throughput. This costs a fraction of that.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection, float]] = []

    async def post(self, path: str, body: bytes) -> int:
        """POST a JSON body; the HTTP status (the body is read and dropped)."""
        while self._idle:
            reader, writer, conn, idle_since = self._idle.pop()
            if time.monotonic() - idle_since < KEEPALIVE_REUSE_S:
                try:
                    return await self._exchange(reader, writer, conn, path, body)
                except _StaleConnectionError:
                    continue  # the server closed it before reading our request: safe to resend
            writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return await self._exchange(reader, writer, h11.Connection(h11.CLIENT), path, body)

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h11.Connection,
        path: str,
        body: bytes,
    ) -> int:
        headers = [
            ("Host", f"{self.host}:{self.port}"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
        status = 0
        try:
            writer.write(conn.send(h11.Request(method="POST", target=path, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data and status == 0:
                        raise _StaleConnectionError
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionError("server closed the connection mid-response")
        except BaseException:
            writer.close()
            raise
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._idle.append((reader, writer, conn, time.monotonic()))
        else:
            writer.close()
        return status

    def close(self) -> None:
        for _, writer, _, _ in self._idle:
            writer.close()
        self._idle.clear()


class _StaleConnectionError(Exception):
    """A reused keep-alive connection was closed by the server before it answered."""


class ServerProcess:
    """The real ``serve`` command, as Kubernetes or the controller's local adapter runs it."""

    def __init__(self, model: Path, *, device: str, max_batch_size: int, max_queue_delay_us: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "FACECOMPARE_LOG_LEVEL": "warning",
            "GPUBURST_PLACEMENT": "private",
            "GPUBURST_POOL": "bench",
        }
        command = [
            sys.executable, "-m", "workloads.face_compare", "serve", "--host", "127.0.0.1",
            "--port", str(self.port), "--model", str(model), "--device", device,
            "--max-batch-size", str(max_batch_size), "--max-queue-delay-us", str(max_queue_delay_us),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, env=env)

    async def ready(self, client: httpx.AsyncClient, timeout_s: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                response = await client.get(self.url + "/readyz")
                if response.status_code == 200:
                    return dict(response.json()["detail"])
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=60)


async def _batch_totals(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    text = (await client.get(url + "/metrics")).text
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == metrics.BATCH_SIZE:
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total = sample.value
                elif sample.name.endswith("_count"):
                    count = sample.value
    return total, count


async def _step(
    client: httpx.AsyncClient,
    load: LoadClient,
    server: ServerProcess,
    bodies: list[bytes],
    *,
    rps: float,
    seconds: float,
) -> Step:
    rng = np.random.default_rng(int(rps * 1000))
    arrivals = np.cumsum(rng.exponential(1.0 / rps, size=int(rps * seconds * 1.5) + 10))
    arrivals = arrivals[arrivals < seconds]
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def one(body: bytes, scheduled: float) -> None:
        try:
            status = str(await asyncio.wait_for(load.post("/v1/identify", body), CLIENT_TIMEOUT_S))
        except (OSError, TimeoutError, h11.ProtocolError) as e:
            status = type(e).__name__
        if status == "200":
            latencies.append(time.perf_counter() - scheduled)
        else:
            errors[status] = errors.get(status, 0) + 1

    url = server.url
    before = await _batch_totals(client, url)
    cpu_before = _process_cpu_s(server.process.pid)
    start = time.perf_counter()
    tasks = []
    for i, offset in enumerate(arrivals):
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(bodies[i % len(bodies)], start + offset)))
    await asyncio.gather(*tasks)
    finished = time.perf_counter() - start
    cpu_after = _process_cpu_s(server.process.pid)
    after = await _batch_totals(client, url)
    batches = after[1] - before[1]
    lat_ms = np.array(latencies) * 1000
    return Step(
        offered_rps=round(rps, 1),
        sent=len(arrivals),
        ok=len(latencies),
        errors=errors,
        # Completions over the whole span including the tail, so a growing backlog is not counted as served.
        served_rps=round(len(latencies) / max(finished, seconds), 1),
        p50_ms=round(float(np.percentile(lat_ms, 50)), 1) if len(lat_ms) else None,
        p99_ms=round(float(np.percentile(lat_ms, 99)), 1) if len(lat_ms) else None,
        mean_batch_size=round((after[0] - before[0]) / batches, 2) if batches else None,
        server_cpu_ms_per_request=(
            round(1000 * (cpu_after - cpu_before) / len(arrivals), 2)
            if cpu_before is not None and cpu_after is not None and len(arrivals)
            else None
        ),
    )


async def _ladder(
    server: ServerProcess, faces: list[bytes], loads: list[float], seconds: float, slo_ms: float
) -> list[Step]:
    # Keep-alive expiry below the server's 5 s, so the client never reuses a connection the server closed.
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024, keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        await server.ready(client)
        encoded = [base64.b64encode(face).decode() for face in faces]
        for i, image in enumerate(encoded[:GALLERY_SUBJECTS]):
            response = await client.put(f"{server.url}/v1/gallery/subject-{i}", json={"image": image})
            response.raise_for_status()
        probes = encoded[GALLERY_SUBJECTS:] + encoded[:GALLERY_SUBJECTS]
        bodies = [json.dumps({"image": image, "top_k": 5}).encode() for image in probes]
        steps: list[Step] = []
        overloaded = 0
        load = LoadClient("127.0.0.1", server.port)
        for rps in loads:
            step = await _step(client, load, server, bodies, rps=rps, seconds=seconds)
            steps.append(step)
            print(
                f"  offered {step.offered_rps:7.1f} rps  served {step.served_rps:7.1f}  p50 {step.p50_ms} ms"
                f"  p99 {step.p99_ms} ms  batch {step.mean_batch_size}"
                f"  CPU ms/req {step.server_cpu_ms_per_request}  errors {step.errors}",
                file=sys.stderr,
            )
            overloaded = 0 if step.within(slo_ms) else overloaded + 1
            if overloaded >= 2:
                break
            await asyncio.sleep(1.0)  # let the backlog of an overloaded step clear
        load.close()
        return steps


def _served(model: Path, args: argparse.Namespace, max_batch: int, loads: list[float]) -> list[Step]:
    server = ServerProcess(
        model, device=args.device, max_batch_size=max_batch, max_queue_delay_us=args.max_queue_delay_us
    )
    try:
        faces = synthetic_faces(GALLERY_SUBJECTS + 64)
        return asyncio.run(_ladder(server, faces, loads, args.step_s, args.slo_ms))
    finally:
        rc = server.stop()
        if rc != 0:
            print(f"  server exited with {rc}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    model = args.model or reference_model.ensure()
    seconds = args.step_s if not args.quick else min(args.step_s, 3.0)
    fractions = QUICK_FRACTIONS if args.quick else LOAD_FRACTIONS
    raw_sizes = tuple(sorted({*RAW_BATCH_SIZES, args.max_batch_size}))

    print("raw engine throughput", file=sys.stderr)
    engine = Engine.load(model, device=args.device, max_batch_size=args.max_batch_size)
    load_before = os.getloadavg()
    raw, raw_cpu = raw_throughput(engine, raw_sizes, seconds=1.5 if args.quick else 3.0)
    info = engine.info
    del engine

    peak = max(raw.values())
    print(f"served, max_batch_size={args.max_batch_size}", file=sys.stderr)
    batched = _served(model, args, args.max_batch_size, [round(f * peak, 1) for f in fractions])
    print("served, max_batch_size=1", file=sys.stderr)
    single = _served(model, args, 1, [round(f * raw[1], 1) for f in fractions])

    report = {
        "host": _host(load_before),
        "model": _model_info(model, info),
        "settings": {
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_us": args.max_queue_delay_us,
            "step_s": seconds,
            "slo_ms": args.slo_ms,
            "endpoint": "/v1/identify (1 face, gallery of 100)",
        },
        "raw_engine_faces_per_s": {str(k): round(v, 1) for k, v in raw.items()},
        "raw_engine_cpu_ms_per_face": {str(k): round(v, 2) for k, v in raw_cpu.items()},
        "served": [asdict(s) for s in batched],
        "served_batch1": [asdict(s) for s in single],
        **_figures(raw, raw_cpu, batched, single, slo_ms=args.slo_ms, max_batch=args.max_batch_size),
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    summary = {
        k: report[k]
        for k in (
            "gpu_rps",
            "best_served_rps",
            "batching_gain",
            "served_over_raw_at_same_batch",
            "raw_cpu_over_served_cpu_at_same_batch",
        )
    }
    print(json.dumps({"device": info.device, **summary}))
    return 0


def _host(load_before: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def _model_info(model: Path, info: EngineInfo) -> dict[str, Any]:
    macs = reference_model.macs_per_face(model)
    return {
        "path": str(model),
        "macs_per_face": macs,
        "gflop_per_face": None if macs is None else round(2 * macs / 1e9, 3),
        "provider": info.provider,
        "device": info.device,
    }


def _figures(
    raw: dict[int, float],
    raw_cpu: dict[int, float],
    batched: list[Step],
    single: list[Step],
    *,
    slo_ms: float,
    max_batch: int,
) -> dict[str, Any]:
    """The headline figures: capacity within the SLO, and what batching and serving gain or cost."""
    within = [s for s in batched if s.within(slo_ms)]
    best = max(batched, key=lambda s: s.served_rps)
    best_single = max(single, key=lambda s: s.served_rps)
    at_batch = best.mean_batch_size or 1.0
    # CPU per request does not depend on what else the host runs; throughput does. On a shared host the
    # CPU ratio is the steadier measure of what serving costs on top of the model.
    cpu_ratio = None
    if best.server_cpu_ms_per_request and best.errors == {}:
        cpu_ratio = round(interpolate(raw_cpu, at_batch) / best.server_cpu_ms_per_request, 3)
    return {
        "gpu_rps": max((s.offered_rps for s in within), default=0.0),
        "best_served_rps": best.served_rps,
        "best_served_rps_batch1": best_single.served_rps,
        "batching_gain": round(best.served_rps / best_single.served_rps, 3)
        if best_single.served_rps
        else None,
        "served_over_raw_at_same_batch": round(best.served_rps / interpolate(raw, at_batch), 3),
        "raw_cpu_over_served_cpu_at_same_batch": cpu_ratio,
        "served_over_raw_at_max_batch": round(best.served_rps / raw[max_batch], 3),
        "served_batch1_over_raw_batch1": round(best_single.served_rps / raw[1], 3),
    }
