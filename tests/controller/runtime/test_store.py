"""The store, on SQLite and on PostgreSQL: versioned atomic commits, migrations, the generic policy-state
codec, overrides, the audit log, the ledger and retention. Tests taking `db` or `open_store` run on both."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa

from controller import ports
from controller.core import model, policy
from controller.runtime import codec, errors, schema, store, store_sql
from tests.support import postgres

pg_server = postgres.pg_server
AnyStore = store_sql.AnyStore

S = model.NodeStatus


def _decision(at: float, action: model.Action = model.Action.SCALE_UP) -> model.Decision:
    return model.Decision(
        at=at,
        action=action,
        target_nodes={"spot": 2},
        target_gpus={"face": 4},
        demand_rps={"face": 80.0},
        forecast_rps={"face": 80.0},
        reasons=("face: 80.0 req/s, queue 0 -> 4 GPUs (2 private)",),
    )


def _intent(
    at: float,
    records: Mapping[str, model.NodeRecord],
    *,
    transitions: tuple[model.Transition, ...] = (),
    cost: Mapping[str, tuple[float, float]] | None = None,
    state: policy.PolicyState | None = None,
    inputs: Mapping[str, object] | None = None,
) -> ports.Intent:
    return ports.Intent(
        at=at,
        records=records,
        transitions=transitions,
        decision=_decision(at),
        inputs=inputs if inputs is not None else {"synced": True, "metrics": {"face": {"rate_rps": 80.0}}},
        policy_state=state or policy.PolicyState(recommendations=((at, 2),)),
        desired={"spot": tuple(sorted(records))},
        cost=cost or {},
    )


def _rec(name: str, status: model.NodeStatus = S.REQUESTED, at: float = 100.0) -> model.NodeRecord:
    return model.NodeRecord(name, "spot", status, at, at)


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], AnyStore]]:
    """Opens another store object on the same database (a fresh one per test), on either backend."""
    make: Callable[[], AnyStore]
    if request.param == "sqlite":
        path = tmp_path / "gpuburst.db"
        make = lambda: store.SqliteStore(path)  # noqa: E731
    else:
        url = request.getfixturevalue("pg_server").fresh_url()
        make = lambda: store_sql.SqlStore(url)  # noqa: E731
    opened: list[AnyStore] = []

    def opener() -> AnyStore:
        opened.append(make())
        return opened[-1]

    yield opener
    for s in opened:
        s.close()


@pytest.fixture
def db(open_store: Callable[[], AnyStore]) -> AnyStore:
    return open_store()


def _execute(db: AnyStore, sql: str) -> None:
    """Raw SQL on the store's own database, past its API."""
    if isinstance(db, store.SqliteStore):
        db._conn().execute(sql)
    else:
        with db.engine.begin() as conn:
            conn.execute(sa.text(sql))


def test_an_empty_database_loads_as_version_zero(db: AnyStore) -> None:
    snap = db.load()
    assert snap.version == 0
    assert snap.records == {}
    assert snap.policy_state == policy.PolicyState()
    assert snap.accrued_until is None
    assert snap.overrides == ports.Overrides()


def test_commit_then_load_round_trips_the_intent(db: AnyStore) -> None:
    recs = {"spot-1": _rec("spot-1"), "spot-2": model.NodeRecord("spot-2", "spot", S.READY, 90, 10, 90, "ok")}
    tr = (model.Transition(100.0, "spot-1", "spot", None, S.REQUESTED, "scale up"),)
    state = policy.PolicyState(recommendations=((85.0, 1), (100.0, 2)))
    v = db.commit(
        _intent(100.0, recs, transitions=tr, state=state, cost={"spot": (30.0, 0.01)}), expected_version=0
    )
    assert v == 1
    snap = db.load()
    assert snap.version == 1
    assert dict(snap.records) == recs
    assert snap.policy_state == state
    assert snap.accrued_until == 100.0

    (row,) = db.decisions(limit=5)
    assert row.version == 1 and row.action == "scale_up"
    assert row.decision["reasons"] == ["face: 80.0 req/s, queue 0 -> 4 GPUs (2 private)"]
    assert row.decision["target_nodes"] == {"spot": 2}
    assert row.inputs["metrics"]["face"]["rate_rps"] == 80.0
    assert row.desired == {"spot": ["spot-1", "spot-2"]}
    (audit,) = db.audit(kind="transition")
    assert (audit.node, audit.before, audit.after, audit.detail) == ("spot-1", None, "requested", "scale up")
    assert db.ledger() == {"spot": (30.0, 0.01)}


def test_records_left_out_of_an_intent_leave_the_table(db: AnyStore) -> None:
    db.commit(_intent(1.0, {"a": _rec("a"), "b": _rec("b")}), expected_version=0)
    db.commit(_intent(2.0, {"b": _rec("b", S.PROVISIONING)}), expected_version=1)
    assert {n: r.status for n, r in db.load().records.items()} == {"b": S.PROVISIONING}


def test_a_stale_version_conflicts_and_writes_nothing(db: AnyStore) -> None:
    db.commit(_intent(1.0, {"a": _rec("a")}), expected_version=0)
    with pytest.raises(ports.ConflictError, match="version 1, expected 0"):
        db.commit(_intent(2.0, {"b": _rec("b")}, cost={"spot": (5.0, 1.0)}), expected_version=0)
    snap = db.load()
    assert snap.version == 1 and set(snap.records) == {"a"}
    assert len(db.decisions()) == 1
    assert db.ledger() == {}


def test_a_failure_mid_commit_rolls_the_whole_intent_back(db: AnyStore) -> None:
    db.commit(_intent(1.0, {"a": _rec("a")}), expected_version=0)
    # The inputs are serialized after the node rows were written: the failure must undo those too.
    bad = _intent(2.0, {"b": _rec("b")}, inputs={"oops": object()})
    with pytest.raises(TypeError):
        db.commit(bad, expected_version=1)
    snap = db.load()
    assert snap.version == 1 and set(snap.records) == {"a"}
    assert db.commit(_intent(3.0, {"c": _rec("c")}), expected_version=1) == 2


def test_two_stores_on_one_database_see_each_other_and_conflict(
    open_store: Callable[[], AnyStore],
) -> None:
    one, two = open_store(), open_store()
    a, b = one.load(), two.load()
    one.commit(_intent(1.0, {"a": _rec("a")}), expected_version=a.version)
    with pytest.raises(ports.ConflictError):
        two.commit(_intent(1.0, {"b": _rec("b")}), expected_version=b.version)
    assert set(two.load().records) == {"a"}


def test_readers_in_other_threads_run_alongside_the_writer(db: AnyStore) -> None:
    seen: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                seen.append(len(db.nodes()) + len(db.decisions(limit=3)))
        except BaseException as exc:  # surfaced in the main thread's assertion
            failures.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for v in range(30):
            db.commit(_intent(float(v), {f"n{v}": _rec(f"n{v}")}), expected_version=v)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert not failures
    assert seen
    assert db.version() == 30


# -- migrations -------------------------------------------------------------------------------------
def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_new_database_gets_every_migration_in_order(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    store.SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")] == list(
            range(1, schema.LATEST + 1)
        )
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"nodes", "decisions", "audit", "ledger_hourly", "overrides", "controller_state"} <= _tables(path)


def test_a_version_one_database_migrates_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert schema.migrate(conn, target=1) == 1
    conn.execute(
        "UPDATE controller_state SET version = 7, at = 7300.5, policy_state = ? WHERE id = 1",
        (json.dumps({"recommendations": [[7290.0, 3]]}),),
    )
    conn.execute("INSERT INTO nodes VALUES ('spot-1', 'spot', 'ready', 7000, 6900, 7000, 'joined')")
    conn.execute("INSERT INTO ledger VALUES ('spot', 1200.0, 0.5)")
    conn.close()
    assert "ledger" in _tables(path)

    db = store.SqliteStore(path)
    try:
        snap = db.load()
        assert snap.version == 7
        assert snap.records["spot-1"].status is S.READY
        assert snap.policy_state == policy.PolicyState(recommendations=((7290.0, 3),))
        assert db.ledger() == {"spot": (1200.0, 0.5)}
        assert db.ledger_hourly() == [("spot", 7200.0, 1200.0, 0.5)]
        assert db.overrides() == ports.Overrides()
        db.commit(_intent(7310.0, dict(snap.records), cost={"spot": (10.0, 0.01)}), expected_version=7)
        assert db.ledger()["spot"] == pytest.approx((1210.0, 0.51))
    finally:
        db.close()
    assert "ledger" not in _tables(path)


def test_a_database_from_a_newer_controller_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    store.SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (schema.LATEST + 1,))
    with pytest.raises(schema.StoreError, match=rf"future\.db: schema version {schema.LATEST + 1} is newer"):
        store.SqliteStore(path)


def test_a_missing_directory_is_created(tmp_path: Path) -> None:
    store.SqliteStore(tmp_path / "state" / "gpuburst.db").close()
    assert (tmp_path / "state" / "gpuburst.db").is_file()


def test_an_unusable_path_is_a_user_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(
        errors.UserError, match=r"file/sub/x\.db: cannot create its directory: Not a directory"
    ):
        store.SqliteStore(tmp_path / "file" / "sub" / "x.db")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(errors.UserError, match=r"dir\.db: cannot open the database"):
        store.SqliteStore(tmp_path / "dir.db")


# -- the policy state codec -------------------------------------------------------------------------
def test_policy_state_written_by_an_older_or_newer_controller_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    def written(state_json: str) -> policy.PolicyState:
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE controller_state SET version = version + 1, policy_state = ?", (state_json,))
        reader = store.SqliteStore(path)  # the restarted (older or newer) controller
        try:
            return reader.load().policy_state
        finally:
            reader.close()

    store.SqliteStore(path).close()
    # A newer controller added a field this one does not know; an older one had no recommendations.
    newer = json.dumps({"recommendations": [[1.0, 4]], "panic_until": 99.0})
    assert written(newer) == policy.PolicyState(recommendations=((1.0, 4),))
    assert written("{}") == policy.PolicyState()


def test_a_state_another_writer_committed_is_read_not_served_from_the_cache(
    open_store: Callable[[], AnyStore],
) -> None:
    one, two = open_store(), open_store()
    one.commit(_intent(1.0, {}, state=policy.PolicyState(recommendations=((1.0, 1),))), expected_version=0)
    two.commit(_intent(2.0, {}, state=policy.PolicyState(recommendations=((2.0, 2),))), expected_version=1)
    assert one.load().policy_state.recommendations == ((2.0, 2),)


def test_undecodable_policy_state_is_an_error_not_a_silent_reset(db: AnyStore) -> None:
    bad = json.dumps({"recommendations": [["soon", 4]]})
    _execute(db, f"UPDATE controller_state SET policy_state = '{bad}'")
    with pytest.raises(schema.StoreError, match=r"recommendations\[0\]\[0\]: expected a number"):
        db.load()


class _Mode(enum.StrEnum):
    CALM = "calm"
    PANIC = "panic"


@dataclasses.dataclass(frozen=True)
class _Inner:
    at: float
    n: int


@dataclasses.dataclass(frozen=True)
class _GrownState:
    """A policy state the way it may grow: nested values, optionals, enums, sets, numeric keys."""

    recommendations: tuple[tuple[float, int], ...] = ()
    mode: _Mode = _Mode.CALM
    panic_until: float | None = None
    peaks: Mapping[str, float] = dataclasses.field(default_factory=dict)
    by_minute: Mapping[int, _Inner] = dataclasses.field(default_factory=dict)
    pools_seen: frozenset[str] = frozenset()
    history: tuple[_Inner, ...] = ()


def test_the_codec_round_trips_a_grown_state_through_json() -> None:
    state = _GrownState(
        recommendations=((1.5, 2), (3.0, 4)),
        mode=_Mode.PANIC,
        panic_until=42.0,
        peaks={"face": 120.5},
        by_minute={3: _Inner(180.0, 2)},
        pools_seen=frozenset({"spot", "ondemand"}),
        history=(_Inner(1.0, 1),),
    )
    text = json.dumps(codec.encode(state), allow_nan=False)
    assert codec.decode(_GrownState, json.loads(text)) == state
    assert codec.decode(_GrownState, {}) == _GrownState()


def test_unknown_numbers_stay_unknown_through_the_codec() -> None:
    assert codec.encode({"rate": float("nan")}) == {"rate": None}
    assert math.isnan(codec.decode(_Inner, {"at": None, "n": 1}).at)
    assert codec.decode(_GrownState, {"panic_until": None}).panic_until is None


def test_the_codec_names_the_path_of_a_bad_value() -> None:
    with pytest.raises(codec.DecodeError, match=r"\$\.mode: 'frantic' is not a _Mode"):
        codec.decode(_GrownState, {"mode": "frantic"})
    with pytest.raises(codec.DecodeError, match=r"\$\.by_minute\.3\.n: expected int"):
        codec.decode(_GrownState, {"by_minute": {"3": {"at": 1.0, "n": "two"}}})


# -- overrides, audit, ledger, retention ------------------------------------------------------------
def test_overrides_persist_across_store_objects_and_are_audited(open_store: Callable[[], AnyStore]) -> None:
    db = open_store()
    ov = ports.Overrides(hold=True, budget_usd_per_hour=5.0, max_nodes={"spot": 1}, reason="incident 42")
    assert db.set_overrides(ov, at=50.0, by="alice", request_id="r-1") == ports.Overrides()
    db.close()
    db = open_store()
    try:
        assert db.overrides() == ov
        assert db.load().overrides == ov
        assert db.set_overrides(ports.Overrides(), at=60.0, by="bob") == ov
        second, first = db.audit(kind="override")
        assert (first.actor, first.target, first.request_id, first.detail) == (
            "alice", "overrides", "r-1", "incident 42",
        )  # fmt: skip
        assert json.loads(first.before or "")["hold"] is False
        assert json.loads(first.after or "") == {
            "hold": True,
            "budget_usd_per_hour": 5.0,
            "max_nodes": {"spot": 1},
            "reason": "incident 42",
            "drain": [],
            "paused": [],
        }
        assert second.actor == "bob" and second.before == first.after
    finally:
        db.close()


def test_audit_rows_are_append_only_and_page_by_cursor(db: AnyStore) -> None:
    for i in range(5):
        db.audit_change(float(i), "policy_reload", actor=f"u{i % 2}", target="policy", before="a", after="b")
    with pytest.raises((sqlite3.IntegrityError, sa.exc.DBAPIError), match="append-only"):
        _execute(db, "UPDATE audit SET actor = 'mallory'")
    page = db.audit(limit=2)
    assert [r.at for r in page] == [4.0, 3.0]
    assert [r.at for r in db.audit(limit=2, before_id=page[-1].id)] == [2.0, 1.0]
    assert [r.at for r in db.audit(actor="u1")] == [3.0, 1.0]
    assert [r.at for r in db.audit(since=3.0, target="policy")] == [4.0, 3.0]


def test_setting_overrides_does_not_move_the_version(db: AnyStore) -> None:
    snap = db.load()
    db.set_overrides(ports.Overrides(hold=True), at=1.0)
    db.commit(_intent(2.0, {}), expected_version=snap.version)


def test_actions_and_errors_of_a_tick_are_audited(db: AnyStore) -> None:
    report = model.TickReport(
        at=10.0,
        synced=True,
        decision=_decision(10.0),
        nodes={},
        transitions=(),
        acted=("cordon spot-1", "submit spot [1 nodes]"),
        errors=("drain spot-2: refused",),
    )
    db.record_report(report)
    assert [(r.kind, r.detail) for r in reversed(db.audit())] == [
        ("action", "cordon spot-1"),
        ("action", "submit spot [1 nodes]"),
        ("error", "drain spot-2: refused"),
    ]


def test_the_ledger_adds_up_per_pool_and_hour(db: AnyStore) -> None:
    db.commit(_intent(3500.0, {}, cost={"spot": (60.0, 0.01), "od": (60.0, 0.02)}), expected_version=0)
    db.commit(_intent(3560.0, {}, cost={"spot": (60.0, 0.01)}), expected_version=1)
    db.commit(_intent(3620.0, {}, cost={"spot": (60.0, 0.01)}), expected_version=2)
    assert db.ledger() == {"od": (60.0, 0.02), "spot": pytest.approx((180.0, 0.03))}
    assert db.ledger_hourly() == [
        ("od", 0.0, 60.0, 0.02),
        ("spot", 0.0, 120.0, 0.02),
        ("spot", 3600.0, 60.0, 0.01),
    ]
    assert db.ledger_hourly(since=3600.0) == [("spot", 3600.0, 60.0, 0.01)]


def test_retention_prunes_old_rows_but_keeps_live_nodes_and_the_ledger(db: AnyStore) -> None:
    old = {"gone": _rec("gone", S.RELEASED, at=10.0), "live": _rec("live", S.READY, at=10.0)}
    tr = (model.Transition(10.0, "gone", "spot", S.RELEASING, S.RELEASED, "instance gone"),)
    db.commit(_intent(10.0, old, transitions=tr, cost={"spot": (10.0, 1.0)}), expected_version=0)
    db.commit(_intent(1000.0, old), expected_version=1)
    assert db.prune(before=500.0) == {"decisions": 1, "audit": 1, "nodes": 1}
    assert set(db.load().records) == {"live"}
    assert [d.at for d in db.decisions()] == [1000.0]
    assert db.ledger() == {"spot": (10.0, 1.0)}
