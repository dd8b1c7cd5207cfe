"""The reconcile loop against the in-package fakes: the whole lifecycle, holds, crashes and conflicts."""

from __future__ import annotations

import pytest

from controller import ports
from controller.core import model, release
from tests.support import fake_world

PLAIN = fake_world.PLAIN
KEEP_S = PLAIN.keep_factor * fake_world.SPOT.boot_s + PLAIN.horizon_extra_s
"""Idle burst capacity is kept this long (seen time) before it goes: a boot, and the next tick (255 s)."""


def plain_world(*, apply_delay_s: float = 0.0, dry_run: bool = False) -> fake_world.World:
    """The shared fake world with plain sizing; a dry-run controller when asked."""
    w = fake_world.World(burst_policy=PLAIN, apply_delay_s=apply_delay_s)
    w.rec.dry_run = dry_run
    return w


def test_burst_then_release_walks_the_whole_lifecycle() -> None:
    w = plain_world()
    w.metrics.set("face", 200.0)  # 200 / (25 * 0.8) = 10 GPUs, 2 private -> 8 burst
    report = w.run(0)
    assert report.decision.action is model.Action.SCALE_UP
    assert report.decision.target_nodes == {"spot": 8, "ondemand": 0}
    assert set(w.statuses().values()) == {"requested"}
    assert len(w.infra.instances) == 8
    assert w.infra.replicas[("face", "spot")] == 8
    assert w.infra.serving_gpus() == 0  # booting: replicas pending

    w.run(240)
    assert set(w.statuses().values()) == {"ready"}
    assert w.infra.serving_gpus() == 8

    w.metrics.set("face", 20.0)  # 1 GPU of demand: private is enough
    report = w.run(KEEP_S - 15)
    assert set(w.statuses().values()) == {"ready"}, "released inside the keep window"
    assert report.decision.cause is model.Cause.STABILIZATION
    assert (
        report.decision.figures["kept_burst_gpus"] == 8 and report.decision.figures["wanted_burst_gpus"] == 0
    )
    w.run(300)
    released = {t.node for r in w.reports for t in r.transitions if t.after is model.NodeStatus.RELEASED}
    assert len(released) == 8
    assert set(w.statuses().values()) <= {"released"}  # a released record leaves the table next tick
    w.run(15)
    assert w.statuses() == {}
    assert w.infra.instances == {}
    assert w.infra.submitted["spot"] == ()


def test_cordon_and_scale_down_precede_removal_from_the_stack() -> None:
    w = plain_world()
    w.metrics.set("face", 100.0)
    w.run(300)
    w.metrics.set("face", 0.0)
    w.run(320)
    applies = [(t, nodes) for t, pool, nodes in w.infra.applies if pool == "spot"]
    shrink_at = next(t for t, nodes in applies if len(nodes) < 3)
    drained = [t for t, ev, _ in w.infra.events if ev == "gone"]
    assert drained and min(drained) >= shrink_at
    for tr in (tr for r in w.reports for tr in r.transitions):
        if tr.after is model.NodeStatus.RELEASING:
            assert tr.before is model.NodeStatus.DRAINING or tr.before is model.NodeStatus.FAILED


def test_unknown_metrics_hold_and_never_release() -> None:
    w = plain_world()
    w.metrics.set("face", 200.0)
    w.run(300)
    before = dict(w.statuses())
    w.metrics.set("face", None)
    report = w.run(1200)
    assert report.decision.action is model.Action.HOLD
    assert not report.synced
    assert "hold" in report.decision.reasons[0]
    assert w.statuses() == before
    w.metrics.fail = True
    assert w.run(600).decision.action is model.Action.HOLD
    assert w.statuses() == before


def test_cluster_unreachable_holds_without_marking_nodes_gone() -> None:
    w = plain_world()
    w.metrics.set("face", 200.0)
    w.run(300)
    w.cluster.fail_reads = True
    report = w.run(60)
    assert report.decision.action is model.Action.HOLD
    assert set(w.statuses().values()) == {"ready"}


def test_insufficient_spot_capacity_falls_back_to_on_demand() -> None:
    w = plain_world()
    w.infra.refuse_capacity.add("spot")
    w.metrics.set("face", 100.0)  # 5 GPUs -> 3 burst
    w.run(0)
    assert w.infra.apply_state["spot"] is model.ApplyState.FAILED
    w.run(30)
    by_pool = {}
    for r in w.store.records.values():
        by_pool.setdefault((r.pool, r.status.value), 0)
        by_pool[(r.pool, r.status.value)] += 1
    assert by_pool.get(("ondemand", "provisioning")) == 3
    assert not any(k[0] == "spot" and k[1] in ("requested", "provisioning") for k in by_pool)


def test_crash_between_commit_and_act_converges_without_leak_or_double_create() -> None:
    w = plain_world(apply_delay_s=30)
    w.metrics.set("face", 200.0)
    w.cluster.fail_reads = False
    # Commit, then "crash" before acting: swap the capacity for one that dies on submit.
    w.rec.capacity = _Crashing()
    with pytest.raises(SystemExit):
        w.rec.tick()
    intended = {n for n, r in w.store.records.items() if r.status is model.NodeStatus.REQUESTED}
    assert len(intended) == 8 and w.infra.instances == {}
    w.restart()
    for _ in range(30):
        w.clock.advance(15)
        w.rec.tick()
    assert set(w.infra.instances) == intended
    assert len(w.infra.launched) == 2 and sum(w.infra.launched.values()) == 8


class _Crashing:
    def state(self, pool: str) -> model.PoolState:
        return model.PoolState(pool, {})

    def submit(self, pool: str, nodes: tuple[str, ...]) -> None:
        raise SystemExit("crash")


def test_a_conflicting_writer_stops_the_tick_before_it_acts() -> None:
    w = plain_world()
    w.metrics.set("face", 200.0)
    stale = w.store.load()
    w.rec.tick()
    with pytest.raises(ports.ConflictError):
        w.store.commit(
            ports.Intent(0, {}, (), w.rec.last_report.decision, {}, stale.policy_state, {}),  # type: ignore[union-attr]
            expected_version=stale.version,
        )


def test_dry_run_decides_but_neither_commits_nor_acts() -> None:
    w = plain_world(dry_run=True)
    w.metrics.set("face", 200.0)
    report = w.run(0)
    assert report.decision.target_nodes["spot"] == 8
    assert w.store.version == 0 and w.infra.instances == {}


def test_replica_counts_are_reasserted_after_a_hand_edit() -> None:
    w = plain_world()
    w.metrics.set("face", 200.0)
    w.run(300)
    w.infra.set_replicas("face", "spot", 0)  # someone scaled the Deployment by hand
    w.run(120)
    assert w.infra.replicas[("face", "spot")] == 0, "within the resync interval the write is skipped"
    w.run(300)
    assert w.infra.replicas[("face", "spot")] == 8


@pytest.mark.parametrize("outage", ["no series", "query fails"])
def test_after_a_metrics_outage_longer_than_the_keep_window_the_first_low_sample_does_not_release(
    outage: str,
) -> None:
    """The wait before a release restarts on real metrics: an outage counts as at most one step of it."""
    w = plain_world()
    w.metrics.set("face", 200.0)
    w.run(300)
    assert set(w.statuses().values()) == {"ready"} and len(w.statuses()) == 8
    if outage == "no series":
        w.metrics.set("face", None)
    else:
        w.metrics.fail = True
    w.run(3 * KEEP_S)  # blind: every tick holds
    w.metrics.fail = False
    w.metrics.set("face", 20.0)  # back, and low: private capacity is enough
    back = w.clock.now()
    w.clock.advance(15.0)
    first = w.rec.tick()
    assert first.synced and first.decision.cause is model.Cause.STABILIZATION
    assert set(w.statuses().values()) == {"ready"}, "released on the first sample after the outage"
    w.run(KEEP_S - release.MAX_STEP_S - 30.0)
    assert set(w.statuses().values()) == {"ready"}, "released before a whole keep window of real metrics"
    w.run(KEEP_S)
    released = [
        (r.at, t.node) for r in w.reports for t in r.transitions if t.after is model.NodeStatus.RELEASED
    ]
    assert len(released) == 8
    first_release = min(at for at, _ in released)
    assert first_release - back >= KEEP_S - release.MAX_STEP_S
    print(
        f"{outage}: outage {3 * KEEP_S:g} s, first release {first_release - back:g} s after metrics came back"
    )
