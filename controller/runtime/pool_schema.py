"""The one schema of a cloud pool as files write it: the controller's config and the simulator's scenarios
both read pools through `PoolFields`, which validates them and builds the `model.PoolSpec`."""

from __future__ import annotations

import re
from typing import Annotated

import pydantic

from controller.core import model

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS label (lowercase letters, digits and '-', at most 63): it becomes "
            "a Kubernetes label value and part of resource names"
        )
    return value


Name = Annotated[str, pydantic.AfterValidator(_dns_label)]


class PoolFields(pydantic.BaseModel):
    """A cloud pool (one `model.PoolSpec`); files extend it with where its nodes come from."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: Name
    gpus_per_node: int = pydantic.Field(ge=1)
    price_per_hour: float = pydantic.Field(ge=0)
    boot_s: float = pydantic.Field(ge=0, description="typical launch-to-ready time")
    max_nodes: int = pydantic.Field(ge=0)
    spot: bool = False

    def spec(self) -> model.PoolSpec:
        return model.PoolSpec(
            self.name,
            gpus_per_node=self.gpus_per_node,
            price_per_hour=self.price_per_hour,
            boot_s=self.boot_s,
            max_nodes=self.max_nodes,
            spot=self.spot,
        )
