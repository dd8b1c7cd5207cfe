"""The HTTP API (FastAPI): routes, admission (tier, readiness, body size), errors as JSON, metrics.

Admission runs as plain ASGI middleware before any body is parsed, so a request that would be refused
(unknown tier, service not ready or draining, body over the limit) costs no JSON parsing and is counted
in ``facecompare_requests_total`` like any other answer. Every error is
``{"error": {"code", "message", "details": [{"loc", "code", "message"}]}}`` with a 4xx for bad input,
503 (+ ``Retry-After``) for "not now", and 500 only for faults of the service itself.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, Final

from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from workloads.face_compare import logs, metrics, schemas
from workloads.face_compare.batcher import (
    DEFAULT_TIER,
    TIERS,
    ClosedError,
    InferenceError,
    OverloadedError,
    QueueFullError,
    QueueTimeoutError,
)
from workloads.face_compare.gallery import GalleryFullError
from workloads.face_compare.service import BadImagesError, FaceCompareService, NotReadyError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TIER_HEADER: Final = "x-tier"
# A client that went away before sending its whole body gets no answer; nginx's code for it.
CLIENT_CLOSED: Final = 499

_GALLERY_ITEM = r"/v1/gallery/[^/]+"
_API_ROUTES: Final = (
    ("POST", re.compile(r"/v1/embed"), metrics.ENDPOINT_EMBED),
    ("POST", re.compile(r"/v1/verify"), metrics.ENDPOINT_VERIFY),
    ("POST", re.compile(r"/v1/identify"), metrics.ENDPOINT_IDENTIFY),
    ("PUT", re.compile(_GALLERY_ITEM), metrics.ENDPOINT_GALLERY_ENROL),
    ("DELETE", re.compile(_GALLERY_ITEM), metrics.ENDPOINT_GALLERY_DELETE),
    ("GET", re.compile(r"/v1/gallery"), metrics.ENDPOINT_GALLERY_LIST),
)

SubjectId = Annotated[
    str, Path(pattern=schemas.SUBJECT_ID_PATTERN, description="1 to 128 of A-Z a-z 0-9 . _ : @ -")
]

log = logs.get("api")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[schemas.ErrorDetail] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: list[schemas.ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = schemas.ErrorResponse(error=schemas.ErrorBody(code=code, message=message, details=details or []))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _endpoint(method: str, path: str) -> str | None:
    for route_method, pattern, name in _API_ROUTES:
        if method == route_method and pattern.fullmatch(path):
            return name
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class Admission:
    """ASGI middleware for the API routes: admit or refuse, count in-flight, record the metrics."""

    def __init__(self, app: ASGIApp, service: FaceCompareService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (
            _endpoint(scope.get("method", ""), scope.get("path", "")) if scope["type"] == "http" else None
        )
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        raw_tier = _header(scope, TIER_HEADER.encode())
        tier = DEFAULT_TIER if raw_tier is None else raw_tier.strip().lower()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if tier not in TIERS:
                shown = raw_tier if raw_tier is None or len(raw_tier) <= 32 else raw_tier[:32] + "..."
                tier = metrics.TIER_INVALID
                response = error_response(
                    400,
                    "invalid_tier",
                    f"header X-Tier must be one of {', '.join(TIERS)}; got {shown!r}",
                    details=[schemas.ErrorDetail(loc="X-Tier", code="invalid_tier", message="unknown tier")],
                )
                await response(scope, receive, send_and_record)
                return
            try:
                self.service.check_accepting()
            except NotReadyError as e:
                headers = {"Retry-After": "1"}
                if self.service.state == "draining":
                    headers["Connection"] = "close"
                await error_response(503, "not_ready", str(e), headers=headers)(
                    scope, receive, send_and_record
                )
                return
            self.service.request_started()
            try:
                await self._admitted(scope, receive, send_and_record, tier)
            except _ClientGoneError:
                status = CLIENT_CLOSED
            finally:
                self.service.request_finished()
        finally:
            self.service.metrics.observe_request(
                endpoint=endpoint, tier=tier, code=status, seconds=time.perf_counter() - started
            )

    async def _admitted(self, scope: Scope, receive: Receive, send: Send, tier: str) -> None:
        limit = self.service.settings.max_body_bytes
        too_large = error_response(
            413,
            "body_too_large",
            f"request body is larger than the limit of {limit} bytes",
            headers={"Connection": "close"},
        )
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await too_large(scope, receive, send)
            return
        # Read the body here, bounded; JSON parsing needs all of it anyway.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGoneError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        scope.setdefault("state", {})["tier"] = tier
        await self.app(scope, replay, send)


class _ClientGoneError(Exception):
    pass


def _loc(loc: tuple[Any, ...]) -> str:
    parts = list(loc[1:] if loc and loc[0] in ("body", "path", "query", "header") else loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def create_app(service: FaceCompareService) -> FastAPI:
    """The ASGI app of one service; its lifespan starts the service and stops it after draining."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="face-compare",
        version="0.1.0",
        summary="Face embedding, 1:1 verification and 1:N identification on aligned face crops.",
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    _add_inference_routes(app, service)
    _add_gallery_routes(app, service)
    _add_probe_routes(app, service)
    return _wrap(app, service)


def _add_inference_routes(app: FastAPI, service: FaceCompareService) -> None:
    """Embed, verify (1:1) and identify (1:N)."""
    settings = service.settings

    def model_name() -> str:
        assert service.engine is not None
        return service.engine.info.model_path.rsplit("/", 1)[-1]

    @app.post("/v1/embed", response_model=schemas.EmbedResponse)
    async def embed(body: schemas.EmbedRequest, request: Request) -> schemas.EmbedResponse:
        """Embeddings (unit length) of 1..N aligned face crops, in request order."""
        if len(body.images) > settings.max_images_per_request:
            raise ApiError(
                422,
                "too_many_images",
                f"images has {len(body.images)} items; at most {settings.max_images_per_request} per request",
                details=[schemas.ErrorDetail(loc="images", code="too_many_images", message="too many items")],
            )
        images = [(f"images[{i}]", image) for i, image in enumerate(body.images)]
        vectors = await service.embed(images, request.state.tier)
        return schemas.EmbedResponse(embeddings=vectors.tolist(), dim=vectors.shape[1], model=model_name())

    @app.post("/v1/verify", response_model=schemas.VerifyResponse)
    async def verify(body: schemas.VerifyRequest, request: Request) -> schemas.VerifyResponse:
        """1:1: cosine similarity of two faces, and whether it reaches the match threshold."""
        a, b = await service.embed([("image_a", body.image_a), ("image_b", body.image_b)], request.state.tier)
        threshold = settings.match_threshold if body.threshold is None else body.threshold
        similarity = float(a @ b)
        return schemas.VerifyResponse(
            similarity=similarity, match=similarity >= threshold, threshold=threshold
        )

    @app.post("/v1/identify", response_model=schemas.IdentifyResponse)
    async def identify(body: schemas.IdentifyRequest, request: Request) -> schemas.IdentifyResponse:
        """1:N: the most similar enrolled subjects, most similar first."""
        if body.top_k > settings.max_top_k:
            raise ApiError(
                422,
                "invalid_request",
                f"top_k is {body.top_k}; at most {settings.max_top_k}",
                details=[schemas.ErrorDetail(loc="top_k", code="too_large", message="top_k too large")],
            )
        (vector,) = await service.embed([("image", body.image)], request.state.tier)
        threshold = settings.match_threshold if body.threshold is None else body.threshold
        found = await service.search(vector, body.top_k)
        assert service.gallery is not None
        return schemas.IdentifyResponse(
            matches=[
                schemas.Match(subject_id=s, similarity=score, match=score >= threshold) for s, score in found
            ],
            gallery_size=len(service.gallery),
            threshold=threshold,
        )


def _add_gallery_routes(app: FastAPI, service: FaceCompareService) -> None:
    """Enrol, remove and list the subjects 1:N searches."""

    @app.put("/v1/gallery/{subject_id}", response_model=schemas.EnrolResponse)
    async def enrol(
        subject_id: SubjectId, body: schemas.EnrolRequest, request: Request, response: Response
    ) -> schemas.EnrolResponse:
        """Enrol a subject (or replace its face): 201 when new, 200 when replaced."""
        (vector,) = await service.embed([("image", body.image)], request.state.tier)
        assert service.gallery is not None
        created = await asyncio.to_thread(service.gallery.enrol, subject_id, vector)
        response.status_code = 201 if created else 200
        return schemas.EnrolResponse(
            subject_id=subject_id, created=created, gallery_size=len(service.gallery)
        )

    @app.delete("/v1/gallery/{subject_id}", status_code=204)
    async def delete(subject_id: SubjectId) -> Response:
        """Remove a subject from the gallery."""
        assert service.gallery is not None
        if not await asyncio.to_thread(service.gallery.delete, subject_id):
            raise ApiError(404, "subject_not_found", f"subject {subject_id!r} is not enrolled")
        return Response(status_code=204)

    @app.get("/v1/gallery", response_model=schemas.GalleryResponse)
    async def gallery(limit: int = Query(100, ge=0, le=10_000)) -> schemas.GalleryResponse:
        """The gallery's size and its first ``limit`` subject ids (sorted)."""
        assert service.gallery is not None
        return schemas.GalleryResponse(
            size=len(service.gallery), subject_ids=service.gallery.subject_ids(limit)
        )


def _add_probe_routes(app: FastAPI, service: FaceCompareService) -> None:
    """Liveness, readiness and the metrics."""

    @app.get("/healthz", response_model=schemas.Health)
    async def healthz() -> JSONResponse:
        """Liveness: 200 while the process can make progress (also while starting and draining)."""
        ok = service.healthy()
        body = schemas.Health(status="ok" if ok else "unhealthy", state=service.state)
        if service.failure:
            body.detail["failure"] = service.failure
        return JSONResponse(body.model_dump(), status_code=200 if ok else 500)

    @app.get("/readyz", response_model=schemas.Health)
    async def readyz() -> JSONResponse:
        """Readiness: 200 only once warmed up and accepting; 503 while starting, draining or failed."""
        ready = service.state == "ready"
        body = schemas.Health(status="ready" if ready else "not_ready", state=service.state)
        if service.engine is not None:
            info = service.engine.info
            body.detail.update(
                provider=info.provider,
                device=info.device,
                model=info.model_path,
                embedding_dim=info.embedding_dim,
            )
        if service.batcher is not None:
            body.detail["queue_depth"] = service.batcher.depth
        body.detail["inflight"] = service.inflight
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """The workload metric contract (docs/architecture.md, contracts), Prometheus text format."""
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _wrap(app: FastAPI, service: FaceCompareService) -> FastAPI:
    # Before routing and body parsing, so that refused requests never cost a JSON parse.
    app.add_middleware(Admission, service=service)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.code, e.message, details=e.details, headers=e.headers)

    @app.exception_handler(BadImagesError)
    async def bad_images(_: Request, e: BadImagesError) -> JSONResponse:
        details = [schemas.ErrorDetail(loc=p.loc, code=p.code, message=p.message) for p in e.problems]
        return error_response(422, "invalid_image", str(e), details=details)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, e: RequestValidationError) -> JSONResponse:
        details = [
            schemas.ErrorDetail(
                loc=_loc(tuple(err.get("loc", ()))), code=err.get("type", "invalid"), message=err["msg"]
            )
            for err in e.errors()
        ]
        message = "; ".join(f"{d.loc}: {d.message}" for d in details)
        return error_response(422, "invalid_request", message, details=details)

    @app.exception_handler(QueueFullError)
    async def queue_full(_: Request, e: QueueFullError) -> JSONResponse:
        return error_response(
            503,
            "queue_full",
            "the request queue is full; retry later",
            headers={"Retry-After": str(e.retry_after_s)},
        )

    @app.exception_handler(OverloadedError)
    async def overloaded(_: Request, e: OverloadedError) -> JSONResponse:
        return error_response(503, "overloaded", str(e), headers={"Retry-After": str(e.retry_after_s)})

    @app.exception_handler(QueueTimeoutError)
    async def queue_timeout(_: Request, e: QueueTimeoutError) -> JSONResponse:
        return error_response(
            503, "queue_timeout", f"the request was {e}; retry later", headers={"Retry-After": "1"}
        )

    @app.exception_handler(ClosedError)
    @app.exception_handler(NotReadyError)
    async def not_ready(_: Request, e: Exception) -> JSONResponse:
        return error_response(503, "not_ready", str(e), headers={"Retry-After": "1"})

    @app.exception_handler(GalleryFullError)
    async def gallery_full(_: Request, e: GalleryFullError) -> JSONResponse:
        return error_response(507, "gallery_full", str(e))

    @app.exception_handler(InferenceError)
    async def inference_failed(_: Request, e: InferenceError) -> JSONResponse:
        return error_response(500, "inference_failed", f"the model run failed: {e}")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, e: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=e)
        return error_response(500, "internal_error", f"internal error ({type(e).__name__})")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, code, str(e.detail), headers=getattr(e, "headers", None))
