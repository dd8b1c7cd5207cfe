"""Runs the policy pack the way the CLI's analyzer does, over what the Pulumi mocks recorded."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pulumi_policy
import pytest
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.proxy import unknown_checking_proxy

from policies.guardrails import pack
from stacks import mocks

Violations = list[tuple[str, str, str | None]]


def _options(resource: mocks.Registered) -> pulumi_policy.PolicyResourceOptions:
    return pulumi_policy.PolicyResourceOptions(
        protect=False,
        ignore_changes=list(resource.ignore_changes),
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=pulumi_policy.PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
        parent=resource.parent,
    )


def _props(resource: mocks.Registered) -> Any:
    # As the analyzer builds them: wire form deserialized, secrets unwrapped, unknowns guarded.
    return unknown_checking_proxy(deserialize_properties(dict(resource.wire_inputs)))


def run_pack(rendering: mocks.Rendering, config: Mapping[str, Mapping[str, Any]] | None = None) -> Violations:
    """Every policy of the pack over every custom resource; (policy, message, urn) per violation."""
    config = config or {}
    resources = [r for r in rendering.resources if r.custom]
    violations: Violations = []
    for policy in pack.policies():
        settings = dict(config.get(policy.name, {}))

        def report(message: str, urn: str | None = None, *, name: str = policy.name) -> None:
            violations.append((name, message, urn))

        if isinstance(policy, pulumi_policy.ResourceValidationPolicy):
            for resource in resources:
                args = pulumi_policy.ResourceValidationArgs(
                    resource.type,
                    _props(resource),
                    resource.urn,
                    resource.name,
                    _options(resource),
                    None,
                    settings,
                )
                policy.validate(args, lambda message, urn=None, r=resource: report(message, r.urn))
        else:
            assert isinstance(policy, pulumi_policy.StackValidationPolicy)
            stack = pulumi_policy.StackValidationArgs(
                [
                    pulumi_policy.PolicyResource(
                        r.type, _props(r), r.urn, r.name, _options(r), None, None, [], {}
                    )
                    for r in resources
                ],
                settings,
            )
            policy.validate(stack, report)
    return violations


@pytest.fixture
def pack_runner() -> Callable[..., Violations]:
    return run_pack
