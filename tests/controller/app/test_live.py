"""`gpuburst run`: assembled from a config, `--once` and `--dry-run`, leader election, and the long-running
process (API up, SIGTERM stops it cleanly)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.app import cli, config, live
from controller.core import model
from controller.ports import clock as clock_mod
from controller.ports import fakes
from tests.support import kube_emulator, live_proc, prom, scripted_pulumi

REPO = Path(__file__).resolve().parents[3]
WORKLOAD = {"name": "face-compare", "gpu_rps": 25, "service_time_s": 0.06, "slo_s": 0.5, "private_gpus": 2}


def _pulumi_config(tmp_path: Path, kube_url: str, **extra: Any) -> Path:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "Pulumi.yaml").write_text("name: gpuburst\nruntime: python\nmain: stacks/\n")
    data = {
        "workloads": [WORKLOAD],
        "pools": [
            {
                "name": "spot",
                "gpus_per_node": 1,
                "price_per_hour": 0.4,
                "boot_s": 240,
                "max_nodes": 4,
                "spot": True,
                "adapter": {"kind": "pulumi", "work_dir": "project"},
            }
        ],
        "prometheus": {"url": f"http://127.0.0.1:{prom.free_port()}", "timeout_s": 0.5, "retries": 0},
        "kubernetes": {"host": kube_url},
        "api": {"listen": None},
        **extra,
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Demand:
    """A metric source the test sets (the real Prometheus path is covered end to end in test_e2e)."""

    def __init__(self, rps: float) -> None:
        self.source = fakes.FakeMetricSource()
        self.source.set("face-compare", rps)

    def read(
        self, workloads: Sequence[model.WorkloadSpec], *, at: float
    ) -> Mapping[str, model.WorkloadMetrics]:
        return self.source.read(workloads, at=at)


@pytest.fixture
def kube() -> Iterator[kube_emulator.Kube]:
    with kube_emulator.running() as k:
        k.add_burst_deployment("face-compare", "spot")
        yield k


def test_once_applies_its_tick_and_prints_the_report(tmp_path: Path, kube: kube_emulator.Kube) -> None:
    loaded = config.load(_pulumi_config(tmp_path, kube.url))
    cli_ = scripted_pulumi.ScriptedPulumi(stacks=("spot",))
    ctl = live.build(loaded, pulumi_command=cli_, metrics=Demand(200.0))
    out = io.StringIO()
    try:
        assert live._once(ctl, out=out) == 0
    finally:
        ctl.close()
    report = json.loads(out.getvalue())
    assert report["decision"]["action"] == "scale_up"
    n = report["decision"]["target_nodes"]["spot"]
    assert n > 0 and report["nodes"] == {"spot": {"requested": n}}
    assert len(cli_.applied("spot")[-1]) == n, "--once waits for the apply it started"
    deployment = kube.get("deployments", "face-compare-burst-spot")
    assert deployment is not None and deployment["spec"]["replicas"] == n


def test_dry_run_decides_and_reports_but_writes_and_applies_nothing(
    tmp_path: Path, kube: kube_emulator.Kube
) -> None:
    loaded = config.load(_pulumi_config(tmp_path, kube.url))
    cli_ = scripted_pulumi.ScriptedPulumi(stacks=("spot",))
    ctl = live.build(loaded, dry_run=True, pulumi_command=cli_, metrics=Demand(200.0))
    out = io.StringIO()
    try:
        live._once(ctl, out=out)
        assert ctl.store.load().version == 0
    finally:
        ctl.close()
    report = json.loads(out.getvalue())
    assert report["decision"]["action"] == "scale_up" and report["acted"] == []
    assert cli_.applied("spot") == [] and not cli_.commands("up")
    deployment = kube.get("deployments", "face-compare-burst-spot")
    assert deployment is not None and deployment["spec"]["replicas"] == 0
    assert [r for r in kube.requests() if not r.startswith("GET ")] == [], "only reads"


def test_once_holds_and_still_exits_0_when_prometheus_is_down(
    tmp_path: Path,
    kube: kube_emulator.Kube,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = _pulumi_config(tmp_path, kube.url)
    cli_ = scripted_pulumi.ScriptedPulumi(stacks=("spot",))
    build = live.build
    monkeypatch.setattr(live, "build", lambda loaded, **kw: build(loaded, pulumi_command=cli_, **kw))
    assert cli.main(["run", "--config", str(path), "--once"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decision"]["action"] == "hold"
    assert report["synced"] is False
    assert any("unreachable" in e and "prometheus" in e for e in report["errors"]), report["errors"]
    assert all(nodes == () for nodes in cli_.applied("spot")), "nothing launched on unknown metrics"


def test_a_missing_pulumi_cli_is_one_clear_line(tmp_path: Path, kube: kube_emulator.Kube) -> None:
    path = _pulumi_config(tmp_path, kube.url)
    env = {**os.environ, "PATH": "/nonexistent"}
    done = subprocess.run(
        [sys.executable, "-m", "controller", "run", "--config", str(path), "--once"],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("gpuburst: error: pulumi capacity: the `pulumi` CLI was not found")
    )
    assert "Traceback" not in done.stderr


def test_once_refuses_to_act_while_another_replica_holds_the_lease(
    tmp_path: Path, kube: kube_emulator.Kube
) -> None:
    now = clock_mod.SystemClock().now()
    kube.create(
        {
            "kind": "Lease",
            "metadata": {"name": "gpuburst-controller", "namespace": "face-compare"},
            "spec": {
                "holderIdentity": "other-replica",
                "leaseDurationSeconds": 15,
                "renewTime": _micro(now),
                "acquireTime": _micro(now),
            },
        }
    )
    loaded = config.load(_pulumi_config(tmp_path, kube.url, leader_election={"enabled": True}))
    cli_ = scripted_pulumi.ScriptedPulumi(stacks=("spot",))
    ctl = live.build(loaded, pulumi_command=cli_, metrics=Demand(200.0))
    try:
        with pytest.raises(
            Exception, match="not the leader: other-replica holds Lease face-compare/gpuburst-controller"
        ):
            live._once(ctl, out=io.StringIO())
        assert ctl.store.load().version == 0 and not cli_.commands("up")
    finally:
        ctl.close()


def _micro(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- the long-running process -------------------------------------------------------------------------
def test_the_controller_process_serves_its_api_and_stops_on_sigterm(tmp_path: Path) -> None:
    path, url = live_proc.config(tmp_path, f"http://127.0.0.1:{prom.free_port()}", tick_s=0.5)
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--config", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        prom.wait_until(lambda: _get(f"{url}/healthz"), timeout=60, what="the controller's API")
        assert httpx.get(f"{url}/v1/status").status_code == 401, (
            "no credential configured: still no anonymous call"
        )
        token = (state / "admin-token").read_text().strip()
        prom.wait_until(
            lambda: (_get(f"{url}/v1/status", token) or {}).get("store_version", 0) >= 2, what="two ticks"
        )
        status = _get(f"{url}/v1/status", token)
        assert status is not None and status["leader"] is True
        assert status["report"]["decision"]["action"] == "hold", "Prometheus is down: unknown, never zero"
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["problems"]["prometheus"].startswith("unreachable")
        assert "gpuburst_tick_duration_seconds_count" in httpx.get(f"{url}/metrics").text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, err = proc.communicate()
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(entry["msg"] == "controller running" for entry in lines), err[-2000:]
    (created,) = [entry for entry in lines if entry["msg"].startswith("no API token configured")]
    assert created["token_file"] == str(state / "admin-token")
    assert any(entry["msg"] == "stopping" and entry.get("signal") == "SIGTERM" for entry in lines)
    assert all("level" in entry and "ts" in entry for entry in lines)


def _get(url: str, token: str = "") -> dict[str, Any] | None:
    try:
        r = httpx.get(url, timeout=1.0, headers={"Authorization": f"Bearer {token}"} if token else None)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None
