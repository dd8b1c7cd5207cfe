"""The scheduled jobs: leader gating (with the real Lease elector on the emulated API server), the
schedule itself, retention, refresh, and the orphan audit."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from apscheduler.schedulers import background as aps_background
from prometheus_client import parser

from controller import ports
from controller.adapters import kube as kube_adapter
from controller.core import model
from controller.runtime import jobs, orphans, store, telemetry
from tests.support import fake_world, kube_emulator

S = model.NodeStatus


class Elector:
    """A scripted elector: leadership is whatever the test says."""

    def __init__(self, leading: bool) -> None:
        self.leading = leading
        self.rounds = 0
        self.released = False

    def is_leader(self) -> bool:
        return self.leading

    def acquire_or_renew(self) -> bool:
        self.rounds += 1
        return self.leading

    def release(self) -> None:
        self.released = True


@pytest.fixture
def world(tmp_path: Path) -> Iterator[fake_world.World]:
    w = fake_world.World(tmp_path / "db.sqlite")
    yield w
    w.close()


def _jobs(w: fake_world.World, **kw: object) -> jobs.Jobs:
    return jobs.Jobs(
        w.rec,
        clock=w.clock,
        intervals=jobs.Intervals(tick_s=15.0, refresh_s=600.0, orphan_audit_s=300.0),
        retention_age_s=3600.0,
        **kw,  # type: ignore[arg-type]
    )


def _gauge(t: telemetry.Telemetry, name: str) -> float:
    for family in parser.text_string_to_metric_families(t.exposition().decode()):
        for s in family.samples:
            if s.name == name and not s.labels:
                return s.value
    raise KeyError(name)


def test_a_replica_that_does_not_lead_neither_ticks_nor_writes(world: fake_world.World) -> None:
    tel = telemetry.Telemetry(workloads=world.setup.workloads, pools=world.setup.pools)
    elector = Elector(leading=False)
    refreshed: list[int] = []
    j = _jobs(world, elector=elector, tel=tel, refresh=lambda: refreshed.append(1), prune=lambda _: {})
    world.metrics.set("face", 200.0)
    assert j.reconcile() is None
    assert j.refresh() is None and j.retention() is None and not refreshed
    assert world.store.load().version == 0 and world.infra.instances == {}
    assert _gauge(tel, telemetry.LEADER) == 0

    elector.leading = True
    report = j.reconcile()
    assert report is not None and report.decision.action is model.Action.SCALE_UP
    assert len(world.infra.instances) == report.decision.target_nodes["spot"] > 0
    assert _gauge(tel, telemetry.LEADER) == 1
    j.refresh()
    assert refreshed == [1]


def test_two_replicas_with_the_real_lease_elector_take_turns(tmp_path: Path) -> None:
    """One world, two controller replicas (each with its own store), one Lease on the API server."""
    w = fake_world.World(tmp_path / "a.db")
    ticking = w.clock
    with kube_emulator.running(clock=ticking) as k:
        w.metrics.set("face", 100.0)
        b_store = store.SqliteStore(tmp_path / "b.db")
        b_rec = type(w.rec)(
            w.setup, clock=ticking, metrics=w.metrics, cluster=w.cluster, capacity=w.capacity, store=b_store
        )

        def elector(identity: str) -> kube_adapter.LeaseElector:
            return kube_adapter.LeaseElector(
                k.api_client, identity, clock=ticking, lease_duration_s=15, renew_deadline_s=10
            )

        a = jobs.Jobs(
            w.rec, clock=ticking, intervals=jobs.Intervals(5.0), retention_age_s=60, elector=elector("a")
        )
        b = jobs.Jobs(
            b_rec, clock=ticking, intervals=jobs.Intervals(5.0), retention_age_s=60, elector=elector("b")
        )
        assert a.leader() is True
        assert b.leader() is False
        first = a.reconcile()
        assert first is not None and b.reconcile() is None
        launched = set(w.infra.instances)
        assert launched and len(launched) == first.decision.target_nodes["spot"]
        assert w.store.load().version == 1 and b_store.load().version == 0

        # `a` stops renewing (hung or partitioned): it stops acting at its renew deadline, and `b`
        # takes over only once the Lease has gone unrenewed for a whole duration.
        ticking.advance(11)
        assert a.reconcile() is None
        assert b.leader() is False
        ticking.advance(15)
        assert b.leader() is True
        report = b.reconcile()
        assert report is not None
        # b's store was empty: it adopts a's instances from the stack instead of launching its own.
        adopted = {n for n, r in b_store.load().records.items() if r.status is S.PROVISIONING}
        assert launched <= adopted
        assert launched <= set(w.infra.instances)
        b.shutdown()
        lease = k.get("leases", "gpuburst-controller")
        assert lease is not None and lease["spec"].get("holderIdentity") in (None, "")
        b_store.close()
        w.close()


def test_the_schedule_never_overlaps_a_job_and_folds_missed_runs(world: fake_world.World) -> None:
    j = _jobs(world, prune=world.store.prune, refresh=lambda: None, audit=lambda: None)  # type: ignore[attr-defined]
    j.schedule()
    by_id = {job.id: job for job in j.scheduler.get_jobs()}
    assert set(by_id) == {"reconcile", "refresh", "orphan_audit", "retention"}
    for job in by_id.values():
        assert job.max_instances == 1 and job.coalesce is True
    assert by_id["reconcile"].trigger.interval.total_seconds() == 15.0
    assert by_id["refresh"].trigger.interval.total_seconds() == 600.0


def test_a_slow_tick_is_not_overlapped_by_the_next(world: fake_world.World) -> None:
    """A real scheduler, ticks due every 20 ms that take 50 ms: never two ticks at once."""
    running = 0
    most = 0
    lock = threading.Lock()
    done = threading.Event()
    inner = world.rec.tick
    pause = threading.Event()

    def slow_tick(**kw: object) -> model.TickReport:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            pause.wait(0.05)
            return inner(**kw)  # type: ignore[arg-type]
        finally:
            with lock:
                running -= 1
            if world.store.load().version >= 3:
                done.set()

    world.rec.tick = slow_tick  # type: ignore[method-assign]
    world.metrics.set("face", 10.0)
    j = jobs.Jobs(
        world.rec,
        clock=world.clock,
        intervals=jobs.Intervals(tick_s=0.02),
        retention_age_s=60,
        scheduler=aps_background.BackgroundScheduler(),
    )
    j.start()
    try:
        assert done.wait(10)
    finally:
        j.shutdown()
    assert most == 1


def test_retention_prunes_rows_older_than_the_age(world: fake_world.World) -> None:
    world.metrics.set("face", 100.0)
    world.run(60)
    world.clock.advance(7200)
    world.run(0)
    j = _jobs(world, prune=lambda before: world.store.prune(before=before))  # type: ignore[attr-defined]
    pruned = j.retention()
    assert pruned is not None and pruned["decisions"] == 5
    assert len(world.store.decisions()) == 1  # type: ignore[attr-defined]


def test_first_tick_runs_on_start_and_failures_do_not_stop_the_schedule(world: fake_world.World) -> None:
    world.metrics.set("face", 100.0)
    j = _jobs(world, scheduler=aps_background.BackgroundScheduler())
    report = j.start()
    try:
        assert report is not None and report.decision.target_nodes["spot"] > 0
        world.store.close()  # type: ignore[attr-defined]
        world.rec.store = _Broken()
        assert j.reconcile() is None  # logged, not raised
    finally:
        j.shutdown()


class _Broken:
    def load(self) -> ports.Snapshot:
        raise OSError("disk gone")

    def commit(self, intent: ports.Intent, *, expected_version: int) -> int:
        raise OSError("disk gone")


# -- the orphan audit -------------------------------------------------------------------------------
def _rec(name: str, status: model.NodeStatus, *, at: float, pool: str = "spot") -> model.NodeRecord:
    return model.NodeRecord(name, pool, status, at, at)


def test_find_reports_instances_that_never_joined_after_the_grace_time() -> None:
    pools = {"spot": model.PoolState("spot", {"a": "running", "b": "running", "c": "running"})}
    records = {
        "a": _rec("a", S.PROVISIONING, at=0.0),  # never joined, 700 s: orphan
        "b": _rec("b", S.PROVISIONING, at=500.0),  # still booting
        "c": _rec("c", S.RELEASING, at=0.0),  # on its way out
    }
    found = orphans.find(cluster={}, pools=pools, records=records, now=700.0, grace_s=600.0)
    assert [(o.kind, o.node) for o in found] == [(orphans.CLOUD_NOT_IN_CLUSTER, "a")]
    assert "700 s" in found[0].detail


def test_find_reports_cluster_nodes_no_stack_holds() -> None:
    pools = {"spot": model.PoolState("spot", {"a": "running"})}
    cluster = {
        "a": model.ClusterNode("a", "spot", ready=True),
        "byhand": model.ClusterNode("byhand", "spot", ready=True),
        "other": model.ClusterNode("other", "gcp-a100", ready=True),
        "leaving": model.ClusterNode("leaving", "spot", ready=False),
    }
    records = {"a": _rec("a", S.READY, at=0.0), "leaving": _rec("leaving", S.RELEASED, at=650.0)}
    found = orphans.find(cluster=cluster, pools=pools, records=records, now=700.0, grace_s=600.0)
    assert [(o.kind, o.node) for o in found] == [
        (orphans.CLUSTER_NOT_IN_STACK, "byhand"),
        (orphans.CLUSTER_NOT_IN_STACK, "other"),
    ]
    assert "gcp-a100 is not managed" in found[1].detail


def test_a_pool_mid_apply_is_not_audited() -> None:
    pools = {"spot": model.PoolState("spot", {"a": "running"}, apply=model.ApplyState.BUSY)}
    cluster = {"z": model.ClusterNode("z", "spot", ready=True)}
    found = orphans.find(
        cluster=cluster, pools=pools, records={"a": _rec("a", S.PROVISIONING, at=0)}, now=1e6, grace_s=1
    )
    assert found == ()


class _WithStray:
    """The fake cluster plus nodes nobody launched through a stack."""

    def __init__(self, inner: ports.Cluster) -> None:
        self.inner = inner
        self.extra: dict[str, model.ClusterNode] = {}

    def burst_nodes(self) -> Mapping[str, model.ClusterNode]:
        return {**self.inner.burst_nodes(), **self.extra}

    def cordon(self, node: str) -> None:
        self.inner.cordon(node)

    def drain(self, node: str) -> int:
        return self.inner.drain(node)

    def set_replicas(self, workload: str, pool: str, replicas: int) -> None:
        self.inner.set_replicas(workload, pool, replicas)


def _orphan_gauges(tel: telemetry.Telemetry) -> dict[str, float]:
    return {
        s.labels["kind"]: s.value
        for f in parser.text_string_to_metric_families(tel.exposition().decode())
        for s in f.samples
        if s.name == telemetry.ORPHANS
    }


def test_the_audit_reports_what_appears_and_clears_and_deletes_nothing(world: fake_world.World) -> None:
    tel = telemetry.Telemetry(workloads=world.setup.workloads, pools=world.setup.pools)
    cluster = _WithStray(world.cluster)
    world.cluster = cluster
    world.restart()
    sqlite = world.store
    assert isinstance(sqlite, store.SqliteStore)
    audit = orphans.OrphanAudit(
        [p.name for p in world.setup.pools],
        cluster=cluster,
        capacity=world.capacity,
        store=sqlite,
        clock=world.clock,
        telemetry=tel,
        grace_s=600.0,
        record=sqlite.record,
    )
    j = _jobs(world, audit=audit.run)
    world.metrics.set("face", 60.0)  # above the 2 private GPUs: some spot nodes
    world.run(0)
    nodes = set(world.infra.instances)
    assert nodes
    for node in nodes:
        world.infra.instances[node].joins = False  # they boot but never join (a bad join token)
    world.run(300)
    assert j.orphan_audit() == ()

    cluster.extra["spot-by-hand"] = model.ClusterNode("spot-by-hand", "spot", ready=True)
    world.run(400)  # the nodes have been missing 700 s: past the grace, before the boot timeout (900 s)
    nodes = {n for n, status in world.statuses().items() if n in nodes and status == "provisioning"}
    assert nodes, "some of them are still wanted"
    found = j.orphan_audit()
    assert isinstance(found, tuple)
    assert {(o.kind, o.node) for o in found} == {(orphans.CLOUD_NOT_IN_CLUSTER, n) for n in nodes} | {
        (orphans.CLUSTER_NOT_IN_STACK, "spot-by-hand")
    }
    assert _orphan_gauges(tel) == {orphans.CLOUD_NOT_IN_CLUSTER: len(nodes), orphans.CLUSTER_NOT_IN_STACK: 1}
    j.orphan_audit()
    assert len(sqlite.audit(kind="orphan")) == len(nodes) + 1, "recorded when it appears, not every run"
    assert nodes <= set(world.infra.instances), "the audit never deletes"

    world.run(300)  # the lifecycle's boot timeout fails the nodes and releases them
    assert not nodes & set(world.infra.instances)
    found = j.orphan_audit()
    assert isinstance(found, tuple)
    assert {(o.kind, o.node) for o in found} == {(orphans.CLUSTER_NOT_IN_STACK, "spot-by-hand")}
    cleared = sqlite.audit(kind="orphan_resolved")
    assert {(c.node, c.detail) for c in cleared} == {(n, orphans.CLOUD_NOT_IN_CLUSTER) for n in nodes}
    assert _orphan_gauges(tel)[orphans.CLOUD_NOT_IN_CLUSTER] == 0


def test_an_audit_whose_read_fails_concludes_nothing(world: fake_world.World) -> None:
    audit = orphans.OrphanAudit(
        ["spot"],
        cluster=world.cluster,
        capacity=world.capacity,
        store=world.store,
        clock=world.clock,
        grace_s=1.0,
    )
    world.cluster.fail_reads = True  # type: ignore[attr-defined]
    assert _jobs(world, audit=audit.run).orphan_audit() is None
    assert audit.current == {}
