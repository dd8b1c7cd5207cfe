"""A real Prometheus for tests, and scrape targets that serve the workload metric contract on demand.

`running()` starts Debian's `/usr/bin/prometheus` on a free loopback port with a generated config and a
throwaway TSDB; each scrape job reads its targets from a `file_sd_configs` file that `set_targets`
rewrites, so a test can add and remove targets while Prometheus runs. `MetricsTarget` is one scrape
target (one "pod") whose counters grow at rates the test sets, so rates and quantiles are known exactly.

In a test module::

    from tests.support import prom

    prometheus = prom.prometheus  # the module-scoped fixture

Prometheus hands target changes to its scrape loops at most every 5 s (the discovery manager's update
throttle), so a test that changes targets waits a few seconds; stopping a target takes effect at the
next scrape (1 s).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import prometheus_client
import pytest
import yaml
from prometheus_client import core as prom_core
from prometheus_client import registry as prom_registry

from controller import ports
from controller.ports import clock as clock_mod
from workloads.face_compare import metrics as contract

PROMETHEUS_BIN = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")
SCRAPE_INTERVAL_S = 1.0
JOB = "face-compare"
"""The scrape job of the default fixture; the workload's default selector in tests is `job="face-compare"`."""

T = TypeVar("T")


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something other than None (or False); fail after `timeout`."""
    clock = clock_mod.SystemClock()
    deadline = clock.now() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last is not None and last is not False:
            return last
        if clock.now() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        clock.sleep(interval)


@dataclass(frozen=True)
class Target:
    """A scrape target as file_sd sees it: an address and the target labels Prometheus attaches."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


class PrometheusServer:
    """A running Prometheus: its URL, its scrape targets, and a small query helper for test conditions."""

    def __init__(self, workdir: Path, *, jobs: Sequence[str] = (JOB,), binary: str = PROMETHEUS_BIN) -> None:
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} not found: install Debian's prometheus package (make prometheus)")
        self.workdir = workdir
        self.jobs = tuple(jobs)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._binary = binary
        self._sd = workdir / "sd"
        self._sd.mkdir(parents=True, exist_ok=True)
        self.targets: dict[str, tuple[Target, ...]] = {}
        for job in self.jobs:
            self.set_targets(job, ())
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        self.log_file = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=5.0)

    def _config(self) -> dict[str, Any]:
        interval = f"{SCRAPE_INTERVAL_S:g}s"
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": [
                {
                    "job_name": job,
                    "file_sd_configs": [{"files": [str(self._sd_file(job))], "refresh_interval": "1s"}],
                }
                for job in self.jobs
            ],
        }

    def _sd_file(self, job: str) -> Path:
        return self._sd / f"{job}.json"

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, *, timeout: float = 30.0) -> PrometheusServer:
        log = self.log_file.open("wb")
        self._proc = subprocess.Popen(
            [
                self._binary,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        try:
            wait_until(self._ready, timeout=timeout, what=f"prometheus at {self.url} to be ready")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"prometheus exited with {self._proc.returncode}:\n{tail}")
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self._http.close()
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # -- targets ------------------------------------------------------------------------------------
    def set_targets(self, job: str, targets: Iterable[Target]) -> None:
        """Replace the job's targets; Prometheus picks the file up by itself (inotify, refresh 1 s)."""
        if job not in self.jobs:
            raise KeyError(f"no scrape job {job!r}; this Prometheus has {', '.join(self.jobs)}")
        targets = tuple(targets)
        groups = [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]
        path = self._sd_file(job)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        # Atomic: file_sd never reads a half-written file.
        tmp.replace(path)
        self.targets[job] = targets

    def active_targets(self, job: str) -> dict[str, str]:
        """Address -> health (`up`, `down`, `unknown`) of the job's targets as the scrape manager has them."""
        body = self._http.get("/api/v1/targets", params={"state": "active"}).json()
        return {
            t["labels"]["instance"]: t["health"]
            for t in body["data"]["activeTargets"]
            if t["labels"].get("job") == job
        }

    # -- queries for test conditions ------------------------------------------------------------------
    def query(self, promql: str, *, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, str | float] = {"query": promql}
        if at is not None:
            params["time"] = at
        body = self._http.get("/api/v1/query", params=params).json()
        if body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str, *, at: float | None = None) -> float | None:
        """The single value of an instant query; None when it returns no series."""
        result = self.query(promql, at=at)
        if not result:
            return None
        if len(result) != 1:
            raise AssertionError(f"{promql!r} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def wait_value(
        self, promql: str, check: Callable[[float | None], bool], *, timeout: float = 20.0
    ) -> float | None:
        """Poll an instant query until `check(value)` holds; returns that value."""
        seen: list[float | None] = []

        def probe() -> tuple[float | None] | None:
            v = self.value(promql)
            seen[:] = [v]
            return (v,) if check(v) else None

        try:
            return wait_until(probe, timeout=timeout, what=f"{promql!r}")[0]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last value {seen[0] if seen else 'none'}") from None

    def wait_samples(self, selector: str, count: int, *, timeout: float = 20.0) -> None:
        """Wait until Prometheus holds `count` samples of the targets' `up` series matched by `selector`.

        A rate over a window needs the window filled; counting successful scrapes says when it is.
        """
        promql = f"min(count_over_time(up{{{selector}}}[10m]))"
        self.wait_value(promql, lambda v: v is not None and v >= count, timeout=timeout)


@contextlib.contextmanager
def running(workdir: Path, *, jobs: Sequence[str] = (JOB,)) -> Iterator[PrometheusServer]:
    """A started Prometheus, stopped on exit whatever happened."""
    server = PrometheusServer(workdir, jobs=jobs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """One Prometheus per test module (starting it costs about a second), scraping job `face-compare`."""
    with running(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


# -- scrape targets ---------------------------------------------------------------------------------


@dataclass
class _Stream:
    """Requests of one (endpoint, tier, code) at a steady rate since `since`, plus what came before."""

    rps: float
    latencies: dict[float, float]
    since: float
    count: float = 0.0
    total_s: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * len(contract.LATENCY_BUCKETS))

    def at(self, now: float) -> tuple[float, float, list[float]]:
        """Request count, latency sum and cumulative bucket counts (finite buckets) at `now`."""
        n = self.rps * max(0.0, now - self.since)
        count = self.count + n
        total = self.total_s + n * sum(v * share for v, share in self.latencies.items())
        buckets = [
            base + n * sum(share for v, share in self.latencies.items() if v <= le)
            for base, le in zip(self.buckets, contract.LATENCY_BUCKETS, strict=True)
        ]
        return count, total, buckets


class MetricsTarget:
    """One scrape target serving the face-compare contract; the test sets rates, queue depth and readiness.

    Counters are a pure function of time (`rps * elapsed`), so Prometheus' rate() sees exactly `rps`
    and histogram_quantile() sees exactly the latency shares given: nothing depends on thread timing.
    """

    def __init__(
        self, *, placement: str = "private", pool: str = "private", clock: ports.Clock | None = None
    ) -> None:
        self.placement = placement
        self.pool = pool
        self.queue_depth = 0.0
        self.ready = 1.0
        self._clock: ports.Clock = clock or clock_mod.SystemClock()
        self._streams: dict[tuple[str, str, str], _Stream] = {}
        self._lock = threading.Lock()
        self._registry = prom_registry.CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        self._server: Any = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("target not started")
        return f"127.0.0.1:{self.port}"

    def target(self, **labels: str) -> Target:
        return Target(self.address, labels)

    def start(self) -> MetricsTarget:
        server, _thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=self._registry)
        self._server = server
        self.port = int(server.server_port)
        return self

    def stop(self) -> None:
        """Stop serving: the next scrape is refused and Prometheus records `up == 0`."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def set_traffic(
        self,
        *,
        tier: str,
        rps: float,
        latencies: Mapping[float, float] | None = None,
        endpoint: str = contract.ENDPOINT_VERIFY,
        code: int = 200,
    ) -> None:
        """From now on, `rps` requests per second of this kind, with latency value -> share of requests."""
        latencies = dict(latencies or {0.05: 1.0})
        if not math.isclose(sum(latencies.values()), 1.0):
            raise ValueError(f"latency shares must add up to 1, got {sum(latencies.values())}")
        now = self._clock.now()
        key = (endpoint, tier, str(code))
        with self._lock:
            old = self._streams.get(key)
            stream = _Stream(rps, latencies, now)
            if old is not None:
                stream.count, stream.total_s, stream.buckets = old.at(now)
            self._streams[key] = stream

    def collect(self) -> Iterable[prom_core.Metric]:
        """The prometheus_client Collector protocol: the contract's series as of this scrape."""
        where = [self.placement, self.pool]
        now = self._clock.now()
        requests = prom_core.CounterMetricFamily(
            contract.REQUESTS_TOTAL,
            "API requests answered.",
            labels=[contract.PLACEMENT, contract.POOL, contract.ENDPOINT, contract.TIER, contract.CODE],
        )
        duration = prom_core.HistogramMetricFamily(
            contract.REQUEST_DURATION_SECONDS,
            "Time to answer an API request.",
            labels=[contract.PLACEMENT, contract.POOL, contract.ENDPOINT, contract.TIER],
        )
        per_route: dict[tuple[str, str], tuple[float, float, list[float]]] = {}
        with self._lock:
            for (endpoint, tier, code), stream in self._streams.items():
                count, total, buckets = stream.at(now)
                requests.add_metric([*where, endpoint, tier, code], count)
                c0, t0, b0 = per_route.get((endpoint, tier), (0.0, 0.0, [0.0] * len(buckets)))
                per_route[(endpoint, tier)] = (
                    c0 + count,
                    t0 + total,
                    [a + b for a, b in zip(b0, buckets, strict=True)],
                )
        for (endpoint, tier), (count, total, buckets) in per_route.items():
            les = [(f"{le:g}", b) for le, b in zip(contract.LATENCY_BUCKETS, buckets, strict=True)]
            duration.add_metric([*where, endpoint, tier], [*les, ("+Inf", count)], total)
        queue = prom_core.GaugeMetricFamily(
            contract.QUEUE_DEPTH, "Images waiting.", labels=[contract.PLACEMENT, contract.POOL]
        )
        queue.add_metric(where, self.queue_depth)
        ready = prom_core.GaugeMetricFamily(
            contract.READY, "1 once accepting.", labels=[contract.PLACEMENT, contract.POOL]
        )
        ready.add_metric(where, self.ready)
        return [requests, duration, queue, ready]
