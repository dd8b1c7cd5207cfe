"""The fault matrix, with real processes: a real controller (`python -m controller run`), a real
Prometheus, real worker processes; each fault is injected from outside, as an operator would meet it.

Each test asserts the matrix's columns for its fault: nodes leaked, nodes doubled, wrongful releases,
data lost (all 0), and that the controller says so (readiness, metrics) rather than failing silently.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import prom

REPO = Path(__file__).resolve().parents[3]
TICK_S = 0.5
prometheus = prom.prometheus

STAND_IN = r"""
import http.server, signal, sys, threading

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
if sys.argv[2:] == ["stubborn"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
server.serve_forever(poll_interval=0.05)
"""


def config(tmp_path: Path, prometheus_url: str, **extra: Any) -> tuple[Path, str]:
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    port = prom.free_port()
    data = {
        "workloads": [
            {"name": "face-compare", "gpu_rps": 25, "service_time_s": 0.06, "slo_s": 0.5, "private_gpus": 2}
        ],
        "pools": [
            {
                "name": "local",
                "gpus_per_node": 1,
                "price_per_hour": 1.0,
                "boot_s": 1,
                "max_nodes": 2,
                "adapter": {
                    "kind": "local",
                    "boot_delay_s": 0,
                    "worker_command": [sys.executable, str(tmp_path / "stand_in.py"), "{port}"],
                },
            }
        ],
        "prometheus": {"url": prometheus_url, "timeout_s": 0.5, "retries": 0},
        "store": {"path": str(tmp_path / "state" / "store.db")},
        "api": {"listen": f"127.0.0.1:{port}"},
        "tick_interval_s": TICK_S,
        **extra,
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, f"http://127.0.0.1:{port}"


class Running:
    """`python -m controller run --config FILE` in its own session, with its stderr in a file."""

    def __init__(self, path: Path, url: str) -> None:
        self.url = url
        self.log = (path.parent / "controller.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--config", str(path)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )

    def get(self, route: str) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.url}{route}", timeout=2.0)
        except httpx.HTTPError:
            return None

    def ready(self) -> bool:
        r = self.get("/readyz")
        return r is not None and r.status_code == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def controller(tmp_path: Path, prometheus: prom.PrometheusServer) -> Iterator[Running]:
    path, url = config(tmp_path, prometheus.url)
    ctl = Running(path, url)
    try:
        prom.wait_until(ctl.ready, timeout=60, what="the controller to be ready")
        yield ctl
    finally:
        ctl.stop()


def _tick_failures(ctl: Running, reason: str) -> float:
    r = ctl.get("/metrics")
    assert r is not None
    for line in r.text.splitlines():
        if line.startswith(f'gpuburst_tick_failures_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError("gpuburst_tick_failures_total{reason=...} is not exported")


def test_a_removed_store_turns_readiness_off_within_two_ticks_and_loses_nothing(
    tmp_path: Path, controller: Running
) -> None:
    db = tmp_path / "state" / "store.db"
    assert _tick_failures(controller, "store") == 0
    # No token configured: the controller made an admin token at first start, beside its store.
    token = (db.parent / "admin-token").read_text().strip()
    status = httpx.get(f"{controller.url}/v1/status", headers={"Authorization": f"Bearer {token}"})
    before = status.json()["store_version"]
    db.unlink()
    removed = time.monotonic()
    prom.wait_until(lambda: not controller.ready(), timeout=2 * TICK_S, what="/readyz to fail")
    took = time.monotonic() - removed
    r = controller.get("/readyz")
    assert r is not None and r.status_code == 503
    assert "was removed" in r.json()["problems"]["store"], r.json()
    prom.wait_until(
        lambda: _tick_failures(controller, "store") >= 1, timeout=4 * TICK_S, what="a store failure"
    )
    saved = Path(f"{db}.recovered")
    assert saved.exists(), "the open copy is saved beside the removed path"
    controller.stop()
    saved.rename(db)
    from controller.runtime import store

    recovered = store.SqliteStore(db)
    assert recovered.version() >= before, "data lost: the saved copy is older than what was committed"
    print(f"store removed -> /readyz 503 after {took:.2f} s (tick {TICK_S} s)")


# -- process faults -------------------------------------------------------------------------------------
POOL_OWNER = r"""
import json, sys, time
from pathlib import Path
from controller.adapters import local
from controller.ports import clock

argv = [sys.executable, sys.argv[1], "{port}", *sys.argv[3:]]
pool = local.LocalPool(clock=clock.SystemClock(), boot_delay_s=0, command=argv, log_dir=sys.argv[2])
pool.submit("local", ("n1", "n2"))
while sum(n.ready for n in pool.burst_nodes().values()) < 2:
    time.sleep(0.05)
print(json.dumps({n: p.pid for n, p in pool.processes().items()}), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _owner_with_workers(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, int]]:
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    (tmp_path / "owner.py").write_text(POOL_OWNER)
    owner = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "owner.py"),
            str(tmp_path / "stand_in.py"),
            str(tmp_path / "w"),
            *extra,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    try:
        pids: dict[str, int] = json.loads(owner.stdout.readline())
    except ValueError:
        owner.kill()
        raise
    assert sorted(pids) == ["n1", "n2"] and all(_alive(p) for p in pids.values())
    return owner, pids


def test_workers_die_with_a_controller_killed_by_sigkill(tmp_path: Path) -> None:
    owner, pids = _owner_with_workers(tmp_path)
    owner.kill()
    owner.wait()
    prom.wait_until(lambda: not any(_alive(p) for p in pids.values()), timeout=10, what="the workers to exit")


def test_workers_that_outlive_their_controller_are_stopped_by_the_next(tmp_path: Path) -> None:
    from controller.adapters import local
    from controller.ports import clock

    owner, pids = _owner_with_workers(tmp_path, "stubborn")  # they ignore the parent-death SIGTERM
    owner.kill()
    owner.wait()
    time.sleep(0.5)
    assert all(_alive(p) for p in pids.values()), "the stand-ins ignore SIGTERM: they outlive the owner"
    # Starting the next pool is what stops the leftovers; it launches none of its own here.
    with local.LocalPool(
        clock=clock.SystemClock(), command=("true",), log_dir=tmp_path / "w", stop_timeout_s=0.5
    ) as pool:
        assert not any(_alive(p) for p in pids.values()), "leaked: a restart left the old workers running"
        assert list((tmp_path / "w").glob("*.pid")) == []
        assert pool.processes() == {}
