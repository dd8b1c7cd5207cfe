"""The admin API over real HTTP (uvicorn on a free loopback port) in front of a controller on the fakes
and the SQLite store: reads, readiness, and overrides that the next tick applies."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import parser

from controller import ports
from controller.core import model
from controller.runtime import api, telemetry
from tests.support import fake_world


@dataclass
class Harness:
    world: fake_world.World
    ctx: api.Context
    http: httpx.Client

    def tick(self, seconds: float = 0.0) -> model.TickReport:
        self.world.clock.advance(seconds)
        return self.world.rec.tick()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[api.Server, dict[str, api.Context]]]:
    """One real server for the module; each test points it at its own controller through `holder`."""
    holder: dict[str, api.Context] = {}

    class _Proxy:
        def __getattr__(self, name: str) -> object:
            return getattr(holder["ctx"], name)

    app = api.create_app(_Proxy())  # type: ignore[arg-type]
    srv = api.Server(app, host="127.0.0.1", port=0).start()
    yield srv, holder
    srv.stop()


@pytest.fixture
def h(server: tuple[api.Server, dict[str, api.Context]], tmp_path: Path) -> Iterator[Harness]:
    srv, holder = server
    w = fake_world.World(tmp_path / "gpuburst.db")
    tel = telemetry.Telemetry(workloads=w.setup.workloads, pools=w.setup.pools, ledger=w.store.ledger)  # type: ignore[attr-defined]
    w.observers.append(tel.observe)
    w.restart()
    ctx = api.Context(
        store=w.store,  # type: ignore[arg-type]
        telemetry=tel,
        clock=w.clock,
        pools=tuple(p.name for p in w.setup.pools),
        tick_interval_s=15.0,
        last_report=lambda: w.rec.last_report,
    )
    holder["ctx"] = ctx
    with httpx.Client(base_url=srv.url, timeout=5.0) as http:
        yield Harness(w, ctx, http)
    w.close()


def test_health_is_always_ok(h: Harness) -> None:
    assert h.http.get("/healthz").json() == {"status": "ok"}


def test_ready_only_while_the_leader_ticks(h: Harness) -> None:
    r = h.http.get("/readyz")
    assert r.status_code == 503 and r.json()["problems"] == {"tick": "no tick yet"}
    h.tick()
    assert h.http.get("/readyz").status_code == 200
    h.world.clock.advance(46)
    r = h.http.get("/readyz")
    assert r.status_code == 503 and "last tick 46 s ago" in r.json()["problems"]["tick"]
    h.ctx.leading = lambda: False  # a standby is ready to serve the API without ticking
    r = h.http.get("/readyz")
    assert r.status_code == 200 and r.json()["leader"] is False


def test_a_failing_check_makes_it_unready_and_says_which(h: Harness) -> None:
    h.tick()
    h.ctx.checks = {"prometheus": lambda: "connection refused", "kubernetes": lambda: None}
    r = h.http.get("/readyz")
    assert r.status_code == 503
    assert r.json()["problems"] == {"prometheus": "connection refused"}


def test_metrics_are_served_in_the_exposition_format(h: Harness) -> None:
    h.world.metrics.set("face", 200.0)
    report = h.tick()
    r = h.http.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in parser.text_string_to_metric_families(r.text)}
    (sample,) = [s for s in families["gpuburst_target_nodes"].samples if s.labels["pool"] == "spot"]
    assert sample.value == report.decision.target_nodes["spot"] > 0


def test_status_nodes_decisions_and_ledger_reflect_the_ticks(h: Harness) -> None:
    assert h.http.get("/v1/status").json()["report"] is None
    h.world.metrics.set("face", 100.0)  # a few spot nodes
    for _ in range(3):
        report = h.tick(15)
    status = h.http.get("/v1/status").json()
    assert status["leader"] is True and status["store_version"] == 3
    assert status["report"]["decision"]["target_nodes"] == dict(report.decision.target_nodes)
    n = sum(report.nodes["spot"].values())
    assert n > 0 and status["report"]["nodes"] == {"spot": dict(report.nodes["spot"])}

    nodes = h.http.get("/v1/nodes").json()
    assert len(nodes) == n and {x["pool"] for x in nodes} == {"spot"}

    decisions = h.http.get("/v1/decisions", params={"limit": 2}).json()
    assert [d["version"] for d in decisions] == [3, 2]
    assert decisions[0]["decision"]["reasons"] == list(report.decision.reasons)
    assert decisions[0]["inputs"]["metrics"]["face"]["rate_rps"] == 100.0

    ledger = h.http.get("/v1/ledger").json()
    billed = h.world.billed_node_seconds("spot")
    assert billed > 0
    assert ledger["pools"]["spot"]["node_seconds"] == pytest.approx(billed)
    assert ledger["total_usd"] == pytest.approx(billed * 0.4 / 3600)

    audit = h.http.get("/v1/audit", params={"kind": "transition"}).json()
    assert {a["after"] for a in audit} == {"requested", "provisioning"}


def test_a_bad_query_parameter_is_a_clear_422(h: Harness) -> None:
    r = h.http.get("/v1/decisions", params={"limit": 0})
    assert r.status_code == 422
    assert r.json()["detail"] == "query.limit: Input should be greater than or equal to 1"


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"hold": True, "bogus": 1}, "bogus: unknown field"),
        ({"budget_usd_per_hour": -1}, "budget_usd_per_hour: Input should be greater than or equal to 0"),
        ({"max_nodes": {"spot": -2}}, "max_nodes.spot: Input should be greater than or equal to 0"),
        ({"max_nodes": {"gpu-moon": 1}}, "max_nodes: unknown pool(s) ['gpu-moon']; the pools are"),
        ({"hold": "maybe"}, "hold: Input should be a valid boolean"),
    ],
)
def test_bad_overrides_are_refused_with_what_and_where(h: Harness, payload: object, detail: str) -> None:
    r = h.http.put("/v1/overrides", json=payload)
    assert r.status_code == 422
    assert r.json()["detail"].startswith(detail)
    assert h.ctx.store.overrides() == ports.Overrides()


def test_a_hold_override_is_persisted_and_holds_the_next_tick(h: Harness) -> None:
    h.world.metrics.set("face", 100.0)
    h.tick()
    running = set(h.world.infra.instances)
    r = h.http.put("/v1/overrides", json={"hold": True, "reason": "incident 7"})
    assert r.status_code == 200 and r.json()["hold"] is True
    h.world.metrics.set("face", 300.0)
    report = h.tick(15)
    assert report.decision.action is model.Action.HOLD
    assert report.decision.reasons == ("hold: operator hold: incident 7",)
    assert set(h.world.infra.instances) == running
    assert h.http.get("/v1/status").json()["overrides"]["hold"] is True
    assert h.http.delete("/v1/overrides").json()["hold"] is False
    assert h.tick(15).decision.action is model.Action.SCALE_UP


def test_max_nodes_and_budget_overrides_only_tighten(h: Harness) -> None:
    h.world.metrics.set("face", 400.0)  # 20 GPUs, 18 burst
    r = h.http.put("/v1/overrides", json={"max_nodes": {"spot": 2, "ondemand": 50}})
    assert r.status_code == 200
    report = h.tick()
    # spot is cut to 2; ondemand stays at its configured max of 10 (50 would loosen it).
    assert report.decision.target_nodes == {"spot": 2, "ondemand": 10}

    h.http.put("/v1/overrides", json={"budget_usd_per_hour": 3.0})
    report = h.tick(15)
    assert report.decision.budget_binding
    for _ in range(3):  # the nodes cut by the budget bill until they are gone
        report = h.tick(15)
    assert 0 < report.usd_per_hour <= 3.0 + 1e-9
    changes = h.http.get("/v1/audit", params={"kind": "override"}).json()
    assert len(changes) == 2 and "127.0.0.1" in changes[0]["detail"]


def test_mutations_need_the_token_when_one_is_set(h: Harness) -> None:
    h.ctx.token = "s3cret"
    assert h.http.put("/v1/overrides", json={"hold": True}).status_code == 401
    assert h.http.delete("/v1/overrides", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = h.http.put("/v1/overrides", json={"hold": True}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert h.http.get("/v1/overrides").json()["hold"] is True  # reads stay open
