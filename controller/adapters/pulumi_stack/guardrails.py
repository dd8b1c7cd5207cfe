"""The CrossGuard guardrails, checked in-process on a pool's desired stack config before any `up`.

The same pure rules (`policies.guardrails.rules`) run in the CLI as the policy pack passed to every `up`
(`POLICY_PACK`); here they run first on what the config asks for, so a node set over the pool's limit, a
forbidden instance type or a spot price over the ceiling is refused with the rule's name before any
cloud call. Only rules decided by the config alone run here (tags, IMDSv2 and encryption are the
program's, and checked by the pack).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import policies.guardrails
from policies.guardrails import rules

POLICY_PACK = Path(policies.guardrails.__file__).resolve().parent
"""The pack directory handed to `Stack.up(policy_packs=...)`: the code whose rules `check` runs."""

_RESOURCE_RULES = ("gpu-instance-types", "spot-max-price", "no-public-ips")
_STACK_RULES = ("max-nodes-per-pool",)


def check(config: Mapping[str, Any]) -> list[str]:
    """Violations of the desired pool config (`gpuburst:*` keys as in a stack file), each prefixed by its
    rule; the pack's defaults apply, as for the pack the controller passes without a config."""
    nodes = _value(config.get("gpuburst:nodes", []))
    if not isinstance(nodes, list):
        return [f"gpuburst:nodes: must be a list, got {nodes!r}"]
    props: dict[str, Any] = {
        "instanceType": config.get("gpuburst:instanceType"),
        "associatePublicIpAddress": _value(config.get("gpuburst:associatePublicIp", False)),
    }
    if config.get("gpuburst:market") == "spot":
        price = config.get("gpuburst:spotMaxPrice")
        props["instanceMarketOptions"] = {"marketType": "spot", "spotOptions": {"maxPrice": price}}
    by_name = {rule.name: rule for rule in rules.RULES}
    found: list[str] = []
    # A missing instance type is the program's error (it names the key), not a guardrail's.
    resource_rules = _RESOURCE_RULES if props["instanceType"] is not None else _RESOURCE_RULES[1:]
    if nodes:  # an empty pool launches nothing: a shrink to zero is never refused
        for name in resource_rules:
            rule = by_name[name]
            assert rule.resource_check is not None
            messages = rule.resource_check(rules.INSTANCE, props, config=rule.config(None))
            found += [f"{name}: {message}" for message in dict.fromkeys(messages)]
    instances = [rules.Resource(rules.INSTANCE, f"node-{n}", f"node-{n}", props) for n in nodes]
    for name in _STACK_RULES:
        rule = by_name[name]
        assert rule.stack_check is not None
        found += [f"{name}: {message}" for message, _ in rule.stack_check(instances, rule.config(None))]
    return found


def _value(raw: Any) -> Any:
    """A stack-file value: YAML already structured, or a JSON string as `pulumi config set` leaves it."""
    if isinstance(raw, str) and raw[:1] in "[{" and raw:
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw
