"""JSON-line logging for the service and for uvicorn, so log shippers parse every line the same way."""

from __future__ import annotations

import logging
import sys
from typing import Final

from contract.logs import JsonFormatter

LOGGER_NAME: Final = "face_compare"


def configure(level: str = "info", *, static: dict[str, str] | None = None) -> None:
    """Route the service's and uvicorn's loggers to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(static))
    for name in (LOGGER_NAME, "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(level.upper())


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}")
