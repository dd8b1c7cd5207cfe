"""What the API reads and may change."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controller import ports
from controller.core import model, policy
from controller.runtime import auth, store_sql, tasks, telemetry

STALE_TICKS = 3.0
"""A leader whose last tick is older than this many intervals is not doing its job."""


@dataclass
class Context:
    """What the API reads and may change; live.py builds it over the running controller."""

    store: store_sql.AnyStore
    telemetry: telemetry.Telemetry
    clock: ports.Clock
    pools: Mapping[str, int]
    """Pool name → its configured max_nodes (an override may only lower it)."""
    tick_interval_s: float
    last_report: Callable[[], model.TickReport | None]
    tokens: auth.Tokens
    leading: Callable[[], bool] = lambda: True
    checks: Mapping[str, Callable[[], str | None]] = field(default_factory=dict)
    """Extra readiness checks by name: each returns a problem, or None when fine (e.g. Prometheus)."""
    limiter: auth.RateLimiter = field(default_factory=lambda: auth.RateLimiter(rate_per_s=20, burst=40))
    reconcile_now: Callable[[], model.TickReport | None] | None = None
    get_policy: Callable[[], policy.BurstPolicy] | None = None
    policy_path: Path | None = None
    """The file a policy reload reads."""
    apply_policy: Callable[[policy.BurstPolicy], None] | None = None
    whatif: Callable[[bytes, str], tasks.Work] | None = None
    """(trace CSV, shipped scenario name) → the replay to run (`controller.sim.whatif.prepare`)."""
    whatif_scenarios: tuple[str, ...] = ()
    """The scenario names a what-if may name (the OpenAPI schema lists them)."""
    max_tasks: int = 2
    runner: tasks.Runner = field(init=False)

    def __post_init__(self) -> None:
        self.runner = tasks.Runner(clock=self.clock, max_running=self.max_tasks)
