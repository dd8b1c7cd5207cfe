"""The operator's side: overrides, reconcile-now and the burst policy (get, validate, hot reload)."""

from __future__ import annotations

from typing import Any

import fastapi

from controller import ports
from controller.core import policy
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
        ov = ports.Overrides(
            hold=body.hold, budget_usd_per_hour=body.budget_usd_per_hour, max_nodes=caps, reason=body.reason
        )
        return _set_overrides(ctx, request, ov)

    # The body's schema names this controller's pools (resolved here: the annotations are strings).
    put_overrides.__annotations__.update(
        {"body": overrides_model(ctx.pools), "request": fastapi.Request, "return": OverridesOut}
    )
    r.put("/overrides")(put_overrides)

    @r.delete("/overrides")
    def clear_overrides(request: fastapi.Request) -> OverridesOut:
        return _set_overrides(ctx, request, ports.Overrides())

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
