"""The SQLite store (the `Store` port): node records, every decision with its inputs and reasons, the
audit log (transitions, actions, overrides, orphans), the cost ledger and the operator's overrides.

One writer commits a tick's intent in one transaction guarded by an optimistic version; readers (the
admin API, telemetry) read alongside in WAL mode. Each thread gets its own connection. The schema
moves forward by the migrations in `schema`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller import ports
from controller.core import model, policy
from controller.runtime import codec, errors
from controller.runtime.schema import LEDGER_BUCKET_S, StoreError, migrate

RECOVERY = (
    "to recover: stop the controller, move the file aside, restore the latest "
    "`gpuburst store backup` copy in its place (or start with no file: the orphan audit finds the "
    "nodes still running), then start it again"
)


# -- the store --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DecisionRow:
    id: int
    version: int
    at: float
    action: str
    decision: Mapping[str, Any]
    inputs: Mapping[str, Any]
    desired: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: float
    kind: str
    node: str | None
    pool: str | None
    before: str | None
    after: str | None
    detail: str
    actor: str | None = None
    target: str | None = None
    request_id: str | None = None


class SqliteStore:
    """The Store port on one SQLite file; also what the admin API and the jobs read and write."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = str(path)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._state_cache: tuple[int, policy.PolicyState] | None = None
        self._identity: tuple[int, int] | None = None
        self._saved: str | None = None
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise errors.UserError(
                    f"store {self.path}: cannot create its directory: {exc.strerror}"
                ) from None
        conn = self._conn()
        self._check_integrity(conn)
        migrate(conn, where=self.path)
        self._identity = self._file_identity()

    # -- connections --------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            # Autocommit mode: transactions are the explicit BEGIN/COMMIT below, nothing implicit.
            # After the first, connections never create the file: one made anew where the store was
            # removed would be an empty store that looks fine and is silently lost.
            target, uri = self.path, False
            if self._identity is not None:
                if self._file_identity_or_none() != self._identity:
                    raise StoreError(self.health() or f"store {self.path} changed under the controller")
                target, uri = f"file:{urllib.parse.quote(self.path)}?mode=rw", True
            conn = sqlite3.connect(
                target, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False, uri=uri
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as exc:
            raise errors.UserError(
                f"store {self.path}: cannot open the database: {exc}; {RECOVERY}"
            ) from None
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    # -- integrity, health, backup ----------------------------------------------------------------
    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        """Refuse to start on a damaged file: every later tick would fail on it, or lose rows silently."""
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            rows = [str(exc)]
        if rows != ["ok"]:
            raise errors.UserError(
                f"store {self.path}: integrity check failed ({'; '.join(rows[:3])}); {RECOVERY}"
            )

    def _file_identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        st = Path(self.path).stat()
        return (st.st_dev, st.st_ino)

    def health(self) -> str | None:
        """The store's problem, or None: its file still there (same inode) and a read answered.

        Cheap enough for every readiness probe (a full or read-only file shows as failed ticks). A removed
        file is saved once, from the connection still open on it, to `<path>.recovered`: nothing is lost.
        """
        if self._identity is not None:
            now = self._file_identity_or_none()
            if now != self._identity:
                what = "was removed" if now is None else "was replaced by another file"
                return f"store {self.path} {what} while the controller ran; {self._save_open_copy()}"
        try:
            self._conn().execute("SELECT version FROM controller_state WHERE id = 1").fetchone()
        except sqlite3.Error as exc:
            return f"store {self.path}: {exc}; {RECOVERY}"
        return None

    def _save_open_copy(self) -> str:
        if self._saved is None:
            target = f"{self.path}.recovered"
            try:
                self.backup(target)
                self._saved = (
                    f"its contents are saved in {target}: stop the controller, move that file to "
                    f"{self.path}, start it again"
                )
            except (OSError, sqlite3.Error) as exc:
                return f"saving its open copy to {target} failed ({exc}); {RECOVERY}"
        return self._saved

    def backup(self, target: str | Path) -> None:
        """A consistent copy of the live database at `target` (SQLite's online backup; safe while ticking)."""
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        dest = sqlite3.connect(str(target))
        try:
            with self._lock:  # the first connection: still on the file this store opened
                source = self._conns[0]
            source.backup(dest)
        finally:
            dest.close()

    def close(self) -> None:
        """Close every thread's connection (the store is unusable afterwards)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def _write(self) -> _Txn:
        if self._identity is not None and self._file_identity_or_none() != self._identity:
            raise StoreError(self.health() or f"store {self.path} changed under the controller")
        return _Txn(self._conn(), "BEGIN IMMEDIATE")

    def _file_identity_or_none(self) -> tuple[int, int] | None:
        try:
            return self._file_identity()
        except FileNotFoundError:
            return None

    def _read(self) -> _Txn:
        return _Txn(self._conn(), "BEGIN")

    # -- the Store port -----------------------------------------------------------------------------
    def load(self) -> ports.Snapshot:
        with self._read() as conn:
            version, at, state_json = conn.execute(
                "SELECT version, at, policy_state FROM controller_state WHERE id = 1"
            ).fetchone()
            records = {r.name: r for r in _node_rows(conn.execute(_NODES_SELECT))}
            overrides = self._overrides(conn)
        cached = self._state_cache
        if cached is not None and cached[0] == version:
            # This store wrote that version itself: skip decoding what may be a large state again.
            state = cached[1]
        else:
            try:
                state = codec.loads(policy.PolicyState, state_json)
            except (ValueError, codec.DecodeError) as exc:
                raise StoreError(f"{self.path}: stored policy state does not decode: {exc}") from None
            self._state_cache = (version, state)
        return ports.Snapshot(int(version), records, state, at, overrides)

    def commit(self, intent: ports.Intent, *, expected_version: int) -> int:
        """Records, policy state, decision, transitions and cost of one tick, all or nothing."""
        state_json = codec.dumps(intent.policy_state)
        with self._write() as conn:
            (version,) = conn.execute("SELECT version FROM controller_state WHERE id = 1").fetchone()
            if version != expected_version:
                raise ports.ConflictError(f"store at version {version}, expected {expected_version}")
            new = version + 1
            conn.executemany(
                """INSERT INTO nodes (name, pool, status, since, requested_at, ready_at, reason)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (name) DO UPDATE SET pool = excluded.pool, status = excluded.status,
                     since = excluded.since, requested_at = excluded.requested_at,
                     ready_at = excluded.ready_at, reason = excluded.reason""",
                [
                    (r.name, r.pool, r.status.value, r.since, r.requested_at, r.ready_at, r.reason)
                    for r in intent.records.values()
                ],
            )
            conn.execute(
                "DELETE FROM nodes WHERE name NOT IN (SELECT value FROM json_each(?))",
                (json.dumps(list(intent.records)),),
            )
            conn.execute(
                "UPDATE controller_state SET version = ?, at = ?, policy_state = ? WHERE id = 1",
                (new, intent.at, state_json),
            )
            conn.execute(
                "INSERT INTO decisions (version, at, action, decision, inputs, desired) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    new,
                    intent.decision.at,
                    intent.decision.action.value,
                    _dumps(intent.decision),
                    _dumps(intent.inputs),
                    _dumps(intent.desired),
                ),
            )
            conn.executemany(
                "INSERT INTO audit (at, kind, node, pool, before, after, detail) "
                "VALUES (?, 'transition', ?, ?, ?, ?, ?)",
                [
                    (t.at, t.node, t.pool, t.before.value if t.before else None, t.after.value, t.reason)
                    for t in intent.transitions
                ],
            )
            hour = (intent.at // LEDGER_BUCKET_S) * LEDGER_BUCKET_S
            conn.executemany(
                """INSERT INTO ledger_hourly (pool, hour, node_seconds, usd) VALUES (?, ?, ?, ?)
                   ON CONFLICT (pool, hour) DO UPDATE SET
                     node_seconds = node_seconds + excluded.node_seconds, usd = usd + excluded.usd""",
                [(pool, hour, s, usd) for pool, (s, usd) in sorted(intent.cost.items()) if s or usd],
            )
        self._state_cache = (new, intent.policy_state)
        return int(new)

    # -- overrides ----------------------------------------------------------------------------------
    def overrides(self) -> ports.Overrides:
        with self._read() as conn:
            return self._overrides(conn)

    def _overrides(self, conn: sqlite3.Connection) -> ports.Overrides:
        row = conn.execute("SELECT data FROM overrides WHERE id = 1").fetchone()
        if row is None:
            return ports.Overrides()
        return codec.loads(ports.Overrides, row[0])

    def set_overrides(
        self, overrides: ports.Overrides, *, at: float, by: str = "", request_id: str | None = None
    ) -> ports.Overrides:
        """Replace the overrides (the next tick applies them), audit before and after; returns before.

        Not versioned with the tick's intent: the API is the only writer of this row (docs/architecture.md,
        one writer per field), so a tick in flight keeps its commit and the next one reads the new values.
        """
        data = _dumps(overrides)
        with self._write() as conn:
            before = self._overrides(conn)
            conn.execute(
                "INSERT INTO overrides (id, data, at, by) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET data = excluded.data, at = excluded.at, by = excluded.by",
                (data, at, by),
            )
            _audit_row(
                conn, at, "override", actor=by, target="overrides", before=_dumps(before), after=data,
                detail=overrides.reason, request_id=request_id,
            )  # fmt: skip
        return before

    def audit_change(
        self,
        at: float,
        action: str,
        *,
        actor: str,
        target: str,
        before: str | None,
        after: str | None,
        detail: str = "",
        request_id: str | None = None,
    ) -> None:
        """One audit row for an operator's change made through the API."""
        with self._write() as conn:
            _audit_row(
                conn, at, action, actor=actor, target=target, before=before, after=after,
                detail=detail, request_id=request_id,
            )  # fmt: skip

    # -- audit --------------------------------------------------------------------------------------
    def record(
        self,
        at: float,
        kind: str,
        details: Iterable[str],
        *,
        node: str | None = None,
        pool: str | None = None,
    ) -> None:
        """Audit rows of one kind (`action`, `error`, `orphan`, ...), written together."""
        rows = [(at, kind, node, pool, d) for d in details]
        if not rows:
            return
        with self._write() as conn:
            conn.executemany("INSERT INTO audit (at, kind, node, pool, detail) VALUES (?, ?, ?, ?, ?)", rows)

    def record_report(self, report: model.TickReport) -> None:
        """What a tick did and what failed, after the fact (its intent was committed before acting)."""
        if not report.acted and not report.errors:
            return
        rows = [(report.at, "action", a) for a in report.acted] + [
            (report.at, "error", e) for e in report.errors
        ]
        with self._write() as conn:
            conn.executemany("INSERT INTO audit (at, kind, detail) VALUES (?, ?, ?)", rows)

    # -- reads for the API and the jobs -------------------------------------------------------------
    def nodes(self, *, include_released: bool = False) -> list[model.NodeRecord]:
        with self._read() as conn:
            rows = _node_rows(conn.execute(_NODES_SELECT))
        return [r for r in rows if include_released or r.status is not model.NodeStatus.RELEASED]

    def decisions(self, *, limit: int = 50, before_id: int | None = None) -> list[DecisionRow]:
        """Decisions newest first; `before_id` pages on from the last row of the previous page."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, version, at, action, decision, inputs, desired FROM decisions "
                "WHERE ? IS NULL OR id < ? ORDER BY id DESC LIMIT ?",
                (before_id, before_id, limit),
            ).fetchall()
        return [
            DecisionRow(id_, v, at, action, json.loads(d), json.loads(i), json.loads(des))
            for id_, v, at, action, d, i, des in rows
        ]

    def audit(
        self,
        *,
        limit: int = 100,
        kind: str | None = None,
        actor: str | None = None,
        target: str | None = None,
        since: float | None = None,
        before_id: int | None = None,
    ) -> list[AuditRow]:
        """Audit rows newest first, filtered; `target` matches the row's target, node or pool."""
        sql = (
            "SELECT id, at, kind, node, pool, before, after, detail, actor, target, request_id FROM audit "
            "WHERE (:kind IS NULL OR kind = :kind) AND (:actor IS NULL OR actor = :actor) "
            "AND (:target IS NULL OR :target IN (target, node, pool)) "
            "AND (:since IS NULL OR at >= :since) AND (:before IS NULL OR id < :before) "
            "ORDER BY id DESC LIMIT :limit"
        )
        params = {
            "kind": kind, "actor": actor, "target": target, "since": since, "before": before_id,
            "limit": limit,
        }  # fmt: skip
        with self._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [AuditRow(*row) for row in rows]

    def ledger(self) -> dict[str, tuple[float, float]]:
        """Per pool: node-seconds and USD since the store was created."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT pool, SUM(node_seconds), SUM(usd) FROM ledger_hourly GROUP BY pool ORDER BY pool"
            ).fetchall()
        return {pool: (float(s), float(usd)) for pool, s, usd in rows}

    def ledger_hourly(self, *, since: float | None = None) -> list[tuple[str, float, float, float]]:
        """(pool, hour start, node-seconds, USD), oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT pool, hour, node_seconds, usd FROM ledger_hourly WHERE ? IS NULL OR hour >= ? "
                "ORDER BY hour, pool",
                (since, since),
            ).fetchall()
        return [(p, float(h), float(s), float(u)) for p, h, s, u in rows]

    def version(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT version FROM controller_state WHERE id = 1").fetchone()[0])

    # -- retention ----------------------------------------------------------------------------------
    def prune(self, *, before: float) -> dict[str, int]:
        """Drop decisions and audit rows older than `before`, and nodes released before it.

        The ledger is kept: it is one row per pool and hour, and what the cloud bill is checked against.
        """
        with self._write() as conn:
            decisions = conn.execute("DELETE FROM decisions WHERE at < ?", (before,)).rowcount
            audit = conn.execute("DELETE FROM audit WHERE at < ?", (before,)).rowcount
            nodes = conn.execute(
                "DELETE FROM nodes WHERE status = ? AND since < ?", (model.NodeStatus.RELEASED.value, before)
            ).rowcount
        return {"decisions": decisions, "audit": audit, "nodes": nodes}


class _Txn:
    """`with` block of one explicit transaction: COMMIT on success, ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection, begin: str) -> None:
        self.conn = conn
        self.begin = begin

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute(self.begin)
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # SQLite already rolled back on a full disk or an I/O error
            self.conn.execute("ROLLBACK")


_NODES_SELECT = "SELECT name, pool, status, since, requested_at, ready_at, reason FROM nodes ORDER BY name"


def _node_rows(rows: Iterable[Sequence[Any]]) -> list[model.NodeRecord]:
    return [
        model.NodeRecord(name, pool, model.NodeStatus(status), since, requested_at, ready_at, reason)
        for name, pool, status, since, requested_at, ready_at, reason in rows
    ]


def _audit_row(
    conn: sqlite3.Connection,
    at: float,
    kind: str,
    *,
    actor: str,
    target: str,
    before: str | None,
    after: str | None,
    detail: str,
    request_id: str | None,
) -> None:
    conn.execute(
        "INSERT INTO audit (at, kind, actor, target, before, after, detail, request_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (at, kind, actor, target, before, after, detail, request_id),
    )


def _dumps(value: object) -> str:
    return codec.dumps(value)
