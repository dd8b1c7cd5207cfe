"""The read side: probes and metrics (no auth), status, nodes, decisions, the ledger, overrides, audit."""

from __future__ import annotations

import math
from typing import Annotated

import fastapi
from fastapi import responses

from controller.runtime import auth, codec, telemetry
from controller.runtime.api.common import Cursor, Limit, Since, caller, epoch, next_cursor
from controller.runtime.api.context import STALE_TICKS, Context
from controller.runtime.api.models import (
    AuditEntry,
    Decision,
    Health,
    HourCost,
    Ledger,
    Node,
    OverridesOut,
    Page,
    PoolCost,
    Ready,
    Status,
    Whoami,
    opt_utc,
    overrides_out,
    utc,
)


def health_router(ctx: Context) -> fastapi.APIRouter:
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


def reads_router(ctx: Context) -> fastapi.APIRouter:
    r = fastapi.APIRouter(
        prefix="/v1", tags=["reads"], dependencies=[fastapi.Depends(caller(ctx, auth.Role.VIEWER))]
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
            last_tick_at=None if report is None else utc(report.at),
            overrides=overrides_out(ctx.store.overrides()),
            report=None if report is None else codec.encode(report),
        )

    # The link tells clients (and schemathesis) where a drain's node name comes from.
    drain_link = {"operationId": "drain_node", "parameters": {"name": "$response.body#/0/name"}}

    @r.get("/nodes", responses={200: {"description": "burst nodes", "links": {"drain": drain_link}}})
    def nodes(include_released: bool = False) -> list[Node]:
        return [
            Node(
                name=n.name,
                pool=n.pool,
                status=n.status.value,
                since=utc(n.since),
                requested_at=utc(n.requested_at),
                ready_at=opt_utc(n.ready_at),
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
                at=utc(d.at),
                action=d.action,
                decision=dict(d.decision),
                inputs=dict(d.inputs),
                desired=dict(d.desired),
            )
            for d in rows
        ]
        return Page[Decision](items=items, next_cursor=next_cursor(rows, limit))

    @r.get("/ledger")
    def ledger(since: Since = None) -> Ledger:
        totals = ctx.store.ledger()
        hourly = ctx.store.ledger_hourly(since=None if since is None else epoch(since))
        return Ledger(
            pools={p: PoolCost(node_seconds=s, usd=usd) for p, (s, usd) in totals.items()},
            total_usd=math.fsum(usd for _, usd in totals.values()),
            hourly=[HourCost(pool=p, hour=utc(h), node_seconds=s, usd=usd) for p, h, s, usd in hourly],
        )

    @r.get("/overrides")
    def get_overrides() -> OverridesOut:
        return overrides_out(ctx.store.overrides())

    return r


def audit_router(ctx: Context) -> fastapi.APIRouter:
    r = fastapi.APIRouter(
        prefix="/v1", tags=["audit"], dependencies=[fastapi.Depends(caller(ctx, auth.Role.VIEWER))]
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
            since=None if since is None else epoch(since),
            before_id=None if cursor is None else int(cursor),
        )  # fmt: skip
        items = [
            AuditEntry(
                id=a.id,
                at=utc(a.at),
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
        return Page[AuditEntry](items=items, next_cursor=next_cursor(rows, limit))

    return r
