"""The store's tables as of SQLite schema version 3: state, nodes, decisions, append-only audit, overrides,
hourly ledger."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_DOUBLE = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "controller_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("at", _DOUBLE),
        sa.Column("policy_state", sa.Text, nullable=False),
        sa.CheckConstraint("id = 1", name="controller_state_one_row"),
    )
    op.execute("INSERT INTO controller_state (id, version, at, policy_state) VALUES (1, 0, NULL, '{}')")
    op.create_table(
        "nodes",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("pool", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("since", _DOUBLE, nullable=False),
        sa.Column("requested_at", _DOUBLE, nullable=False),
        sa.Column("ready_at", _DOUBLE),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("at", _DOUBLE, nullable=False, index=True),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("desired", sa.Text, nullable=False),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", _DOUBLE, nullable=False, index=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("node", sa.Text),
        sa.Column("pool", sa.Text),
        sa.Column("before", sa.Text),
        sa.Column("after", sa.Text),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("actor", sa.Text),
        sa.Column("target", sa.Text),
        sa.Column("request_id", sa.Text),
    )
    op.execute(
        "CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'audit rows are append-only'; END $$"
    )
    op.execute(
        "CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit "
        "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
    )
    op.create_table(
        "overrides",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("at", _DOUBLE, nullable=False),
        sa.Column("by", sa.Text, nullable=False, server_default=""),
        sa.CheckConstraint("id = 1", name="overrides_one_row"),
    )
    op.create_table(
        "ledger_hourly",
        sa.Column("pool", sa.Text, primary_key=True),
        sa.Column("hour", _DOUBLE, primary_key=True),
        sa.Column("node_seconds", _DOUBLE, nullable=False),
        sa.Column("usd", _DOUBLE, nullable=False),
    )
