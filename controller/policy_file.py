"""Burst policy files (`policies/burst/*.yaml`): loaded and validated at the edge into a BurstPolicy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import yaml

from controller import errors
from controller.core import model, policy

DEFAULT = Path(__file__).resolve().parent.parent / "policies" / "burst" / "default.yaml"


class _Policy(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str = "default"
    target_utilization: float = pydantic.Field(0.8, gt=0, le=1)
    scale_down_stabilization_s: float = pydantic.Field(300.0, ge=0)
    backlog_drain_s: float = pydantic.Field(60.0, gt=0)
    burst_tiers: list[str] = pydantic.Field(default_factory=lambda: list(model.TIERS), min_length=1)
    budget_usd_per_hour: float | None = pydantic.Field(None, ge=0)
    boot_timeout_s: float = pydantic.Field(900.0, gt=0)
    drain_timeout_s: float = pydantic.Field(600.0, ge=0)

    @pydantic.field_validator("burst_tiers")
    @classmethod
    def _tiers(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(model.TIERS))
        if unknown:
            raise ValueError(f"unknown tier(s) {unknown}; tiers are {list(model.TIERS)}")
        return v


def parse(data: Any, *, where: str) -> policy.BurstPolicy:
    """A BurstPolicy from already-parsed YAML; errors name `where` and the field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise errors.UserError(f"{where}: a policy is a mapping of fields, got {type(data).__name__}")
    try:
        p = _Policy.model_validate(data)
    except pydantic.ValidationError as exc:
        raise errors.UserError(f"{where}: {describe(exc)}") from None
    fields = p.model_dump()
    fields["burst_tiers"] = frozenset(p.burst_tiers)
    return policy.BurstPolicy(**fields)


def load(path: str | Path = DEFAULT) -> policy.BurstPolicy:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise errors.UserError(f"{path}: cannot read policy file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise errors.UserError(f"{path}: not valid YAML: {exc}") from None
    return parse(data, where=str(path))


def describe(exc: pydantic.ValidationError) -> str:
    """Pydantic's errors as `field.path: message; ...`, the way a person reads them."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
