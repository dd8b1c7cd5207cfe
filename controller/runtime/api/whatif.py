"""What-if jobs: POST a trace (CSV) and a shipped scenario, poll the job, fetch the result table and the
plot. The replay itself is `Context.whatif` (the simulator, wired in by the app); it runs in the
background, a few at once (`tasks.Runner`)."""

from __future__ import annotations

from typing import Annotated, Literal

import fastapi
from fastapi import responses
from starlette import concurrency

from controller.runtime import auth, logs, tasks
from controller.runtime.api.common import caller, request_id
from controller.runtime.api.context import Context
from controller.runtime.api.models import WhatIfJob, WhatIfReport, opt_utc, problems, utc

log = logs.get("api")

MAX_BODY_BYTES = 32 << 20
"""This route's body limit: the longest shipped trace (worldcup98) is 1.6 MB, over the 1 MiB default."""

PATH = "/v1/whatif"
TaskId = Annotated[str, fastapi.Path(pattern=r"^[0-9a-f]{32}$", description="the id POST returned")]
_CSV = {"text/csv": {"schema": {"type": "string", "description": "`t_seconds,requests` rows"}}}


def whatif_router(ctx: Context) -> fastapi.APIRouter:
    r = fastapi.APIRouter(prefix=PATH, tags=["what-if"])
    viewer = [fastapi.Depends(caller(ctx, auth.Role.VIEWER))]
    operator = [fastapi.Depends(caller(ctx, auth.Role.OPERATOR))]
    names = tuple(sorted(ctx.whatif_scenarios)) or ("none",)
    scenario_param = Annotated[
        Literal[names],  # type: ignore[valid-type]
        fastapi.Query(description="the shipped scenario whose service, pools and billing replay the trace"),
    ]

    async def submit(scenario: str, request: fastapi.Request) -> responses.JSONResponse:
        """Replay the body (a trace, `text/csv`, as `gpuburst simulate` reads it) through gpuburst, the
        baselines and the oracle; 202 with the job to poll. At most a few run at once (else 429)."""
        if ctx.whatif is None:
            raise fastapi.HTTPException(501, "this controller runs no what-if (no simulator wired in)")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "text/csv":
            raise fastapi.HTTPException(415, f"send the trace as text/csv, not {kind or 'no content type'}")
        body = await request.body()  # after the token check: the caller is an operator
        try:
            work = await concurrency.run_in_threadpool(ctx.whatif, body, scenario)
        except tasks.UnavailableError as exc:
            raise fastapi.HTTPException(501, str(exc)) from None
        try:
            task = ctx.runner.submit(work, kind="whatif", actor=request.state.actor, target=scenario)
        except tasks.BusyError as exc:
            retry = auth.retry_after(exc.retry_after_s)
            raise fastapi.HTTPException(429, str(exc), {"Retry-After": retry}) from None
        ctx.store.audit_change(
            ctx.clock.now(), "whatif", actor=request.state.actor, target=scenario, before=None,
            after=task.id, detail=f"{len(body)} bytes of trace", request_id=request_id(request),
        )  # fmt: skip
        log.info("whatif started", extra={"task": task.id, "scenario": scenario, "by": request.state.actor})
        out = _job(task).model_dump(mode="json")
        return responses.JSONResponse(out, status_code=202, headers={"Location": f"{PATH}/{task.id}"})

    submit.__annotations__.update(
        {"scenario": scenario_param, "request": fastapi.Request, "return": responses.JSONResponse}
    )
    r.post(
        "",
        dependencies=operator,
        status_code=202,
        responses={202: {"model": WhatIfJob}, **problems(415, 501)},
        openapi_extra={"requestBody": {"required": True, "content": _CSV}},
        operation_id="start_whatif",
    )(submit)

    def find(task_id: str) -> tasks.Task:
        task = ctx.runner.get(task_id)
        if task is None or task.kind != "whatif":
            raise fastapi.HTTPException(404, f"no what-if job {task_id!r}")
        return task

    @r.get("/{task_id}", dependencies=viewer, responses=problems(404))
    def job(task_id: TaskId) -> WhatIfJob:
        return _job(find(task_id))

    @r.get(
        "/{task_id}/plot.png",
        dependencies=viewer,
        response_class=fastapi.Response,
        responses={200: {"content": {"image/png": {}}, "description": "the plot"}, **problems(404)},
    )
    def plot(task_id: TaskId) -> fastapi.Response:
        task = find(task_id)
        png = task.result.get("plot") if task.state == "done" else None
        if png is None:
            raise fastapi.HTTPException(404, f"what-if job {task_id!r} has no plot ({task.state})")
        return fastapi.Response(png, media_type="image/png")

    return r


def _job(task: tasks.Task) -> WhatIfJob:
    done = task.state == "done"
    return WhatIfJob(
        id=task.id,
        scenario=task.target,
        state=task.state,
        progress=task.progress,
        created_at=utc(task.created_at),
        finished_at=opt_utc(task.finished_at),
        error=task.error,
        result=WhatIfReport.model_validate(task.result["report"]) if done else None,
        plot=f"{PATH}/{task.id}/plot.png" if done and task.result.get("plot") else None,
    )
