"""The node lifecycle table, one test per row: each drives `sync` or `plan` through the situation that
row names and checks the move, its reason and that nothing else moved."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from controller.core import lifecycle, model

S = model.NodeStatus
E = lifecycle.Event
POOL = model.PoolSpec("spot", gpus_per_node=1, price_per_hour=1.0, boot_s=60.0, max_nodes=4)
WORKLOAD = model.WorkloadSpec("w", gpu_rps=10.0, service_time_s=0.1, slo_s=1.0, private_gpus=0)
TIMEOUTS = lifecycle.Timeouts(boot_s=900.0, drain_s=600.0)
NOW = 1000.0
Moved = tuple[tuple[model.Transition, ...], Mapping[str, model.NodeRecord]]


def record(
    status: model.NodeStatus, *, since: float = NOW - 10, requested_at: float = NOW - 10
) -> model.NodeRecord:
    return model.NodeRecord("n", "spot", status, since, requested_at)


def sync(
    rec: model.NodeRecord,
    *,
    instances: Mapping[str, str] | None = None,
    node: model.ClusterNode | None = None,
    apply: model.ApplyState = model.ApplyState.IDLE,
    submitted: tuple[str, ...] | None = None,
    message: str = "",
) -> Moved:
    pool = model.PoolState(
        "spot", instances if instances is not None else {}, submitted=submitted, apply=apply, message=message
    )
    obs = model.Observation(NOW, {}, {} if node is None else {node.name: node}, {"spot": pool})
    records, moves = lifecycle.sync({rec.name: rec} if rec.name else {}, obs, timeouts=TIMEOUTS)
    return moves, records


def plan(records: Mapping[str, model.NodeRecord], target: int) -> Moved:
    action = model.Action.SCALE_UP if target else model.Action.SCALE_DOWN
    decision = model.Decision(NOW, action, {"spot": target}, {"w": target}, {}, {}, ())
    p = lifecycle.plan(records, decision, workloads=(WORKLOAD,), pools=(POOL,), cluster={})
    return p.transitions, p.records


def drain(rec: model.NodeRecord) -> Moved:
    records, moves = lifecycle.drain_named({rec.name: rec}, ["n", "unknown"], at=NOW)
    return moves, records


def joined(**kw: object) -> model.ClusterNode:
    return model.ClusterNode("n", "spot", ready=True, **kw)  # type: ignore[arg-type]


CASES: dict[tuple[model.NodeStatus | None, lifecycle.Event], Callable[[], Moved]] = {
    (None, E.SCALE_UP): lambda: plan({}, 1),
    (None, E.ADOPTED): lambda: sync(record(S.RELEASED, since=NOW - 20), instances={"n": "i-1"}),
    (S.REQUESTED, E.CREATED): lambda: sync(record(S.REQUESTED), instances={"n": "i-1"}),
    (S.REQUESTED, E.JOINED): lambda: sync(record(S.REQUESTED), node=joined()),
    (S.PROVISIONING, E.JOINED): lambda: sync(record(S.PROVISIONING), instances={"n": "i-1"}, node=joined()),
    (S.REQUESTED, E.APPLY_FAILED): lambda: sync(
        record(S.REQUESTED), apply=model.ApplyState.FAILED, submitted=("n",), message="quota"
    ),
    (S.REQUESTED, E.BOOT_TIMEOUT): lambda: sync(record(S.REQUESTED, requested_at=NOW - 901)),
    (S.PROVISIONING, E.BOOT_TIMEOUT): lambda: sync(
        record(S.PROVISIONING, requested_at=NOW - 901), instances={"n": "i-1"}
    ),
    (S.PROVISIONING, E.VANISHED): lambda: sync(record(S.PROVISIONING)),
    (S.READY, E.VANISHED): lambda: sync(record(S.READY), node=joined()),
    (S.READY, E.LEFT_CLUSTER): lambda: sync(record(S.READY), instances={"n": "i-1"}),
    (S.READY, E.INTERRUPTED): lambda: sync(
        record(S.READY), instances={"n": "i-1"}, node=joined(interrupting=True)
    ),
    (S.READY, E.SCALE_DOWN): lambda: plan({"n": record(S.READY)}, 0),
    (S.REQUESTED, E.SCALE_DOWN): lambda: plan({"n": record(S.REQUESTED)}, 0),
    (S.PROVISIONING, E.SCALE_DOWN): lambda: plan({"n": record(S.PROVISIONING)}, 0),
    (S.READY, E.OPERATOR_DRAIN): lambda: drain(record(S.READY)),
    (S.REQUESTED, E.OPERATOR_DRAIN): lambda: drain(record(S.REQUESTED)),
    (S.PROVISIONING, E.OPERATOR_DRAIN): lambda: drain(record(S.PROVISIONING)),
    (S.DRAINING, E.DRAINED): lambda: sync(record(S.DRAINING), instances={"n": "i-1"}, node=joined(pods=0)),
    (S.DRAINING, E.VANISHED): lambda: sync(record(S.DRAINING), node=joined(pods=2)),
    (S.DRAINING, E.DRAIN_TIMEOUT): lambda: sync(
        record(S.DRAINING, since=NOW - 601), instances={"n": "i-1"}, node=joined(pods=2)
    ),
    (S.FAILED, E.NEXT_TICK): lambda: sync(record(S.FAILED), instances={"n": "i-1"}),
    (S.RELEASING, E.GONE): lambda: sync(record(S.RELEASING)),
}

DETAILS = {"message": "quota", "boot_s": TIMEOUTS.boot_s, "drain_s": TIMEOUTS.drain_s}


def test_every_row_has_its_case() -> None:
    assert set(CASES) == set(lifecycle.TABLE)


@pytest.mark.parametrize("key", list(lifecycle.TABLE), ids=lambda k: f"{k[0] and k[0].value}-{k[1].value}")
def test_row(key: tuple[model.NodeStatus | None, lifecycle.Event]) -> None:
    before, _ = key
    row = lifecycle.TABLE[key]
    moves, records = CASES[key]()
    (move,) = moves
    assert (move.before, move.after, move.reason) == (before, row.after, row.reason.format(**DETAILS))
    assert move.at == NOW
    assert records[move.node].status is row.after
    assert records[move.node].reason == move.reason


def test_a_move_the_table_lacks_raises() -> None:
    with pytest.raises(KeyError):
        lifecycle._move(record(S.RELEASED), E.JOINED, NOW, [])


def test_released_records_leave_the_table() -> None:
    moves, records = sync(record(S.RELEASED))
    assert moves == () and records == {}


@pytest.mark.parametrize("status", [S.DRAINING, S.RELEASING, S.FAILED, S.RELEASED])
def test_an_operator_drain_leaves_a_node_that_is_already_leaving_alone(status: model.NodeStatus) -> None:
    moves, records = drain(record(status))
    assert moves == () and records["n"].status is status
