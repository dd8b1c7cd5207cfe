"""The apply worker: one thread per pool stack that applies the latest desired node set, retrying with
backoff, and the refresh that finds instances gone behind the stack's back."""

from __future__ import annotations

import collections
import functools
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pulumi import automation as auto

from controller import ports
from controller.adapters.pulumi_stack import guardrails
from controller.adapters.pulumi_stack.failures import Outcome, Verdict, classify
from controller.adapters.pulumi_stack.outputs import (
    NODES_CONFIG,
    ApplyResult,
    Instance,
    RefreshResult,
    parse_nodes,
)
from controller.core import model
from controller.ports import clock as clock_mod

log = logging.getLogger("gpuburst.pulumi")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between retries: `first_s`, doubling, never above `max_s`."""

    first_s: float
    max_s: float

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.first_s * 2.0 ** max(0, attempt - 1))


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """A stack's config for one operation, passed to the CLI as `--config-file`: the person's
    `Pulumi.<stack>.yaml` in the project, read fresh each time, plus the controller's node set, written
    to the controller's own directory. The controller never writes the checkout."""

    human: Path
    own: Path

    def desired(self, nodes: tuple[str, ...]) -> dict[str, Any]:
        """The stack settings to apply: the person's file with `gpuburst:nodes` replaced."""
        document = yaml.safe_load(self.human.read_text()) if self.human.is_file() else None
        document = document or {}
        if not isinstance(document, dict) or not isinstance(document.get("config") or {}, dict):
            raise ValueError(f"{self.human}: not a stack settings file (a mapping with a `config` mapping)")
        document["config"] = {**(document.get("config") or {}), NODES_CONFIG: list(nodes)}
        return document

    def write(self, document: Mapping[str, Any]) -> str:
        self.own.parent.mkdir(parents=True, exist_ok=True)
        partial = self.own.with_name(self.own.name + ".partial")
        partial.write_text(yaml.safe_dump(dict(document), sort_keys=False))
        os.replace(partial, self.own)
        return str(self.own)


class GuardrailError(Exception):
    """The desired config breaks a guardrail; raised before any CLI call."""


LOCK_BACKOFF = Backoff(2.0, 60.0)
FAILURE_BACKOFF = Backoff(30.0, 600.0)


@dataclass(frozen=True, slots=True)
class Retry:
    """How a worker waits and what it reports: backoffs, how long a capacity refusal lasts, and the
    callback each finished apply goes to."""

    clock: ports.Clock
    unavailable_ttl_s: float
    lock_backoff: Backoff
    failure_backoff: Backoff
    applied: Callable[[ApplyResult], None]


class PoolStack:
    """One pool's stack, its cached outputs and its apply worker."""

    def __init__(
        self,
        pool: str,
        stack: auto.Stack,
        instances: dict[str, Instance],
        *,
        config: ConfigFile,
        retry: Retry,
    ) -> None:
        self.pool = pool
        self.stack = stack
        self.config = config
        self.config_nodes: tuple[str, ...] = tuple(sorted(instances))
        """The node set the stack config last held: what a refresh runs the program with."""
        self.retry = retry
        # Lock order: `operation` before `cond`, never the reverse.
        self.operation = threading.Lock()
        """One CLI operation (apply or refresh) at a time on this stack, so outputs are read in order."""
        self.cond = threading.Condition()
        self.instances: dict[str, Instance] | None = instances
        self.outputs_error = ""
        self.latest: tuple[str, ...] | None = None
        self.fresh = False
        """A set arrived since the last apply began."""
        self.applying = False
        self.closing = False
        self.apply = model.ApplyState.IDLE
        self.message = ""
        self.unavailable_until: float | None = None
        self.output_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.thread = threading.Thread(target=self._loop, name=f"pulumi-apply-{pool}", daemon=True)

    # -- the port's side ----------------------------------------------------------------------------
    def state(self, now: float) -> model.PoolState:
        with self.cond:
            if self.instances is None:
                # Unknown is not empty: an empty map would read as "every instance vanished".
                raise RuntimeError(f"pool {self.pool!r}: stack outputs unreadable: {self.outputs_error}")
            until = self.unavailable_until
            return model.PoolState(
                pool=self.pool,
                instances={n: i.state for n, i in self.instances.items() if not i.gone},
                submitted=self.latest,
                apply=self.apply,
                message=self.message,
                unavailable_until=until if until is not None and until > now else None,
            )

    def submit(self, nodes: tuple[str, ...]) -> None:
        with self.cond:
            if self.closing:
                raise RuntimeError(f"pool {self.pool!r}: capacity adapter closed")
            self.latest = nodes
            self.fresh = True
            # Busy from now on: until the worker has applied it, "not in the stack" proves nothing.
            self.apply = model.ApplyState.BUSY
            self.cond.notify_all()

    def settled(self) -> bool:
        """The latest set has an outcome: no apply runs or waits to start (a scheduled retry aside)."""
        return not (self.fresh or self.applying)

    # -- the worker ---------------------------------------------------------------------------------
    def _woken(self, *, by_new_set: bool) -> bool:
        return self.closing or (by_new_set and self.fresh)

    def _loop(self) -> None:
        delay: float | None = None
        patient = False
        lock_attempts = failures = 0
        while True:
            with self.cond:
                if delay is None:
                    self.cond.wait_for(functools.partial(self._woken, by_new_set=True))
                else:
                    # While another update holds the lock a new set waits too; after a failure it goes now.
                    self.cond.wait_for(functools.partial(self._woken, by_new_set=not patient), timeout=delay)
                if self.closing:
                    return
                nodes = self.latest
                self.fresh = False
                self.applying = True
                self.apply = model.ApplyState.BUSY
            assert nodes is not None  # the worker only wakes for a submitted set
            outcome, duration, launched = self._apply(nodes)
            with self.cond:
                self.applying = False
                if outcome.verdict is Verdict.OK:
                    delay, patient, lock_attempts, failures = None, False, 0, 0
                    self.apply = model.ApplyState.BUSY if self.fresh else model.ApplyState.IDLE
                    self.message = ""
                    if launched:
                        # Only a launch proves capacity is back; a shrink says nothing about it.
                        self.unavailable_until = None
                elif outcome.verdict is Verdict.BUSY:
                    lock_attempts += 1
                    delay, patient = self.retry.lock_backoff.delay(lock_attempts), True
                    self.apply = model.ApplyState.BUSY
                    self.message = f"{outcome.message} (attempt {lock_attempts}, retry in {delay:g} s)"
                else:
                    failures += 1
                    # A failed apply is retried even if no new set comes: a node whose removal failed
                    # would otherwise bill until the desired set happens to change.
                    delay, patient = self.retry.failure_backoff.delay(failures), False
                    self.apply = model.ApplyState.BUSY if self.fresh else model.ApplyState.FAILED
                    self.message = outcome.message
                    if outcome.verdict is Verdict.UNAVAILABLE:
                        self.unavailable_until = self.retry.clock.now() + self.retry.unavailable_ttl_s
                self.cond.notify_all()
            self.retry.applied(ApplyResult(self.pool, nodes, outcome, duration))

    def _apply(self, nodes: tuple[str, ...]) -> tuple[Outcome, float, bool]:
        """Set the node set and `up`; returns the outcome, its duration and whether it launched a node."""
        watch = clock_mod.Stopwatch()
        launched = False
        log.info("apply started", extra={"pool": self.pool, "stack": self.stack.name, "nodes": list(nodes)})
        with self.operation:
            try:
                desired = self.config.desired(nodes)
                refused = guardrails.check(desired["config"])
                if refused:
                    raise GuardrailError("; ".join(refused))
                config_file = self.config.write(desired)
                self.config_nodes = nodes
                result = self.stack.up(
                    config_file=config_file,
                    policy_packs=[str(guardrails.POLICY_PACK)],
                    on_output=self.output_tail.append,
                    color="never",
                    suppress_progress=True,
                    message=f"gpuburst: {len(nodes)} nodes in pool {self.pool}",
                )
                instances = parse_nodes(result.outputs, stack=self.stack.name)
            except GuardrailError as exc:  # nothing ran: the stack is as it was
                outcome = Outcome(Verdict.REFUSED, f"guardrails refused {list(nodes)}: {exc}")
            except Exception as exc:  # every failure becomes an outcome; the worker must survive it
                outcome = classify(exc)
                if outcome.verdict is not Verdict.BUSY:
                    # A failed update may still have created or deleted some instances: look again.
                    self._reload()
            else:
                outcome = Outcome(Verdict.OK)
                with self.cond:
                    launched = bool(set(instances) - set(self.instances or {}))
                    self.instances, self.outputs_error = instances, ""
        duration = watch.elapsed()
        level = logging.INFO if outcome.verdict is Verdict.OK else logging.WARNING
        log.log(
            level,
            "apply finished",
            extra={
                "pool": self.pool,
                "verdict": outcome.verdict.value,
                "error": outcome.message,
                "duration_s": round(duration, 3),
            },
        )
        return outcome, duration, launched

    def _reload(self) -> None:
        """Re-read the outputs (caller holds `operation`); unreadable outputs make `state()` raise."""
        try:
            instances = parse_nodes(self.stack.outputs(), stack=self.stack.name)
        except Exception as exc:  # unknown, not empty: the next tick holds instead of losing nodes
            with self.cond:
                self.instances, self.outputs_error = None, classify(exc).message
        else:
            with self.cond:
                self.instances, self.outputs_error = instances, ""

    def refresh(self, *, run_program: bool) -> RefreshResult:
        with self.operation:
            with self.cond:
                before = dict(self.instances or {})
            try:
                result = self.stack.refresh(
                    config_file=self.config.write(self.config.desired(self.config_nodes)),
                    on_output=self.output_tail.append,
                    color="never",
                    suppress_progress=True,
                    # Program-based refresh recomputes the stack outputs from the refreshed state.
                    run_program=True if run_program else None,
                )
                after = parse_nodes(self.stack.outputs(), stack=self.stack.name)
            except Exception as exc:  # reported to the job, which logs and counts it
                return RefreshResult(self.pool, error=classify(exc).message)
            with self.cond:
                self.instances, self.outputs_error = after, ""
        vanished = tuple(
            sorted(
                name
                for name, inst in before.items()
                if not inst.gone and (name not in after or after[name].gone)
            )
        )
        changes = {str(op): int(n) for op, n in (result.summary.resource_changes or {}).items()}
        return RefreshResult(self.pool, vanished=vanished, changes=changes)
