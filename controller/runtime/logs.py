"""The controller's JSON-line logs: one object per line on stderr, `extra=` fields included.

Every controller module logs under `gpuburst.*` (`logging.getLogger("gpuburst.<part>")`); `configure`
routes that tree, APScheduler's and uvicorn's loggers to one handler so a log shipper parses every line
the same way.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Final

from contract.logs import JsonFormatter

ROOT: Final = "gpuburst"
_THIRD_PARTY: Final = ("apscheduler", "uvicorn", "uvicorn.error", "uvicorn.access")


def configure(level: str = "info", *, stream: IO[str] | None = None) -> logging.Handler:
    """Send the controller's, APScheduler's and uvicorn's logs to `stream` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in (ROOT, *_THIRD_PARTY):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        # Third-party chatter stays at warning unless the operator asked for debug.
        third_party = name != ROOT and level.lower() != "debug"
        logger.setLevel("WARNING" if third_party else level.upper())
    return handler


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"{ROOT}.{name}")
