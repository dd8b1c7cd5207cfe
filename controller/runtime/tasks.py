"""Background tasks the admin API starts and then reports on (what-if replays): a thread each, a few at
once, progress from 0 to 1, the result or a one-line error, kept in memory until the process exits.

Nothing here knows what a task computes: the API is handed a callable that takes a progress callback.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from controller import ports
from controller.runtime import errors, logs

log = logs.get("tasks")

Progress = Callable[[float], None]
Work = Callable[[Progress], Any]
"""A task's body: reports its progress (0..1) and returns its result."""

State = Literal["running", "done", "failed"]


class BusyError(Exception):
    """As many tasks run as allowed; `retry_after_s` estimates when one finishes."""

    def __init__(self, running: int, retry_after_s: float) -> None:
        super().__init__(f"{running} tasks are running; try again later")
        self.retry_after_s = retry_after_s


class UnavailableError(Exception):
    """This installation cannot run the task (e.g. the simulator's extras are not installed)."""


@dataclass
class Task:
    id: str
    kind: str
    actor: str
    target: str
    created_at: float
    state: State = "running"
    progress: float = 0.0
    result: Any = None
    error: str | None = None
    finished_at: float | None = None


class Runner:
    """At most `max_running` tasks at once; the latest `keep` finished ones stay readable."""

    def __init__(self, *, clock: ports.Clock, max_running: int = 2, keep: int = 50) -> None:
        self.clock = clock
        self.max_running = max_running
        self.keep = keep
        self._tasks: dict[str, Task] = {}
        self._lock = threading.Lock()

    def submit(self, work: Work, *, kind: str, actor: str, target: str) -> Task:
        with self._lock:
            running = [t for t in self._tasks.values() if t.state == "running"]
            if len(running) >= self.max_running:
                raise BusyError(len(running), min(self._remaining_s(t) for t in running))
            task = Task(uuid.uuid4().hex, kind, actor, target, created_at=self.clock.now())
            self._tasks[task.id] = task
            self._evict()
        threading.Thread(target=self._run, args=(task, work), name=f"task-{task.id[:8]}", daemon=True).start()
        return task

    def get(self, task_id: str) -> Task | None:
        with self._lock:
            return self._tasks.get(task_id)

    def _run(self, task: Task, work: Work) -> None:
        def progress(fraction: float) -> None:
            task.progress = min(1.0, max(task.progress, fraction))

        try:
            result = work(progress)
        except errors.UserError as exc:
            task.error, task.state = str(exc), "failed"
        except Exception as exc:
            log.exception("task failed", extra={"task": task.id, "kind": task.kind})
            task.error, task.state = f"internal error: {type(exc).__name__}: {exc}", "failed"
        else:
            task.result, task.progress, task.state = result, 1.0, "done"
        task.finished_at = self.clock.now()
        log.info("task finished", extra={"task": task.id, "kind": task.kind, "state": task.state})

    def _remaining_s(self, task: Task) -> float:
        """Elapsed time scaled by the progress still to make; a minute when there is none yet."""
        elapsed = self.clock.now() - task.created_at
        if task.progress <= 0 or not math.isfinite(elapsed):
            return 60.0
        return elapsed * (1.0 - task.progress) / task.progress

    def _evict(self) -> None:
        finished = sorted(
            (t for t in self._tasks.values() if t.state != "running"), key=lambda t: t.finished_at or 0.0
        )
        for old in finished[: max(0, len(finished) - self.keep)]:
            del self._tasks[old.id]
