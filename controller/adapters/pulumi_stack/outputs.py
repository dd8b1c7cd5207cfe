"""The pool stack's contract: the desired node set goes in as `gpuburst:nodes` config, the instances come
out as the `nodes` output; and the results the worker and the refresh report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pydantic
from pulumi import automation as auto

from controller.adapters.pulumi_stack.failures import Outcome

NODES_CONFIG = "gpuburst:nodes"
NODES_OUTPUT = "nodes"

GONE_STATES = frozenset({"shutting-down", "terminated"})
"""EC2 instance states that will never serve again: such an instance counts as vanished."""


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
