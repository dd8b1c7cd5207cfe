"""Who may call the admin API: named bearer tokens stored hashed, three roles, a per-token rate limit,
and the request body limit.

No request to `/v1/*` is anonymous. When no token file is configured, the first start creates one in
the state directory with a single admin token, the way Jupyter does: the file keeps only its SHA-256,
and the token itself is written once to a 0600 file whose path is logged. Tokens are 32 random bytes,
so a plain SHA-256 is as hard to reverse as the token is to guess; no slow hash is needed.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from controller.runtime import errors, logs

log = logs.get("api")

TOKEN_PREFIX = "gb_"
ADMIN_TOKEN_FILE = "admin-token"
TOKENS_FILE = "api-tokens.json"


class Role(enum.IntEnum):
    """Each role can do what the ones below it can."""

    VIEWER = 1
    """reads"""
    OPERATOR = 2
    """overrides, reconcile now"""
    ADMIN = 3
    """policy reload, everything"""


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role


class _TokenEntry(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    name: str = pydantic.Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@:-]+$")
    role: str = pydantic.Field(pattern="^(viewer|operator|admin)$")
    sha256: str = pydantic.Field(pattern="^[0-9a-f]{64}$")


class _TokenFile(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    tokens: list[_TokenEntry] = pydantic.Field(min_length=1)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class Tokens:
    """Token hashes by digest, from a JSON file: {"tokens": [{"name", "role", "sha256"}]}.

    A Kubernetes Secret mounted as a file works as it is.
    """

    def __init__(self, by_digest: Mapping[str, Principal]) -> None:
        self._by_digest = dict(by_digest)

    @classmethod
    def load(cls, path: Path) -> Tokens:
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise errors.UserError(f"{path}: cannot read the API token file: {exc.strerror}") from None
        except ValueError as exc:
            raise errors.UserError(f"{path}: not JSON: {exc}") from None
        parsed = errors.validated(_TokenFile, data, where=path, what="an API token file")
        names = [t.name for t in parsed.tokens]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise errors.UserError(f"{path}: tokens: duplicate name(s) {dupes}")
        return cls({t.sha256: Principal(t.name, Role[t.role.upper()]) for t in parsed.tokens})

    def check(self, token: str) -> Principal | None:
        # A dict lookup on the digest: timing reveals nothing about the token itself.
        return self._by_digest.get(digest(token))

    def __len__(self) -> int:
        return len(self._by_digest)


def add_token(path: Path, name: str, role: Role) -> str:
    """Append a named token to the file (created 0600 if missing); returns the token, shown once."""
    entries: list[dict[str, Any]] = []
    if path.exists():
        Tokens.load(path)  # refuse to extend a broken file
        entries = json.loads(path.read_text())["tokens"]
        if any(e["name"] == name for e in entries):
            raise errors.UserError(f"{path}: a token named {name!r} exists already")
    token = new_token()
    entries.append({"name": name, "role": role.name.lower(), "sha256": digest(token)})
    _write_private(path, json.dumps({"tokens": entries}, indent=2) + "\n", replace=True)
    return token


def first_start(state_dir: Path) -> Path:
    """The token file in `state_dir`, created with one admin token when missing.

    The admin token is written once to `state_dir/admin-token` (0600); its path is logged. Delete that
    file once the token is kept somewhere safer; the controller never writes it again.
    """
    tokens = state_dir / TOKENS_FILE
    if tokens.exists():
        return tokens
    state_dir.mkdir(parents=True, exist_ok=True)
    token = add_token(tokens, "admin", Role.ADMIN)
    secret = state_dir / ADMIN_TOKEN_FILE
    _write_private(secret, token + "\n", replace=False)
    log.warning(
        "no API token configured: created an admin token",
        extra={"token_file": str(secret), "hashes": str(tokens)},
    )
    return tokens


def _write_private(path: Path, text: str, *, replace: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp") if replace else path
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:
        raise errors.UserError(f"{path}: exists already; refusing to overwrite a token") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if replace:
        os.replace(tmp, path)


class RateLimiter:
    """A token bucket per caller: `rate_per_s` sustained, `burst` at once."""

    def __init__(self, *, rate_per_s: float, burst: int, now: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._now = now
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when allowed; otherwise the seconds until the next request would be."""
        now = self._now()
        with self._lock:
            level, at = self._buckets.get(key, (float(self.burst), now))
            level = min(float(self.burst), level + (now - at) * self.rate_per_s)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                return 0.0
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate_per_s


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, before the body is read.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    streams and cut off the moment it passes the limit, so no request can make the process buffer more.
    """

    def __init__(self, app: Any, *, max_bytes: int, larger: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.larger = dict(larger or {})
        """Paths allowed more (an uploaded trace), by exact path."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.larger.get(scope.get("path", ""), self.default_max_bytes)
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > max_bytes:
                    await _too_large(send, max_bytes)
                    return
        seen = 0
        started = refused = False

        async def counted() -> Any:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes and not started:
                    # Answer now; the app sees the client gone and its own reply is dropped.
                    refused = True
                    await _too_large(send, max_bytes)
                    return {"type": "http.disconnect"}
            return message

        async def tracked(message: Any) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except Exception:
            if not refused:
                raise


async def _too_large(send: Any, max_bytes: int) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Content Too Large",
            "status": 413,
            "detail": f"request body over {max_bytes} bytes",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
