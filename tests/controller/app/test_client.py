"""The `gpuburst status|nodes|decisions|audit|override|reconcile|policy` client against a real API server
(uvicorn on a free loopback port) in front of a controller on the fakes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.app import cli
from controller.runtime import api, auth
from tests.support import fake_world


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[fake_world.World]:
    w = fake_world.World(tmp_path / "gpuburst.db")
    tokens_file = tmp_path / "tokens.json"
    admin = auth.add_token(tokens_file, "ops-lead", auth.Role.ADMIN)
    ctx = fake_world.api_context(
        w,
        tokens=auth.Tokens.load(tokens_file),
    )
    srv = api.Server(api.create_app(ctx), host="127.0.0.1", port=0).start()
    (tmp_path / "client.yaml").write_text(f"url: {srv.url}\ntoken_file: secret\n")
    (tmp_path / "secret").write_text(admin + "\n")
    monkeypatch.setenv("GPUBURST_CONFIG", str(tmp_path / "client.yaml"))
    monkeypatch.delenv("GPUBURST_URL", raising=False)
    monkeypatch.delenv("GPUBURST_TOKEN", raising=False)
    yield w
    srv.stop()
    w.close()


def test_the_client_reads_and_changes_through_the_api(
    world: fake_world.World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.metrics.set("face", 100.0)
    assert cli.main(["reconcile"]) == 0
    assert "scale_up" in capsys.readouterr().out
    assert cli.main(["nodes"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "POOL", "STATUS", "SINCE", "READY_AT", "REASON"]
    assert len(table) - 1 == len(world.store.nodes()) > 0
    assert cli.main(["override", "--hold", "--max-nodes", "spot=2", "--reason", "incident 3"]) == 0
    capsys.readouterr()
    assert cli.main(["audit", "--action", "override", "-o", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["items"]
    assert row["actor"] == "ops-lead" and json.loads(row["after"])["max_nodes"] == {"spot": 2}
    assert cli.main(["status", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["overrides"]["hold"] is True


def test_errors_are_one_line_with_exit_2(
    world: fake_world.World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["override", "--max-nodes", "spot=99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "gpuburst: error: PUT /v1/overrides: 422: max_nodes.spot: Input should be less than or equal to 10"
    )
    monkeypatch.setenv("GPUBURST_TOKEN", "gb_wrong")
    assert cli.main(["status"]) == 2
    assert "401: the bearer token is not known" in capsys.readouterr().err


def test_drain_and_pool_pause_through_the_client(
    world: fake_world.World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.metrics.set("face", 100.0)
    world.rec.tick()
    node = world.store.nodes()[0]
    assert cli.main(["drain", node.name, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["drain"] == [node.name]
    assert cli.main(["pool", "pause", "ondemand"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("ondemand")
    assert world.store.overrides().paused == ("ondemand",)
    assert cli.main(["pool", "resume", "ondemand"]) == 0
    assert world.store.overrides().paused == ()
    moves = {t.node: t.reason for t in world.rec.tick().transitions}
    assert moves[node.name] == "operator drain"
