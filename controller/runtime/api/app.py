"""The app factory and the uvicorn server that runs it beside the scheduler."""

from __future__ import annotations

import re
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import fastapi
import uvicorn

from controller.runtime import auth, errors, logs
from controller.runtime.api import operations, reads, whatif
from controller.runtime.api.common import install_errors
from controller.runtime.api.context import Context
from controller.runtime.api.models import V1_ERRORS

log = logs.get("api")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
ROUTERS = (
    reads.health_router,
    reads.reads_router,
    reads.audit_router,
    operations.overrides_router,
    operations.policy_router,
    whatif.whatif_router,
)


def create_app(ctx: Context, *, max_body_bytes: int = 1 << 20) -> fastapi.FastAPI:
    app = fastapi.FastAPI(title="gpuburst admin API", version="2")
    install_errors(app)

    @app.middleware("http")
    async def request_id(request: fastapi.Request, call_next: Any) -> Any:
        given = request.headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        request.state.request_id = rid
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        return response

    for router in ROUTERS:
        app.include_router(router(ctx), responses=None if router is reads.health_router else V1_ERRORS)
    # Outermost: refuses an oversized body before any other layer reads it.
    larger = {whatif.PATH: max(max_body_bytes, whatif.MAX_BODY_BYTES)}
    app.add_middleware(auth.BodyLimit, max_bytes=max_body_bytes, larger=larger)
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


def check_listen(host: str, port: int, *, where: str) -> None:
    """A UserError now, rather than uvicorn's failure in its thread, when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(infos[0][4])
    except OSError as exc:
        raise errors.UserError(
            f"{where}: cannot listen on {host}:{port}: {exc.strerror or exc} (another process has it?)"
        ) from None
