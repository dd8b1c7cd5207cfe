"""Schemathesis over the admin API's OpenAPI document, with an admin token, against a real server on a
loopback port: no 5xx, every response as documented, and no schema-valid request refused."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.runtime import api, auth, policy_file
from tests.support import fake_world

TOKEN = "gb_schema_admin"
REPORT = {"scenario": "step-spike", "duration_s": 1, "requests": 0, "results": []}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    w = fake_world.World(Path(tmp_path_factory.mktemp("schema")) / "gpuburst.db")
    ctx = fake_world.api_context(
        w,
        tokens=auth.Tokens({auth.digest(TOKEN): auth.Principal("admin", auth.Role.ADMIN)}),
        limiter=auth.RateLimiter(rate_per_s=1e6, burst=1_000_000),
        get_policy=lambda: w.rec.setup.policy,
        policy_path=policy_file.DEFAULT,
        apply_policy=lambda p: setattr(w.rec, "setup", dataclasses.replace(w.rec.setup, policy=p)),
        whatif=lambda body, name: lambda progress: {"report": REPORT, "plot": b"\x89PNG"},
        whatif_scenarios=("step-spike",),
    )
    w.metrics.set("face", 100.0)  # nodes for the drain call to find
    w.rec.tick()
    srv = api.Server(api.create_app(ctx), host="127.0.0.1", port=0).start()
    # A finished what-if job, so its reads are reached (its upload is tested in tests/controller/sim).
    job = httpx.post(
        f"{srv.url}/v1/whatif", params={"scenario": "step-spike"}, content=b"t_seconds,requests\n0,1\n",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"},
    ).json()  # fmt: skip
    while ctx.runner.get(job["id"]).state == "running":  # type: ignore[union-attr]
        time.sleep(0.01)
    config = Path(tmp_path_factory.mktemp("schemathesis")) / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.task_id" = "{job["id"]}"\n')
    yield srv.url, config
    srv.stop()
    w.close()


def test_the_api_matches_its_openapi_document(served: tuple[str, Path]) -> None:
    url, config = served
    # The CLI: its pytest plugin does not load under this pytest.
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [str(cli), "--config-file", str(config), "run", f"{url}/openapi.json",
         "-H", f"Authorization: Bearer {TOKEN}", "--checks", "all",
         # A what-if upload is CSV: every string fits its schema, few are traces (tests/controller/sim).
         "--exclude-operation-id", "start_whatif", "--max-examples", "10", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:]
    assert "No issues found" in run.stdout
