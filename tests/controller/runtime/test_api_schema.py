"""Schemathesis over the admin API's OpenAPI document, with an admin token, against a real server on a
loopback port: no 5xx, every response as documented, and no schema-valid request refused."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.runtime import api, auth, policy_file, telemetry
from tests.support import fake_world

TOKEN = "gb_schema_admin"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    w = fake_world.World(Path(tmp_path_factory.mktemp("schema")) / "gpuburst.db")
    ctx = api.Context(
        store=w.store,  # type: ignore[arg-type]
        telemetry=telemetry.Telemetry(workloads=w.setup.workloads, pools=w.setup.pools),
        clock=w.clock,
        pools={p.name: p.max_nodes for p in w.setup.pools},
        tick_interval_s=15.0,
        last_report=lambda: w.rec.last_report,
        tokens=auth.Tokens({auth.digest(TOKEN): auth.Principal("admin", auth.Role.ADMIN)}),
        limiter=auth.RateLimiter(rate_per_s=1e6, burst=1_000_000),
        reconcile_now=w.rec.tick,
        get_policy=lambda: w.rec.setup.policy,
        policy_path=policy_file.DEFAULT,
        apply_policy=lambda p: setattr(w.rec, "setup", dataclasses.replace(w.rec.setup, policy=p)),
    )
    w.metrics.set("face", 100.0)  # nodes for the drain call to find
    w.rec.tick()
    srv = api.Server(api.create_app(ctx), host="127.0.0.1", port=0).start()
    yield srv.url
    srv.stop()
    w.close()


def test_the_api_matches_its_openapi_document(url: str) -> None:
    # The CLI: its pytest plugin does not load under this pytest.
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [str(cli), "run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}", "--checks", "all",
         "--max-examples", "10", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:]
    assert "No issues found" in run.stdout
