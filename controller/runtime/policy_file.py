"""Burst policy files (`policies/burst/*.yaml`): loaded and validated at the edge into a BurstPolicy."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import pydantic
import yaml

from controller.core import model, policy
from controller.runtime import errors

DEFAULT = Path(str(resources.files("policies") / "burst" / "default.yaml"))
"""The shipped default policy, package data of `policies`."""


_D = policy.BurstPolicy()


class PolicyFile(pydantic.BaseModel):
    """The file's schema: the BurstPolicy fields with their bounds; defaults come from the code."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str = _D.name
    slo_target: float = pydantic.Field(_D.slo_target, gt=0.5, lt=1)
    block_miss_share: float = pydantic.Field(_D.block_miss_share, gt=0, le=1)
    target_utilization: float = pydantic.Field(_D.target_utilization, gt=0, le=1)
    trend_window_s: float = pydantic.Field(_D.trend_window_s, ge=30)
    level_window_s: float = pydantic.Field(_D.level_window_s, ge=0)
    base_window_s: float = pydantic.Field(_D.base_window_s, ge=0)
    error_half_life_s: float = pydantic.Field(_D.error_half_life_s, gt=0)
    slo_window_s: float = pydantic.Field(_D.slo_window_s, ge=3600)
    min_errors: float = pydantic.Field(_D.min_errors, ge=1)
    cold_margin: float = pydantic.Field(_D.cold_margin, ge=0, le=3)
    peak_window_s: float = pydantic.Field(_D.peak_window_s, ge=0)
    peak_margin: float = pydantic.Field(_D.peak_margin, ge=0, le=3)
    horizon_extra_s: float = pydantic.Field(_D.horizon_extra_s, ge=0)
    seasonality: bool = _D.seasonality
    keep_factor: float = pydantic.Field(_D.keep_factor, ge=0)
    backlog_drain_s: float = pydantic.Field(_D.backlog_drain_s, gt=0)
    burst_tiers: list[str] = pydantic.Field(
        default_factory=lambda: sorted(_D.burst_tiers),
        min_length=1,
        json_schema_extra={"items": {"enum": list(model.TIERS), "type": "string"}},
    )
    budget_usd_per_hour: float | None = pydantic.Field(_D.budget_usd_per_hour, ge=0)
    boot_timeout_s: float = pydantic.Field(_D.boot_timeout_s, gt=0)
    drain_timeout_s: float = pydantic.Field(_D.drain_timeout_s, ge=0)

    @pydantic.field_validator("burst_tiers")
    @classmethod
    def _tiers(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(model.TIERS))
        if unknown:
            raise ValueError(f"unknown tier(s) {unknown}; tiers are {list(model.TIERS)}")
        return v


def parse(data: Any, *, where: str) -> policy.BurstPolicy:
    """A BurstPolicy from already-parsed YAML; errors name `where` and the field."""
    p = errors.validated(PolicyFile, {} if data is None else data, where=where, what="a policy")
    fields = p.model_dump()
    fields["burst_tiers"] = frozenset(p.burst_tiers)
    return policy.BurstPolicy(**fields)


def load(path: str | Path = DEFAULT) -> policy.BurstPolicy:
    path = Path(path)
    return parse(errors.read_yaml(path, what="policy file"), where=str(path))


def register(sub: Any) -> None:
    p = sub.add_parser("policy", help="burst policy files")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    v = verbs.add_parser("validate", help="check a burst policy file and print it with every default")
    v.add_argument("file", type=Path)
    v.set_defaults(func=_validate)


def _validate(args: Any) -> int:
    loaded = load(args.file)
    fields = dataclasses.asdict(loaded)
    fields["burst_tiers"] = sorted(loaded.burst_tiers)
    print(f"{args.file}: valid")
    print(yaml.safe_dump(fields, sort_keys=False).rstrip())
    return 0
