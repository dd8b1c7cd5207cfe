"""What only the PostgreSQL store has: Alembic migrations at start (also by replicas starting together), the
URL and password rules, and a one-line error for a database that does not answer. The behaviour both
stores share is tested on both in test_store.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from controller.app import config as config_mod
from controller.runtime import errors, schema, store_sql
from tests.support import postgres, prom

pg_server = postgres.pg_server


def test_a_new_database_is_migrated_to_the_head_revision(pg_server: postgres.PostgresServer) -> None:
    db = store_sql.SqlStore(pg_server.fresh_url())
    try:
        assert db.revision() == "0001"
        assert db.version() == 0
        with db.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
        assert {"controller_state", "nodes", "decisions", "audit", "overrides", "ledger_hourly"} <= tables
        assert "alembic_version" in tables
    finally:
        db.close()


def test_replicas_starting_together_migrate_once(pg_server: postgres.PostgresServer) -> None:
    url = pg_server.fresh_url()
    opened: list[store_sql.SqlStore] = []
    failures: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(store_sql.SqlStore(url))
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not failures
        assert [db.version() for db in opened] == [0, 0, 0]
    finally:
        for db in opened:
            db.close()


def test_a_database_from_a_newer_controller_is_refused(pg_server: postgres.PostgresServer) -> None:
    url = pg_server.fresh_url()
    store_sql.SqlStore(url).close()
    engine = sa.create_engine(store_sql.engine_url(url))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(schema.StoreError, match=r"schema revision 9999 is newer .* upgrade the controller"):
        store_sql.SqlStore(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///x.db", "'sqlite' is not postgresql"),
        ("postgresql://u:secret@db:5432/gpuburst", "password goes in the environment variable"),
        ("postgresql://u@db:5432", "names no database"),
        ("not a url", "Could not parse"),
    ],
)
def test_a_bad_url_is_refused_naming_why(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store_sql.engine_url(url)


def test_a_database_that_does_not_answer_is_one_line_naming_it() -> None:
    url = f"postgresql://gpuburst@127.0.0.1:{prom.free_port()}/gpuburst"
    with pytest.raises(
        errors.UserError, match=r"^store postgresql\+psycopg://gpuburst@127.0.0.1:\d+/gpuburst: "
    ) as e:
        store_sql.SqlStore(url)
    assert "\n" not in str(e.value)


def _config(tmp_path: Path, store: dict[str, object]) -> Path:
    data = yaml.safe_load(config_mod.LOCAL_EXAMPLE.read_text())
    data["store"] = store
    data["policy_file"] = str(config_mod.EXAMPLES / data["policy_file"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_config_names_store_url_when_it_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(errors.UserError, match=r"store\.url.*password goes in the environment variable"):
        config_mod.load(_config(tmp_path, {"url": "postgresql://u:pw@h:1/db"}))


def test_the_config_opens_postgresql_with_the_password_from_the_environment(
    tmp_path: Path, pg_server: postgres.PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg_server.fresh_url()
    loaded = config_mod.load(_config(tmp_path, {"url": url, "password_env": "GPUBURST_DB_PASSWORD"}))
    with pytest.raises(errors.UserError, match=r"store\.password_env: .*GPUBURST_DB_PASSWORD is not set"):
        loaded.open_store()
    monkeypatch.setenv("GPUBURST_DB_PASSWORD", "unused-with-trust-auth")
    db = loaded.open_store()
    try:
        assert isinstance(db, store_sql.SqlStore) and db.health() is None
        assert "unused-with-trust-auth" not in db.path
    finally:
        db.close()
