"""The API's request and response models: strict in, exact out (`extra="forbid"`), times ISO-8601 UTC."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Generic, Literal, TypeVar

import pydantic

from controller import ports
from controller.runtime import policy_file

PROBLEM = "application/problem+json"
Time = Annotated[dt.datetime, pydantic.Field(description="ISO-8601, UTC")]
T = TypeVar("T")


def utc(at: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, tz=dt.UTC)


def opt_utc(at: float | None) -> dt.datetime | None:
    return None if at is None else utc(at)


class _Out(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


def integral(value: Any) -> Any:
    """JSON Schema's integer includes 3.0; strict pydantic would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**63 else value


class OverridesIn(_Out):
    """An operator's overrides; each only tightens what the config allows."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    hold: pydantic.StrictBool = pydantic.Field(False, description="pause bursting: no launch, no release")
    budget_usd_per_hour: float | None = pydantic.Field(
        None, ge=0, le=1e6, allow_inf_nan=False, description="lowers the policy budget"
    )
    max_nodes: Any = pydantic.Field(
        None, description="per pool: lowers max_nodes, up to the pool's configured cap (0 releases the pool)"
    )
    reason: str = pydantic.Field("", max_length=500)


def overrides_model(pools: Mapping[str, int]) -> type[OverridesIn]:
    """OverridesIn with `max_nodes` spelled per pool, each bounded by its configured cap, so the
    OpenAPI schema itself says which pools exist and how far each may go."""
    fields: dict[str, Any] = {
        f"pool_{i}": (
            Annotated[int, pydantic.Field(ge=0, le=cap), pydantic.BeforeValidator(integral)] | None,
            pydantic.Field(None, alias=name),
        )
        for i, (name, cap) in enumerate(sorted(pools.items()))
    }
    config = pydantic.ConfigDict(extra="forbid", strict=True)
    caps = pydantic.create_model("MaxNodesIn", __config__=config, **fields)
    return pydantic.create_model(
        "OverridesIn", __base__=OverridesIn, max_nodes=(caps, pydantic.Field(default_factory=caps))
    )


class OverridesOut(_Out):
    hold: bool
    budget_usd_per_hour: float | None
    max_nodes: dict[str, int]
    reason: str
    drain: list[str] = pydantic.Field(
        description="nodes asked to drain and release (POST /v1/nodes/{name}/drain)"
    )
    paused: list[str] = pydantic.Field(description="pools that neither launch nor release")


class Health(_Out):
    status: str


class Ready(_Out):
    ready: bool
    leader: bool
    problems: dict[str, str]


class Whoami(_Out):
    name: str
    role: str


class Status(_Out):
    leader: bool
    store_version: int
    last_tick_at: Time | None
    overrides: OverridesOut
    report: dict[str, Any] | None = pydantic.Field(description="the last tick's report (times in epoch s)")


class Node(_Out):
    name: str
    pool: str
    status: str
    since: Time
    requested_at: Time
    ready_at: Time | None
    reason: str


class Decision(_Out):
    id: int
    version: int
    at: Time
    action: str
    decision: dict[str, Any]
    inputs: dict[str, Any]
    desired: dict[str, Any]


class AuditEntry(_Out):
    id: int
    at: Time
    action: str
    actor: str | None
    target: str | None
    node: str | None
    pool: str | None
    before: str | None
    after: str | None
    detail: str
    request_id: str | None


class Page(_Out, Generic[T]):
    items: list[T]
    next_cursor: str | None = pydantic.Field(description="pass as `cursor` for the next (older) page")


class PoolCost(_Out):
    node_seconds: float
    usd: float


class HourCost(_Out):
    pool: str
    hour: Time
    node_seconds: float
    usd: float


class Ledger(_Out):
    pools: dict[str, PoolCost]
    total_usd: float
    hourly: list[HourCost]


class PolicyOut(_Out):
    policy: dict[str, Any]
    changed: dict[str, list[Any]] = pydantic.Field(description="field → [running, new]")
    applied: bool


class WhatIfRow(_Out):
    """One contender's figures, as `gpuburst simulate --json` writes them."""

    policy: str
    slo_attainment: float
    dropped: int
    p99_latency_ms: float
    cloud_cost_usd: float
    cost_vs_oracle: float | None
    burst_gpu_hours: float
    max_burst_nodes: int
    launches: int
    releases: int
    interruptions: int


class WhatIfReport(_Out):
    scenario: str
    duration_s: int
    requests: int
    results: list[WhatIfRow]


class WhatIfJob(_Out):
    id: str
    scenario: str
    state: Literal["running", "done", "failed"]
    progress: float = pydantic.Field(ge=0, le=1)
    created_at: Time
    finished_at: Time | None
    error: str | None
    result: WhatIfReport | None = pydantic.Field(description="the result table, once done")
    plot: str | None = pydantic.Field(description="the plot's path, once done")


class Problem(pydantic.BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": Problem, "content": {PROBLEM: {}}} for c in codes}


# Every /v1 route can answer these.
V1_ERRORS = problems(400, 401, 403, 413, 422, 429)


class PolicyIn(policy_file.PolicyFile):
    """A policy file's fields as JSON, strictly typed (`false` is no duration)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=True)


class Reconciled(_Out):
    ticked: bool
    report: dict[str, Any] | None


def overrides_out(ov: ports.Overrides) -> OverridesOut:
    return OverridesOut(
        hold=ov.hold,
        budget_usd_per_hour=ov.budget_usd_per_hour,
        max_nodes=dict(ov.max_nodes),
        reason=ov.reason,
        drain=list(ov.drain),
        paused=list(ov.paused),
    )
