"""The live controller's config file (`gpuburst run --config FILE`): schema, validation and loading.

Validated with pydantic at the edge; every error names the file and the field path, unknown fields are
refused, and cross-field rules (unique names, one adapter kind, a budget that can pay for `min_nodes`)
are checked here so a bad file fails at start, not at the first burst. Relative paths are relative to
the config file's directory. `examples/local.yaml` and `examples/aws.yaml` document every key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from controller.adapters import prometheus as prometheus_adapter
from controller.core import model, policy
from controller.runtime import auth, errors, policy_file, reconciler, store, store_sql
from controller.runtime.pool_schema import Name, PoolFields

WORKER_COMMAND: tuple[str, ...] = (
    sys.executable,
    "-m",
    "workloads.face_compare",
    "serve",
    "--host",
    "{host}",
    "--port",
    "{port}",
    "--device",
    "cpu",
)
"""A local pool's default worker: the face-compare workload's `serve` contract on this interpreter. The
config names it, so the local adapter starts whatever argv it is given."""
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOCAL_EXAMPLE = EXAMPLES / "local.yaml"

_LISTEN = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class WorkloadConfig(_Model):
    """A GPU service kept within its SLO (one `WorkloadSpec`) and how Prometheus finds it."""

    name: Name
    gpu_rps: float = pydantic.Field(gt=0, description="req/s one GPU replica sustains at 100 % busy")
    service_time_s: float = pydantic.Field(gt=0)
    slo_s: float = pydantic.Field(gt=0)
    private_gpus: int = pydantic.Field(ge=0)
    timeout_s: float = pydantic.Field(default=30.0, gt=0, description="how long a request may wait")
    prometheus: prometheus_adapter.WorkloadQueries | None = None
    """Selector, window and query templates; default: `job="<name>"` with the contract's queries."""

    def spec(self) -> model.WorkloadSpec:
        return model.WorkloadSpec(
            self.name, self.gpu_rps, self.service_time_s, self.slo_s, self.private_gpus, self.timeout_s
        )


class PulumiAdapterConfig(_Model):
    """A pool backed by one stack of the gpuburst Pulumi project."""

    kind: Literal["pulumi"]
    stack: str | None = None
    """Stack name; default: the pool's name."""
    work_dir: Path = Path(".")
    """The directory holding Pulumi.yaml (the repository root)."""
    env: dict[str, str] = pydantic.Field(default_factory=dict)
    """Extra environment for the CLI (e.g. AWS_PROFILE); secrets belong in the process environment."""
    create_stack: bool = False


class LocalAdapterConfig(_Model):
    """A pool of face-compare worker processes on this machine (the embedded demo)."""

    kind: Literal["local"]
    boot_delay_s: float = pydantic.Field(
        default=5.0, ge=0, description="simulated node boot before the worker starts"
    )
    worker_command: list[str] | None = pydantic.Field(default=None, min_length=1)
    """argv template ({host}, {port}, {pool}, {node}); default: WORKER_COMMAND (face-compare on the CPU)."""
    env: dict[str, str] = pydantic.Field(default_factory=dict)
    stop_timeout_s: float = pydantic.Field(default=30.0, gt=0)
    deregister_s: float = pydantic.Field(default=0.0, ge=0)
    """How long a drained worker stays up, out of the load balancer, before its SIGTERM."""
    targets_file: Path | None = None
    """A Prometheus file_sd file listing the live workers (scrape it with a file_sd_configs job)."""
    log_dir: Path | None = None
    """Where each worker's output goes; default: a temporary directory."""


AdapterConfig = Annotated[PulumiAdapterConfig | LocalAdapterConfig, pydantic.Field(discriminator="kind")]


class PoolConfig(PoolFields):
    """A cloud pool (one `PoolSpec`), the nodes it always keeps, and the adapter that provides its nodes."""

    min_nodes: int = pydantic.Field(default=0, ge=0)
    adapter: AdapterConfig

    @pydantic.model_validator(mode="after")
    def _bounds(self) -> PoolConfig:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) is above max_nodes ({self.max_nodes})")
        return self

    def spec(self) -> model.PoolSpec:
        return dataclasses.replace(super().spec(), min_nodes=self.min_nodes)


class KubernetesConfig(_Model):
    """API access: `host` (kubectl proxy), a kubeconfig/context, or in-cluster when neither is set."""

    host: str | None = None
    kubeconfig: Path | None = None
    context: str | None = None
    namespace: Name = "face-compare"
    deployment_name: str = "{workload}-burst-{pool}"
    timeout_s: float = pydantic.Field(default=10.0, gt=0)

    @pydantic.field_validator("deployment_name")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(workload="w", pool="p")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{value!r}: only {{workload}} and {{pool}} may be used ({exc})") from None
        return value


class LeaderElectionConfig(_Model):
    enabled: bool = False
    lease_name: Name = "gpuburst-controller"
    namespace: Name | None = None
    """Default: the kubernetes namespace."""
    identity: str | None = None
    """Default: host name plus a random suffix."""
    lease_duration_s: int = pydantic.Field(default=15, ge=2)
    renew_deadline_s: float = pydantic.Field(default=10.0, gt=0)
    retry_period_s: float = pydantic.Field(default=2.0, gt=0)

    @pydantic.model_validator(mode="after")
    def _timing(self) -> LeaderElectionConfig:
        if not self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(
                "need retry_period_s < renew_deadline_s < lease_duration_s, or two replicas could act at once"
            )
        return self


class StoreConfig(_Model):
    """SQLite at `path` (one replica), or the PostgreSQL database at `url` that several replicas share."""

    path: Path = Path("gpuburst.db")
    url: str | None = None
    """postgresql://USER@HOST:PORT/DATABASE; the password never here: in the variable `password_env` names."""
    password_env: str | None = None
    retention_days: float = pydantic.Field(
        default=14.0, gt=0, description="decisions and audit rows older are pruned"
    )

    @pydantic.field_validator("url")
    @classmethod
    def _postgresql(cls, url: str | None) -> str | None:
        if url is not None:
            store_sql.engine_url(url)  # ValueError: pydantic names store.url
        return url

    @pydantic.model_validator(mode="after")
    def _password_with_url(self) -> StoreConfig:
        if self.password_env is not None and self.url is None:
            raise ValueError("password_env is for store.url (PostgreSQL)")
        return self


class ApiConfig(_Model):
    listen: str | None = "127.0.0.1:8080"
    """host:port of the admin API; null turns it off."""
    tokens_file: Path | None = None
    """JSON file of named, hashed bearer tokens (`gpuburst token add`; a mounted Kubernetes Secret works);
    default: `api-tokens.json` next to the store, created at first start with one admin token."""
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    max_body_bytes: int = pydantic.Field(default=1 << 20, ge=1024, le=1 << 30)
    rate_per_s: float = pydantic.Field(default=20.0, gt=0, description="per token, sustained")
    rate_burst: int = pydantic.Field(default=40, ge=1, description="per token, at once")

    @pydantic.model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    @pydantic.field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        m = _LISTEN.match(value)
        if m is None or not 0 <= int(m["port"]) <= 65535:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)")
        return value

    def address(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        m = _LISTEN.match(self.listen)
        assert m is not None  # validated
        return m["host"].strip("[]"), int(m["port"])


class JobsConfig(_Model):
    refresh_interval_s: float = pydantic.Field(
        default=600.0, ge=0, description="pulumi refresh per pool; 0: off"
    )
    orphan_audit_interval_s: float = pydantic.Field(default=300.0, ge=0, description="0: off")
    orphan_grace_s: float | None = pydantic.Field(default=None, gt=0)
    """How long a node may be missing from the cluster before it is reported; default: the boot timeout."""
    retention_interval_s: float = pydantic.Field(default=3600.0, gt=0)


class Config(_Model):
    workloads: list[WorkloadConfig] = pydantic.Field(min_length=1)
    pools: list[PoolConfig] = pydantic.Field(min_length=1)
    prometheus: prometheus_adapter.PrometheusConfig = pydantic.Field(
        default_factory=prometheus_adapter.PrometheusConfig
    )
    """url, timeout_s, retries, max_age_s (the Prometheus adapter's own settings)."""
    kubernetes: KubernetesConfig | None = None
    """Required with pulumi pools; local pools are their own cluster."""
    policy_file: Path | None = None
    """A burst policy (policies/burst/*.yaml); default: policies/burst/default.yaml."""
    store: StoreConfig = pydantic.Field(default_factory=StoreConfig)
    tick_interval_s: float = pydantic.Field(default=15.0, ge=0.1)
    api: ApiConfig = pydantic.Field(default_factory=ApiConfig)
    leader_election: LeaderElectionConfig = pydantic.Field(default_factory=LeaderElectionConfig)
    jobs: JobsConfig = pydantic.Field(default_factory=JobsConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> Config:
        for what, names in (
            ("workloads", [w.name for w in self.workloads]),
            ("pools", [p.name for p in self.pools]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what}: duplicate name(s) {dupes}")
        kinds = {p.adapter.kind for p in self.pools}
        if len(kinds) > 1:
            raise ValueError(
                "pools: every pool uses one adapter kind (local pools are their own cluster; pulumi pools "
                f"join the Kubernetes cluster); got {sorted(kinds)}"
            )
        if self.adapter_kind == "pulumi" and self.kubernetes is None:
            raise ValueError("kubernetes: required with pulumi pools (the burst nodes join that cluster)")
        both = sorted(
            w.name for w in self.workloads if w.prometheus is not None and w.name in self.prometheus.workloads
        )
        if both:
            raise ValueError(f"prometheus.workloads: {both} also set under workloads[].prometheus; keep one")
        if self.leader_election.enabled and self.kubernetes is None:
            raise ValueError("leader_election: needs a kubernetes section (the Lease lives in the cluster)")
        return self

    @property
    def adapter_kind(self) -> str:
        return self.pools[0].adapter.kind

    def prometheus_adapter_config(self) -> prometheus_adapter.PrometheusConfig:
        """The adapter's config with each workload's queries merged in."""
        per_workload = {w.name: w.prometheus for w in self.workloads if w.prometheus is not None}
        return self.prometheus.model_copy(update={"workloads": {**self.prometheus.workloads, **per_workload}})


class Loaded:
    """A validated config with its paths resolved and its burst policy loaded."""

    def __init__(self, config: Config, *, source: Path, burst_policy: policy.BurstPolicy) -> None:
        self.config = config
        self.source = source
        self.policy = burst_policy

    def path(self, p: Path) -> Path:
        """`p` relative to the config file's directory (absolute paths as they are)."""
        return p if p.is_absolute() else (self.source.parent / p).resolve()

    @property
    def store_path(self) -> Path:
        return self.path(self.config.store.path)

    def open_store(self) -> store_sql.AnyStore:
        """The configured store, migrated: PostgreSQL at `store.url`, else SQLite at `store.path`."""
        s = self.config.store
        if s.url is None:
            return store.SqliteStore(_writable(self.store_path))
        password = None
        if s.password_env is not None:
            password = os.environ.get(s.password_env)
            if password is None:
                raise errors.UserError(
                    f"{self.source}: store.password_env: the environment variable {s.password_env} is not set"
                )
        return store_sql.SqlStore(store_sql.engine_url(s.url, password=password))

    def setup(self) -> reconciler.Setup:
        c = self.config
        return reconciler.Setup(
            workloads=tuple(w.spec() for w in c.workloads),
            pools=tuple(p.spec() for p in c.pools),
            policy=self.policy,
        )

    def api_tokens(self) -> auth.Tokens:
        """The configured token file, or the one created in the store's directory at first start."""
        configured = self.config.api.tokens_file
        path = self.path(configured) if configured is not None else auth.first_start(self.store_path.parent)
        return auth.Tokens.load(path)

    @property
    def policy_path(self) -> Path:
        pf = self.config.policy_file
        return policy_file.DEFAULT if pf is None else self.path(pf)


def parse(data: Any, *, source: Path) -> Loaded:
    """A Loaded config from already-parsed YAML; errors name `source` and the field path."""
    config = errors.validated(Config, data, where=source, what="a config")
    if config.policy_file is None:
        burst_policy = policy_file.load()
    else:
        pf = config.policy_file if config.policy_file.is_absolute() else source.parent / config.policy_file
        burst_policy = policy_file.load(pf.resolve())
    _check_budget(config, burst_policy, source=source)
    return Loaded(config, source=source, burst_policy=burst_policy)


def load(path: str | Path) -> Loaded:
    source = Path(path).resolve()
    return parse(errors.read_yaml(source, what="config file"), source=source)


def _check_budget(config: Config, burst_policy: policy.BurstPolicy, *, source: Path) -> None:
    """The budget must pay for the nodes `min_nodes` keeps, or the two rules contradict each other."""
    budget = burst_policy.budget_usd_per_hour
    if budget is None:
        return
    floor = sum(p.min_nodes * p.price_per_hour for p in config.pools)
    if floor > budget + 1e-9:
        raise errors.UserError(
            f"{source}: pools: min_nodes cost {floor:.2f} USD/h, above the policy budget of "
            f"{budget:.2f} USD/h ({config.policy_file or policy_file.DEFAULT})"
        )


def _writable(path: Path) -> Path:
    """The store's path, refused in one line on a read-only volume (SQLite says only "unable to open
    database file", and the steps for a damaged store, moving the file aside, would lose this one)."""
    for p in (path, path.parent):
        if p.exists() and not os.access(p, os.W_OK):
            raise errors.UserError(f"store {path}: {p} is read-only; make it writable and start again")
    return path
