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
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from controller.adapters import local as local_adapter
from controller.app import config, live
from controller.app.demo_load import SCRAPE_S, Load, Progress, trace_rates
from controller.app.demo_report import plot, print_summary, simulated
from controller.app.demo_report import summary as make_summary
from controller.ports import clock as clock_mod
from controller.runtime import errors, logs

PROMETHEUS = os.environ.get("PROMETHEUS_BIN", "prometheus")
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


# -- the run ------------------------------------------------------------------------------------------------
def _endpoints(ctl: live.Controller, private: str) -> Callable[[], list[str]]:
    """The workers a Service would send to now: the private one and the ready, uncordoned burst ones."""
    cluster, pools = ctl.cluster, ctl.local

    def endpoints() -> list[str]:
        ready = {n for n, node in cluster.burst_nodes().items() if node.ready and not node.cordoned}
        burst = [url for lp in pools for n, url in lp.endpoints().items() if n in ready]
        return [private, *burst]

    return endpoints


def _await_release(ctl: live.Controller) -> None:
    """The trace is over: give the controller the time its policy needs to let the last node go."""
    policy = ctl.setup.policy
    boot = max((p.boot_s for p in ctl.setup.pools), default=0.0)
    grace = policy.keep_factor * boot + policy.horizon_extra_s + policy.drain_timeout_s
    clock = clock_mod.SystemClock()
    deadline = clock.now() + grace
    while clock.now() < deadline and _burst_nodes_left(ctl):
        clock.sleep(1.0)


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
            load = Load(endpoints=_endpoints(ctl, private), rates=rates)
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
            _await_release(ctl)
            load.close()
            summary = make_summary(ctl, load, progress)
            sim = simulated(ctl, rates, workdir, window_s=window)
            summary["simulated"] = sim.figures
        finally:
            if load is not None:
                load.close()
            if ctl is not None:
                ctl.close()
            ps.stop()
        print_summary(summary, out)
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
