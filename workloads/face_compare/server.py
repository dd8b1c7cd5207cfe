"""Running the service under uvicorn with a graceful drain on SIGTERM, exiting 0 when drained.

uvicorn's own SIGTERM handling closes the listening socket at once (so /readyz could not answer 503)
and re-raises the signal after shutdown (so the exit status is 143, not 0). Here the first SIGTERM or
SIGINT only starts the drain: readiness goes false, new API requests get 503, and the server keeps
answering until every accepted request is done or ``drain_timeout_s`` has passed; then uvicorn shuts
down normally. A second SIGINT exits at once; a repeated SIGTERM changes nothing.
"""

from __future__ import annotations

import signal
import time
from types import FrameType

import uvicorn

from workloads.face_compare import api, logs
from workloads.face_compare.service import FaceCompareService
from workloads.face_compare.settings import Settings

log = logs.get("server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: FaceCompareService) -> None:
        super().__init__(config)
        self.service = service
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: flip flags only; on_tick does the rest.
        name = signal.Signals(sig).name
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.service.settings.drain_timeout_s
            log.info("signal received: draining", extra={"signal": name})
            self.service.begin_drain()
        elif sig == signal.SIGINT:
            # A second Ctrl-C means "now"; a repeated SIGTERM (some supervisors resend) does not.
            log.warning("second SIGINT: exiting without waiting for the drain", extra={"signal": name})
            self.should_exit = True
            self.force_exit = True
        else:
            log.info("already draining", extra={"signal": name})

    async def on_tick(self, counter: int) -> bool:
        if self.service.state == "failed" and not self.should_exit:
            log.error("exiting: the model failed to load", extra={"failure": self.service.failure})
            self.should_exit = True
        if self.drain_deadline is not None and not self.should_exit:
            if self.service.idle:
                log.info("drained: every accepted request was answered")
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                inflight = self.service.inflight
                log.warning("drain timeout: exiting with requests in flight", extra={"inflight": inflight})
                self.should_exit = True
        return await super().on_tick(counter)


def serve(settings: Settings, *, host: str, port: int) -> int:
    """Serve until drained; 0 after a clean drain, 1 when the model could not be loaded."""
    logs.configure(settings.log_level, static={"placement": settings.placement, "pool": settings.pool})
    service = FaceCompareService(settings)
    config = uvicorn.Config(
        api.create_app(service),
        host=host,
        port=port,
        log_config=None,
        access_log=settings.access_log,
        lifespan="on",
        # After the drain only idle keep-alive connections remain; close them promptly.
        timeout_graceful_shutdown=5,
        timeout_keep_alive=5,
        backlog=2048,
    )
    server = DrainingServer(config, service)
    log.info("starting", extra={"host": host, "port": port, "settings": settings.model_dump(mode="json")})
    server.run()
    return 1 if service.state == "failed" else 0
