"""What-if through the admin API over real HTTP: a shipped trace under its own scenario gives exactly the
figures `gpuburst simulate` computes; roles, the running-job limit and bad input are refused clearly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.app import cli
from controller.runtime import api, auth, policy_file, tasks
from controller.sim import command, contenders, report, scenario, whatif
from tests.support import fake_world

TOKENS = {"viewer": "gb_view", "operator": "gb_op"}
TRACE = scenario.DATA / "traces" / "step-spike.csv"
EMPTY = {"scenario": "x", "duration_s": 1, "requests": 0, "results": []}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, api.Context]]:
    w = fake_world.World(tmp_path / "gpuburst.db")
    ctx = fake_world.api_context(
        w,
        tokens=auth.Tokens(
            {auth.digest(t): auth.Principal(n, auth.Role[n.upper()]) for n, t in TOKENS.items()}
        ),
        whatif=lambda body, name: whatif.prepare(body, name, policy_path=policy_file.DEFAULT),
        whatif_scenarios=whatif.shipped(),
    )
    srv = api.Server(api.create_app(ctx), host="127.0.0.1", port=0).start()
    yield srv.url, ctx
    srv.stop()
    w.close()


def client(url: str, role: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30.0, headers={"Authorization": f"Bearer {TOKENS[role]}"})


def post(http: httpx.Client, body: bytes, name: str = "step-spike") -> httpx.Response:
    return http.post(
        "/v1/whatif", params={"scenario": name}, content=body, headers={"Content-Type": "text/csv"}
    )


def wait(http: httpx.Client, job: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    seen = [job["progress"]]
    while job["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        job = http.get(f"/v1/whatif/{job['id']}").json()
        seen.append(job["progress"])
    assert seen == sorted(seen)  # progress only grows
    return job


def test_a_shipped_trace_gives_the_figures_simulate_gives(served: tuple[str, api.Context]) -> None:
    url, ctx = served
    with client(url, "operator") as http:
        r = post(http, TRACE.read_bytes())
        assert r.status_code == 202, r.text
        assert r.headers["Location"] == f"/v1/whatif/{r.json()['id']}"
        job = wait(http, r.json())
        assert job["state"] == "done" and job["progress"] == 1.0, job
        png = http.get(job["plot"])
        assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")

    sc = scenario.load("step-spike")
    runs, oracle_cost = command.run_all(
        sc, contenders.parse_names(None), policy_path=policy_file.DEFAULT, quiet=True
    )
    expected = report.document(sc, runs, oracle_cost=oracle_cost)
    assert job["result"] == expected
    by_policy = {row["policy"]: row for row in job["result"]["results"]}
    assert set(by_policy) >= {"gpuburst", "oracle", "hpa+ca"}
    for row in expected["results"]:
        got = by_policy[row["policy"]]
        for k in ("slo_attainment", "cloud_cost_usd", "cost_vs_oracle", "launches"):
            assert got[k] == row[k], (row["policy"], k)

    (audit,) = ctx.store.audit(limit=10, kind="whatif")
    assert (audit.actor, audit.target, audit.after) == ("operator", "step-spike", job["id"])


def test_the_client_prints_the_simulate_table(
    served: tuple[str, api.Context], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = served
    monkeypatch.setenv("GPUBURST_URL", url)
    monkeypatch.setenv("GPUBURST_TOKEN", TOKENS["operator"])
    assert cli.main(["whatif", "--trace", str(TRACE), "--scenario", "step-spike", "--poll", "0.05"]) == 0
    out = capsys.readouterr().out
    sc = scenario.load("step-spike")
    runs, oracle_cost = command.run_all(
        sc, contenders.parse_names(None), policy_path=policy_file.DEFAULT, quiet=True
    )
    assert out.startswith(report.table(report.document(sc, runs, oracle_cost=oracle_cost)) + "\nplot: ")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"t_seconds,requests\n0,5\n60,x\n", "trace:3: not numbers: '60,x'"),
        (b"time,count\n0,5\n", "trace:1: header must be 't_seconds,requests'"),
        (b"t_seconds,requests\n0,5\n60,-1\n", "trace:3: negative request count -1"),
        (b"t_seconds,requests\n0,\xff\n", "trace: not UTF-8 text (byte"),
    ],
)
def test_a_bad_trace_is_a_422_naming_the_line(
    served: tuple[str, api.Context], body: bytes, detail: str
) -> None:
    url, _ = served
    with client(url, "operator") as http:
        r = post(http, body)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"].startswith(detail), r.json()


def test_a_viewer_may_read_but_not_start_one_and_other_bodies_are_refused(
    served: tuple[str, api.Context],
) -> None:
    url, _ = served
    with client(url, "viewer") as http:
        assert post(http, TRACE.read_bytes()).status_code == 403
        assert http.get(f"/v1/whatif/{'0' * 32}").status_code == 404
    with client(url, "operator") as http:
        assert post(http, TRACE.read_bytes(), name="nope").status_code == 422
        r = http.post("/v1/whatif", params={"scenario": "step-spike"}, json={"trace": "x"})
        assert r.status_code == 415
    assert httpx.post(f"{url}/v1/whatif", params={"scenario": "step-spike"}).status_code == 401


def test_the_longest_shipped_trace_fits_its_route_and_no_other(served: tuple[str, api.Context]) -> None:
    url, ctx = served
    big = (scenario.DATA / "traces" / "worldcup98.csv").read_bytes()
    assert len(big) > 1 << 20
    ctx.whatif = lambda body, name: lambda progress: {"report": EMPTY, "plot": None}
    with client(url, "operator") as http:
        assert post(http, big, name="worldcup98").status_code == 202
        r = http.put("/v1/overrides", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413


def test_a_third_job_waits_with_429_and_retry_after(served: tuple[str, api.Context]) -> None:
    url, ctx = served
    release = threading.Event()

    def blocking(body: bytes, name: str) -> tasks.Work:
        def work(progress: tasks.Progress) -> dict[str, Any]:
            progress(0.5)
            release.wait(10)
            return {"report": EMPTY, "plot": None}

        return work

    ctx.whatif = blocking
    with client(url, "operator") as http:
        first, second = (post(http, b"t_seconds,requests\n0,1\n") for _ in range(2))
        assert first.status_code == second.status_code == 202
        third = post(http, b"t_seconds,requests\n0,1\n")
        assert third.status_code == 429 and int(third.headers["Retry-After"]) >= 1, third.text
        release.set()
        done = wait(http, first.json())
        assert done["state"] == "done" and done["plot"] is None
        assert http.get(f"/v1/whatif/{done['id']}/plot.png").status_code == 404
        wait(http, second.json())
        assert post(http, b"t_seconds,requests\n0,1\n").status_code == 202
    release.set()


def test_a_failed_replay_reports_its_error(served: tuple[str, api.Context]) -> None:
    url, ctx = served

    def failing(body: bytes, name: str) -> tasks.Work:
        def work(progress: tasks.Progress) -> dict[str, Any]:
            raise ValueError("boom")

        return work

    ctx.whatif = failing
    with client(url, "operator") as http:
        job = wait(http, post(http, b"t_seconds,requests\n0,1\n").json())
    assert job["state"] == "failed" and job["error"] == "internal error: ValueError: boom"
    assert job["result"] is None


def test_without_a_simulator_it_is_501(served: tuple[str, api.Context]) -> None:
    url, ctx = served

    def missing(body: bytes, name: str) -> tasks.Work:
        raise tasks.UnavailableError("the simulator is not installed (numpy): pip install gpuburst[sim]")

    ctx.whatif = missing
    with client(url, "operator") as http:
        r = post(http, b"t_seconds,requests\n0,1\n")
    assert r.status_code == 501 and "numpy" in r.json()["detail"]
