"""The operator's side: overrides, draining a node, pausing a pool, reconcile-now and the burst policy
(get, validate, hot reload)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import fastapi

from controller import ports
from controller.core import model, policy
from controller.runtime import auth, codec, logs, policy_file
from controller.runtime.api.common import caller, request_id
from controller.runtime.api.context import Context
from controller.runtime.api.models import (
    OverridesIn,
    OverridesOut,
    PolicyIn,
    PolicyOut,
    Reconciled,
    overrides_model,
    overrides_out,
    problems,
)

log = logs.get("api")


def overrides_router(ctx: Context) -> fastapi.APIRouter:
    operator = fastapi.Depends(caller(ctx, auth.Role.OPERATOR))
    r = fastapi.APIRouter(prefix="/v1", tags=["operations"], dependencies=[operator])

    def put_overrides(body: OverridesIn, request: fastapi.Request) -> OverridesOut:
        caps = body.max_nodes.model_dump(by_alias=True, exclude_none=True)
        # Drains and pauses have their own calls; replacing the rest keeps them.
        ov = dataclasses.replace(
            ctx.store.overrides(), hold=body.hold, budget_usd_per_hour=body.budget_usd_per_hour,
            max_nodes=caps, reason=body.reason,
        )  # fmt: skip
        return _set_overrides(ctx, request, ov)

    # The body's schema names this controller's pools (resolved here: the annotations are strings).
    put_overrides.__annotations__.update(
        {"body": overrides_model(ctx.pools), "request": fastapi.Request, "return": OverridesOut}
    )
    r.put("/overrides")(put_overrides)

    @r.delete("/overrides")
    def clear_overrides(request: fastapi.Request) -> OverridesOut:
        return _set_overrides(ctx, request, ports.Overrides())

    @r.post("/nodes/{name}/drain", responses=problems(404, 409), operation_id="drain_node")
    def drain(name: NodeName, request: fastapi.Request) -> OverridesOut:
        """Drain one node and release it. The pool's max_nodes override drops to its other active nodes,
        so demand does not relaunch it; `DELETE /v1/overrides` (or a PUT) lifts that cap."""
        nodes = {n.name: n for n in ctx.store.nodes()}
        rec = nodes.get(name)
        if rec is None:
            raise fastapi.HTTPException(404, f"no node {name!r} (GET /v1/nodes lists them)")
        if rec.status not in model.ACTIVE:
            raise fastapi.HTTPException(409, f"node {name!r} is {rec.status.value}: already leaving")
        ov = ctx.store.overrides()
        # Names already honoured (leaving or gone) drop out as new ones come in.
        pending = tuple(n for n in ov.drain if n != name and n in nodes and nodes[n].status in model.ACTIVE)
        others = sum(1 for n in nodes.values() if n.pool == rec.pool and n.status in model.ACTIVE) - 1
        cap = min(ov.max_nodes.get(rec.pool, others), others)
        new = dataclasses.replace(ov, drain=(*pending, name), max_nodes={**ov.max_nodes, rec.pool: cap})
        out = _set_overrides(ctx, request, new)
        _audit(ctx, request, "drain", target=name, before=rec.status.value, after="drain requested")
        return out

    # The path's schema lists this controller's pools.
    pool_name = Annotated[Literal[tuple(sorted(ctx.pools))], fastapi.Path()]  # type: ignore[valid-type]

    def pause(pool: str, request: fastapi.Request) -> OverridesOut:
        """No launch and no release in the pool until resumed (the next tick reads it)."""
        return _pause(ctx, request, pool, paused=True)

    def resume(pool: str, request: fastapi.Request) -> OverridesOut:
        return _pause(ctx, request, pool, paused=False)

    for verb, fn in (("pause", pause), ("resume", resume)):
        fn.__annotations__.update({"pool": pool_name, "request": fastapi.Request, "return": OverridesOut})
        r.post(f"/pools/{{pool}}/{verb}")(fn)

    @r.post("/reconcile", responses=problems(503))
    def reconcile(request: fastapi.Request) -> Reconciled:
        if ctx.reconcile_now is None:
            raise fastapi.HTTPException(503, "this controller cannot tick on request")
        report = ctx.reconcile_now()
        ctx.store.audit_change(
            ctx.clock.now(), "reconcile", actor=request.state.actor, target="controller", before=None,
            after=None if report is None else report.decision.action.value, request_id=request_id(request),
        )  # fmt: skip
        return Reconciled(ticked=report is not None, report=None if report is None else codec.encode(report))

    return r


NodeName = Annotated[str, fastapi.Path(max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


def _pause(ctx: Context, request: fastapi.Request, pool: str, *, paused: bool) -> OverridesOut:
    ov = ctx.store.overrides()
    was = pool in ov.paused
    names = sorted({*ov.paused, pool} if paused else set(ov.paused) - {pool})
    out = _set_overrides(ctx, request, dataclasses.replace(ov, paused=tuple(names)))
    state = {True: "paused", False: "running"}
    _audit(ctx, request, "pause" if paused else "resume", target=pool, before=state[was], after=state[paused])
    return out


def _audit(
    ctx: Context, request: fastapi.Request, action: str, *, target: str, before: str, after: str
) -> None:
    ctx.store.audit_change(
        ctx.clock.now(), action, actor=request.state.actor, target=target, before=before, after=after,
        request_id=request_id(request),
    )  # fmt: skip
    log.info(action, extra={"target": target, "by": request.state.actor, "request_id": request_id(request)})


def _set_overrides(ctx: Context, request: fastapi.Request, ov: ports.Overrides) -> OverridesOut:
    actor = request.state.actor
    before = ctx.store.set_overrides(ov, at=ctx.clock.now(), by=actor, request_id=request_id(request))
    log.info(
        "overrides set",
        extra={"before": codec.encode(before), "after": codec.encode(ov), "by": actor,
               "request_id": request_id(request)},
    )  # fmt: skip
    return overrides_out(ov)


def policy_router(ctx: Context) -> fastapi.APIRouter:
    r = fastapi.APIRouter(prefix="/v1/policy", tags=["policy"])
    viewer = [fastapi.Depends(caller(ctx, auth.Role.VIEWER))]
    admin = [fastapi.Depends(caller(ctx, auth.Role.ADMIN))]

    def running() -> policy.BurstPolicy:
        if ctx.get_policy is None:
            raise fastapi.HTTPException(503, "this controller serves no policy")
        return ctx.get_policy()

    @r.get("", dependencies=viewer, responses=problems(503))
    def get_policy() -> PolicyOut:
        return PolicyOut(policy=_policy_dict(running()), changed={}, applied=False)

    @r.post("/validate", dependencies=viewer, responses=problems(503))
    def validate(body: PolicyIn) -> PolicyOut:
        """Check a policy (the YAML file's fields, as JSON) and show what it would change."""
        new = policy_file.parse(body.model_dump(exclude_unset=True), where="request body")
        return PolicyOut(policy=_policy_dict(new), changed=_diff(running(), new), applied=False)

    @r.post("/reload", dependencies=admin, responses=problems(503))
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
            detail=", ".join(sorted(changed)), request_id=request_id(request),
        )  # fmt: skip
        log.info("policy reloaded", extra={"changed": sorted(changed), "by": request.state.actor})
        return PolicyOut(policy=_policy_dict(new), changed=changed, applied=bool(changed))

    return r


def _policy_dict(p: policy.BurstPolicy) -> dict[str, Any]:
    return dict(codec.encode(p))


def _diff(old: policy.BurstPolicy, new: policy.BurstPolicy) -> dict[str, list[Any]]:
    a, b = _policy_dict(old), _policy_dict(new)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
