"""An informer-style cache: one resource listed once, then watched from the list's resourceVersion.

A tick reads the cache, so the API server sees one long watch per resource instead of a list per tick.
When the watch expires (410 Gone, the server's history compacted) or breaks, the reflector lists again
and resumes. A cache that cannot vouch for itself (never listed, or failing for longer than
`stale_after_s`) raises `KubeError` on read: the reconciler then sees a failed read, never an empty
cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import kubernetes.watch
from kubernetes.client import exceptions as k8s_errors

from controller.adapters.kube.api import Api, KubeError
from controller.runtime import logs

log = logs.get("kube")

WATCH_TIMEOUT_S = 300
"""Server-side end of one watch request; the reflector then resumes from the last resourceVersion."""


def _version(value: object) -> int:
    """resourceVersions compared as integers, as etcd's are (an opaque one reads as 0)."""
    try:
        return int(str(value))
    except ValueError:
        return 0


class Reflector:
    """The objects of one list call (`list_fn(*args, **selectors)`), kept current by a background watch."""

    def __init__(
        self,
        what: str,
        list_fn: Callable[..., Any],
        *args: str,
        api: Api,
        stale_after_s: float = 60.0,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        **selectors: str,
    ) -> None:
        self.what = what
        self._list_fn, self._args, self._selectors = list_fn, args, selectors
        self._api = api
        self.stale_after_s = stale_after_s
        self._retry_s = retry_s
        self._clock = clock
        self._cond = threading.Condition()
        self._objects: dict[str, Any] = {}
        self._version = ""
        self._synced = False
        self._attempted = False
        self._error: str | None = None
        self._failing_since: float | None = None
        self._stop = threading.Event()
        self._watch: kubernetes.watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self.lists = 0
        """List calls made: the first, and one after each expiry or failure."""

    # -- reads ----------------------------------------------------------------------------------------
    def items(self) -> Sequence[Any]:
        """The cached objects. Starts the reflector on first use and waits (up to the API timeout) for its
        first list; raises KubeError while the cache is not synced."""
        self.start()
        with self._cond:
            self._cond.wait_for(lambda: self._attempted, timeout=self._api.timeout_s)
            if not self._synced:
                raise KubeError(self._error or f"list {self.what}: no answer in {self._api.timeout_s:g}s")
            if self._failing_since is not None:
                down = self._clock() - self._failing_since
                if down > self.stale_after_s:
                    raise KubeError(f"watch {self.what} down for {down:.0f}s: {self._error}")
            return list(self._objects.values())

    def wait_for(self, version: str, timeout_s: float) -> bool:
        """Block until the cache has seen `version` (from a write or the server); False on timeout."""
        self.start()
        want = _version(version)
        with self._cond:
            return self._cond.wait_for(lambda: _version(self._version) >= want, timeout=timeout_s)

    # -- the background loop --------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name=f"watch {self.what}", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.stop()  # type: ignore[no-untyped-call]  # shuts the socket: the blocked read returns
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch_from(version)
            except k8s_errors.ApiException as exc:
                if self._stop.is_set():
                    return
                if exc.status == 410:  # the server no longer has our version: start over
                    log.info("watch expired, listing again", extra={"watch": self.what})
                else:
                    self._failed(f"watch {self.what}: HTTP {exc.status} {exc.reason or ''}".rstrip())
                    self._stop.wait(self._retry_s)
                version = None
            except KubeError as exc:
                self._failed(str(exc))
                version = None
                self._stop.wait(self._retry_s)
            except Exception as exc:  # a broken stream: the loop must outlive it
                if self._stop.is_set():
                    return
                self._failed(f"watch {self.what}: {type(exc).__name__}: {exc}")
                version = None
                self._stop.wait(self._retry_s)

    def _list(self) -> str:
        self.lists += 1
        with self._api.call(f"list {self.what}"):
            result = self._list_fn(*self._args, _request_timeout=self._api.timeout_s, **self._selectors)
        version = str(result.metadata.resource_version or "")
        with self._cond:
            self._objects = {_key(o): o for o in result.items}
            self._version, self._synced, self._attempted = version, True, True
            self._failing_since, self._error = None, None
            self._cond.notify_all()
        return version

    def _watch_from(self, version: str) -> str:
        watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        self._watch = watch
        if self._stop.is_set():
            return version
        stream = watch.stream(  # type: ignore[no-untyped-call]
            self._list_fn,
            *self._args,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_TIMEOUT_S,
            _request_timeout=WATCH_TIMEOUT_S + self._api.timeout_s,
            **self._selectors,
        )
        for event in stream:
            kind, obj = event["type"], event["object"]
            with self._cond:
                if kind == "DELETED":
                    self._objects.pop(_key(obj), None)
                elif kind != "BOOKMARK":
                    self._objects[_key(obj)] = obj
                version = str(watch.resource_version or version)
                self._version, self._failing_since = version, None
                self._cond.notify_all()
        return version

    def _failed(self, error: str) -> None:
        log.warning("watch failed", extra={"watch": self.what, "error": error})
        with self._cond:
            self._error, self._attempted = error, True
            if self._failing_since is None:
                self._failing_since = self._clock()
            self._cond.notify_all()


def _key(obj: Any) -> str:
    meta = obj.metadata
    return f"{meta.namespace or ''}/{meta.name}"
