"""Two `python -m controller run` replicas on one PostgreSQL store and one Lease (the Kubernetes emulator):
an override put on the standby reaches the leader's next tick; the leader SIGKILLed, the standby leads
within the Lease duration, with the ledger, decisions, audit, overrides and policy state all there."""

from __future__ import annotations

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

from controller.runtime import store_sql
from tests.support import kube_emulator, postgres, prom

pg_server = postgres.pg_server
prometheus = prom.prometheus

REPO = Path(__file__).resolve().parents[3]
LEASE_S = 3
TICK_S = 0.5


class Replica:
    """One controller process in its own session (its workers die with it), stderr to a file."""

    def __init__(self, tmp_path: Path, name: str, common: dict[str, Any]) -> None:
        port = prom.free_port()
        self.url = f"http://127.0.0.1:{port}"
        data = {
            **common,
            "api": {"listen": f"127.0.0.1:{port}"},
            "leader_election": {
                **common["leader_election"],
                "identity": name,
            },
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        self.log = (tmp_path / f"{name}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--config", str(path)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )
        self.token = ""

    def call(self, method: str, route: str, **kw: Any) -> httpx.Response | None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            return httpx.request(method, f"{self.url}{route}", headers=headers, timeout=2.0, **kw)
        except httpx.HTTPError:
            return None

    def get(self, route: str) -> Any:
        r = self.call("GET", route)
        return r.json() if r is not None and r.status_code == 200 else None

    def decisions(self) -> list[dict[str, Any]]:
        page = self.get("/v1/decisions")
        return page["items"] if page else []

    def leading(self) -> bool:
        status = self.get("/v1/status")
        return bool(status and status["leader"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def replicas(
    tmp_path: Path, pg_server: postgres.PostgresServer, prometheus: prom.PrometheusServer
) -> Iterator[tuple[Replica, Replica, str]]:
    url = pg_server.fresh_url()
    # Traffic in Prometheus, so the policy forecasts and keeps state between ticks.
    target = prom.MetricsTarget(placement="private", pool="private").start()
    target.set_traffic(tier="normal", rps=20.0)
    prometheus.set_targets(prom.JOB, [target.target()])
    prometheus.wait_samples(f'job="{prom.JOB}"', 12)
    with kube_emulator.running() as kube:
        common = {
            "workloads": [
                {
                    "name": "face-compare",
                    "gpu_rps": 25,
                    "service_time_s": 0.06,
                    "slo_s": 0.5,
                    "private_gpus": 2,
                    "prometheus": {"selector": f'job="{prom.JOB}"', "window": "10s"},
                }
            ],
            "pools": [
                {
                    "name": "local",
                    "gpus_per_node": 1,
                    "price_per_hour": 3600.0,
                    "boot_s": 1,
                    "min_nodes": 1,
                    "max_nodes": 2,
                    "adapter": {
                        "kind": "local",
                        "boot_delay_s": 0,
                        "worker_command": [
                            sys.executable,
                            "-m",
                            "http.server",
                            "{port}",
                            "--bind",
                            "127.0.0.1",
                        ],
                    },
                }
            ],
            "prometheus": {"url": prometheus.url, "timeout_s": 0.5, "retries": 0},
            # Both replicas share the token file the first one creates beside `path`.
            "store": {"url": url, "path": str(tmp_path / "state" / "unused.db")},
            "kubernetes": {"host": kube.url, "namespace": "gpuburst"},
            "leader_election": {
                "enabled": True,
                "lease_duration_s": LEASE_S,
                "renew_deadline_s": 2.0,
                "retry_period_s": 0.25,
            },
            "tick_interval_s": TICK_S,
        }
        a = Replica(tmp_path, "a", common)
        b: Replica | None = None
        try:
            prom.wait_until((tmp_path / "state" / "admin-token").exists, timeout=60, what="a token")
            a.token = (tmp_path / "state" / "admin-token").read_text().strip()
            prom.wait_until(a.leading, timeout=60, what="replica a to lead")
            b = Replica(tmp_path, "b", common)
            b.token = a.token
            prom.wait_until(lambda: b.get("/v1/status"), timeout=60, what="replica b to answer")
            yield a, b, url
        finally:
            a.stop()
            if b is not None:
                b.stop()
            prometheus.set_targets(prom.JOB, [])
            target.stop()


def test_the_standby_takes_over_within_the_lease_with_everything_the_leader_wrote(
    replicas: tuple[Replica, Replica, str],
) -> None:
    a, b, url = replicas
    assert not b.leading()
    # The standby serves what the leader commits: decisions and a growing ledger, through PostgreSQL.
    prom.wait_until(lambda: len(b.decisions()) >= 3, timeout=30, what="decisions")
    prom.wait_until(lambda: (b.get("/v1/ledger") or {}).get("pools"), timeout=30, what="ledger rows")
    prom.wait_until(lambda: _stored(url)["policy_state"].models, timeout=30, what="forecast state")

    # An override put on the standby: the leader's next tick decides under it.
    r = b.call("PUT", "/v1/overrides", json={"hold": True, "reason": "failover drill"})
    assert r is not None and r.status_code == 200, r and r.text
    held = "operator hold: failover drill"
    prom.wait_until(
        lambda: held in b.decisions()[0]["inputs"]["problems"], timeout=10, what="a held decision"
    )

    before = _stored(url)
    a.kill()
    killed = time.monotonic()
    prom.wait_until(b.leading, timeout=LEASE_S + 5, interval=0.05, what="replica b to lead")
    took = time.monotonic() - killed
    prom.wait_until(lambda: _stored(url)["version"] > before["version"], timeout=10, what="b's first commit")
    after = _stored(url)
    print(f"failover: b leads {took:.2f} s after SIGKILL of a (Lease {LEASE_S} s)")
    assert took <= LEASE_S + 1.0

    assert before["decision_ids"] <= after["decision_ids"]
    assert before["audit_ids"] <= after["audit_ids"]
    for pool, (seconds, usd) in before["ledger"].items():
        assert after["ledger"][pool][0] >= seconds and after["ledger"][pool][1] >= usd
    assert after["overrides"].hold and after["overrides"].reason == "failover drill"
    # b decided under the override, from the forecast state a left.
    newest = b.decisions()[0]
    assert newest["version"] > before["version"] and held in newest["inputs"]["problems"]
    assert before["policy_state"].models
    assert after["policy_state"] == before["policy_state"]  # held: b's tick kept a's forecast state as is
    (override,) = b.get("/v1/audit?action=override")["items"]
    assert override["detail"] == "failover drill" and override["actor"] == "admin"


def _stored(url: str) -> dict[str, Any]:
    db = store_sql.SqlStore(url)
    try:
        snap = db.load()
        return {
            "version": snap.version,
            "decision_ids": {d.id for d in db.decisions(limit=10_000)},
            "audit_ids": {r.id for r in db.audit(limit=10_000)},
            "ledger": db.ledger(),
            "overrides": snap.overrides,
            "policy_state": snap.policy_state,
        }
    finally:
        db.close()
