"""A test hook of the fault matrix (`tests/controller/app/test_fault_matrix.py`): with
`GPUBURST_FAULT_AT=<node status>` set, the controller SIGKILLs itself right after committing a tick whose
intent moves a node into that status, before the tick acts on it; a deterministic `kill -9` at each step
of a launch and a release. Not installed unless the variable is set.
"""

from __future__ import annotations

import os
import signal

from controller import ports
from controller.core import model
from controller.runtime import errors

ENV = "GPUBURST_FAULT_AT"


class _KilledAfterCommit:
    """The store as the reconciler sees it, with the process killed after the commit named."""

    def __init__(self, inner: ports.Store, status: model.NodeStatus) -> None:
        self.inner = inner
        self.status = status

    def load(self) -> ports.Snapshot:
        return self.inner.load()

    def commit(self, intent: ports.Intent, *, expected_version: int) -> int:
        version = self.inner.commit(intent, expected_version=expected_version)
        if any(t.after is self.status for t in intent.transitions):
            os.kill(os.getpid(), signal.SIGKILL)
        return version


def wrap(db: ports.Store, status: str | None = None) -> ports.Store:
    """`db`, or `db` behind the hook when `status` (by default the variable's value) is set."""
    status = os.environ.get(ENV) if status is None else status
    if not status:
        return db
    try:
        return _KilledAfterCommit(db, model.NodeStatus(status))
    except ValueError:
        known = ", ".join(s.value for s in model.NodeStatus)
        raise errors.UserError(f"{ENV}={status!r}: not a node status ({known})") from None
