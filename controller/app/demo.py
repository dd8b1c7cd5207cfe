"""`gpuburst demo`: the whole loop on this machine, in real time, for a few minutes.

What runs: Debian's Prometheus (scraping every 2 s through file_sd), one private face-compare worker,
and the live controller of `examples/local.yaml` (local capacity: each burst "node" is a face-compare
worker process started after a simulated boot delay), with its admin API and jobs. A load generator
sends open-loop `/v1/verify` requests (two synthetic faces each) to the ready workers, round robin, as a
Service would: low, then a peak that needs burst workers, then low again until they are released.
Progress is one line per tick on stdout; a summary (and `--json`) at the end.

On one machine the burst workers share its CPUs, so the extra capacity is a stand-in: the demo shows the
control loop (metrics -> decision -> workers launched, ready, serving, drained, released), not speed-up.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from controller.adapters import local as local_adapter
from controller.app import config, live
from controller.core import model
from controller.ports import clock as clock_mod
from controller.runtime import errors, logs

PROMETHEUS = os.environ.get("PROMETHEUS_BIN", "prometheus")
SCRAPE_S = 2.0
# The profile, as fractions of the run: low, peak, low (long enough for the release to show).
PROFILE = ((0.25, 0.4), (0.55, 1.0), (1.0, 0.4))
"""(until fraction of the run, fraction of the peak rate)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(probe: Any, *, what: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    clock = clock_mod.SystemClock()
    deadline = clock.now() + timeout_s
    while not probe():
        if proc is not None and proc.poll() is not None:
            raise errors.UserError(f"demo: {what} exited with status {proc.returncode}")
        if clock.now() > deadline:
            raise errors.UserError(f"demo: {what} not ready after {timeout_s:g} s")
        clock.sleep(0.2)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


# -- the parts the demo starts ------------------------------------------------------------------------
@dataclass
class Processes:
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        try:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=local_adapter.IMPORT_ROOT,
            )
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_prometheus(ps: Processes, *, port: int, targets_dir: Path, controller: str) -> str:
    binary = shutil.which(PROMETHEUS)
    if binary is None:
        raise errors.UserError(
            "demo: the `prometheus` binary is not installed (Debian/Ubuntu: apt-get install prometheus, "
            "or `make prometheus`; PROMETHEUS_BIN names another one)"
        )
    cfg = {
        "global": {"scrape_interval": f"{SCRAPE_S:g}s", "scrape_timeout": f"{SCRAPE_S:g}s"},
        "scrape_configs": [
            {
                "job_name": "face-compare",
                "file_sd_configs": [{"files": [str(targets_dir / "*.json")], "refresh_interval": "2s"}],
            },
            {"job_name": "gpuburst", "static_configs": [{"targets": [controller]}]},
        ],
    }
    path = ps.workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = ps.start(
        "prometheus",
        [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={ps.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: _http_ok(f"{url}/-/ready"), what="prometheus", timeout_s=30, proc=proc)
    return url


def start_private_worker(ps: Processes, *, targets_dir: Path) -> str:
    port = _free_port()
    argv = [
        part.format(host="127.0.0.1", port=port, pool="private", node="private")
        for part in config.WORKER_COMMAND
    ]
    proc = ps.start("private-worker", argv, env={"GPUBURST_PLACEMENT": "private", "GPUBURST_POOL": "private"})
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: _http_ok(f"{url}/readyz"), what="the private worker", timeout_s=60, proc=proc)
    (targets_dir / "private.json").write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {}}]))
    return url


def demo_config(source: Path, workdir: Path, *, prometheus_url: str, api_port: int) -> config.Loaded:
    """The local config with the demo's own paths and ports (written to the work dir, then loaded)."""
    try:
        data = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise errors.UserError(f"{source}: cannot read the demo config: {exc}") from None
    if not isinstance(data, dict):
        raise errors.UserError(f"{source}: a config is a mapping of sections")
    pools = data.get("pools") or []
    if not pools or any((p.get("adapter") or {}).get("kind") != "local" for p in pools):
        raise errors.UserError(f"{source}: the demo runs local pools only (adapter kind: local)")
    for pool in pools:
        pool["adapter"]["targets_file"] = str(workdir / "targets" / f"burst-{pool['name']}.json")
        pool["adapter"]["log_dir"] = str(workdir / "workers")
    if data.get("policy_file"):
        data["policy_file"] = str((source.parent / data["policy_file"]).resolve())
    data["store"] = {**(data.get("store") or {}), "path": str(workdir / "gpuburst.db")}
    data["prometheus"] = {**(data.get("prometheus") or {}), "url": prometheus_url}
    data["api"] = {"listen": f"127.0.0.1:{api_port}"}
    path = workdir / "controller.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return config.parse(data, source=path)


# -- load -----------------------------------------------------------------------------------------------
class Load:
    """Open-loop verify requests at the profile's rate, round robin over the ready workers."""

    def __init__(self, *, endpoints: Callable[[], list[str]], peak_rps: float, seconds: float) -> None:
        from workloads.face_compare import bench as fc_bench  # the workers this demo starts

        faces = [base64.b64encode(f).decode() for f in fc_bench.synthetic_faces(8)]
        self.bodies = [
            {"image_a": faces[i], "image_b": faces[(i + 1) % len(faces)]} for i in range(len(faces))
        ]
        self.endpoints = endpoints
        self.peak_rps = peak_rps
        self.seconds = seconds
        self.clock = clock_mod.SystemClock()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent = 0
        self.codes: dict[str, int] = {}
        self.latencies: list[float] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="demo-load")
        self.http = httpx.Client(timeout=10.0, limits=httpx.Limits(max_connections=64))
        self.thread = threading.Thread(target=self._run, name="demo-load", daemon=True)

    def rate(self, elapsed: float) -> float:
        for until, share in PROFILE:
            if elapsed < until * self.seconds:
                return share * self.peak_rps
        return PROFILE[-1][1] * self.peak_rps

    def _run(self) -> None:
        start = self.clock.now()
        due = start
        targets: list[str] = []
        refreshed = -math.inf
        i = 0
        while not self.stop.is_set():
            now = self.clock.now()
            elapsed = now - start
            if elapsed >= self.seconds:
                return
            if now - refreshed >= 1.0:
                targets, refreshed = list(self.endpoints()), now
            if now < due:
                self.stop.wait(min(due - now, 0.2))
                continue
            due += 1.0 / max(self.rate(elapsed), 0.1)
            if targets:
                self.pool.submit(self._send, targets[i % len(targets)], self.bodies[i % len(self.bodies)])
                i += 1

    def _send(self, url: str, body: dict[str, str]) -> None:
        watch = clock_mod.Stopwatch()
        try:
            code = str(
                self.http.post(f"{url}/v1/verify", json=body, headers={"X-Tier": "normal"}).status_code
            )
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        with self.lock:
            self.sent += 1
            self.codes[code] = self.codes.get(code, 0) + 1
            if code == "200":
                self.latencies.append(watch.elapsed())

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.pool.shutdown(wait=True)
        self.http.close()

    def summary(self) -> dict[str, Any]:
        with self.lock:
            lat = sorted(self.latencies)
            codes = dict(self.codes)
            sent = self.sent

        def q(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None

        return {"requests": sent, "codes": codes, "p50_ms": q(0.5), "p99_ms": q(0.99)}


# -- the run ------------------------------------------------------------------------------------------------
class Progress:
    """One line per tick, and the reasons whenever the decision is not steady."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.clock = clock_mod.SystemClock()
        self.start = self.clock.now()
        self.peak_nodes = 0
        self.actions: dict[str, int] = {}

    def __call__(self, report: model.TickReport) -> None:
        d = report.decision
        self.actions[d.action.value] = self.actions.get(d.action.value, 0) + 1
        counts = {p: dict(c) for p, c in report.nodes.items()}
        self.peak_nodes = max(self.peak_nodes, sum(sum(c.values()) for c in counts.values()))
        demand = ", ".join(f"{w} {rps:5.1f} req/s" for w, rps in d.demand_rps.items()) or "demand unknown"
        nodes = "; ".join(
            f"{p}: " + ", ".join(f"{n} {s}" for s, n in sorted(c.items())) for p, c in sorted(counts.items())
        )
        targets = ", ".join(f"{p}={n}" for p, n in d.target_nodes.items()) or "-"
        elapsed = self.clock.now() - self.start
        print(
            f"[{elapsed:5.0f}s] {demand} | target {targets} | {nodes or 'no burst nodes'} | "
            f"{d.action.value} | {report.usd_per_hour:.2f} USD/h",
            file=self.out,
            flush=True,
        )
        if d.action is not model.Action.STEADY:
            for reason in d.reasons:
                print(f"         - {reason}", file=self.out, flush=True)
        for t in report.transitions:
            print(
                f"         * {t.node}: {t.before or 'new'} -> {t.after} ({t.reason})",
                file=self.out,
                flush=True,
            )
        for e in report.errors:
            print(f"         ! {e}", file=self.out, flush=True)


@contextlib.contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="gpuburst-demo-") as tmp:
        yield Path(tmp)


def main(args: argparse.Namespace) -> int:
    logs.configure("warning")
    out = sys.stdout
    seconds = args.minutes * 60.0
    if seconds < 60:
        raise errors.UserError("demo: --minutes must be at least 1 (a burst needs time to boot and release)")
    with _workdir(args.workdir) as workdir:
        targets_dir = workdir / "targets"
        targets_dir.mkdir(parents=True, exist_ok=True)
        (workdir / "workers").mkdir(exist_ok=True)
        ps = Processes(workdir)
        ctl: live.Controller | None = None
        load: Load | None = None
        try:
            api_port = _free_port()
            prom_url = start_prometheus(
                ps, port=_free_port(), targets_dir=targets_dir, controller=f"127.0.0.1:{api_port}"
            )
            print(f"prometheus   {prom_url}", file=out, flush=True)
            private = start_private_worker(ps, targets_dir=targets_dir)
            print(f"private      {private} (1 worker)", file=out, flush=True)
            loaded = demo_config(args.config, workdir, prometheus_url=prom_url, api_port=api_port)
            ctl = live.build(loaded)
            progress = Progress(out)
            ctl.reconciler.observers.append(progress)
            server = ctl.start_api()
            if server is not None:
                ctl.closers.append(server.stop)
                print(
                    f"admin API    {server.url}  (/v1/status, /v1/decisions, /metrics)", file=out, flush=True
                )
            workload = ctl.setup.workloads[0]
            peak = args.peak_rps or 2.0 * workload.gpu_rps
            print(
                f"load         {seconds / 60:g} min: {PROFILE[0][1] * peak:.1f} req/s, peak {peak:.1f} req/s "
                f"(one worker stands in for {workload.gpu_rps:g} req/s), then back down",
                file=out,
                flush=True,
            )
            cluster = ctl.cluster
            pools = ctl.local

            def endpoints() -> list[str]:
                ready = {n for n, node in cluster.burst_nodes().items() if node.ready and not node.cordoned}
                burst = [url for lp in pools for n, url in lp.endpoints().items() if n in ready]
                return [private, *burst]

            load = Load(endpoints=endpoints, peak_rps=peak, seconds=seconds)
            load.start()
            # The controller starts once Prometheus has a full rate window of the base load: a rate
            # still filling its window reads as a rising trend.
            window = _window_s(ctl)
            _wait(
                lambda: _rate_known(prom_url, window),
                what="a full rate window in prometheus",
                timeout_s=window + 60,
            )
            print(f"controller   ticking every {loaded.config.tick_interval_s:g} s", file=out, flush=True)
            ctl.jobs.start()
            ctl.closers.append(ctl.jobs.shutdown)
            load.thread.join()
            # The load is over; give the controller the time its policy needs to let the last node go.
            policy = ctl.setup.policy
            boot = max((p.boot_s for p in ctl.setup.pools), default=0.0)
            grace = policy.keep_factor * boot + policy.horizon_extra_s + policy.drain_timeout_s
            clock = clock_mod.SystemClock()
            deadline = clock.now() + grace
            while clock.now() < deadline and _burst_nodes_left(ctl):
                clock.sleep(1.0)
            summary = _summary(ctl, load, progress)
        finally:
            if load is not None:
                load.close()
            if ctl is not None:
                ctl.close()
            ps.stop()
        _print_summary(summary, out)
        if args.json_out is not None:
            args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
        return 0


def _window_s(ctl: live.Controller) -> float:
    queries = ctl.loaded.config.prometheus_adapter_config().queries(ctl.setup.workloads[0].name)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", queries.window))


def _rate_known(prom_url: str, window_s: float) -> bool:
    """Prometheus holds samples of the private worker spanning the whole rate window."""
    query = f'min(count_over_time(up{{job="face-compare"}}[{window_s:g}s]))'
    try:
        body = httpx.get(f"{prom_url}/api/v1/query", params={"query": query}, timeout=2.0).json()
        result = body["data"]["result"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    return bool(result) and float(result[0]["value"][1]) >= window_s / SCRAPE_S


def _burst_nodes_left(ctl: live.Controller) -> bool:
    report = ctl.reconciler.last_report
    return report is None or bool(report.nodes)


def _summary(ctl: live.Controller, load: Load, progress: Progress) -> dict[str, Any]:
    transitions = ctl.store.audit(kind="transition", limit=10_000)
    launched = sorted({a.node for a in transitions if a.after == "requested" and a.node})
    released = sorted({a.node for a in transitions if a.after == "released" and a.node})
    ledger = ctl.store.ledger()
    last = ctl.reconciler.last_report
    return {
        "load": load.summary(),
        "decisions": progress.actions,
        "burst_nodes_launched": launched,
        "burst_nodes_released": released,
        "peak_burst_nodes": progress.peak_nodes,
        "still_running": {p: dict(c) for p, c in (last.nodes if last else {}).items()},
        "ledger": {p: {"node_seconds": round(s, 1), "usd": round(u, 4)} for p, (s, u) in ledger.items()},
    }


def _print_summary(summary: dict[str, Any], out: Any) -> None:
    load = summary["load"]
    print("\nsummary", file=out)
    print(
        f"  requests     {load['requests']} sent, codes {load['codes']}, p50 {load['p50_ms']} ms, "
        f"p99 {load['p99_ms']} ms",
        file=out,
    )
    print(f"  decisions    {summary['decisions']}", file=out)
    print(
        f"  burst nodes  {len(summary['burst_nodes_launched'])} launched, "
        f"{len(summary['burst_nodes_released'])} released, peak {summary['peak_burst_nodes']} at once, "
        f"still running {summary['still_running'] or 'none'}",
        file=out,
    )
    for pool, cost in summary["ledger"].items():
        print(
            f"  cost {pool:8s} {cost['node_seconds']} node-seconds, {cost['usd']} USD (pretend price)",
            file=out,
        )


def register(sub: Any) -> None:
    d = sub.add_parser(
        "demo",
        help="the embedded end-to-end run: local workers, a real Prometheus, synthetic load",
        description="Burst face-compare workers on this machine under synthetic load (real Prometheus).",
    )
    d.add_argument(
        "--config", type=Path, default=config.LOCAL_EXAMPLE, help="local config (examples/local.yaml)"
    )
    d.add_argument("--minutes", type=float, default=3.0, help="length of the load profile")
    d.add_argument(
        "--peak-rps", type=float, default=None, help="peak request rate (default: from the config)"
    )
    d.add_argument(
        "--workdir", type=Path, default=None, help="keep the run's files here (default: a temp dir)"
    )
    d.add_argument(
        "--json", dest="json_out", type=errors.output_path, default=None, help="write a summary here"
    )
    d.set_defaults(func=main)
