"""The admin REST API (FastAPI app factory): health, metrics, status, nodes, decisions, the ledger, the
audit log, the operator's overrides, the burst policy and reconcile-now.

It reads the store and the last TickReport and writes overrides, which the next tick reads (DESIGN.md
section 5); it never calls Pulumi or the Kubernetes API itself. Every `/v1` call needs a named bearer
token with a role (controller.runtime.auth); `/healthz`, `/readyz` and `/metrics` stay open for probes
and scrapers. Errors are RFC 9457 problem documents; times are ISO-8601 UTC.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import fastapi
import pydantic
import uvicorn
from fastapi import exceptions as fastapi_exceptions
from fastapi import responses, security
from starlette import exceptions as starlette_exceptions
from starlette import routing

from controller import ports
from controller.core import model, policy
from controller.runtime import auth, codec, errors, logs, policy_file, store, telemetry

log = logs.get("api")

# A leader whose last tick is older than this many intervals is not doing its job.
STALE_TICKS = 3.0
PROBLEM = "application/problem+json"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


@dataclass
class Context:
    """What the API reads and may change; live.py builds it over the running controller."""

    store: store.SqliteStore
    telemetry: telemetry.Telemetry
    clock: ports.Clock
    pools: Mapping[str, int]
    """Pool name → its configured max_nodes (an override may only lower it)."""
    tick_interval_s: float
    last_report: Callable[[], model.TickReport | None]
    tokens: auth.Tokens
    leading: Callable[[], bool] = lambda: True
    checks: Mapping[str, Callable[[], str | None]] = field(default_factory=dict)
    """Extra readiness checks by name: each returns a problem, or None when fine (e.g. Prometheus)."""
    limiter: auth.RateLimiter = field(default_factory=lambda: auth.RateLimiter(rate_per_s=20, burst=40))
    reconcile_now: Callable[[], model.TickReport | None] | None = None
    get_policy: Callable[[], policy.BurstPolicy] | None = None
    policy_path: Path | None = None
    """The file a policy reload reads."""
    apply_policy: Callable[[policy.BurstPolicy], None] | None = None


# -- models -------------------------------------------------------------------------------------------
Time = Annotated[dt.datetime, pydantic.Field(description="ISO-8601, UTC")]
T = TypeVar("T")


def _utc(at: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, tz=dt.UTC)


def _opt_utc(at: float | None) -> dt.datetime | None:
    return None if at is None else _utc(at)


class _Out(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


def _integral(value: Any) -> Any:
    """JSON Schema's integer includes 3.0; strict pydantic would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**63 else value


class OverridesIn(_Out):
    """An operator's overrides; each only tightens what the config allows."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    hold: pydantic.StrictBool = pydantic.Field(False, description="pause bursting: no launch, no release")
    budget_usd_per_hour: float | None = pydantic.Field(
        None, ge=0, le=1e6, allow_inf_nan=False, description="lowers the policy budget"
    )
    max_nodes: Any = pydantic.Field(
        None, description="per pool: lowers max_nodes, up to the pool's configured cap (0 releases the pool)"
    )
    reason: str = pydantic.Field("", max_length=500)


def _overrides_model(pools: Mapping[str, int]) -> type[OverridesIn]:
    """OverridesIn with `max_nodes` spelled per pool, each bounded by its configured cap, so the
    OpenAPI schema itself says which pools exist and how far each may go."""
    fields: dict[str, Any] = {
        f"pool_{i}": (
            Annotated[int, pydantic.Field(ge=0, le=cap), pydantic.BeforeValidator(_integral)] | None,
            pydantic.Field(None, alias=name),
        )
        for i, (name, cap) in enumerate(sorted(pools.items()))
    }
    config = pydantic.ConfigDict(extra="forbid", strict=True)
    caps = pydantic.create_model("MaxNodesIn", __config__=config, **fields)
    return pydantic.create_model(
        "OverridesIn", __base__=OverridesIn, max_nodes=(caps, pydantic.Field(default_factory=caps))
    )


class OverridesOut(_Out):
    hold: bool
    budget_usd_per_hour: float | None
    max_nodes: dict[str, int]
    reason: str


class Health(_Out):
    status: str


class Ready(_Out):
    ready: bool
    leader: bool
    problems: dict[str, str]


class Whoami(_Out):
    name: str
    role: str


class Status(_Out):
    leader: bool
    store_version: int
    last_tick_at: Time | None
    overrides: OverridesOut
    report: dict[str, Any] | None = pydantic.Field(description="the last tick's report (times in epoch s)")


class Node(_Out):
    name: str
    pool: str
    status: str
    since: Time
    requested_at: Time
    ready_at: Time | None
    reason: str


class Decision(_Out):
    id: int
    version: int
    at: Time
    action: str
    decision: dict[str, Any]
    inputs: dict[str, Any]
    desired: dict[str, Any]


class AuditEntry(_Out):
    id: int
    at: Time
    action: str
    actor: str | None
    target: str | None
    node: str | None
    pool: str | None
    before: str | None
    after: str | None
    detail: str
    request_id: str | None


class Page(_Out, Generic[T]):
    items: list[T]
    next_cursor: str | None = pydantic.Field(description="pass as `cursor` for the next (older) page")


class PoolCost(_Out):
    node_seconds: float
    usd: float


class HourCost(_Out):
    pool: str
    hour: Time
    node_seconds: float
    usd: float


class Ledger(_Out):
    pools: dict[str, PoolCost]
    total_usd: float
    hourly: list[HourCost]


class PolicyOut(_Out):
    policy: dict[str, Any]
    changed: dict[str, list[Any]] = pydantic.Field(description="field → [running, new]")
    applied: bool


class Problem(pydantic.BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": Problem, "content": {PROBLEM: {}}} for c in codes}


# Every /v1 route can answer these.
V1_ERRORS = _problems(400, 401, 403, 413, 422, 429)


class PolicyIn(policy_file.PolicyFile):
    """A policy file's fields as JSON, strictly typed (`false` is no duration)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=True)


class Reconciled(_Out):
    ticked: bool
    report: dict[str, Any] | None


# -- errors -------------------------------------------------------------------------------------------
def _problem(status: int, detail: str, **extra: Any) -> responses.JSONResponse:
    title = _TITLES.get(status, "Error")
    headers = extra.pop("headers", None)
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return responses.JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
    422: "Unprocessable Content", 429: "Too Many Requests", 500: "Internal Server Error",
    503: "Service Unavailable",
}  # fmt: skip


def _describe(errs: Any) -> str:
    parts = []
    for err in errs:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _install_errors(app: fastapi.FastAPI) -> None:
    @app.exception_handler(fastapi_exceptions.RequestValidationError)
    async def _invalid(request: fastapi.Request, exc: fastapi_exceptions.RequestValidationError) -> Any:
        # One readable line first; the structured errors follow for tools.
        errs = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return _problem(422, _describe(exc.errors()), errors=errs)

    @app.exception_handler(starlette_exceptions.HTTPException)
    async def _http(request: fastapi.Request, exc: starlette_exceptions.HTTPException) -> Any:
        headers = exc.headers
        if exc.status_code == 405:  # one path, several routes: Allow names every route's methods
            allowed = {
                m
                for route in request.app.routes
                if isinstance(route, routing.Route)
                and route.matches(request.scope)[0] is not routing.Match.NONE
                for m in (route.methods or ())
            }
            headers = {"Allow": ", ".join(sorted(allowed))}
        return _problem(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(errors.UserError)
    async def _user(request: fastapi.Request, exc: errors.UserError) -> Any:
        return _problem(422, str(exc))


# -- auth ---------------------------------------------------------------------------------------------
_bearer = security.HTTPBearer(auto_error=False, description="a named token: `gpuburst token add`")


def _caller(ctx: Context, role: auth.Role) -> Callable[..., auth.Principal]:
    def dependency(
        request: fastapi.Request,
        creds: Annotated[security.HTTPAuthorizationCredentials | None, fastapi.Depends(_bearer)],
    ) -> auth.Principal:
        challenge = {"WWW-Authenticate": 'Bearer realm="gpuburst"'}
        if creds is None:
            raise fastapi.HTTPException(
                401, "an `Authorization: Bearer <token>` header is required", challenge
            )
        who = ctx.tokens.check(creds.credentials)
        if who is None:
            challenge["WWW-Authenticate"] += ', error="invalid_token"'
            raise fastapi.HTTPException(401, "the bearer token is not known", challenge)
        wait = ctx.limiter.take(who.name)
        if wait > 0:
            raise fastapi.HTTPException(
                429, f"rate limit of {who.name!r} reached", {"Retry-After": auth.retry_after(wait)}
            )
        if who.role < role:
            raise fastapi.HTTPException(
                403, f"{who.name!r} is a {who.role.name.lower()}; this needs {role.name.lower()}"
            )
        request.state.actor = who.name
        request.state.principal = who
        return who

    return dependency


def _request_id(request: fastapi.Request) -> str:
    return str(getattr(request.state, "request_id", ""))


# -- routers ------------------------------------------------------------------------------------------
def _health_router(ctx: Context) -> fastapi.APIRouter:
    r = fastapi.APIRouter(tags=["probes (no auth)"])

    @r.get("/healthz")
    def healthz() -> Health:
        return Health(status="ok")

    @r.get("/readyz", responses={503: {"model": Ready}})
    def readyz() -> responses.JSONResponse:
        problems: dict[str, str] = {}
        try:
            ctx.store.version()
        except Exception as exc:
            problems["store"] = str(exc)
        leading = ctx.leading()
        report = ctx.last_report()
        if leading:
            if report is None:
                problems["tick"] = "no tick yet"
            else:
                age = ctx.clock.now() - report.at
                if age > STALE_TICKS * ctx.tick_interval_s:
                    problems["tick"] = f"last tick {age:.0f} s ago (interval {ctx.tick_interval_s:g} s)"
        for name, check in ctx.checks.items():
            try:
                problem = check()
            except Exception as exc:
                problem = str(exc)
            if problem:
                problems[name] = problem
        body = Ready(ready=not problems, leader=leading, problems=problems)
        return responses.JSONResponse(body.model_dump(), status_code=200 if not problems else 503)

    @r.get("/metrics", response_class=responses.PlainTextResponse)
    def metrics() -> fastapi.Response:
        return fastapi.Response(ctx.telemetry.exposition(), media_type=telemetry.CONTENT_TYPE)

    return r


def _overrides_out(ov: ports.Overrides) -> OverridesOut:
    return OverridesOut(
        hold=ov.hold,
        budget_usd_per_hour=ov.budget_usd_per_hour,
        max_nodes=dict(ov.max_nodes),
        reason=ov.reason,
    )


Limit = Annotated[int, fastapi.Query(ge=1, le=1000)]
Since = Annotated[
    str | None,
    fastapi.Query(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$",
        json_schema_extra={"format": "date-time"},
        description="ISO-8601 with a zone, e.g. 2026-01-31T12:00:00Z",
    ),
]
Cursor = Annotated[str | None, fastapi.Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of a page")]


def _reads_router(ctx: Context) -> fastapi.APIRouter:
    r = fastapi.APIRouter(
        prefix="/v1", tags=["reads"], dependencies=[fastapi.Depends(_caller(ctx, auth.Role.VIEWER))]
    )

    @r.get("/whoami")
    def whoami(request: fastapi.Request) -> Whoami:
        who: auth.Principal = request.state.principal
        return Whoami(name=who.name, role=who.role.name.lower())

    @r.get("/status")
    def status() -> Status:
        report = ctx.last_report()
        return Status(
            leader=ctx.leading(),
            store_version=ctx.store.version(),
            last_tick_at=None if report is None else _utc(report.at),
            overrides=_overrides_out(ctx.store.overrides()),
            report=None if report is None else codec.encode(report),
        )

    @r.get("/nodes")
    def nodes(include_released: bool = False) -> list[Node]:
        return [
            Node(
                name=n.name,
                pool=n.pool,
                status=n.status.value,
                since=_utc(n.since),
                requested_at=_utc(n.requested_at),
                ready_at=_opt_utc(n.ready_at),
                reason=n.reason,
            )
            for n in ctx.store.nodes(include_released=include_released)
        ]

    @r.get("/decisions")
    def decisions(limit: Limit = 50, cursor: Cursor = None) -> Page[Decision]:
        rows = ctx.store.decisions(limit=limit, before_id=None if cursor is None else int(cursor))
        items = [
            Decision(
                id=d.id,
                version=d.version,
                at=_utc(d.at),
                action=d.action,
                decision=dict(d.decision),
                inputs=dict(d.inputs),
                desired=dict(d.desired),
            )
            for d in rows
        ]
        return Page[Decision](items=items, next_cursor=_next(rows, limit))

    @r.get("/ledger")
    def ledger(since: Since = None) -> Ledger:
        totals = ctx.store.ledger()
        hourly = ctx.store.ledger_hourly(since=None if since is None else _epoch(since))
        return Ledger(
            pools={p: PoolCost(node_seconds=s, usd=usd) for p, (s, usd) in totals.items()},
            total_usd=math.fsum(usd for _, usd in totals.values()),
            hourly=[HourCost(pool=p, hour=_utc(h), node_seconds=s, usd=usd) for p, h, s, usd in hourly],
        )

    @r.get("/overrides")
    def get_overrides() -> OverridesOut:
        return _overrides_out(ctx.store.overrides())

    return r


def _audit_router(ctx: Context) -> fastapi.APIRouter:
    r = fastapi.APIRouter(
        prefix="/v1", tags=["audit"], dependencies=[fastapi.Depends(_caller(ctx, auth.Role.VIEWER))]
    )

    @r.get("/audit")
    def audit(
        *,
        limit: Limit = 100,
        cursor: Cursor = None,
        action: Annotated[str | None, fastapi.Query(max_length=64)] = None,
        actor: Annotated[str | None, fastapi.Query(max_length=100)] = None,
        target: Annotated[str | None, fastapi.Query(max_length=253)] = None,
        since: Since = None,
    ) -> Page[AuditEntry]:
        rows = ctx.store.audit(
            limit=limit, kind=action, actor=actor, target=target,
            since=None if since is None else _epoch(since),
            before_id=None if cursor is None else int(cursor),
        )  # fmt: skip
        items = [
            AuditEntry(
                id=a.id,
                at=_utc(a.at),
                action=a.kind,
                actor=a.actor,
                target=a.target,
                node=a.node,
                pool=a.pool,
                before=a.before,
                after=a.after,
                detail=a.detail,
                request_id=a.request_id,
            )
            for a in rows
        ]
        return Page[AuditEntry](items=items, next_cursor=_next(rows, limit))

    return r


def _overrides_router(ctx: Context) -> fastapi.APIRouter:
    operator = fastapi.Depends(_caller(ctx, auth.Role.OPERATOR))
    r = fastapi.APIRouter(prefix="/v1", tags=["operations"], dependencies=[operator])

    def put_overrides(body: OverridesIn, request: fastapi.Request) -> OverridesOut:
        caps = body.max_nodes.model_dump(by_alias=True, exclude_none=True)
        ov = ports.Overrides(
            hold=body.hold, budget_usd_per_hour=body.budget_usd_per_hour, max_nodes=caps, reason=body.reason
        )
        return _set_overrides(ctx, request, ov)

    # The body's schema names this controller's pools (resolved here: the annotations are strings).
    put_overrides.__annotations__.update(
        {"body": _overrides_model(ctx.pools), "request": fastapi.Request, "return": OverridesOut}
    )
    r.put("/overrides")(put_overrides)

    @r.delete("/overrides")
    def clear_overrides(request: fastapi.Request) -> OverridesOut:
        return _set_overrides(ctx, request, ports.Overrides())

    @r.post("/reconcile", responses=_problems(503))
    def reconcile(request: fastapi.Request) -> Reconciled:
        if ctx.reconcile_now is None:
            raise fastapi.HTTPException(503, "this controller cannot tick on request")
        report = ctx.reconcile_now()
        ctx.store.audit_change(
            ctx.clock.now(), "reconcile", actor=request.state.actor, target="controller", before=None,
            after=None if report is None else report.decision.action.value, request_id=_request_id(request),
        )  # fmt: skip
        return Reconciled(ticked=report is not None, report=None if report is None else codec.encode(report))

    return r


def _set_overrides(ctx: Context, request: fastapi.Request, ov: ports.Overrides) -> OverridesOut:
    actor = request.state.actor
    before = ctx.store.set_overrides(ov, at=ctx.clock.now(), by=actor, request_id=_request_id(request))
    log.info(
        "overrides set",
        extra={"before": codec.encode(before), "after": codec.encode(ov), "by": actor,
               "request_id": _request_id(request)},
    )  # fmt: skip
    return _overrides_out(ov)


def _policy_router(ctx: Context) -> fastapi.APIRouter:
    r = fastapi.APIRouter(prefix="/v1/policy", tags=["policy"])
    viewer = [fastapi.Depends(_caller(ctx, auth.Role.VIEWER))]
    admin = [fastapi.Depends(_caller(ctx, auth.Role.ADMIN))]

    def running() -> policy.BurstPolicy:
        if ctx.get_policy is None:
            raise fastapi.HTTPException(503, "this controller serves no policy")
        return ctx.get_policy()

    @r.get("", dependencies=viewer, responses=_problems(503))
    def get_policy() -> PolicyOut:
        return PolicyOut(policy=_policy_dict(running()), changed={}, applied=False)

    @r.post("/validate", dependencies=viewer, responses=_problems(503))
    def validate(body: PolicyIn) -> PolicyOut:
        """Check a policy (the YAML file's fields, as JSON) and show what it would change."""
        new = policy_file.parse(body.model_dump(exclude_unset=True), where="request body")
        return PolicyOut(policy=_policy_dict(new), changed=_diff(running(), new), applied=False)

    @r.post("/reload", dependencies=admin, responses=_problems(503))
    def reload(request: fastapi.Request) -> PolicyOut:
        """Re-read the policy file; on any error the running policy stays."""
        old = running()
        if ctx.policy_path is None or ctx.apply_policy is None:
            raise fastapi.HTTPException(503, "this controller cannot reload its policy")
        new = policy_file.load(ctx.policy_path)
        changed = _diff(old, new)
        if changed:
            ctx.apply_policy(new)
        ctx.store.audit_change(
            ctx.clock.now(), "policy_reload", actor=request.state.actor, target=str(ctx.policy_path),
            before=codec.dumps(_policy_dict(old)), after=codec.dumps(_policy_dict(new)),
            detail=", ".join(sorted(changed)), request_id=_request_id(request),
        )  # fmt: skip
        log.info("policy reloaded", extra={"changed": sorted(changed), "by": request.state.actor})
        return PolicyOut(policy=_policy_dict(new), changed=changed, applied=bool(changed))

    return r


def _policy_dict(p: policy.BurstPolicy) -> dict[str, Any]:
    return dict(codec.encode(p))


def _diff(old: policy.BurstPolicy, new: policy.BurstPolicy) -> dict[str, list[Any]]:
    a, b = _policy_dict(old), _policy_dict(new)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _next(rows: list[Any], limit: int) -> str | None:
    return str(rows[-1].id) if len(rows) == limit else None


def _epoch(at: str) -> float:
    try:
        return dt.datetime.fromisoformat(at).timestamp()
    except ValueError as exc:
        raise fastapi.HTTPException(422, f"query.since: {exc}") from None


# -- the app ------------------------------------------------------------------------------------------
def create_app(ctx: Context, *, max_body_bytes: int = 1 << 20) -> fastapi.FastAPI:
    app = fastapi.FastAPI(title="gpuburst admin API", version="2")
    _install_errors(app)

    @app.middleware("http")
    async def request_id(request: fastapi.Request, call_next: Any) -> Any:
        given = request.headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        request.state.request_id = rid
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        return response

    for router in (_health_router, _reads_router, _audit_router, _overrides_router, _policy_router):
        app.include_router(router(ctx), responses=None if router is _health_router else V1_ERRORS)
    # Outermost: refuses an oversized body before any other layer reads it.
    app.add_middleware(auth.BodyLimit, max_bytes=max_body_bytes)
    return app


class Server:
    """The app on uvicorn in a background thread (the scheduler owns the main thread)."""

    def __init__(
        self,
        app: fastapi.FastAPI,
        *,
        host: str,
        port: int,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        # log_config=None: keep the JSON logging `controller.runtime.logs` set up.
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off",
            ssl_certfile=tls_cert, ssl_keyfile=tls_key,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="gpuburst-api", daemon=True)
        self.host = host
        self.port = port
        self.tls = tls_cert is not None
        if not self.tls and host not in ("127.0.0.1", "::1", "localhost"):
            log.warning(
                "admin API listens beyond loopback without TLS: bearer tokens cross the network in clear; "
                "set api.tls_cert_file/tls_key_file or terminate TLS in front",
                extra={"host": host},
            )

    def start(self, *, timeout_s: float = 10.0) -> Server:
        self._thread.start()
        waited = threading.Event()
        steps = int(timeout_s / 0.01)
        for _ in range(steps):
            if self._server.started or not self._thread.is_alive():
                break
            waited.wait(0.01)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"admin API did not start on {self.host}:{self.port} (address in use?)")
        sockets = [s for srv in self._server.servers for s in srv.sockets]
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("admin API listening", extra={"url": self.url})
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def stop(self, *, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
