"""Store faults: a damaged file refused at start, a removed file noticed and saved, a full file failing the
tick with its reason, and the online backup."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.runtime import errors, jobs, schema, store
from tests.controller.runtime.test_store import S, _intent, _rec


def _filled(path: Path) -> store.SqliteStore:
    db = store.SqliteStore(path)
    db.commit(_intent(100.0, {"n1": _rec("n1", S.READY)}, cost={"spot": (3600.0, 0.4)}), expected_version=0)
    return db


def test_a_file_that_is_not_a_database_is_refused_with_how_to_recover(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"definitely not sqlite " * 500)
    with pytest.raises(errors.UserError, match="to recover: stop the controller") as exc:
        store.SqliteStore(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_a_corrupted_page_fails_the_integrity_check_at_start(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = _filled(path)
    for i in range(1, 40):
        db.commit(_intent(100.0 + i, {}, inputs={"pad": "x" * 2000}), expected_version=i)
    db.close()
    raw = bytearray(path.read_bytes())
    page = 4096
    raw[2 * page + 8 : 3 * page] = b"\xa5" * (page - 8)  # a B-tree page turned to noise, header intact
    path.write_bytes(bytes(raw))
    with pytest.raises(errors.UserError, match=r"integrity check failed|cannot open") as exc:
        store.SqliteStore(path)
    assert "gpuburst store backup" in str(exc.value)


def test_a_removed_file_is_reported_saved_whole_and_no_longer_written(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = _filled(path)
    assert db.health() is None
    path.unlink()
    problem = db.health()
    assert problem is not None and "was removed" in problem and f"{path}.recovered" in problem
    saved = store.SqliteStore(f"{path}.recovered")
    assert saved.version() == 1 and saved.ledger() == db.ledger()
    assert [r.name for r in saved.nodes()] == ["n1"]
    with pytest.raises(schema.StoreError, match="was removed"):
        db.commit(_intent(105.0, {}), expected_version=1)


def test_a_full_file_fails_the_commit_as_a_store_error(tmp_path: Path) -> None:
    db = _filled(tmp_path / "s.db")
    conn = db._conn()
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError, match="full") as exc:
        for i in range(100):
            db.commit(
                _intent(
                    110.0 + i, {f"n{j}": _rec(f"n{j}", S.READY) for j in range(50)}, inputs={"x": "y" * 4000}
                ),
                expected_version=1 + i,
            )
    assert jobs.failure_reason(exc.value) == "store"


def test_backup_is_a_consistent_copy_while_open(tmp_path: Path) -> None:
    db = _filled(tmp_path / "s.db")
    db.backup(tmp_path / "copy" / "b.db")
    copy = store.SqliteStore(tmp_path / "copy" / "b.db")
    assert copy.version() == db.version() and copy.ledger() == db.ledger()


def test_the_backup_command_copies_the_configured_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.app import cli
    from tests.controller.app.test_cli_errors import _local_config

    path = _local_config(tmp_path)
    db = _filled(tmp_path / "store.db")
    assert cli.main(["store", "backup", "--config", str(path), str(tmp_path / "b" / "copy.db")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert store.SqliteStore(tmp_path / "b" / "copy.db").ledger() == db.ledger()
