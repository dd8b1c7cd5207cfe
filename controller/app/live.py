"""`gpuburst run --config FILE`: the live controller, assembled from its config.

`build` wires the adapters named in the config (Prometheus, Kubernetes or local workers, Pulumi or local
capacity) to the reconciler, the store (SQLite, or PostgreSQL shared by replicas), telemetry, the admin
API and the scheduled jobs; `run` starts them and waits for SIGTERM. `--once` runs one tick and prints
its TickReport as JSON (exit 0 even when it holds); `--dry-run` decides and reports without committing or
acting, and takes no part in leader election. `gpuburst demo` (`controller.app.demo`) builds its
controller here too.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulumi import automation as auto

from controller import ports
from controller.adapters import kube as kube_adapter
from controller.adapters import local as local_adapter
from controller.adapters import prometheus as prometheus_adapter
from controller.adapters import pulumi_stack, routing
from controller.app import config as config_mod
from controller.app import fault_hook
from controller.core import model, policy
from controller.ports import clock as clock_mod
from controller.runtime import api, auth, codec, errors, jobs, logs, orphans, reconciler, store_sql, telemetry
from controller.sim import whatif

log = logs.get("live")

# How long `--once` waits for the applies its tick started before it reports anyway.
ONCE_APPLY_WAIT_S = 1800.0


# -- the assembled controller ----------------------------------------------------------------------------
@dataclass
class Controller:
    loaded: config_mod.Loaded
    setup: reconciler.Setup
    clock: ports.Clock
    store: store_sql.AnyStore
    telemetry: telemetry.Telemetry
    metrics: ports.MetricSource
    cluster: ports.Cluster
    capacity: ports.Capacity
    reconciler: reconciler.Reconciler
    jobs: jobs.Jobs
    checks: dict[str, Callable[[], str | None]] = field(default_factory=dict)
    elector: kube_adapter.LeaseElector | None = None
    pulumi: list[pulumi_stack.PulumiCapacity] = field(default_factory=list)
    local: list[local_adapter.LocalPool] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)
    server: api.Server | None = None

    def api_context(self) -> api.Context:
        c = self.loaded.config
        return api.Context(
            store=self.store,
            telemetry=self.telemetry,
            clock=self.clock,
            pools={p.name: p.max_nodes for p in self.setup.pools},
            tick_interval_s=c.tick_interval_s,
            last_report=lambda: self.reconciler.last_report,
            tokens=self.loaded.api_tokens(),
            leading=self.jobs.leading,
            checks=self.checks,
            limiter=auth.RateLimiter(rate_per_s=c.api.rate_per_s, burst=c.api.rate_burst),
            reconcile_now=self.jobs.reconcile,
            get_policy=lambda: self.reconciler.setup.policy,
            policy_path=self.loaded.policy_path,
            apply_policy=self.apply_policy,
            whatif=functools.partial(whatif.prepare, policy_path=self.loaded.policy_path),
            whatif_scenarios=whatif.shipped(),
        )

    def apply_policy(self, new: policy.BurstPolicy) -> None:
        """The next tick decides with `new` (a reload through the API)."""
        self.reconciler.setup = dataclasses.replace(self.reconciler.setup, policy=new)

    def start_api(self) -> api.Server | None:
        c = self.loaded.config.api
        address = c.address()
        if address is None:
            return None
        host, port = address
        api.check_listen(host, port, where=f"{self.loaded.source}: api.listen")
        app = api.create_app(self.api_context(), max_body_bytes=c.max_body_bytes)
        cert, key = (self.loaded.path(f) if f else None for f in (c.tls_cert_file, c.tls_key_file))
        self.server = api.Server(app, host=host, port=port, tls_cert=cert, tls_key=key).start()
        return self.server

    def wait_for_applies(self, *, timeout_s: float) -> bool:
        """Block until every pool's latest node set has an outcome (pulumi pools; others are synchronous)."""
        settled = True
        for capacity in self.pulumi:
            for pool in capacity.pools:
                settled = capacity.wait_settled(pool, timeout_s=timeout_s) and settled
        return settled

    def close(self) -> None:
        """Stop everything this controller started, in reverse order; each step is attempted."""
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception:
                log.exception("shutdown step failed")
        self.closers.clear()


def build(
    loaded: config_mod.Loaded,
    *,
    dry_run: bool = False,
    clock: ports.Clock | None = None,
    pulumi_command: auto.PulumiCommand | None = None,
    metrics: ports.MetricSource | None = None,
    scheduler: Any = None,
) -> Controller:
    """Every part of a live controller, not yet started. Raises UserError naming what is misconfigured.

    `pulumi_command` and `metrics` let tests put a scripted CLI or a fake source in; the rest is built
    exactly as in production."""
    clock = clock or clock_mod.SystemClock()
    setup = loaded.setup()
    closers: list[Callable[[], None]] = []
    try:
        db = loaded.open_store()
        closers.append(db.close)

        def budget() -> float | None:
            return reconciler.overridden(setup, db.overrides()).policy.budget_usd_per_hour

        tel = telemetry.Telemetry(
            workloads=setup.workloads, pools=setup.pools, ledger=db.ledger, budget=budget
        )
        checks: dict[str, Callable[[], str | None]] = {}
        if metrics is None:
            metrics = _prometheus(loaded.config, checks=checks, closers=closers)
        metered = telemetry.MeteredMetricSource(metrics, tel)
        parts = _adapters(
            loaded, clock=clock, tel=tel, command=pulumi_command, dry_run=dry_run, closers=closers
        )
        observers: list[Callable[[model.TickReport], None]] = [tel.observe]
        if not dry_run:
            observers.append(_safely(db.record_report, "audit of the tick's actions"))
            if parts.events is not None:
                observers.append(_safely(parts.events, "Kubernetes Events"))
        rec = reconciler.Reconciler(
            setup,
            clock=clock,
            metrics=metered,
            cluster=parts.cluster,
            capacity=parts.capacity,
            store=fault_hook.wrap(db),
            observers=observers,
            dry_run=dry_run,
        )
        j = _jobs(loaded, rec, parts, db=db, tel=tel, clock=clock, dry_run=dry_run, scheduler=scheduler)
        checks["store"] = db.health
        checks["last_tick"] = lambda: j.last_failure
        if parts.elector is None:
            tel.set_leader(not dry_run)
    except BaseException:
        for closer in reversed(closers):
            try:
                closer()
            except Exception:
                log.exception("cleanup after a failed start failed")
        raise
    return Controller(
        loaded=loaded,
        setup=setup,
        clock=clock,
        store=db,
        telemetry=tel,
        metrics=metered,
        cluster=parts.cluster,
        capacity=parts.capacity,
        reconciler=rec,
        jobs=j,
        checks=checks,
        elector=parts.elector,
        pulumi=parts.pulumi,
        local=parts.local,
        closers=closers,
    )


def _prometheus(
    cfg: config_mod.Config, *, checks: dict[str, Callable[[], str | None]], closers: list[Callable[[], None]]
) -> prometheus_adapter.PrometheusSource:
    """The configured Prometheus, with its readiness check and its close registered."""
    source = prometheus_adapter.PrometheusSource(cfg.prometheus_adapter_config())
    closers.append(source.close)
    checks["prometheus"] = lambda: _prometheus_problem(source)
    return source


def _jobs(
    loaded: config_mod.Loaded,
    rec: reconciler.Reconciler,
    parts: _Adapters,
    *,
    db: store_sql.AnyStore,
    tel: telemetry.Telemetry,
    clock: ports.Clock,
    dry_run: bool,
    scheduler: Any,
) -> jobs.Jobs:
    """The scheduled work around the tick: leader election, stack refresh, orphan audit, retention."""
    cfg, setup = loaded.config, rec.setup
    audit = orphans.OrphanAudit(
        [p.name for p in setup.pools],
        cluster=parts.cluster,
        capacity=parts.capacity,
        store=db,
        clock=clock,
        telemetry=tel,
        grace_s=cfg.jobs.orphan_grace_s or setup.policy.boot_timeout_s,
        record=None if dry_run else db.record,
    )
    pulumi = parts.pulumi
    return jobs.Jobs(
        rec,
        clock=clock,
        intervals=jobs.Intervals(
            tick_s=cfg.tick_interval_s,
            leader_s=cfg.leader_election.retry_period_s,
            refresh_s=cfg.jobs.refresh_interval_s,
            orphan_audit_s=cfg.jobs.orphan_audit_interval_s,
            retention_s=cfg.jobs.retention_interval_s,
        ),
        retention_age_s=cfg.store.retention_days * 86400.0,
        # A dry run writes nothing: no refresh (it rewrites stack state), no pruning.
        prune=None if dry_run else (lambda before: db.prune(before=before)),
        refresh=None if dry_run or not pulumi else (lambda: _refresh_all(pulumi)),
        audit=audit.run,
        elector=parts.elector,
        tel=tel,
        scheduler=scheduler,
    )


@dataclass
class _Adapters:
    cluster: ports.Cluster
    capacity: ports.Capacity
    elector: kube_adapter.LeaseElector | None = None
    pulumi: list[pulumi_stack.PulumiCapacity] = field(default_factory=list)
    local: list[local_adapter.LocalPool] = field(default_factory=list)
    events: Callable[[model.TickReport], None] | None = None
    """Records the tick's node transitions as Kubernetes Events (a reconciler observer)."""


def _adapters(
    loaded: config_mod.Loaded,
    *,
    clock: ports.Clock,
    tel: telemetry.Telemetry,
    command: auto.PulumiCommand | None,
    dry_run: bool,
    closers: list[Callable[[], None]],
) -> _Adapters:
    """The cluster and capacity the config names (local workers, or Kubernetes with Pulumi pools); each
    adapter's close joins `closers`."""
    cfg = loaded.config
    pulumi: list[pulumi_stack.PulumiCapacity] = []
    local: list[local_adapter.LocalPool] = []
    events: Callable[[model.TickReport], None] | None = None
    cluster: ports.Cluster
    capacity: ports.Capacity
    if cfg.adapter_kind == "local":
        by_pool = _local_pools(loaded, clock=clock)
        local = list({id(a): a for a in by_pool.values()}.values())
        closers.extend(a.close for a in local)
        cluster = routing.ClusterRouter(by_pool)
        capacity = routing.PoolRouter(by_pool)
    else:
        assert cfg.kubernetes is not None  # validated with pulumi pools
        k = cfg.kubernetes
        client = _client(loaded, closers)
        kube_cluster = kube_adapter.KubeCluster(
            client, k.namespace, deployment_name=k.deployment_name, timeout_s=k.timeout_s
        )
        closers.append(kube_cluster.close)  # before the client's close: closers run in reverse
        cluster = kube_cluster
        events = kube_adapter.EventRecorder(
            client,
            k.namespace,
            workloads=[w.name for w in cfg.workloads],
            clock=clock,
            locate=kube_cluster.kube_names,
            deployment_name=k.deployment_name,
        ).observe
        by_pulumi = _pulumi_pools(loaded, clock=clock, tel=tel, command=command)
        pulumi = list({id(a): a for a in by_pulumi.values()}.values())
        closers.extend(a.close for a in pulumi)
        capacity = routing.PoolRouter(by_pulumi)
    enabled = cfg.leader_election.enabled and not dry_run
    elector = _elector(loaded, clock=clock, closers=closers) if enabled else None
    return _Adapters(cluster, capacity, elector=elector, pulumi=pulumi, local=local, events=events)


def _elector(
    loaded: config_mod.Loaded, *, clock: ports.Clock, closers: list[Callable[[], None]]
) -> kube_adapter.LeaseElector:
    """The Lease the replicas contend for, on its own API client (local pools have no other)."""
    k, le = loaded.config.kubernetes, loaded.config.leader_election
    assert k is not None  # validated with leader_election.enabled
    return kube_adapter.LeaseElector(
        _client(loaded, closers),
        le.identity or kube_adapter.default_identity(),
        clock=clock,
        name=le.lease_name,
        namespace=le.namespace or k.namespace,
        lease_duration_s=le.lease_duration_s,
        renew_deadline_s=le.renew_deadline_s,
    )


def _client(loaded: config_mod.Loaded, closers: list[Callable[[], None]]) -> Any:
    k = loaded.config.kubernetes
    assert k is not None
    kubeconfig = str(loaded.path(k.kubeconfig)) if k.kubeconfig is not None else None
    client = kube_adapter.api_client(host=k.host, kubeconfig=kubeconfig, context=k.context)
    closers.append(client.close)
    return client


def _safely(fn: Callable[[model.TickReport], None], what: str) -> Callable[[model.TickReport], None]:
    def observer(report: model.TickReport) -> None:
        try:
            fn(report)
        except Exception as exc:  # an observer must not turn a good tick into a failed one
            log.warning(f"{what} failed", extra={"error": str(exc)})

    return observer


def _prometheus_problem(source: prometheus_adapter.PrometheusSource) -> str | None:
    health = source.health()
    if not health.reachable:
        return f"unreachable: {health.error}"
    if not health.ready:
        return "not ready (replaying its WAL?)"
    return None


def _local_pools(loaded: config_mod.Loaded, *, clock: ports.Clock) -> dict[str, local_adapter.LocalPool]:
    """One LocalPool per distinct adapter setting, shared by the pools that have it."""
    groups: dict[str, tuple[config_mod.LocalAdapterConfig, list[str]]] = {}
    for pool in loaded.config.pools:
        adapter = pool.adapter
        assert isinstance(adapter, config_mod.LocalAdapterConfig)
        key = adapter.model_dump_json()
        groups.setdefault(key, (adapter, []))[1].append(pool.name)
    out: dict[str, local_adapter.LocalPool] = {}
    for adapter, names in groups.values():
        lp = local_adapter.LocalPool(
            names,
            clock=clock,
            boot_delay_s=adapter.boot_delay_s,
            command=adapter.worker_command or config_mod.WORKER_COMMAND,
            env=adapter.env,
            targets_file=loaded.path(adapter.targets_file) if adapter.targets_file is not None else None,
            log_dir=loaded.path(adapter.log_dir) if adapter.log_dir is not None else None,
            stop_timeout_s=adapter.stop_timeout_s,
            deregister_s=adapter.deregister_s,
        )
        out.update(dict.fromkeys(names, lp))
    return out


def _pulumi_pools(
    loaded: config_mod.Loaded,
    *,
    clock: ports.Clock,
    tel: telemetry.Telemetry,
    command: auto.PulumiCommand | None,
) -> dict[str, pulumi_stack.PulumiCapacity]:
    """One PulumiCapacity per project directory (per `create_stack`), pools with their stacks and env."""
    groups: dict[tuple[Path, bool], list[config_mod.PoolConfig]] = {}
    for pool in loaded.config.pools:
        adapter = pool.adapter
        assert isinstance(adapter, config_mod.PulumiAdapterConfig)
        groups.setdefault((loaded.path(adapter.work_dir), adapter.create_stack), []).append(pool)

    def on_apply(result: pulumi_stack.ApplyResult) -> None:
        tel.apply_finished(
            result.pool, duration_s=result.duration_s, ok=result.outcome.verdict is pulumi_stack.Verdict.OK
        )

    out: dict[str, pulumi_stack.PulumiCapacity] = {}
    for (work_dir, create), pools in groups.items():
        stacks = {p.name: _pulumi(p).stack or p.name for p in pools}
        capacity = pulumi_stack.PulumiCapacity(
            stacks,
            clock=clock,
            work_dir=work_dir,
            # The controller's node sets live beside its store, never in the project's stack files.
            config_dir=loaded.store_path.parent / "pulumi-config",
            pulumi_command=command,
            pool_env={p.name: _pulumi(p).env for p in pools if _pulumi(p).env},
            create_stacks=create,
            on_apply=on_apply,
        )
        out.update(dict.fromkeys(stacks, capacity))
    return out


def _pulumi(pool: config_mod.PoolConfig) -> config_mod.PulumiAdapterConfig:
    assert isinstance(pool.adapter, config_mod.PulumiAdapterConfig)
    return pool.adapter


def _refresh_all(capacities: Iterable[pulumi_stack.PulumiCapacity]) -> list[pulumi_stack.RefreshResult]:
    return [c.refresh(pool) for c in capacities for pool in c.pools]


# -- `gpuburst run` ----------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    loaded = config_mod.load(args.config)
    logs.configure(loaded.config.log_level)
    if loaded.config.api.tokens_file is not None:
        loaded.api_tokens()  # a missing or broken token file is a config error, even for --once
    ctl = build(loaded, dry_run=args.dry_run)
    try:
        if args.once:
            return _once(ctl, out=sys.stdout)
        return _serve(ctl)
    finally:
        ctl.close()


def _once(ctl: Controller, *, out: Any) -> int:
    if ctl.elector is not None and not ctl.jobs.leader():
        raise errors.UserError(
            f"not the leader: {ctl.elector.holder or 'another replica'} holds Lease "
            f"{ctl.elector.namespace}/{ctl.elector.name}; --dry-run shows what this controller would decide"
        )
    report = ctl.reconciler.tick()
    if not ctl.reconciler.dry_run and ctl.pulumi and not ctl.wait_for_applies(timeout_s=ONCE_APPLY_WAIT_S):
        log.warning("applies still running after the wait; the next run picks them up")
    json.dump(codec.encode(report), out, indent=2, sort_keys=True)
    out.write("\n")
    if ctl.elector is not None:
        ctl.elector.release()
    return 0


def _serve(ctl: Controller) -> int:
    """Run until SIGTERM or SIGINT: API first (probes see it start), then the jobs."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = ctl.start_api()
        if server is not None:
            ctl.closers.append(server.stop)
        ctl.jobs.start()
        ctl.closers.append(lambda: ctl.jobs.shutdown(wait=True))
        log.info(
            "controller running",
            extra={
                "pools": [p.name for p in ctl.setup.pools],
                "workloads": [w.name for w in ctl.setup.workloads],
                "tick_interval_s": ctl.loaded.config.tick_interval_s,
                "dry_run": ctl.reconciler.dry_run,
                "api": server.url if server is not None else None,
            },
        )
        stop.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="the live controller", description="Run the live controller from a config file."
    )
    p.add_argument("--config", required=True, type=Path, help="controller config (see examples/aws.yaml)")
    p.add_argument("--once", action="store_true", help="run one tick, print its TickReport as JSON, exit")
    p.add_argument("--dry-run", action="store_true", help="decide and report without committing or acting")
    p.set_defaults(func=run)
