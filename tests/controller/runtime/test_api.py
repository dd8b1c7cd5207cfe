"""The admin API over real HTTP (uvicorn on a free loopback port) in front of a controller on the fakes
and the SQLite store: reads, readiness, and overrides that the next tick applies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from prometheus_client import parser

from controller import ports
from controller.core import model
from controller.runtime import api, auth, telemetry
from tests.support import fake_world

TOKENS = {"viewer": "gb_view", "operator": "gb_op", "admin": "gb_admin"}


def _tokens() -> auth.Tokens:
    return auth.Tokens(
        {auth.digest(t): auth.Principal(name, auth.Role[name.upper()]) for name, t in TOKENS.items()}
    )


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


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
        pools: ClassVar = {p.name: p.max_nodes for p in (fake_world.SPOT, fake_world.ONDEMAND)}
        whatif_scenarios: ClassVar = ()

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
    ctx = fake_world.api_context(
        w,
        tel=tel,
        tokens=_tokens(),
    )
    holder["ctx"] = ctx
    with httpx.Client(base_url=srv.url, timeout=5.0, headers=bearer("operator")) as http:
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

    page = h.http.get("/v1/decisions", params={"limit": 2}).json()
    decisions = page["items"]
    assert [d["version"] for d in decisions] == [3, 2]
    older = h.http.get("/v1/decisions", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [d["version"] for d in older["items"]] == [1] and older["next_cursor"] is None
    assert decisions[0]["at"] == api.models.utc(report.at).isoformat().replace("+00:00", "Z")
    assert decisions[0]["decision"]["reasons"] == list(report.decision.reasons)
    assert decisions[0]["inputs"]["metrics"]["face"]["rate_rps"] == 100.0

    ledger = h.http.get("/v1/ledger").json()
    billed = h.world.billed_node_seconds("spot")
    assert billed > 0
    assert ledger["pools"]["spot"]["node_seconds"] == pytest.approx(billed)
    assert ledger["total_usd"] == pytest.approx(billed * 0.4 / 3600)

    audit = h.http.get("/v1/audit", params={"action": "transition"}).json()["items"]
    assert {a["after"] for a in audit} == {"requested", "provisioning"}


def test_a_bad_query_parameter_is_a_clear_422(h: Harness) -> None:
    r = h.http.get("/v1/decisions", params={"limit": 0})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "query.limit: Input should be greater than or equal to 1"
    assert r.json()["status"] == 422 and r.json()["title"] == "Unprocessable Content"


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"hold": True, "bogus": 1}, "bogus: unknown field"),
        ({"budget_usd_per_hour": -1}, "budget_usd_per_hour: Input should be greater than or equal to 0"),
        ({"max_nodes": {"spot": -2}}, "max_nodes.spot: Input should be greater than or equal to 0"),
        ({"max_nodes": {"gpu-moon": 1}}, "max_nodes.gpu-moon: unknown field"),
        ({"hold": "maybe"}, "hold: Input should be a valid boolean"),
        ({"hold": "yes"}, "hold: Input should be a valid boolean"),
        ({"max_nodes": {"spot": 1e20}}, "max_nodes.spot: Input should be a valid integer"),
        ({"max_nodes": {"spot": 2.5}}, "max_nodes.spot: Input should be a valid integer"),
        ({"max_nodes": {"spot": "2"}}, "max_nodes.spot: Input should be a valid integer"),
        ({"max_nodes": {"spot": 11}}, "max_nodes.spot: Input should be less than or equal to 10"),
        ({"budget_usd_per_hour": "3"}, "budget_usd_per_hour: Input should be a valid number"),
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
    r = h.http.put("/v1/overrides", json={"max_nodes": {"spot": 2, "ondemand": 10}})
    assert r.status_code == 200
    report = h.tick()
    # spot is cut to 2; ondemand stays at its configured max of 10.
    assert report.decision.target_nodes == {"spot": 2, "ondemand": 10}

    h.http.put("/v1/overrides", json={"budget_usd_per_hour": 3.0})
    report = h.tick(15)
    assert report.decision.budget_binding
    for _ in range(3):  # the nodes cut by the budget bill until they are gone
        report = h.tick(15)
    assert 0 < report.usd_per_hour <= 3.0 + 1e-9
    changes = h.http.get("/v1/audit", params={"action": "override"}).json()["items"]
    assert len(changes) == 2 and {c["actor"] for c in changes} == {"operator"}
    assert json.loads(changes[0]["before"])["max_nodes"] == {"spot": 2, "ondemand": 10}
    assert json.loads(changes[0]["after"])["budget_usd_per_hour"] == 3.0


def test_no_call_to_v1_is_anonymous_and_roles_gate_changes(h: Harness) -> None:
    anon = {"Authorization": ""}
    for method, path in (("GET", "/v1/status"), ("PUT", "/v1/overrides"), ("GET", "/v1/audit")):
        r = h.http.request(method, path, headers=anon, json={"hold": True} if method == "PUT" else None)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == "application/problem+json"
    raw = h.http.get("/v1/status", headers={"Authorization": TOKENS["viewer"]})  # no "Bearer "
    assert raw.status_code == 401
    wrong = h.http.get("/v1/status", headers={"Authorization": "Bearer gb_nope"})
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert h.http.get("/v1/status", headers=bearer("viewer")).status_code == 200
    denied = h.http.put("/v1/overrides", json={"hold": True}, headers=bearer("viewer"))
    assert (
        denied.status_code == 403 and "'viewer' is a viewer; this needs operator" in denied.json()["detail"]
    )
    assert h.http.post("/v1/policy/reload").status_code == 403  # operator
    assert h.ctx.store.overrides() == ports.Overrides()
    assert h.http.get("/v1/whoami", headers=bearer("admin")).json() == {"name": "admin", "role": "admin"}
    assert h.http.get("/healthz", headers=anon).status_code == 200
    assert h.http.get("/metrics", headers=anon).status_code == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read(h: Harness) -> None:
    big = b"x" * (2 << 20)
    r = h.http.put("/v1/overrides", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(64):
            yield b"x" * 65536

    r = h.http.put("/v1/overrides", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert h.ctx.store.overrides() == ports.Overrides()


def test_each_token_has_its_own_rate_limit(h: Harness) -> None:
    t = [0.0]
    h.ctx.limiter = auth.RateLimiter(rate_per_s=1.0, burst=2, now=lambda: t[0])
    assert [h.http.get("/v1/overrides").status_code for _ in range(3)] == [200, 200, 429]
    r = h.http.get("/v1/overrides")
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert h.http.get("/v1/overrides", headers=bearer("viewer")).status_code == 200
    t[0] += 1.0
    assert h.http.get("/v1/overrides").status_code == 200


def test_changes_are_audited_with_actor_request_id_before_and_after(h: Harness) -> None:
    r = h.http.put(
        "/v1/overrides", json={"hold": True, "reason": "incident 9"}, headers={"X-Request-ID": "req-42"}
    )
    assert r.headers["x-request-id"] == "req-42"
    h.http.delete("/v1/overrides")
    (cleared, held) = h.http.get("/v1/audit", params={"actor": "operator", "target": "overrides"}).json()[
        "items"
    ]
    assert held["request_id"] == "req-42" and held["detail"] == "incident 9"
    assert json.loads(held["before"])["hold"] is False and json.loads(held["after"])["hold"] is True
    assert cleared["before"] == held["after"] and len(cleared["request_id"]) == 32
    assert held["at"].endswith("Z")
    assert h.http.get("/v1/audit", params={"actor": "someone-else"}).json()["items"] == []


def test_reconcile_now_ticks_and_is_audited(h: Harness) -> None:
    h.world.metrics.set("face", 100.0)
    r = h.http.post("/v1/reconcile")
    assert r.status_code == 200 and r.json()["ticked"] is True
    assert r.json()["report"]["decision"]["action"] == "scale_up"
    assert h.ctx.store.version() == 1
    (row,) = h.http.get("/v1/audit", params={"action": "reconcile"}).json()["items"]
    assert row["actor"] == "operator" and row["after"] == "scale_up"


def test_policy_get_validate_and_reload_keep_the_running_policy_on_error(h: Harness, tmp_path: Path) -> None:
    running = [h.world.setup.policy]
    path = tmp_path / "policy.yaml"
    h.ctx.get_policy = lambda: running[0]
    h.ctx.policy_path = path
    h.ctx.apply_policy = lambda p: running.__setitem__(0, p)
    admin = bearer("admin")
    got = h.http.get("/v1/policy").json()
    assert got["policy"]["boot_timeout_s"] == running[0].boot_timeout_s

    r = h.http.post("/v1/policy/validate", json={"boot_timeout_s": "soon"})
    assert r.status_code == 422
    assert r.json()["detail"] == "boot_timeout_s: Input should be a valid number"
    r = h.http.post("/v1/policy/validate", json={"burst_tiers": ["gold"]})
    assert r.status_code == 422 and "burst_tiers" in r.json()["detail"]
    ok = h.http.post("/v1/policy/validate", json={"budget_usd_per_hour": 7.5}).json()
    assert ok["changed"]["budget_usd_per_hour"][1] == 7.5 and ok["applied"] is False

    path.write_text("budget_usd_per_hour: [\n")
    before = running[0]
    r = h.http.post("/v1/policy/reload", headers=admin)
    assert r.status_code == 422 and str(path) in r.json()["detail"]
    assert running[0] is before

    path.write_text("budget_usd_per_hour: 7.5\n")
    r = h.http.post("/v1/policy/reload", headers=admin)
    assert r.status_code == 200 and r.json()["applied"] is True
    assert running[0].budget_usd_per_hour == 7.5
    assert set(r.json()["changed"]) == {"budget_usd_per_hour"}
    (row,) = h.http.get("/v1/audit", params={"action": "policy_reload"}).json()["items"]
    assert row["actor"] == "admin" and row["detail"] == "budget_usd_per_hour"
    assert json.loads(row["after"])["budget_usd_per_hour"] == 7.5


def test_a_cap_counts_only_nodes_that_are_not_leaving(h: Harness) -> None:
    h.world.metrics.set("face", 80.0)  # 3 spot nodes
    report = h.world.run(600)
    assert report.nodes["spot"].get("ready") == 3
    launched = set(h.world.infra.instances)
    assert h.http.put("/v1/overrides", json={"max_nodes": {"spot": 1, "ondemand": 0}}).status_code == 200
    for _ in range(40):  # 10 minutes: the two cut nodes drain and leave
        report = h.tick(15)
        assert report.decision.target_nodes["spot"] == 1, report.decision.reasons
    assert report.nodes["spot"] == {"ready": 1}
    assert set(h.world.infra.instances) < launched, "the kept node is one of the three; nothing relaunched"


def _ready_node(h: Harness, pool: str) -> str:
    return next(
        n["name"] for n in h.http.get("/v1/nodes").json() if n["pool"] == pool and n["status"] == "ready"
    )


def test_a_drained_node_is_released_and_not_relaunched(h: Harness) -> None:
    h.world.metrics.set("face", 100.0)
    for _ in range(20):  # boot, and let the scale-up settle
        h.tick(15)
    before = h.tick(15).decision.target_nodes
    victim = _ready_node(h, "spot")
    r = h.http.post(f"/v1/nodes/{victim}/drain")
    assert r.status_code == 200 and r.json()["drain"] == [victim]
    assert r.json()["max_nodes"] == {"spot": before["spot"] - 1}
    report = h.tick(15)
    moves = [(t.node, t.before, t.after, t.reason) for t in report.transitions if t.node == victim]
    assert moves[0] == (victim, model.NodeStatus.READY, model.NodeStatus.DRAINING, "operator drain")
    assert report.decision.target_nodes["spot"] == before["spot"] - 1
    for _ in range(4):
        report = h.tick(15)
    assert victim not in h.world.infra.instances
    assert report.decision.target_nodes["spot"] == before["spot"] - 1  # not relaunched
    again = h.http.post(f"/v1/nodes/{victim}/drain")
    assert again.status_code in (404, 409)
    assert h.http.post("/v1/nodes/no-such-node/drain").status_code == 404
    assert h.http.post(f"/v1/nodes/{victim}/drain", headers=bearer("viewer")).status_code == 403
    (row,) = h.http.get("/v1/audit", params={"action": "drain"}).json()["items"]
    assert (row["actor"], row["target"], row["before"], row["after"]) == (
        "operator",
        victim,
        "ready",
        "drain requested",
    )


def test_a_paused_pool_neither_launches_nor_releases(h: Harness) -> None:
    h.world.metrics.set("face", 100.0)
    h.tick()
    r = h.http.post("/v1/pools/spot/pause")
    assert r.status_code == 200 and r.json()["paused"] == ["spot"]
    assert h.http.put("/v1/overrides", json={"reason": "kept"}).json()["paused"] == ["spot"]
    spot = {n for n, p in h.world.store.load().records.items() if p.pool == "spot"}
    h.world.metrics.set("face", 400.0)  # wants far more
    report = h.tick(15)
    assert "spot: paused by the operator" in report.decision.reasons
    h.world.metrics.set("face", 0.0)  # wants none
    for _ in range(60):
        report = h.tick(15)
    assert {n for n, p in h.world.store.load().records.items() if p.pool == "spot"} == spot
    assert h.http.post("/v1/pools/spot/resume").json()["paused"] == []
    for _ in range(60):
        report = h.tick(15)
    assert report.decision.target_nodes["spot"] < len(spot)
    assert h.http.post("/v1/pools/gpu-moon/pause").status_code == 422
    actions = [a["action"] for a in h.http.get("/v1/audit").json()["items"] if a["target"] == "spot"]
    assert actions == ["resume", "pause"]
