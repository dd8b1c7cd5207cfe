"""The whole pack as the CLI runs it: over the example stacks (clean) and a deliberately bad pool."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pulumi_policy
import pytest
import yaml

from policies.guardrails import pack, rules
from stacks import mocks, program

REPO = Path(__file__).resolve().parents[2]

Runner = Callable[..., list[tuple[str, str, str | None]]]


def render_example(name: str, **overrides: str) -> mocks.Rendering:
    cfg, secret_keys = mocks.stack_file_config(REPO / f"Pulumi.{name}.yaml", secrets={})
    cfg.update({f"gpuburst:{key}": value for key, value in overrides.items()})
    return mocks.render(program.main, config=cfg, secret_keys=secret_keys, stack=name)


def test_the_pack_holds_every_rule_mandatory_with_defaults_in_its_schema() -> None:
    policies = pack.policies()

    assert [p.name for p in policies] == [rule.name for rule in rules.RULES]
    assert {p.name for p in policies} == {
        "gpu-instance-types",
        "max-nodes-per-pool",
        "required-tags",
        "imdsv2-required",
        "encrypted-volumes",
        "no-public-ips",
        "spot-max-price",
        "load-balancer-annotation",
    }
    for policy, rule in zip(policies, rules.RULES, strict=True):
        assert policy.enforcement_level == pulumi_policy.EnforcementLevel.MANDATORY
        assert policy.config_schema is not None
        assert {k: v.get("default") for k, v in policy.config_schema.properties.items()} == dict(
            rule.defaults
        )


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("aws-g5-spot", {"nodes": '["aws-g5-spot-1", "aws-g5-spot-2"]'}),
        ("aws-g5-ondemand", {"nodes": '["od-1", "od-2", "od-3"]'}),
        ("private-cluster", {}),
    ],
)
def test_example_stacks_pass_the_pack(pack_runner: Runner, name: str, overrides: dict[str, str]) -> None:
    rendering = render_example(name, **overrides)
    if name.startswith("aws-"):
        assert rendering.of_type(rules.INSTANCE)  # the rules had something to look at

    assert pack_runner(rendering) == []


def test_a_bad_pool_is_reported_by_each_guardrail_it_breaks(pack_runner: Runner) -> None:
    nodes = [f"big-{i}" for i in range(9)]
    rendering = render_example(
        "aws-g5-spot",
        nodes=json.dumps(nodes),
        instanceType="p4d.24xlarge",
        spotMaxPrice="12.5",
        associatePublicIp="true",
    )

    violations = pack_runner(rendering)

    by_policy: dict[str, list[str]] = {}
    for policy, message, _ in violations:
        by_policy.setdefault(policy, []).append(message)
    assert set(by_policy) == {"gpu-instance-types", "max-nodes-per-pool", "spot-max-price", "no-public-ips"}
    assert len(by_policy["gpu-instance-types"]) == 9
    assert by_policy["max-nodes-per-pool"] == ["9 GPU instances in the stack, more than the limit of 8"]
    assert by_policy["spot-max-price"] == ["spot max price 12.5 USD/h is above the ceiling of 1.5 USD/h"] * 9
    assert by_policy["no-public-ips"] == ["associatePublicIpAddress must be false"] * 9
    instance_urns = {r.urn for r in rendering.of_type(rules.INSTANCE)}
    assert {urn for policy, _, urn in violations if policy != "max-nodes-per-pool"} == instance_urns


def test_pack_config_overrides_the_defaults(pack_runner: Runner) -> None:
    rendering = render_example("aws-g5-spot", nodes='["aws-g5-spot-1", "aws-g5-spot-2"]')

    violations = pack_runner(
        rendering,
        {
            "gpu-instance-types": {"allowedInstanceTypes": ["g6.*"]},
            "max-nodes-per-pool": {"maxNodes": 1},
            "spot-max-price": {"spotMaxPriceCeiling": 0.5},
        },
    )

    assert sorted({policy for policy, _, _ in violations}) == [
        "gpu-instance-types",
        "max-nodes-per-pool",
        "spot-max-price",
    ]


def test_policy_pack_project_uses_the_project_environment() -> None:
    project = yaml.safe_load((REPO / "policies" / "guardrails" / "PulumiPolicy.yaml").read_text())

    assert project["runtime"]["name"] == "python"
    venv = REPO / "policies" / "guardrails" / project["runtime"]["options"]["virtualenv"]
    assert venv.resolve() == (REPO / ".venv").resolve()
    main = (REPO / "policies" / "guardrails" / "__main__.py").read_text()
    assert "PolicyPack(name=pack.PACK_NAME, policies=pack.policies())" in main
