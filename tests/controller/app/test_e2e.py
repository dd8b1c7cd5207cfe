"""End to end: the live controller as `gpuburst run` assembles it, against real parts.

1. Real Prometheus (Debian's binary, 1 s scrapes) reading a scrape target whose request rate the test
   sets; the Kubernetes API served by the extended kmock emulator (nodes, pods, the burst Deployment, a
   PodDisruptionBudget, evictions); Pulumi through the real Automation API code with a scripted CLI.
   The emulated cloud joins a node to the cluster `boot_s` after the stack's `up` created its
   instance, and removes it when an `up` deleted it. Demand rises -> nodes requested -> they join and
   become ready -> burst replicas scaled -> demand falls -> replicas down, nodes cordoned and drained ->
   node set shrinks -> released, with nothing left in the stack or the cluster.
2. The same loop with the local capacity adapter: real face-compare worker processes as the nodes,
   scraped by the same real Prometheus.

The controller runs on a FakeClock (boot times, stabilization windows and timeouts pass at once);
Prometheus lives in real time, so the metric source is asked for "now" on the wall clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller import ports
from controller.adapters import kube as kube_adapter
from controller.adapters import prometheus as prometheus_adapter
from controller.app import config, live
from controller.core import model
from controller.ports import clock as clock_mod
from tests.support import kube_emulator, prom, scripted_pulumi

prometheus = prom.prometheus  # the module-scoped real Prometheus fixture

WINDOW_S = 4
TICK_S = 15.0
BOOT_S = 60.0
POOL = "spot"
WORKLOAD = "face-compare"
QUIET_RPS = 2.0
"""Demand the 2 private GPUs (25 req/s each) serve with room to spare, whatever headroom the policy keeps."""
S = model.NodeStatus


class AtWallTime:
    """The metric source asked at the wall clock's now: Prometheus samples are stamped in real time."""

    def __init__(self, inner: ports.MetricSource) -> None:
        self.inner = inner
        self.wall = clock_mod.SystemClock()

    def read(
        self, workloads: Sequence[model.WorkloadSpec], *, at: float
    ) -> Mapping[str, model.WorkloadMetrics]:
        return self.inner.read(workloads, at=self.wall.now())

    @property
    def sample_age_s(self) -> Mapping[str, float | None]:
        """The source's own hook for telemetry, passed through."""
        return dict(getattr(self.inner, "sample_age_s", {}))


class Cloud:
    """EC2 as the scripted stack sees it, joined to the emulated cluster: an instance an `up` created
    becomes a ready GPU node `boot_s` later; a node whose instance an `up` deleted leaves the cluster."""

    def __init__(
        self, cli: scripted_pulumi.ScriptedPulumi, kube: kube_emulator.Kube, clock: clock_mod.FakeClock
    ):
        self.cli = cli
        self.kube = kube
        self.clock = clock
        self.created: dict[str, float] = {}

    def sync(self) -> None:
        instances = dict(self.cli.stacks[POOL].resources)
        now = self.clock.now()
        for node in instances:
            self.created.setdefault(node, now)
        joined = {n["metadata"]["name"] for n in self.kube.items("nodes")}
        for node, at in self.created.items():
            if node in instances and node not in joined and now - at >= BOOT_S:
                self.kube.add_node(node, pool=POOL)
        for node in joined:
            if node not in instances:
                self.kube.delete("nodes", node, namespace=None)


# The face-compare workload as both end-to-end runs configure it.
_WORKLOAD_CONFIG = {
    "name": WORKLOAD,
    "gpu_rps": 25,
    "service_time_s": 0.06,
    "slo_s": 0.5,
    "private_gpus": 2,
    "prometheus": {"selector": f'job="{prom.JOB}"', "window": f"{WINDOW_S}s"},
}


def _write_config(tmp_path: Path, data: Mapping[str, Any]) -> config.Loaded:
    # Idle burst capacity goes after keep_factor x the boot + horizon_extra_s of seen time (ski-rental).
    (tmp_path / "policy.yaml").write_text(
        "keep_factor: 1.0\nhorizon_extra_s: 15\nboot_timeout_s: 600\ndrain_timeout_s: 300\n"
    )
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump({**data, "policy_file": "policy.yaml", "tick_interval_s": TICK_S}))
    return config.load(path)


def _wait_rate(server: prom.PrometheusServer, rps: float) -> None:
    server.wait_value(
        f'sum(rate(facecompare_requests_total{{job="{prom.JOB}"}}[{WINDOW_S}s]))',
        lambda v: v is not None and abs(v - rps) < 0.5,
        timeout=30,
    )


@pytest.fixture
def private_target(prometheus: prom.PrometheusServer) -> Iterator[prom.MetricsTarget]:
    target = prom.MetricsTarget(placement="private", pool="private").start()
    target.set_traffic(tier="normal", rps=QUIET_RPS)
    prometheus.set_targets(prom.JOB, [target.target()])
    prometheus.wait_samples(f'job="{prom.JOB}"', WINDOW_S + 2)
    _wait_rate(prometheus, QUIET_RPS)
    yield target
    prometheus.set_targets(prom.JOB, [])
    target.stop()


def test_burst_and_release_with_prometheus_kubernetes_and_pulumi(
    tmp_path: Path, prometheus: prom.PrometheusServer, private_target: prom.MetricsTarget
) -> None:
    fake = clock_mod.FakeClock(clock_mod.SystemClock().now())
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: gpuburst\nruntime: python\nmain: stacks/\n")
    cli = scripted_pulumi.ScriptedPulumi(stacks=(POOL,))

    with kube_emulator.running(clock=fake) as kube:
        kube.add_burst_deployment(WORKLOAD, POOL)
        kube.add_pdb(
            "face-compare-burst",
            match_labels={"app.kubernetes.io/name": WORKLOAD, "gpuburst.io/placement": "burst"},
            max_unavailable=1,
        )
        loaded = _write_config(
            tmp_path,
            {
                "workloads": [_WORKLOAD_CONFIG],
                "pools": [
                    {
                        "name": POOL,
                        "gpus_per_node": 1,
                        "price_per_hour": 0.4,
                        "boot_s": BOOT_S,
                        "max_nodes": 3,
                        "spot": True,
                        "adapter": {"kind": "pulumi", "work_dir": str(project)},
                    }
                ],
                "prometheus": {"url": prometheus.url, "max_age_s": 10},
                "kubernetes": {"host": kube.url},
                "api": {"listen": "127.0.0.1:0"},
            },
        )
        source = prometheus_adapter.PrometheusSource(loaded.config.prometheus_adapter_config())
        ctl = live.build(loaded, clock=fake, pulumi_command=cli, metrics=AtWallTime(source))
        cloud = Cloud(cli, kube, fake)
        server = ctl.start_api()
        assert server is not None
        ctl.closers.append(server.stop)
        seen_nodes: list[dict[str, dict[str, Any]]] = []

        def tick() -> model.TickReport:
            fake.advance(TICK_S)
            cloud.sync()
            kube.step()
            seen_nodes.append({n["metadata"]["name"]: n for n in kube.items("nodes")})
            assert isinstance(ctl.cluster, kube_adapter.KubeCluster)
            assert ctl.cluster.wait_for(kube.version())  # the watch caches follow within milliseconds
            report = ctl.reconciler.tick()
            assert ctl.wait_for_applies(timeout_s=10)
            cloud.sync()
            kube.step()
            return report

        def deployment_replicas() -> int:
            d = kube.get("deployments", f"{WORKLOAD}-burst-{POOL}")
            assert d is not None
            return int(d["spec"]["replicas"])

        def pods_on(node: str) -> int:
            return sum(1 for p in kube.items("pods") if p["spec"].get("nodeName") == node)

        try:
            # Quiet: the private GPUs suffice.
            report = tick()
            assert report.synced, report.errors
            assert report.decision.action is model.Action.STEADY
            assert cli.applied(POOL) == [()] or cli.applied(POOL) == []

            # Demand rises: 90 req/s -> 5 GPUs -> 3 burst nodes requested and applied.
            private_target.set_traffic(tier="normal", rps=90.0)
            _wait_rate(prometheus, 90.0)
            report = tick()
            assert report.decision.action is model.Action.SCALE_UP, report.decision.reasons
            assert report.decision.target_nodes == {POOL: 3}
            # 5 GPUs at least, 3 burst: the bound's margin may want more than max_nodes allows.
            burst_cause = report.decision.cause
            assert burst_cause in (model.Cause.DEMAND, model.Cause.MAX_NODES), report.decision.reasons
            nodes = sorted(ctl.store.load().records)
            assert len(nodes) == 3
            assert cli.applied(POOL)[-1] == tuple(nodes)
            assert deployment_replicas() == 3, "replicas for booting nodes wait as pending pods"

            # The instances boot, join the cluster, become ready; the burst pods run on them.
            for _ in range(int(BOOT_S / TICK_S) + 1):
                report = tick()
            assert {r.status for r in ctl.store.load().records.values()} == {S.READY}
            assert all(pods_on(n) == 1 for n in nodes)
            assert report.nodes == {POOL: {"ready": 3}}

            # Demand falls: after the stabilization window, cordon, scale down, drain, shrink, release.
            private_target.set_traffic(tier="normal", rps=QUIET_RPS)
            _wait_rate(prometheus, QUIET_RPS)
            released_at = None
            for i in range(120):  # up to 30 min: the policy's windows decide how long it takes
                report = tick()
                if not kube.items("nodes") and not cli.stacks[POOL].resources:
                    released_at = i
                    break
            assert released_at is not None, f"not released: {report.decision.reasons}"
            assert deployment_replicas() == 0
            assert cli.applied(POOL)[-1] == ()
            # The next tick reads the emptied stack and records the nodes as released.
            report = tick()
            assert {r.status for r in ctl.store.load().records.values()} == {S.RELEASED}

            # Each node was cordoned and empty in the cluster before its instance left the stack.
            for node in nodes:
                last_seen = [snap[node] for snap in seen_nodes if node in snap][-1]
                assert last_seen["spec"].get("unschedulable") is True, node
            evictions = [r for r in kube.requests("POST") if r.endswith("/eviction")]
            assert evictions, "pods left through the Eviction API"
            # `kubectl describe` tells the story: Events on the Deployment and the Nodes, with the cause.
            told = {(e["involvedObject"]["kind"], e["reason"]) for e in kube.items("events")}
            assert {("Deployment", "BurstLaunch"), ("Node", "BurstJoin"), ("Node", "BurstDrain")} <= told
            assert ("Deployment", "BurstReleased") in told, told
            launches = [e for e in kube.items("events") if e["reason"] == "BurstLaunch"]
            assert len(launches) == 3 and all(f"cause {burst_cause}" in e["message"] for e in launches)
            for _ in range(2):
                tick()  # the released records leave the table
            assert ctl.store.load().records == {}
            transitions = [a.after for a in reversed(ctl.store.audit(kind="transition", limit=500))]
            for status in ("requested", "provisioning", "ready", "draining", "releasing", "released"):
                assert transitions.count(status) == 3, (status, transitions)

            # What it cost, from the ledger, and what the API and /metrics say about it.
            seconds, usd = ctl.store.ledger()[POOL]
            assert seconds > 3 * BOOT_S and usd == pytest.approx(seconds * 0.4 / 3600)
            token = (ctl.loaded.store_path.parent / "admin-token").read_text().strip()
            with httpx.Client(
                base_url=server.url, timeout=5, headers={"Authorization": f"Bearer {token}"}
            ) as http:
                status = http.get("/v1/status").json()
                assert status["report"]["synced"] is True
                assert http.get("/v1/ledger").json()["pools"][POOL]["usd"] == pytest.approx(usd)
                metrics = http.get("/metrics").text
                assert f'gpuburst_decisions_total{{action="scale_up",reason="{burst_cause}"}} 1.0' in metrics
                assert 'gpuburst_apply_duration_seconds_count{pool="spot",result="succeeded"}' in metrics
                assert 'gpuburst_metrics_sample_age_seconds{workload="face-compare"}' in metrics
                assert http.get("/readyz").status_code == 200
        finally:
            ctl.close()
            source.close()


# -- the local loop: real worker processes ------------------------------------------------------------------
def test_burst_and_release_with_real_local_workers(
    tmp_path: Path, prometheus: prom.PrometheusServer, private_target: prom.MetricsTarget
) -> None:
    fake = clock_mod.FakeClock(clock_mod.SystemClock().now())
    wall = clock_mod.SystemClock()
    targets_file = tmp_path / "burst-targets.json"
    loaded = _write_config(
        tmp_path,
        {
            "workloads": [_WORKLOAD_CONFIG],
            "pools": [
                {
                    "name": "local",
                    "gpus_per_node": 1,
                    "price_per_hour": 1.0,
                    "boot_s": 5,
                    "max_nodes": 2,
                    "adapter": {
                        "kind": "local",
                        "boot_delay_s": 5,
                        "targets_file": str(targets_file),
                        "log_dir": str(tmp_path / "workers"),
                        "stop_timeout_s": 30,
                    },
                }
            ],
            "prometheus": {"url": prometheus.url, "max_age_s": 10},
            "api": {"listen": None},
        },
    )
    source = prometheus_adapter.PrometheusSource(loaded.config.prometheus_adapter_config())
    ctl = live.build(loaded, clock=fake, metrics=AtWallTime(source))

    def scrape_workers() -> None:
        """Prometheus follows the workers the adapter lists (the demo points file_sd at the same file)."""
        groups = json.loads(targets_file.read_text()) if targets_file.exists() else []
        workers = [prom.Target(g["targets"][0], g["labels"]) for g in groups]
        prometheus.set_targets(prom.JOB, [private_target.target(), *workers])

    def tick() -> model.TickReport:
        fake.advance(TICK_S)
        report = ctl.reconciler.tick()
        scrape_workers()
        return report

    def until(what: str, check: Any, *, timeout: float = 60.0) -> model.TickReport:
        deadline = wall.now() + timeout
        while True:
            report = tick()
            if check(report):
                return report
            assert wall.now() < deadline, f"timed out waiting for {what}: {report}"
            wall.sleep(0.5)

    try:
        private_target.set_traffic(tier="normal", rps=50.0)  # beyond the 2 private GPUs
        _wait_rate(prometheus, 50.0)
        report = tick()
        n = report.decision.target_nodes["local"]
        assert n >= 1, report.decision.reasons
        nodes = sorted(ctl.store.load().records)
        assert len(nodes) == n
        until("the workers to serve", lambda r: r.nodes == {"local": {"ready": n}})
        (lp,) = ctl.local
        for node in nodes:
            assert httpx.get(f"{lp.endpoints()[node]}/readyz").status_code == 200
        # Prometheus scrapes the real workers: their ready series say placement=burst.
        prometheus.wait_value(
            f'sum(facecompare_ready{{job="{prom.JOB}", placement="burst"}})', lambda v: v == n, timeout=30
        )
        procs = lp.processes()
        assert set(procs) == set(nodes)

        private_target.set_traffic(tier="normal", rps=QUIET_RPS)
        _wait_rate(prometheus, QUIET_RPS)
        until("the nodes released", lambda r: not r.nodes, timeout=120)
        for proc in procs.values():
            assert proc.wait(timeout=30) == 0, "each worker drained and exited cleanly"
        assert lp.processes() == {}
        assert json.loads(targets_file.read_text()) == []
    finally:
        ctl.close()
        source.close()
        prometheus.set_targets(prom.JOB, [private_target.target()])
