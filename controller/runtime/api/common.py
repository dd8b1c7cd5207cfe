"""What every route shares: problem+json errors, the bearer-token dependency with its role, the request
id, and the query parameters of paged reads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any

import fastapi
from fastapi import exceptions as fastapi_exceptions
from fastapi import responses, security
from starlette import exceptions as starlette_exceptions
from starlette import routing

from controller.runtime import auth, errors
from controller.runtime.api.context import Context
from controller.runtime.api.models import PROBLEM


def problem(status: int, detail: str, **extra: Any) -> responses.JSONResponse:
    title = _TITLES.get(status, "Error")
    headers = extra.pop("headers", None)
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return responses.JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
}  # fmt: skip


def _describe(errs: Any) -> str:
    parts = []
    for err in errs:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def install_errors(app: fastapi.FastAPI) -> None:
    @app.exception_handler(fastapi_exceptions.RequestValidationError)
    async def _invalid(request: fastapi.Request, exc: fastapi_exceptions.RequestValidationError) -> Any:
        # One readable line first; the structured errors follow for tools.
        errs = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return problem(422, _describe(exc.errors()), errors=errs)

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
        return problem(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(errors.UserError)
    async def _user(request: fastapi.Request, exc: errors.UserError) -> Any:
        return problem(422, str(exc))


_bearer = security.HTTPBearer(auto_error=False, description="a named token: `gpuburst token add`")


def caller(ctx: Context, role: auth.Role) -> Callable[..., auth.Principal]:
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


def request_id(request: fastapi.Request) -> str:
    return str(getattr(request.state, "request_id", ""))


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


def next_cursor(rows: list[Any], limit: int) -> str | None:
    return str(rows[-1].id) if len(rows) == limit else None


def epoch(at: str) -> float:
    try:
        return dt.datetime.fromisoformat(at).timestamp()
    except ValueError as exc:
        raise fastapi.HTTPException(422, f"query.since: {exc}") from None
