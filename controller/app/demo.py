"""`gpuburst demo`: the whole loop on this machine, in real time, for a few minutes.

What runs: Debian's Prometheus (scraping every 2 s through file_sd, with the project's recording and
alert rules loaded), one private face-compare worker, and the live controller of `examples/local.yaml`
(local capacity: each burst "node" is a face-compare worker process started after a simulated boot
delay), with its admin API and jobs. A load generator replays a shipped trace (flash-crowd) compressed
to a few minutes and rescaled to this machine: open-loop `/v1/verify` requests (two synthetic faces
each), round robin over the ready, uncordoned workers as a Service would (a drained worker leaves the
rotation before its SIGTERM and finishes what it has). Progress is one line per tick on stdout; at the
end a report (SLO measured from the real requests, node-seconds, cost, and the simulator's figures for
the same compressed trace and setup), a plot (`--plot`) and `--json`.

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
import numpy as np
import yaml

from controller.adapters import local as local_adapter
from controller.app import config, live
from controller.core import model
from controller.ports import clock as clock_mod
from controller.runtime import errors, logs

PROMETHEUS = os.environ.get("PROMETHEUS_BIN", "prometheus")
SCRAPE_S = 2.0
RULES_DIR = local_adapter.IMPORT_ROOT / "dashboards" / "rules"
"""The recording and alert rules `python -m dashboards.build` writes."""
PEAK_PER_GPU_RPS = 2.5
"""The default peak, in private workers' worth of load: enough to need a few burst workers."""


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


def trace_rates(name: str, seconds: int, peak_rps: float) -> np.ndarray:
    """A shipped scenario's trace squeezed into `seconds` one-second rates, its peak second `peak_rps`."""
    from controller.sim import scenario

    arrivals = scenario.load(name).arrivals
    if len(arrivals) < seconds:
        raise errors.UserError(f"demo: trace {name!r} is shorter ({len(arrivals)} s) than the run")
    rates = np.asarray([chunk.mean() for chunk in np.array_split(arrivals, seconds)])
    return np.asarray(rates * (peak_rps / rates.max()))


def start_prometheus(ps: Processes, *, port: int, targets_dir: Path, controller: str) -> str:
    binary = shutil.which(PROMETHEUS)
    if binary is None:
        raise errors.UserError(
            "demo: the `prometheus` binary is not installed (Debian/Ubuntu: apt-get install prometheus, "
            "or `make prometheus`; PROMETHEUS_BIN names another one)"
        )
    rules = sorted(RULES_DIR.glob("*.yaml"))
    if not rules:
        raise errors.UserError(f"demo: no rule files in {RULES_DIR} (python -m dashboards.build writes them)")
    cfg = {
        "global": {
            "scrape_interval": f"{SCRAPE_S:g}s",
            "scrape_timeout": f"{SCRAPE_S:g}s",
            "evaluation_interval": f"{SCRAPE_S:g}s",
        },
        "rule_files": [str(p) for p in rules],
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
    """Open-loop verify requests, round robin over the ready workers: the first rate until `begin()`,
    then one rate per second of `rates`; done when they run out."""

    def __init__(self, *, endpoints: Callable[[], list[str]], rates: np.ndarray) -> None:
        from workloads.face_compare import bench as fc_bench  # the workers this demo starts

        faces = [base64.b64encode(f).decode() for f in fc_bench.synthetic_faces(8)]
        self.bodies = [
            {"image_a": faces[i], "image_b": faces[(i + 1) % len(faces)]} for i in range(len(faces))
        ]
        self.endpoints = endpoints
        self.rates = [float(r) for r in rates]
        self.clock = clock_mod.SystemClock()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.began: float | None = None
        self.targets: list[str] = []
        self.sent = 0
        self.codes: dict[str, int] = {}
        self.results: list[tuple[float, float, str]] = []
        """(seconds into the trace when sent, latency, status code or error) of every request."""
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="demo-load")
        self.http = httpx.Client(timeout=10.0, limits=httpx.Limits(max_connections=64))
        self.thread = threading.Thread(target=self._run, name="demo-load", daemon=True)

    def begin(self) -> None:
        self.began = self.clock.now()

    def rate(self, now: float) -> float | None:
        if self.began is None:
            return self.rates[0]
        second = int(now - self.began)
        return self.rates[second] if second < len(self.rates) else None

    def _run(self) -> None:
        due = self.clock.now()
        refreshed = -math.inf
        i = 0
        while not self.stop.is_set():
            now = self.clock.now()
            rate = self.rate(now)
            if rate is None:
                return
            if now - refreshed >= 0.5:
                targets, refreshed = list(self.endpoints()), now
                with self.lock:
                    self.targets = targets
            if now < due:
                self.stop.wait(min(due - now, 0.1))
                continue
            due = max(due, now - 1.0) + 1.0 / max(rate, 0.05)
            self.pool.submit(self._send, i)
            i += 1

    def _send(self, i: int) -> None:
        # The worker is picked when the request goes out, not when it was queued: a queued request
        # must not reach a worker that has left the rotation since.
        with self.lock:
            targets = self.targets
        if not targets:
            return
        url = targets[i % len(targets)]
        sent_at = self.clock.now() - self.began if self.began is not None else -1.0
        watch = clock_mod.Stopwatch()
        try:
            code = str(
                self.http.post(
                    f"{url}/v1/verify", json=self.bodies[i % len(self.bodies)], headers={"X-Tier": "normal"}
                ).status_code
            )
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        with self.lock:
            self.sent += 1
            self.codes[code] = self.codes.get(code, 0) + 1
            self.results.append((sent_at, watch.elapsed(), code))

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.pool.shutdown(wait=True)
        self.http.close()

    def status(self) -> str:
        with self.lock:
            failed = self.sent - self.codes.get("200", 0)
            return f"{self.sent} sent, {failed} failed"

    def summary(self, slo_s: float) -> dict[str, Any]:
        """Over the trace's requests (the warm-up before it is left out)."""
        with self.lock:
            results = [r for r in self.results if r[0] >= 0]
        ok = sorted(lat for _, lat, code in results if code == "200")
        codes: dict[str, int] = {}
        for _, _, code in results:
            codes[code] = codes.get(code, 0) + 1

        def q(p: float) -> float | None:
            return round(ok[min(len(ok) - 1, int(p * len(ok)))] * 1000, 1) if ok else None

        met = sum(1 for lat in ok if lat <= slo_s)
        return {
            "requests": len(results),
            "codes": codes,
            "failed": len(results) - len(ok),
            "slo_s": slo_s,
            "slo_attainment": round(met / len(results), 4) if results else None,
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
        }


# -- the run ------------------------------------------------------------------------------------------------
class Progress:
    """One line per tick, and the reasons whenever the decision is not steady."""

    def __init__(self, out: Any, load: Load) -> None:
        self.out = out
        self.load = load
        self.clock = clock_mod.SystemClock()
        self.start = self.clock.now()
        self.peak_nodes = 0
        self.actions: dict[str, int] = {}
        self.timeline: list[tuple[float, int]] = []
        """(seconds into the trace, burst nodes) at each tick."""

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
        if self.load.began is not None:
            self.timeline.append(
                (self.clock.now() - self.load.began, sum(sum(c.values()) for c in counts.values()))
            )
        print(
            f"[{elapsed:5.0f}s] {demand} | target {targets} | {nodes or 'no burst nodes'} | "
            f"{d.action.value} | {report.usd_per_hour:.2f} USD/h | {self.load.status()}",
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
    seconds = round(args.minutes * 60.0)
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
            print(f"prometheus   {prom_url} ({_rule_counts(prom_url)})", file=out, flush=True)
            private = start_private_worker(ps, targets_dir=targets_dir)
            print(f"private      {private} (1 worker)", file=out, flush=True)
            loaded = demo_config(args.config, workdir, prometheus_url=prom_url, api_port=api_port)
            ctl = live.build(loaded)
            server = ctl.start_api()
            if server is not None:
                ctl.closers.append(server.stop)
                print(
                    f"admin API    {server.url}  (/v1/status, /v1/decisions, /metrics)", file=out, flush=True
                )
            workload = ctl.setup.workloads[0]
            peak = args.peak_rps or PEAK_PER_GPU_RPS * workload.gpu_rps * max(workload.private_gpus, 1)
            rates = trace_rates(args.trace, seconds, peak)
            print(
                f"load         trace {args.trace} in {seconds} s, peak {peak:.1f} req/s "
                f"(one worker stands in for {workload.gpu_rps:g} req/s)",
                file=out,
                flush=True,
            )
            cluster = ctl.cluster
            pools = ctl.local

            def endpoints() -> list[str]:
                ready = {n for n, node in cluster.burst_nodes().items() if node.ready and not node.cordoned}
                burst = [url for lp in pools for n, url in lp.endpoints().items() if n in ready]
                return [private, *burst]

            load = Load(endpoints=endpoints, rates=rates)
            progress = Progress(out, load)
            ctl.reconciler.observers.append(progress)
            load.start()
            # The trace and the controller start once Prometheus has a full rate window of the first
            # rate: a rate still filling its window reads as a rising trend.
            window = _window_s(ctl)
            _wait(
                lambda: _rate_known(prom_url, window),
                what="a full rate window in prometheus",
                timeout_s=window + 60,
            )
            print(f"controller   ticking every {loaded.config.tick_interval_s:g} s", file=out, flush=True)
            load.begin()
            ctl.jobs.start()
            ctl.closers.append(ctl.jobs.shutdown)
            load.thread.join()
            # The trace is over; give the controller the time its policy needs to let the last node go.
            policy = ctl.setup.policy
            boot = max((p.boot_s for p in ctl.setup.pools), default=0.0)
            grace = policy.keep_factor * boot + policy.horizon_extra_s + policy.drain_timeout_s
            clock = clock_mod.SystemClock()
            deadline = clock.now() + grace
            while clock.now() < deadline and _burst_nodes_left(ctl):
                clock.sleep(1.0)
            load.close()
            summary = _summary(ctl, load, progress)
            sim = simulated(ctl, rates, workdir, window_s=window)
            summary["simulated"] = sim.figures
        finally:
            if load is not None:
                load.close()
            if ctl is not None:
                ctl.close()
            ps.stop()
        _print_summary(summary, out)
        if args.plot is not None:
            plot(args.plot, rates=rates, load=load, progress=progress, sim=sim, trace=args.trace)
            print(f"  plot         {args.plot}", file=out)
        if args.json_out is not None:
            args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
        return 0


def _rule_counts(prom_url: str) -> str:
    """What Prometheus loaded of the rule files: "N recording rules, M alerts"."""
    groups = httpx.get(f"{prom_url}/api/v1/rules", timeout=5.0).json()["data"]["groups"]
    kinds = [r["type"] for g in groups for r in g["rules"]]
    return f"{kinds.count('recording')} recording rules, {kinds.count('alerting')} alerts loaded"


@dataclass
class Simulated:
    figures: dict[str, Any]
    burst_nodes: np.ndarray
    """Billed burst nodes in each second of the trace."""


def simulated(ctl: live.Controller, rates: np.ndarray, workdir: Path, *, window_s: float) -> Simulated:
    """The simulator's gpuburst on the same compressed trace, workload, pools, scrape and policy."""
    from controller.sim import contenders, scenario

    workload = ctl.setup.workloads[0]
    trace = workdir / "trace.csv"
    trace.write_text("t_seconds,requests\n" + "".join(f"{t},{r:.4f}\n" for t, r in enumerate(rates)))
    data = {
        "name": f"demo-{workload.name}",
        "trace": trace.name,
        "service": {
            "gpu_rps": workload.gpu_rps,
            "service_time_ms": workload.service_time_s * 1000,
            "slo_ms": workload.slo_s * 1000,
            "timeout_s": workload.timeout_s,
        },
        "private": {"gpus": workload.private_gpus},
        "pools": [
            {
                "name": p.name,
                "gpus_per_node": p.gpus_per_node,
                "price_per_hour": p.price_per_hour,
                "boot_s": p.boot_s,
                "max_nodes": p.max_nodes,
                "spot": p.spot,
            }
            for p in ctl.setup.pools
        ],
        "metrics": {"scrape_interval_s": int(SCRAPE_S), "rate_window_s": max(int(window_s), int(SCRAPE_S))},
    }
    path = workdir / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    run = contenders.run(scenario.parse(data, path=path), "gpuburst", burst_policy=ctl.setup.policy)
    return Simulated(
        figures={
            "scenario": str(path),
            "requests": round(run.arrived),
            "slo_attainment": round(run.slo_attainment, 4),
            "p99_ms": round(run.p99_latency_s * 1000, 1),
            "node_seconds": float(run.billed_nodes.sum()),
            "usd": round(run.cost_usd, 4),
            "peak_burst_nodes": run.max_burst_nodes,
        },
        burst_nodes=run.billed_nodes,
    )


def plot(
    path: Path, *, rates: np.ndarray, load: Load | None, progress: Progress, sim: Simulated, trace: str
) -> None:
    """Requests sent and failed against the trace; burst nodes live against the simulator's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_load, ax_nodes) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    t = np.arange(len(rates))
    ax_load.plot(t, rates, color="#999999", label=f"{trace} (compressed)")
    if load is not None:
        sent = np.zeros(len(rates))
        failed = np.zeros(len(rates))
        for sent_at, _, code in load.results:
            if 0 <= sent_at < len(rates):
                sent[int(sent_at)] += 1
                if code != "200":
                    failed[int(sent_at)] += 1
        ax_load.plot(t, sent, color="#1f77b4", lw=0.8, label="sent (req/s)")
        ax_load.plot(t, failed, color="#d62728", lw=0.8, label="failed (req/s)")
    ax_load.set_ylabel("requests / s")
    ax_load.legend(loc="upper right")
    ax_load.set_title("gpuburst demo: live loop on this machine")
    if progress.timeline:
        ticks = [at for at, _ in progress.timeline]
        nodes = [n for _, n in progress.timeline]
        ax_nodes.step(ticks, nodes, where="post", color="#d62728", label="live burst nodes")
    ax_nodes.step(t, sim.burst_nodes, where="post", color="#2ca02c", ls="--", label="simulated burst nodes")
    ax_nodes.set_ylabel("burst nodes")
    ax_nodes.set_xlabel("seconds into the trace")
    ax_nodes.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
        "load": load.summary(ctl.setup.workloads[0].slo_s),
        "decisions": progress.actions,
        "burst_nodes_launched": launched,
        "burst_nodes_released": released,
        "peak_burst_nodes": progress.peak_nodes,
        "still_running": {p: dict(c) for p, c in (last.nodes if last else {}).items()},
        "node_seconds": round(sum(s for s, _ in ledger.values()), 1),
        "usd": round(sum(u for _, u in ledger.values()), 4),
        "ledger": {p: {"node_seconds": round(s, 1), "usd": round(u, 4)} for p, (s, u) in ledger.items()},
    }


def _print_summary(summary: dict[str, Any], out: Any) -> None:
    load, sim = summary["load"], summary["simulated"]
    slo = load["slo_attainment"]
    print("\nreport (the trace's requests; cost at the config's pretend price)", file=out)
    print(f"  requests     {load['requests']} sent, {load['failed']} failed, codes {load['codes']}", file=out)
    print(f"  decisions    {summary['decisions']}", file=out)
    print(
        f"  burst nodes  {len(summary['burst_nodes_launched'])} launched, "
        f"{len(summary['burst_nodes_released'])} released, peak {summary['peak_burst_nodes']} at once, "
        f"still running {summary['still_running'] or 'none'}",
        file=out,
    )
    print(f"  {'':14s}{'live':>12s}{'simulated':>12s}", file=out)
    rows = [
        (
            f"SLO <= {load['slo_s']:g} s",
            f"{slo:.2%}" if slo is not None else "-",
            f"{sim['slo_attainment']:.2%}",
        ),
        ("p99 latency", f"{load['p99_ms']} ms", f"{sim['p99_ms']} ms"),
        ("peak nodes", str(summary["peak_burst_nodes"]), str(sim["peak_burst_nodes"])),
        ("node-seconds", f"{summary['node_seconds']:g}", f"{sim['node_seconds']:g}"),
        ("cost", f"{summary['usd']:.4f} USD", f"{sim['usd']:.4f} USD"),
    ]
    for name, live_v, sim_v in rows:
        print(f"  {name:14s}{live_v:>12s}{sim_v:>12s}", file=out)


def register(sub: Any) -> None:
    d = sub.add_parser(
        "demo",
        help="the embedded live loop: local workers, a real Prometheus, a shipped trace replayed",
        description="Burst face-compare workers on this machine under synthetic load (real Prometheus).",
    )
    d.add_argument(
        "--config", type=Path, default=config.LOCAL_EXAMPLE, help="local config (examples/local.yaml)"
    )
    d.add_argument("--trace", default="flash-crowd", help="shipped scenario whose trace the load replays")
    d.add_argument("--minutes", type=float, default=3.0, help="the trace compressed to this long")
    d.add_argument(
        "--peak-rps", type=float, default=None, help="peak request rate (default: from the config)"
    )
    d.add_argument(
        "--workdir", type=Path, default=None, help="keep the run's files here (default: a temp dir)"
    )
    d.add_argument(
        "--json", dest="json_out", type=errors.output_path, default=None, help="write the report here"
    )
    d.add_argument("--plot", type=errors.output_path, default=None, help="write a PNG of the run here")
    d.set_defaults(func=main)
