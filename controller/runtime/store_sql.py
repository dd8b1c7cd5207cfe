"""The PostgreSQL store (`store.url: postgresql://...`): the `SqliteStore`'s behaviour on a database that
several controller replicas share, through SQLAlchemy Core, its schema moved forward by Alembic.

Every replica may write overrides and audit rows (the admin API answers on all of them); only the leader
ticks, and its commit is still guarded by the optimistic version, now under a row lock, so a deposed
leader's late commit conflicts instead of overwriting its successor's. Reads run in one REPEATABLE READ
snapshot each, so a snapshot's records, state and overrides belong to the same commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic import config as alembic_config
from alembic import script as alembic_script
from alembic.runtime import migration

from controller import ports
from controller.core import model, policy
from controller.runtime import codec, errors, store
from controller.runtime.schema import LEDGER_BUCKET_S, StoreError

MIGRATIONS = Path(__file__).with_name("migrations")
# Held while migrating: replicas starting together migrate one after the other.
_MIGRATION_LOCK = 0x67707562  # "gpub"
_VERSION = "SELECT version FROM controller_state WHERE id = 1"

AUDIT = sa.table(
    "audit",
    *(sa.column(c) for c in ("id", "at", "kind", "node", "pool", "before", "after", "detail")),
    *(sa.column(c) for c in ("actor", "target", "request_id")),
)
DECISIONS = sa.table(
    "decisions", *(sa.column(c) for c in ("id", "version", "at", "action", "decision", "inputs", "desired"))
)


def engine_url(url: str, *, password: str | None = None) -> sa.URL:
    """`postgresql://user@host:port/db` as SQLAlchemy's URL on the psycopg 3 driver; ValueError if not."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(str(exc)) from None
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"{parsed.drivername!r} is not postgresql")
    if parsed.password is not None:
        raise ValueError("the password goes in the environment variable `store.password_env` names")
    if not parsed.database:
        raise ValueError("names no database (postgresql://user@host:port/DATABASE)")
    return parsed.set(drivername="postgresql+psycopg", password=password)


class SqlStore:
    """The Store port and the API's reads and writes on a PostgreSQL database shared by the replicas."""

    def __init__(self, url: str | sa.URL, *, connect_timeout_s: float = 5.0) -> None:
        self.url = sa.make_url(url) if isinstance(url, str) else url
        if self.url.drivername == "postgresql":
            self.url = self.url.set(drivername="postgresql+psycopg")
        self.path = self.url.render_as_string(hide_password=True)
        self._state_cache: tuple[int, policy.PolicyState] | None = None
        try:
            self.engine = sa.create_engine(
                self.url,
                pool_pre_ping=True,
                pool_size=4,
                connect_args={"connect_timeout": max(1, int(connect_timeout_s))},
            )
        except ModuleNotFoundError as exc:
            raise errors.UserError(
                f"store {self.path}: the PostgreSQL driver is missing ({exc.name}): "
                "install gpuburst[postgres]"
            ) from None
        self._snapshots = self.engine.execution_options(isolation_level="REPEATABLE READ")
        try:
            self._migrate()
        except sa.exc.OperationalError as exc:
            self.engine.dispose()
            reason = _first_line(exc)
            raise errors.UserError(f"store {self.path}: cannot open the database: {reason}") from None
        except BaseException:
            self.engine.dispose()
            raise

    def _migrate(self) -> None:
        """Alembic's upgrade to head, in one transaction under an advisory lock; a newer schema is refused."""
        cfg = alembic_config.Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        scripts = alembic_script.ScriptDirectory.from_config(cfg)
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            current = migration.MigrationContext.configure(conn).get_current_revision()
            if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
                raise StoreError(
                    f"{self.path}: schema revision {current} is newer than this controller understands "
                    f"({scripts.get_current_head()}); upgrade the controller"
                )
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            return migration.MigrationContext.configure(conn).get_current_revision()

    # -- health, backup, close ----------------------------------------------------------------------
    def health(self) -> str | None:
        """The store's problem, or None: a read answered (cheap enough for every readiness probe)."""
        try:
            self.version()
        except sa.exc.SQLAlchemyError as exc:
            return f"store {self.path}: {_first_line(exc)}"
        return None

    def backup(self, target: str | Path) -> None:
        raise errors.UserError(
            f"store {self.path} is PostgreSQL: back it up with pg_dump (or the database's own backups)"
        )

    def close(self) -> None:
        self.engine.dispose()

    # -- the Store port -----------------------------------------------------------------------------
    def load(self) -> ports.Snapshot:
        with self._snapshots.begin() as conn:
            version, at, state_json = conn.execute(
                sa.text("SELECT version, at, policy_state FROM controller_state WHERE id = 1")
            ).one()
            records = {r.name: r for r in store._node_rows(conn.execute(sa.text(store._NODES_SELECT)))}
            overrides = _overrides(conn)
        cached = self._state_cache
        if cached is not None and cached[0] == version:
            state = cached[1]
        else:
            try:
                state = codec.loads(policy.PolicyState, state_json)
            except (ValueError, codec.DecodeError) as exc:
                raise StoreError(f"{self.path}: stored policy state does not decode: {exc}") from None
            self._state_cache = (int(version), state)
        return ports.Snapshot(int(version), records, state, at, overrides)

    def commit(self, intent: ports.Intent, *, expected_version: int) -> int:
        """Records, policy state, decision, transitions and cost of one tick, all or nothing."""
        state_json = codec.dumps(intent.policy_state)
        with self.engine.begin() as conn:
            version = conn.execute(
                sa.text("SELECT version FROM controller_state WHERE id = 1 FOR UPDATE")
            ).scalar_one()
            if version != expected_version:
                raise ports.ConflictError(f"store at version {version}, expected {expected_version}")
            new = int(version) + 1
            _write_nodes(conn, intent.records.values())
            conn.execute(
                sa.text("UPDATE controller_state SET version = :v, at = :at, policy_state = :s WHERE id = 1"),
                {"v": new, "at": intent.at, "s": state_json},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO decisions (version, at, action, decision, inputs, desired) "
                    "VALUES (:v, :at, :action, :decision, :inputs, :desired)"
                ),
                {
                    "v": new, "at": intent.decision.at, "action": intent.decision.action.value,
                    "decision": codec.dumps(intent.decision), "inputs": codec.dumps(intent.inputs),
                    "desired": codec.dumps(intent.desired),
                },
            )  # fmt: skip
            _insert(conn, "audit", [
                {
                    "at": t.at, "kind": "transition", "node": t.node, "pool": t.pool,
                    "before": t.before.value if t.before else None, "after": t.after.value,
                    "detail": t.reason,
                }
                for t in intent.transitions
            ])  # fmt: skip
            hour = (intent.at // LEDGER_BUCKET_S) * LEDGER_BUCKET_S
            costs = [
                {"pool": pool, "hour": hour, "s": s, "usd": usd}
                for pool, (s, usd) in sorted(intent.cost.items())
                if s or usd
            ]
            if costs:
                conn.execute(
                    sa.text(
                        "INSERT INTO ledger_hourly (pool, hour, node_seconds, usd) "
                        "VALUES (:pool, :hour, :s, :usd) "
                        "ON CONFLICT (pool, hour) DO UPDATE SET "
                        "node_seconds = ledger_hourly.node_seconds + excluded.node_seconds, "
                        "usd = ledger_hourly.usd + excluded.usd"
                    ),
                    costs,
                )
        self._state_cache = (new, intent.policy_state)
        return new

    # -- overrides ----------------------------------------------------------------------------------
    def overrides(self) -> ports.Overrides:
        with self.engine.connect() as conn:
            return _overrides(conn)

    def set_overrides(
        self, overrides: ports.Overrides, *, at: float, by: str = "", request_id: str | None = None
    ) -> ports.Overrides:
        """Replace the overrides (the leader's next tick reads them), audit before and after; returns before.

        Any replica may write them: the row lock makes two writers' before/after audit rows chain.
        """
        data = codec.dumps(overrides)
        with self.engine.begin() as conn:
            conn.execute(sa.text("LOCK TABLE overrides IN SHARE ROW EXCLUSIVE MODE"))
            before = _overrides(conn)
            conn.execute(
                sa.text(
                    "INSERT INTO overrides (id, data, at, by) VALUES (1, :data, :at, :by) ON CONFLICT (id) "
                    "DO UPDATE SET data = excluded.data, at = excluded.at, by = excluded.by"
                ),
                {"data": data, "at": at, "by": by},
            )
            _insert(conn, "audit", [{
                "at": at, "kind": "override", "actor": by, "target": "overrides",
                "before": codec.dumps(before), "after": data, "detail": overrides.reason,
                "request_id": request_id,
            }])  # fmt: skip
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
        row = {
            "at": at, "kind": action, "actor": actor, "target": target, "before": before, "after": after,
            "detail": detail, "request_id": request_id,
        }  # fmt: skip
        with self.engine.begin() as conn:
            _insert(conn, "audit", [row])

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
        rows = [{"at": at, "kind": kind, "node": node, "pool": pool, "detail": d} for d in details]
        with self.engine.begin() as conn:
            _insert(conn, "audit", rows)

    def record_report(self, report: model.TickReport) -> None:
        """What a tick did and what failed, after the fact (its intent was committed before acting)."""
        rows = [{"at": report.at, "kind": "action", "detail": a} for a in report.acted] + [
            {"at": report.at, "kind": "error", "detail": e} for e in report.errors
        ]
        if rows:
            with self.engine.begin() as conn:
                _insert(conn, "audit", rows)

    # -- reads for the API and the jobs -------------------------------------------------------------
    def nodes(self, *, include_released: bool = False) -> list[model.NodeRecord]:
        with self.engine.connect() as conn:
            rows = store._node_rows(conn.execute(sa.text(store._NODES_SELECT)))
        return [r for r in rows if include_released or r.status is not model.NodeStatus.RELEASED]

    def decisions(self, *, limit: int = 50, before_id: int | None = None) -> list[store.DecisionRow]:
        """Decisions newest first; `before_id` pages on from the last row of the previous page."""
        d = DECISIONS.c
        query = sa.select(d.id, d.version, d.at, d.action, d.decision, d.inputs, d.desired)
        if before_id is not None:
            query = query.where(d.id < before_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(d.id.desc()).limit(limit)).all()
        return [
            store.DecisionRow(int(id_), int(v), at, action, json.loads(dec), json.loads(i), json.loads(des))
            for id_, v, at, action, dec, i, des in rows
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
    ) -> list[store.AuditRow]:
        """Audit rows newest first, filtered; `target` matches the row's target, node or pool."""
        a = AUDIT.c
        query = sa.select(
            a.id, a.at, a.kind, a.node, a.pool, a.before, a.after, a.detail, a.actor, a.target, a.request_id
        )
        if kind is not None:
            query = query.where(a.kind == kind)
        if actor is not None:
            query = query.where(a.actor == actor)
        if target is not None:
            query = query.where(sa.or_(a.target == target, a.node == target, a.pool == target))
        if since is not None:
            query = query.where(a.at >= since)
        if before_id is not None:
            query = query.where(a.id < before_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(a.id.desc()).limit(limit)).all()
        return [store.AuditRow(int(row[0]), *row[1:]) for row in rows]

    def ledger(self) -> dict[str, tuple[float, float]]:
        """Per pool: node-seconds and USD since the store was created."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT pool, SUM(node_seconds), SUM(usd) FROM ledger_hourly GROUP BY pool ORDER BY pool"
                )
            ).all()
        return {pool: (float(s), float(usd)) for pool, s, usd in rows}

    def ledger_hourly(self, *, since: float | None = None) -> list[tuple[str, float, float, float]]:
        """(pool, hour start, node-seconds, USD), oldest first."""
        where = "" if since is None else "WHERE hour >= :since"
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(f"SELECT pool, hour, node_seconds, usd FROM ledger_hourly {where} ORDER BY 2, 1"),
                {"since": since},
            ).all()
        return [(p, float(h), float(s), float(u)) for p, h, s, u in rows]

    def version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(_VERSION)).scalar_one())

    # -- retention ----------------------------------------------------------------------------------
    def prune(self, *, before: float) -> dict[str, int]:
        """Drop decisions and audit rows older than `before`, and nodes released before it; keep ledger."""
        with self.engine.begin() as conn:
            decisions = conn.execute(sa.text("DELETE FROM decisions WHERE at < :b"), {"b": before}).rowcount
            audit = conn.execute(sa.text("DELETE FROM audit WHERE at < :b"), {"b": before}).rowcount
            nodes = conn.execute(
                sa.text("DELETE FROM nodes WHERE status = :s AND since < :b"),
                {"s": model.NodeStatus.RELEASED.value, "b": before},
            ).rowcount
        return {"decisions": decisions, "audit": audit, "nodes": nodes}


AnyStore = store.SqliteStore | SqlStore
"""Either store: what the controller, the admin API and the jobs hold."""


def _write_nodes(conn: sa.Connection, records: Iterable[model.NodeRecord]) -> None:
    """Upsert the intent's node records and delete the rows it left out."""
    rows = [
        {
            "name": r.name, "pool": r.pool, "status": r.status.value, "since": r.since,
            "requested_at": r.requested_at, "ready_at": r.ready_at, "reason": r.reason,
        }
        for r in records
    ]  # fmt: skip
    if rows:
        conn.execute(
            sa.text(
                "INSERT INTO nodes (name, pool, status, since, requested_at, ready_at, reason) "
                "VALUES (:name, :pool, :status, :since, :requested_at, :ready_at, :reason) "
                "ON CONFLICT (name) DO UPDATE SET pool = excluded.pool, status = excluded.status, "
                "since = excluded.since, requested_at = excluded.requested_at, "
                "ready_at = excluded.ready_at, reason = excluded.reason"
            ),
            rows,
        )
    conn.execute(
        sa.text("DELETE FROM nodes WHERE NOT (name = ANY(CAST(:names AS TEXT[])))"),
        {"names": [r["name"] for r in rows]},
    )


def _insert(conn: sa.Connection, table: str, rows: Sequence[dict[str, Any]]) -> None:
    """Rows into `table` (columns the rows name; the others take their defaults)."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        by_columns.setdefault(tuple(row), []).append(row)
    for columns, group in by_columns.items():
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
        conn.execute(sa.text(sql), group)


def _overrides(conn: sa.Connection) -> ports.Overrides:
    data = conn.execute(sa.text("SELECT data FROM overrides WHERE id = 1")).scalar_one_or_none()
    return ports.Overrides() if data is None else codec.loads(ports.Overrides, data)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
