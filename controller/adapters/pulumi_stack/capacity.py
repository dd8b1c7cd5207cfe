"""`PulumiCapacity`: the `Capacity` port over one Pulumi stack per pool, opened and checked at start."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path

from pulumi import automation as auto
from pulumi.automation import errors as auto_errors

from controller import ports
from controller.adapters.pulumi_stack.failures import classify
from controller.adapters.pulumi_stack.outputs import (
    ApplyResult,
    Instance,
    OutputError,
    RefreshResult,
    parse_nodes,
)
from controller.adapters.pulumi_stack.worker import (
    FAILURE_BACKOFF,
    LOCK_BACKOFF,
    Backoff,
    ConfigFile,
    PoolStack,
    Retry,
)
from controller.core import model
from controller.runtime import errors

log = logging.getLogger("gpuburst.pulumi")

IMPORT_ROOT = Path(str(resources.files("controller"))).parent
"""Where the controller package is imported from: in a source checkout, the directory holding `Pulumi.yaml`
(`main: stacks/`), the default work_dir; an installed controller names its work_dir in the config."""
PROJECT_FILES = ("Pulumi.yaml", "Pulumi.yml", "Pulumi.json")


class PulumiCapacity:
    """The `Capacity` port over one Pulumi stack per pool, with the project at `work_dir`.

    The node set goes to each operation as `--config-file`: a copy of the stack's `Pulumi.<stack>.yaml`
    with `gpuburst:nodes` set, kept in `config_dir` (the controller's state), so the committed stack files
    stay as people wrote them.

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
        config_dir: str | Path,
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
        self.config_dir = Path(config_dir).resolve()
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
        retry = Retry(clock, unavailable_ttl_s, lock_backoff, failure_backoff, self.applied)
        self._pools: dict[str, PoolStack] = {}
        for pool, stack_name in stacks.items():
            env = {**(env_vars or {}), **(pool_env or {}).get(pool, {})}
            key = tuple(sorted(env.items()))
            if key not in workspaces:
                workspaces[key] = self._workspace(command, env=env, pulumi_home=pulumi_home)
            stack, instances = self._open(workspaces[key], pool, stack_name, create=create_stacks)
            config = ConfigFile(
                self.work_dir / f"Pulumi.{_settings_name(stack_name)}.yaml",
                self.config_dir / f"Pulumi.{_settings_name(stack_name)}.yaml",
            )
            self._pools[pool] = PoolStack(pool, stack, instances, config=config, retry=retry)
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

    def _pool(self, pool: str) -> PoolStack:
        try:
            return self._pools[pool]
        except KeyError:
            raise KeyError(f"unknown pool {pool!r} (pulumi pools: {sorted(self._pools)})") from None


def _settings_name(stack_name: str) -> str:
    """The stack part of `org/project/stack`: what the CLI names the stack settings file after."""
    return stack_name.rsplit("/", 1)[-1]
