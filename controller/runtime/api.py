"""The admin REST API (FastAPI app factory): health, metrics, status, nodes, decisions, the ledger, the
audit log, and the operator's overrides.

It reads the store and the last TickReport and writes only overrides, which the next tick reads
(DESIGN.md section 5): it never calls Pulumi or the Kubernetes API itself. Mutating calls need a bearer
token when one is configured.
"""

from __future__ import annotations

import hmac
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import fastapi
import pydantic
import uvicorn
from fastapi import exceptions as fastapi_exceptions
from fastapi import responses

from controller import ports
from controller.core import model
from controller.runtime import codec, logs, store, telemetry

log = logs.get("api")

# A leader whose last tick is older than this many intervals is not doing its job.
STALE_TICKS = 3.0


@dataclass
class Context:
    """What the API reads; live.py builds it over the running controller."""

    store: store.SqliteStore
    telemetry: telemetry.Telemetry
    clock: ports.Clock
    pools: tuple[str, ...]
    tick_interval_s: float
    last_report: Callable[[], model.TickReport | None]
    leading: Callable[[], bool] = lambda: True
    checks: Mapping[str, Callable[[], str | None]] = field(default_factory=dict)
    """Extra readiness checks by name: each returns a problem, or None when fine (e.g. Prometheus)."""
    token: str | None = None
    """Bearer token required by PUT/DELETE; None: no check (bind the API to loopback then)."""


class OverridesIn(pydantic.BaseModel):
    """An operator's overrides; each only tightens what the config allows."""

    model_config = pydantic.ConfigDict(extra="forbid")

    hold: bool = pydantic.Field(False, description="pause bursting: no launch, no release")
    budget_usd_per_hour: float | None = pydantic.Field(
        None, ge=0, allow_inf_nan=False, description="lowers the policy budget"
    )
    max_nodes: dict[str, Annotated[int, pydantic.Field(ge=0)]] = pydantic.Field(
        default_factory=dict, description="per pool: lowers max_nodes (0 releases the pool)"
    )
    reason: str = pydantic.Field("", max_length=500)


def _problem(errors: Any) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def create_app(ctx: Context) -> fastapi.FastAPI:
    app = fastapi.FastAPI(title="gpuburst admin API", version="1")

    @app.exception_handler(fastapi_exceptions.RequestValidationError)
    async def _invalid(request: fastapi.Request, exc: fastapi_exceptions.RequestValidationError) -> Any:
        # One readable line first; the structured errors follow for tools.
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return responses.JSONResponse(
            status_code=422, content={"detail": _problem(exc.errors()), "errors": errors}
        )

    def authorize(authorization: Annotated[str | None, fastapi.Header()] = None) -> None:
        if ctx.token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), ctx.token.encode()):
            raise fastapi.HTTPException(401, "a valid `Authorization: Bearer <token>` header is required")

    # -- health ---------------------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
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
        body = {"ready": not problems, "leader": leading, "problems": problems}
        return responses.JSONResponse(body, status_code=200 if not problems else 503)

    @app.get("/metrics")
    def metrics() -> fastapi.Response:
        return fastapi.Response(ctx.telemetry.exposition(), media_type=telemetry.CONTENT_TYPE)

    # -- reads --------------------------------------------------------------------------------------
    @app.get("/v1/status")
    def status() -> dict[str, Any]:
        report = ctx.last_report()
        return {
            "leader": ctx.leading(),
            "store_version": ctx.store.version(),
            "overrides": codec.encode(ctx.store.overrides()),
            "report": None if report is None else codec.encode(report),
        }

    @app.get("/v1/nodes")
    def nodes(include_released: bool = False) -> list[dict[str, Any]]:
        return [codec.encode(r) for r in ctx.store.nodes(include_released=include_released)]

    @app.get("/v1/decisions")
    def decisions(limit: Annotated[int, fastapi.Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        return [codec.encode(d) for d in ctx.store.decisions(limit=limit)]

    @app.get("/v1/audit")
    def audit(
        limit: Annotated[int, fastapi.Query(ge=1, le=5000)] = 100, kind: str | None = None
    ) -> list[dict[str, Any]]:
        return [codec.encode(a) for a in ctx.store.audit(limit=limit, kind=kind)]

    @app.get("/v1/ledger")
    def ledger(since: float | None = None) -> dict[str, Any]:
        totals = ctx.store.ledger()
        return {
            "pools": {p: {"node_seconds": s, "usd": usd} for p, (s, usd) in totals.items()},
            "total_usd": math.fsum(usd for _, usd in totals.values()),
            "hourly": [
                {"pool": p, "hour": h, "node_seconds": s, "usd": usd}
                for p, h, s, usd in ctx.store.ledger_hourly(since=since)
            ],
        }

    # -- overrides ----------------------------------------------------------------------------------
    @app.get("/v1/overrides")
    def get_overrides() -> dict[str, Any]:
        return dict(codec.encode(ctx.store.overrides()))

    @app.put("/v1/overrides", dependencies=[fastapi.Depends(authorize)])
    def put_overrides(body: OverridesIn, request: fastapi.Request) -> dict[str, Any]:
        unknown = sorted(set(body.max_nodes) - set(ctx.pools))
        if unknown:
            raise fastapi.HTTPException(
                422, f"max_nodes: unknown pool(s) {unknown}; the pools are {sorted(ctx.pools)}"
            )
        ov = ports.Overrides(
            hold=body.hold,
            budget_usd_per_hour=body.budget_usd_per_hour,
            max_nodes=dict(body.max_nodes),
            reason=body.reason,
        )
        ctx.store.set_overrides(ov, at=ctx.clock.now(), by=_who(request))
        log.info("overrides set", extra={"overrides": codec.encode(ov), "by": _who(request)})
        return dict(codec.encode(ov))

    @app.delete("/v1/overrides", dependencies=[fastapi.Depends(authorize)])
    def clear_overrides(request: fastapi.Request) -> dict[str, Any]:
        ov = ports.Overrides()
        ctx.store.set_overrides(ov, at=ctx.clock.now(), by=_who(request))
        log.info("overrides cleared", extra={"by": _who(request)})
        return dict(codec.encode(ov))

    return app


def _who(request: fastapi.Request) -> str:
    client = request.client
    return f"api {client.host}" if client is not None else "api"


class Server:
    """The app on uvicorn in a background thread (the scheduler owns the main thread)."""

    def __init__(self, app: fastapi.FastAPI, *, host: str, port: int) -> None:
        # log_config=None: keep the JSON logging `controller.runtime.logs` set up.
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="gpuburst-api", daemon=True)
        self.host = host
        self.port = port

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
        return f"http://{self.host}:{self.port}"

    def stop(self, *, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
