"""A real controller process for fault tests: its config, its process, its API and its workers.

`python -m controller run` with local capacity whose workers are a small HTTP stand-in (answers
/readyz, nothing else); each worker carries the test's tag in its environment, so `workers(tag)` finds
every one of them in /proc, those a controller forgot included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import prom

REPO = Path(__file__).resolve().parents[2]
TAG_ENV = "FAULT_TEST_TAG"

STAND_IN = r"""
import http.server, os, signal, sys, threading, time

READY_AT = time.monotonic() + float(os.environ.get("STAND_IN_READY_AFTER", "0"))

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ready = time.monotonic() >= READY_AT
        self.send_response((200 if ready else 503) if self.path == "/readyz" else 404)
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


def config(
    tmp_path: Path,
    prometheus_url: str,
    *,
    tick_s: float,
    adapter: Mapping[str, Any] | None = None,
    **extra: Any,
) -> tuple[Path, str]:
    """A controller config in `tmp_path` (store in `state/`), one local pool of at most 2 nodes."""
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
                    **(adapter or {}),
                },
            }
        ],
        "prometheus": {"url": prometheus_url, "timeout_s": 0.5, "retries": 0},
        "store": {"path": str(tmp_path / "state" / "store.db")},
        "api": {"listen": f"127.0.0.1:{port}"},
        "tick_interval_s": tick_s,
        **extra,
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, f"http://127.0.0.1:{port}"


class Running:
    """`python -m controller run --config FILE` in its own session, with its stderr in a file."""

    def __init__(self, path: Path, url: str, *, env: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.log_path = path.parent / "controller.log"
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--config", str(path)],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )

    def get(self, route: str, token: str | None = None) -> httpx.Response | None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            return httpx.get(f"{self.url}{route}", headers=headers, timeout=2.0)
        except httpx.HTTPError:
            return None

    def ready(self) -> bool:
        r = self.get("/readyz")
        return r is not None and r.status_code == 200

    def kill(self) -> None:
        """kill -9."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def token(state_dir: Path) -> str:
    """The admin token the first start wrote beside the store."""
    return (state_dir / "admin-token").read_text().strip()


def nodes(ctl: Running, token: str) -> dict[str, str]:
    """Node -> status, from GET /v1/nodes (released ones left out)."""
    r = httpx.get(f"{ctl.url}/v1/nodes", headers={"Authorization": f"Bearer {token}"}, timeout=2.0)
    r.raise_for_status()
    return {n["name"]: n["status"] for n in r.json()}


def metric(ctl: Running, series: str) -> float | None:
    """The value of one exported series (`name` or `name{labels}`), None when absent or unreachable."""
    r = ctl.get("/metrics")
    if r is None:
        return None
    for line in r.text.splitlines():
        if line.startswith(f"{series} "):
            return float(line.split()[-1])
    return None


def tick_failures(ctl: Running, reason: str) -> float:
    value = metric(ctl, f'gpuburst_tick_failures_total{{reason="{reason}"}}')
    if value is None:
        raise AssertionError("gpuburst_tick_failures_total{reason=...} is not exported")
    return value


def workers(tag: str) -> dict[str, list[int]]:
    """Node name -> pids of the live (not zombie) workers started with `tag` in their environment."""
    out: dict[str, list[int]] = {}
    want = f"{TAG_ENV}={tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if want not in environ or state == "Z":
            continue
        node = next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"GPUBURST_NODE=")), "")
        out.setdefault(node, []).append(int(entry.name))
    return out
