"""The live controller's schedule (APScheduler 3, one background thread): each job calls one method.

Jobs: `leader` (take or renew the Lease), `reconcile` (one tick), `refresh` (pulumi refresh of every
pool stack, to notice instances deleted behind its back), `orphan_audit` and `retention` (prune old
decisions and audit rows). Every job runs with `max_instances=1` and `coalesce=True`: a slow tick is
never overlapped by the next, and missed runs collapse into one.

Only the Lease holder acts. A replica that does not lead does not tick at all (rather than ticking in
dry-run): its SQLite store is its own, so its view of the node table would be stale and its dry-run
decisions misleading on dashboards, and a standby that reads Prometheus, the API server and every stack
each tick doubles their load for nothing. It keeps serving the admin API and renewing its candidacy;
taking over costs at most one Lease duration plus one tick. Refresh, audit and retention write or
report, so they too run on the leader only.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from apscheduler.schedulers import background as aps_background
from apscheduler.schedulers import base as aps_base

from controller import ports
from controller.core import model
from controller.runtime import logs, reconciler, schema, telemetry

log = logs.get("jobs")


def failure_reason(exc: BaseException) -> str:
    """The `reason` label of a failed tick: `store` (SQLite or the store file), else `internal`."""
    return "store" if isinstance(exc, (sqlite3.Error, schema.StoreError)) else "internal"


class Elector(Protocol):
    """What the jobs need of leader election (`controller.adapters.kube.LeaseElector`)."""

    def is_leader(self) -> bool: ...

    def acquire_or_renew(self) -> bool: ...

    def release(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Intervals:
    tick_s: float
    leader_s: float = 2.0
    refresh_s: float = 0.0
    """0: no refresh job."""
    orphan_audit_s: float = 0.0
    """0: no audit job."""
    retention_s: float = 3600.0


class Jobs:
    """The job bodies and their schedule; the bodies are plain methods, callable directly in tests."""

    def __init__(
        self,
        rec: reconciler.Reconciler,
        *,
        clock: ports.Clock,
        intervals: Intervals,
        retention_age_s: float,
        prune: Callable[[float], Mapping[str, int]] | None = None,
        refresh: Callable[[], object] | None = None,
        audit: Callable[[], object] | None = None,
        elector: Elector | None = None,
        tel: telemetry.Telemetry | None = None,
        scheduler: aps_base.BaseScheduler | None = None,
    ) -> None:
        self.rec = rec
        self.clock = clock
        self.intervals = intervals
        self.retention_age_s = retention_age_s
        self._prune = prune
        self._refresh = refresh
        self._audit = audit
        self.elector = elector
        self.telemetry = tel
        self.scheduler = scheduler if scheduler is not None else aps_background.BackgroundScheduler()
        self.last_failure: str | None = None
        """Why the latest tick failed; None after a tick that completed (a readiness check)."""
        self.ticks = 0
        self._was_leader: bool | None = None
        self._ticking = threading.Lock()
        """Held by a tick: a tick never runs beside another."""

    # -- leadership ---------------------------------------------------------------------------------
    def leading(self) -> bool:
        """Whether this replica may act now (always, without an elector)."""
        leading = self.elector is None or self.elector.is_leader()
        if leading != self._was_leader:
            if self._was_leader is not None:
                log.info("leadership changed", extra={"leader": leading})
            self._was_leader = leading
            if self.telemetry is not None:
                self.telemetry.set_leader(leading)
        return leading

    def leader(self) -> bool:
        """Take or renew the Lease; an API failure lets leadership lapse at its renew deadline."""
        if self.elector is not None:
            try:
                self.elector.acquire_or_renew()
            except Exception as exc:  # the next round tries again; is_leader() times out meanwhile
                log.warning("leader election round failed", extra={"error": str(exc)})
        return self.leading()

    # -- job bodies ---------------------------------------------------------------------------------
    def reconcile(self) -> model.TickReport | None:
        if not self.leading():
            return None
        try:
            with self._ticking:
                report = self.rec.tick()
        except Exception as exc:  # the store or an observer failed: log, and the next tick tries again
            reason = failure_reason(exc)
            log.exception("tick failed", extra={"reason": reason})
            self.last_failure = f"{reason}: {exc}"
            if self.telemetry is not None:
                self.telemetry.tick_failed(reason)
            return None
        # A commit that failed leaves the tick without intent on record (the reconciler did not act).
        failed_commit = next((e for e in report.errors if e.startswith("commit:")), None)
        self.last_failure = None if failed_commit is None else f"store: {failed_commit}"
        if failed_commit is not None and self.telemetry is not None:
            self.telemetry.tick_failed("store")
        self.ticks += 1
        log.info(
            "tick",
            extra={
                "at": report.at,
                "action": report.decision.action.value,
                "target_nodes": dict(report.decision.target_nodes),
                "nodes": {p: dict(c) for p, c in report.nodes.items()},
                "acted": list(report.acted),
                "errors": list(report.errors),
                "duration_ms": round(report.duration_s * 1000, 1),
            },
        )
        return report

    def refresh(self) -> object:
        if self._refresh is None or not self.leading():
            return None
        try:
            return self._refresh()
        except Exception:
            log.exception("refresh failed")
            return None

    def orphan_audit(self) -> object:
        if self._audit is None or not self.leading():
            return None
        try:
            return self._audit()
        except Exception as exc:  # a failed read concludes nothing; the next run looks again
            log.warning("orphan audit skipped: a read failed", extra={"error": str(exc)})
            return None

    def retention(self) -> Mapping[str, int] | None:
        if self._prune is None or not self.leading():
            return None
        before = self.clock.now() - self.retention_age_s
        try:
            pruned = self._prune(before)
        except Exception:
            log.exception("retention failed")
            return None
        if any(pruned.values()):
            log.info("retention pruned old rows", extra={"before": before, **pruned})
        return pruned

    # -- the schedule -------------------------------------------------------------------------------
    def schedule(self) -> None:
        """Add the jobs to the scheduler (without starting it); each first runs one interval from now."""
        iv = self.intervals
        common: dict[str, Any] = {"max_instances": 1, "coalesce": True, "replace_existing": True}
        if self.elector is not None:
            self._add(self.leader, "leader", iv.leader_s, **common)
        self._add(self.reconcile, "reconcile", iv.tick_s, **common)
        if self._refresh is not None and iv.refresh_s > 0:
            self._add(self.refresh, "refresh", iv.refresh_s, **common)
        if self._audit is not None and iv.orphan_audit_s > 0:
            self._add(self.orphan_audit, "orphan_audit", iv.orphan_audit_s, **common)
        if self._prune is not None:
            self._add(self.retention, "retention", iv.retention_s, **common)

    def _add(self, fn: Callable[[], object], job_id: str, every_s: float, **kw: Any) -> None:
        self.scheduler.add_job(
            fn,
            "interval",
            seconds=every_s,
            id=job_id,
            name=job_id,
            # A run later than this is skipped rather than run late (coalesce folds the backlog).
            misfire_grace_time=max(1, int(every_s)),
            **kw,
        )

    def start(self) -> model.TickReport | None:
        """A leader round and a first tick right away (their failures show at once), then the schedule."""
        if self.elector is not None:
            self.leader()
        first = self.reconcile()
        self.schedule()
        self.scheduler.start()
        return first

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop scheduling, let a running job finish, give the Lease up for a fast handover."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
        if self.elector is not None:
            try:
                self.elector.release()
            except Exception as exc:
                log.warning("could not release the Lease", extra={"error": str(exc)})
