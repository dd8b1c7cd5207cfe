"""Crash safety: a controller killed at any side effect of a burst-and-release restarts over the same
world and SQLite file and converges with no node leaked, none created twice, and the cost ledger neither
losing nor double counting the time it was down.

A "crash" is a SystemExit raised from inside a tick at the Nth side effect (cordon, replicas, drain or a
node-set submit), before or after the effect took place; the Reconciler and its store connection are
then dropped and new ones built, as a restarted process would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import pytest

from controller import ports
from controller.core import model
from controller.runtime import store
from tests.support import fake_world

S = model.NodeStatus
T = TypeVar("T")

BURST_S = 300.0  # demand high: spot nodes launch, join (240 s) and serve
CALM_MAX_S = 3600.0  # demand gone: stabilization, cordon, scale down, drain, release; then the table empties
TICK_S = 30.0


class Crash:
    """Counts side effects across the cluster and the capacity; dies at the chosen one."""

    def __init__(self, at: int | None, *, after: bool) -> None:
        self.at = at
        self.after = after
        self.calls: list[str] = []

    def around(self, what: str, effect: Callable[[], T]) -> T:
        self.calls.append(what)
        hit = self.at is not None and len(self.calls) == self.at
        if hit and not self.after:
            raise SystemExit(f"crash before {what}")
        result = effect()
        if hit:
            raise SystemExit(f"crash after {what}")
        return result


class CrashingCluster:
    def __init__(self, inner: ports.Cluster, crash: Crash) -> None:
        self.inner = inner
        self.crash = crash

    def burst_nodes(self) -> Mapping[str, model.ClusterNode]:
        return self.inner.burst_nodes()

    def cordon(self, node: str) -> None:
        self.crash.around(f"cordon {node}", lambda: self.inner.cordon(node))

    def drain(self, node: str) -> int:
        return self.crash.around(f"drain {node}", lambda: self.inner.drain(node))

    def set_replicas(self, workload: str, pool: str, replicas: int) -> None:
        self.crash.around(
            f"replicas {workload}/{pool}={replicas}",
            lambda: self.inner.set_replicas(workload, pool, replicas),
        )


class CrashingCapacity:
    def __init__(self, inner: ports.Capacity, crash: Crash) -> None:
        self.inner = inner
        self.crash = crash

    def state(self, pool: str) -> model.PoolState:
        return self.inner.state(pool)

    def submit(self, pool: str, nodes: tuple[str, ...]) -> None:
        self.crash.around(f"submit {pool} {len(nodes)}", lambda: self.inner.submit(pool, nodes))


def _scenario(db: Path, crash: Crash, *, apply_delay_s: float) -> tuple[fake_world.World, int]:
    """Burst (100 req/s: a few spot nodes) then calm until every node is gone (at most an hour),
    restarting after a crash; returns the world and the number of restarts."""
    w = fake_world.World(db, apply_delay_s=apply_delay_s)
    fake_cluster, fake_capacity = w.cluster, w.capacity
    w.cluster = CrashingCluster(fake_cluster, crash)
    w.capacity = CrashingCapacity(fake_capacity, crash)
    w.restart()
    restarts = 0

    def tick() -> None:
        nonlocal restarts
        try:
            w.rec.tick()
        except SystemExit:
            restarts += 1
            w.restart()  # a new process: new Reconciler, new store connection, same world and file
        w.clock.advance(TICK_S)

    w.metrics.set("face", 100.0)
    end = w.clock.now() + BURST_S
    while w.clock.now() < end:
        tick()
    w.metrics.set("face", 0.0)
    end = w.clock.now() + CALM_MAX_S
    while w.clock.now() < end and (w.infra.instances or w.statuses()):
        tick()
    return w, restarts


def _count_effects(tmp_path: Path, *, apply_delay_s: float) -> list[str]:
    crash = Crash(None, after=False)
    w, _ = _scenario(tmp_path / "count.db", crash, apply_delay_s=apply_delay_s)
    w.close()
    return crash.calls


def _assert_converged(w: fake_world.World) -> None:
    assert w.infra.instances == {}, "a node leaked: still running after the release"
    assert w.statuses() == {}, "every record released and gone from the table"
    launches = [name for _, ev, name in w.infra.events if ev == "launch"]
    assert launches, "the burst launched nodes"
    assert len(launches) == len(set(launches)), "a node was created twice"
    assert w.infra.submitted.get("spot") == ()


@pytest.mark.parametrize("apply_delay_s", [0.0, 30.0], ids=["instant-apply", "apply-in-flight"])
def test_a_crash_at_any_side_effect_converges_with_nothing_leaked(
    tmp_path: Path, apply_delay_s: float
) -> None:
    effects = _count_effects(tmp_path, apply_delay_s=apply_delay_s)
    kinds = {e.split()[0] for e in effects}
    assert kinds == {"replicas", "submit", "cordon", "drain"}, effects
    for after in (False, True):
        for n in range(1, len(effects) + 1):
            db = tmp_path / f"crash-{apply_delay_s}-{after}-{n}.db"
            crash = Crash(n, after=after)
            w, restarts = _scenario(db, crash, apply_delay_s=apply_delay_s)
            try:
                assert restarts == 1, (
                    f"crash {'after' if after else 'before'} {effects[n - 1]} never happened"
                )
                _assert_converged(w)
            except AssertionError as exc:
                raise AssertionError(
                    f"crash {'after' if after else 'before'} effect {n} ({effects[n - 1]}): {exc}"
                ) from None
            finally:
                w.close()


def test_a_crash_between_commit_and_act_redoes_the_committed_intent(tmp_path: Path) -> None:
    crash = Crash(1, after=False)  # the very first side effect of the first burst tick
    w = fake_world.World(tmp_path / "db.sqlite", apply_delay_s=30.0)
    w.capacity = CrashingCapacity(w.capacity, crash)
    w.cluster = CrashingCluster(w.cluster, crash)
    w.restart()
    w.metrics.set("face", 200.0)
    with pytest.raises(SystemExit):
        w.rec.tick()
    intended = {n for n, s in w.statuses().items() if s == "requested"}
    # A cold start: the bound is (200 + 25) x e^0.25 - 25 = 264 req/s -> ceil(264 / (25 x 0.97)) = 11
    # GPUs, 2 of them private -> 9 spot nodes.
    assert len(intended) == 9 and w.infra.instances == {}, "committed, not acted"
    w.restart()
    w.run(300)
    assert set(w.infra.instances) == intended, "the restart launched exactly what was committed"
    w.close()


def test_the_ledger_neither_loses_nor_double_counts_the_downtime(tmp_path: Path) -> None:
    w = fake_world.World(tmp_path / "db.sqlite")
    w.metrics.set("face", 100.0)  # a few spot nodes, billed from their request on
    w.run(300)
    w.close()
    w.clock.advance(600)  # the controller is down for 10 minutes; the nodes keep billing
    w.restart()
    w.run(285)
    sqlite = w.store
    assert isinstance(sqlite, store.SqliteStore)
    nodes = sum(w.reports[-1].nodes["spot"].values())
    (seconds, usd) = sqlite.ledger()["spot"]
    assert seconds == pytest.approx(w.billed_node_seconds("spot"))
    assert seconds >= nodes * 600, "the downtime is billed"
    assert usd == pytest.approx(seconds * 0.4 / 3600)
    w.close()
