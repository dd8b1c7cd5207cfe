"""Pulumi capacity: the cloud pool stacks, driven through the Automation API (the `Capacity` port).

Owns one stack per cloud pool (`gpuburst:nodes` config in, `nodes` output out), the worker thread that
applies each pool's latest desired node set, the one mapping from CLI failures to what the controller
does about them (`classify`), and the refresh that finds instances that vanished behind the stack's
back. How many nodes a pool should have is decided elsewhere: the reconciler hands in sorted node sets
and reads `state()` on later ticks, which never waits for an apply.
"""

from __future__ import annotations

import collections
import enum
import functools
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pydantic
from pulumi import automation as auto
from pulumi.automation import errors as auto_errors

from controller import ports
from controller.core import model
from controller.ports import clock as clock_mod
from controller.runtime import errors

log = logging.getLogger("gpuburst.pulumi")

NODES_CONFIG = "gpuburst:nodes"
NODES_OUTPUT = "nodes"
IMPORT_ROOT = Path(str(resources.files("controller"))).parent
"""Where the controller package is imported from: in a source checkout, the directory holding `Pulumi.yaml`
(`main: stacks/`), the default work_dir; an installed controller names its work_dir in the config."""
PROJECT_FILES = ("Pulumi.yaml", "Pulumi.yml", "Pulumi.json")

GONE_STATES = frozenset({"shutting-down", "terminated"})
"""EC2 instance states that will never serve again: such an instance counts as vanished."""

CAPACITY_ERRORS = (
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientFreeAddressesInSubnet",
    "InstanceLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "VcpuLimitExceeded",
    "SpotMaxPriceTooLow",
    "UnfulfillableCapacity",
    "Unsupported",
)
"""EC2 error codes meaning "not here, not now": the pool is unavailable for a while and the policy falls
back to another pool (Karpenter's unfulfillable-capacity list, plus quotas)."""
_CAPACITY = re.compile(r"\b(" + "|".join(map(re.escape, CAPACITY_ERRORS)) + r")\b")

_AWS_CREDENTIALS = "no usable AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY"
_PLUGIN = "a Pulumi provider plugin is missing: run `pulumi install` in the project directory"
SETUP_ERRORS: tuple[tuple[str, str], ...] = (
    (
        "PULUMI_ACCESS_TOKEN must be set",
        "not logged in to a Pulumi backend: run `pulumi login`, or set PULUMI_ACCESS_TOKEN "
        "(PULUMI_BACKEND_URL for a self-managed backend)",
    ),
    ("problem logging in", "the Pulumi backend refused the login: check PULUMI_ACCESS_TOKEN, `pulumi login`"),
    (
        "PULUMI_CONFIG_PASSPHRASE",
        "the stack's secrets passphrase is missing: "
        "set PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE",
    ),
    ("incorrect passphrase", "the stack's secrets passphrase is wrong (PULUMI_CONFIG_PASSPHRASE)"),
    ("No valid credential sources found", _AWS_CREDENTIALS),
    ("NoCredentialProviders", _AWS_CREDENTIALS),
    ("ExpiredToken", "the AWS credentials have expired: renew the session (e.g. `aws sso login`)"),
    ("InvalidClientTokenId", _AWS_CREDENTIALS),
    ("no resource plugin", _PLUGIN),
    ("could not load plugin", _PLUGIN),
)
"""CLI text that means the setup is incomplete (login, passphrase, cloud credentials, plugins), with what
to do about it. Matched case-insensitively; the first match wins."""

_RESULT = re.compile(r"\A\s*code: (?P<code>-?\d+)\n stdout: (?P<stdout>.*)\n stderr: (?P<stderr>.*)\Z", re.S)


class Verdict(enum.StrEnum):
    OK = "ok"
    BUSY = "busy"
    """The stack is locked by another update: retried after a backoff."""
    UNAVAILABLE = "unavailable"
    """The cloud refused capacity or quota: the pool is unavailable for a TTL, the apply failed."""
    SETUP = "setup"
    """Something is missing here (CLI, login, credentials): a start-up error, later a failed apply."""
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    message: str = ""


def classify(exc: BaseException) -> Outcome:
    """What a failed Automation API call means for the controller: the one place that maps CLI failures.

    The Automation API raises the builtin `FileNotFoundError` for a missing CLI and `CommandError`
    subclasses that carry only the CLI's text, so everything past the lock is recognised by its text.
    """
    if isinstance(exc, FileNotFoundError):
        missing = str(exc.filename or "")
        if not missing or Path(missing).name == "pulumi":
            return Outcome(
                Verdict.SETUP,
                "the `pulumi` CLI was not found: install it "
                "(https://www.pulumi.com/docs/iac/download-install/) and put it on PATH",
            )
        return Outcome(Verdict.SETUP, f"file not found: {missing}")
    if isinstance(exc, auto_errors.InvalidVersionError):
        return Outcome(Verdict.SETUP, f"the `pulumi` CLI cannot be used: {exc}")
    text = str(exc)
    if isinstance(exc, auto_errors.ConcurrentUpdateError):
        return Outcome(Verdict.BUSY, f"stack locked by another update: {cli_message(text)}")
    if isinstance(exc, auto_errors.StackNotFoundError):
        return Outcome(Verdict.SETUP, cli_message(text))
    lowered = text.lower()
    for needle, hint in SETUP_ERRORS:
        if needle.lower() in lowered:
            return Outcome(Verdict.SETUP, f"{hint} ({cli_message(text, prefer=needle)})")
    found = _CAPACITY.search(text)
    if found:
        return Outcome(Verdict.UNAVAILABLE, cli_message(text, prefer=found.group(1)))
    if isinstance(exc, auto_errors.CommandError):
        return Outcome(Verdict.FAILED, cli_message(text))
    return Outcome(Verdict.FAILED, f"{type(exc).__name__}: {_clip(text)}")


def cli_message(text: str, *, prefer: str | None = None) -> str:
    """The line of a CLI failure that says what went wrong, for a message a person reads.

    `text` is a `CommandError`'s text (code, stdout, stderr). The line naming `prefer` wins; then the
    specific `error:` lines (not the closing "update failed"); then the tail of stderr, then of stdout.
    """
    parsed = _RESULT.match(text)
    stdout, stderr = (parsed["stdout"], parsed["stderr"]) if parsed else ("", text)
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    if prefer is not None:
        for line in lines:
            if prefer.lower() in line.lower():
                return _clip(line)
    specific = [
        ln for ln in lines if ln.lower().startswith(("error:", "* ")) and "update failed" not in ln.lower()
    ]
    # "error: 1 error occurred:" heads a list; the item after it is the cause.
    specific = [ln for ln in specific if not re.match(r"error: \d+ errors? occurred:?$", ln)]
    specific = list(dict.fromkeys(specific))  # the CLI repeats a diagnostic on stdout and stderr
    if specific:
        return _clip(" | ".join(specific[:2]))
    for part in (stderr, stdout):
        tail = [ln.strip() for ln in part.splitlines() if ln.strip()]
        if tail:
            return _clip(tail[-1])
    return f"exit code {parsed['code']}" if parsed else _clip(text)


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between retries: `first_s`, doubling, never above `max_s`."""

    first_s: float
    max_s: float

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.first_s * 2.0 ** max(0, attempt - 1))


LOCK_BACKOFF = Backoff(2.0, 60.0)
FAILURE_BACKOFF = Backoff(30.0, 600.0)


@dataclass(frozen=True, slots=True)
class Instance:
    """One entry of a pool stack's `nodes` output."""

    name: str
    instance_id: str | None
    private_ip: str | None
    state: str

    @property
    def gone(self) -> bool:
        return self.state in GONE_STATES


class _NodeOutput(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")

    instance_id: str | None = None
    private_ip: str | None = None
    # Unknown until the provider reports it (a preview, an instance still being created).
    state: str | None = None


_NODES = pydantic.TypeAdapter(dict[str, _NodeOutput])


class OutputError(ValueError):
    """A stack's outputs do not carry a readable `nodes` map."""


def parse_nodes(outputs: Mapping[str, auto.OutputValue], *, stack: str) -> dict[str, Instance]:
    """The `nodes` output as instances. A stack never deployed has no outputs at all: no instances."""
    if not outputs:
        return {}
    if NODES_OUTPUT not in outputs:
        raise OutputError(f"stack {stack!r} has outputs {sorted(outputs)} but no {NODES_OUTPUT!r} output")
    try:
        nodes = _NODES.validate_python(outputs[NODES_OUTPUT].value)
    except pydantic.ValidationError as exc:
        raise OutputError(
            f"stack {stack!r}: output {NODES_OUTPUT!r} is not a map of "
            f"name -> {{instance_id, private_ip, state}}: {exc.errors()[0]['msg']} "
            f"at {'.'.join(map(str, exc.errors()[0]['loc']))}"
        ) from exc
    return {
        name: Instance(name, out.instance_id, out.private_ip, out.state or "unknown")
        for name, out in nodes.items()
    }


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """One finished `up` of a pool stack, for telemetry (apply duration and result)."""

    pool: str
    nodes: tuple[str, ...]
    outcome: Outcome
    duration_s: float


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """What a refresh found: instances gone behind the stack's back, and how much state it corrected."""

    pool: str
    vanished: tuple[str, ...] = ()
    changes: Mapping[str, int] = field(default_factory=dict)
    """The refresh's resource changes by operation (`same`, `update`, `delete`, ...)."""
    error: str = ""

    @property
    def drift(self) -> int:
        """Resources whose recorded state differed from the cloud's."""
        return sum(n for op, n in self.changes.items() if op != "same")


class _PoolStack:
    """One pool's stack, its cached outputs and its apply worker."""

    def __init__(
        self,
        pool: str,
        stack: auto.Stack,
        instances: dict[str, Instance],
        *,
        owner: PulumiCapacity,
    ) -> None:
        self.pool = pool
        self.stack = stack
        self.owner = owner
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
                    delay, patient = self.owner.lock_backoff.delay(lock_attempts), True
                    self.apply = model.ApplyState.BUSY
                    self.message = f"{outcome.message} (attempt {lock_attempts}, retry in {delay:g} s)"
                else:
                    failures += 1
                    # A failed apply is retried even if no new set comes: a node whose removal failed
                    # would otherwise bill until the desired set happens to change.
                    delay, patient = self.owner.failure_backoff.delay(failures), False
                    self.apply = model.ApplyState.BUSY if self.fresh else model.ApplyState.FAILED
                    self.message = outcome.message
                    if outcome.verdict is Verdict.UNAVAILABLE:
                        self.unavailable_until = self.owner.clock.now() + self.owner.unavailable_ttl_s
                self.cond.notify_all()
            self.owner.applied(ApplyResult(self.pool, nodes, outcome, duration))

    def _apply(self, nodes: tuple[str, ...]) -> tuple[Outcome, float, bool]:
        """Set the node set and `up`; returns the outcome, its duration and whether it launched a node."""
        watch = clock_mod.Stopwatch()
        launched = False
        log.info("apply started", extra={"pool": self.pool, "stack": self.stack.name, "nodes": list(nodes)})
        with self.operation:
            try:
                self.stack.set_config(NODES_CONFIG, auto.ConfigValue(json.dumps(list(nodes))))
                result = self.stack.up(
                    on_output=self.output_tail.append,
                    color="never",
                    suppress_progress=True,
                    message=f"gpuburst: {len(nodes)} nodes in pool {self.pool}",
                )
                instances = parse_nodes(result.outputs, stack=self.stack.name)
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


class PulumiCapacity:
    """The `Capacity` port over one Pulumi stack per pool, with the project at `work_dir`.

    Construction checks everything it can cheaply (the project file, the CLI, the backend login, each
    stack and its outputs) and raises `controller.runtime.errors.UserError` naming what is missing, so
    `gpuburst run` fails at start rather than at the first burst. `pools` maps pool -> stack name (a plain
    list: stack named after the pool); `pool_env` adds per-pool CLI environment (an AWS_PROFILE per
    account) to `env_vars`. Waits between retries are real waits; times reported (such as
    `unavailable_until`) are on `clock`.
    """

    def __init__(
        self,
        pools: Sequence[str] | Mapping[str, str],
        *,
        clock: ports.Clock,
        work_dir: str | Path = IMPORT_ROOT,
        pulumi_command: auto.PulumiCommand | None = None,
        env_vars: Mapping[str, str] | None = None,
        pool_env: Mapping[str, Mapping[str, str]] | None = None,
        pulumi_home: str | None = None,
        create_stacks: bool = False,
        unavailable_ttl_s: float = 180.0,
        lock_backoff: Backoff = LOCK_BACKOFF,
        failure_backoff: Backoff = FAILURE_BACKOFF,
        refresh_runs_program: bool = True,
        on_apply: Callable[[ApplyResult], None] | None = None,
    ) -> None:
        self.clock = clock
        self.unavailable_ttl_s = unavailable_ttl_s
        self.lock_backoff = lock_backoff
        self.failure_backoff = failure_backoff
        self.refresh_runs_program = refresh_runs_program
        self.on_apply = on_apply
        stacks = dict(pools) if isinstance(pools, Mapping) else {p: p for p in pools}
        if not stacks:
            raise errors.UserError("pulumi capacity: no pools configured")
        stray = sorted(set(pool_env or {}) - set(stacks))
        if stray:
            raise errors.UserError(f"pulumi capacity: environment given for unknown pools {stray}")
        self.work_dir = Path(work_dir).resolve()
        if not any((self.work_dir / name).is_file() for name in PROJECT_FILES):
            raise errors.UserError(
                f"pulumi capacity: no Pulumi.yaml in {self.work_dir} (set the work_dir to the project "
                "directory, the repository root with `main: stacks/`)"
            )
        try:
            command = pulumi_command if pulumi_command is not None else auto.PulumiCommand()
        except Exception as exc:
            raise errors.UserError(f"pulumi capacity: {classify(exc).message}") from exc
        # One workspace per distinct environment: a workspace passes its env_vars to every command.
        workspaces: dict[tuple[tuple[str, str], ...], auto.LocalWorkspace] = {}
        self._pools: dict[str, _PoolStack] = {}
        for pool, stack_name in stacks.items():
            env = {**(env_vars or {}), **(pool_env or {}).get(pool, {})}
            key = tuple(sorted(env.items()))
            if key not in workspaces:
                workspaces[key] = self._workspace(command, env=env, pulumi_home=pulumi_home)
            stack, instances = self._open(workspaces[key], pool, stack_name, create=create_stacks)
            self._pools[pool] = _PoolStack(pool, stack, instances, owner=self)
        for ps in self._pools.values():
            ps.thread.start()
        log.info("pulumi capacity ready", extra={"work_dir": str(self.work_dir), "stacks": stacks})

    def _workspace(
        self, command: auto.PulumiCommand, *, env: Mapping[str, str], pulumi_home: str | None
    ) -> auto.LocalWorkspace:
        """A workspace on the project, after checking the backend login (`whoami`) with its environment."""
        try:
            workspace = auto.LocalWorkspace(
                work_dir=str(self.work_dir),
                pulumi_home=pulumi_home,
                env_vars=dict(env),
                pulumi_command=command,
            )
            workspace.who_am_i()
        except Exception as exc:
            raise errors.UserError(f"pulumi capacity: {classify(exc).message}") from exc
        return workspace

    def _open(
        self, workspace: auto.LocalWorkspace, pool: str, stack_name: str, *, create: bool
    ) -> tuple[auto.Stack, dict[str, Instance]]:
        where = f"pool {pool!r} (stack {stack_name!r} in {self.work_dir})"
        try:
            if create:
                stack = auto.Stack.create_or_select(stack_name, workspace)
            else:
                stack = auto.Stack.select(stack_name, workspace)
            return stack, parse_nodes(stack.outputs(), stack=stack_name)
        except auto_errors.StackNotFoundError as exc:
            raise errors.UserError(
                f"pulumi capacity: {where}: no such stack in the backend; create it with "
                f"`pulumi stack init {stack_name}` and its Pulumi.{stack_name}.yaml config"
            ) from exc
        except OutputError as exc:
            raise errors.UserError(f"pulumi capacity: {where}: {exc}") from exc
        except Exception as exc:
            raise errors.UserError(f"pulumi capacity: {where}: {classify(exc).message}") from exc

    # -- the Capacity port --------------------------------------------------------------------------
    def state(self, pool: str) -> model.PoolState:
        return self._pool(pool).state(self.clock.now())

    def submit(self, pool: str, nodes: tuple[str, ...]) -> None:
        """Hand the sorted node set to the pool's worker and return; a newer set replaces a waiting one."""
        nodes = tuple(nodes)
        if list(nodes) != sorted(set(nodes)):
            raise ValueError(f"pool {pool!r}: node names must be sorted and unique, got {list(nodes)}")
        self._pool(pool).submit(nodes)

    # -- for jobs, the API and tests ----------------------------------------------------------------
    @property
    def pools(self) -> tuple[str, ...]:
        return tuple(self._pools)

    def instances(self, pool: str) -> Mapping[str, Instance]:
        """The pool's instances with their ids and addresses, as last read (gone ones included)."""
        ps = self._pool(pool)
        with ps.cond:
            return dict(ps.instances or {})

    def output_tail(self, pool: str) -> tuple[str, ...]:
        """The last lines the CLI printed for this pool (for the API and for failure reports)."""
        return tuple(self._pool(pool).output_tail)

    def refresh(self, pool: str) -> RefreshResult:
        """Refresh the stack against the cloud and report what vanished; waits for a running apply.

        Called by a job, never by the tick. The next tick's `state()` no longer lists a vanished
        instance, so the lifecycle marks its node failed and releases it.
        """
        result = self._pool(pool).refresh(run_program=self.refresh_runs_program)
        if result.error:
            log.warning("refresh failed", extra={"pool": pool, "error": result.error})
        elif result.vanished or result.drift:
            log.warning(
                "refresh found changes",
                extra={"pool": pool, "vanished": list(result.vanished), "changes": dict(result.changes)},
            )
        return result

    def wait_settled(self, pool: str, *, timeout_s: float) -> bool:
        """Block until the latest submitted set has an outcome (a retry scheduled after it aside)."""
        ps = self._pool(pool)
        with ps.cond:
            return ps.cond.wait_for(ps.settled, timeout=timeout_s)

    def applied(self, result: ApplyResult) -> None:
        if self.on_apply is not None:
            try:
                self.on_apply(result)
            except Exception:  # telemetry must not kill the apply worker
                log.exception("on_apply callback failed", extra={"pool": result.pool})

    def close(self, *, timeout_s: float = 30.0) -> None:
        """Stop the workers. A running `up` is let finish (killing it would leave the stack locked)."""
        for ps in self._pools.values():
            with ps.cond:
                ps.closing = True
                ps.cond.notify_all()
        for ps in self._pools.values():
            ps.thread.join(timeout_s)

    def __enter__(self) -> PulumiCapacity:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pool(self, pool: str) -> _PoolStack:
        try:
            return self._pools[pool]
        except KeyError:
            raise KeyError(f"unknown pool {pool!r} (pulumi pools: {sorted(self._pools)})") from None
