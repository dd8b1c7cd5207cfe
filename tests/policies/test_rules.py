"""Each guardrail on resources that pass and resources that violate it, with its defaults applied."""

from __future__ import annotations

from typing import Any

import pytest

from policies.guardrails import rules

RULE = {rule.name: rule for rule in rules.RULES}
TAGS = {"gpuburst.io/pool": "aws-g5-spot", "managed-by": "gpuburst", "cost-center": "ml"}
NODE_TAGS = {**TAGS, "gpuburst.io/node": "n1"}
GOOD_INSTANCE: dict[str, Any] = {
    "instanceType": "g5.xlarge",
    "tags": NODE_TAGS,
    "metadataOptions": {"httpTokens": "required"},
    "rootBlockDevice": {"encrypted": True},
    "associatePublicIpAddress": False,
    "instanceMarketOptions": {"marketType": "spot", "spotOptions": {"maxPrice": "0.9"}},
}
GOOD_TEMPLATE: dict[str, Any] = {
    "tags": TAGS,
    "metadataOptions": {"httpTokens": "required"},
    "blockDeviceMappings": [{"deviceName": "/dev/sda1", "ebs": {"encrypted": "true"}}],
}


def check(name: str, type_: str, props: dict[str, Any], config: dict[str, Any] | None = None) -> list[str]:
    rule = RULE[name]
    assert rule.resource_check is not None
    return rule.resource_check(type_, props, config=rule.config(config))


def test_good_resources_pass_every_rule() -> None:
    for rule in rules.RULES:
        if rule.resource_check is None:
            continue
        assert check(rule.name, rules.INSTANCE, GOOD_INSTANCE) == [], rule.name
        assert check(rule.name, rules.LAUNCH_TEMPLATE, GOOD_TEMPLATE) == [], rule.name


def test_config_defaults_apply_and_unknown_keys_are_dropped() -> None:
    rule = RULE["spot-max-price"]
    assert rule.config(None) == {"spotMaxPriceCeiling": 1.5}
    assert rule.config({"spotMaxPriceCeiling": 3, "enforcementLevel": "advisory"}) == {
        "spotMaxPriceCeiling": 3
    }


@pytest.mark.parametrize(
    ("type_", "props", "config", "violates"),
    [
        (rules.INSTANCE, {"instanceType": "g5.xlarge"}, None, False),
        (rules.INSTANCE, {"instanceType": "p4d.24xlarge"}, None, True),
        (rules.INSTANCE, {"instanceType": "m5.large"}, None, True),
        (rules.INSTANCE, {"instanceType": "g6e.xlarge"}, {"allowedInstanceTypes": ["g6e.*"]}, False),
        (rules.INSTANCE, {"instanceType": "g5.xlarge"}, {"allowedInstanceTypes": ["g6e.*"]}, True),
        (rules.INSTANCE, {}, None, True),
        (rules.INSTANCE, {"launchTemplate": {"id": "lt-1"}}, None, False),
        (rules.LAUNCH_TEMPLATE, {"instanceType": "p5.48xlarge"}, None, True),
        (rules.SPOT_REQUEST, {"instanceType": "g4dn.xlarge"}, None, False),
        ("aws:ec2/vpc:Vpc", {"instanceType": "p5.48xlarge"}, None, False),
    ],
)
def test_gpu_instance_types(
    type_: str, props: dict[str, Any], config: dict[str, Any] | None, violates: bool
) -> None:
    assert bool(check("gpu-instance-types", type_, props, config)) is violates


def test_gpu_instance_types_names_the_offender() -> None:
    [message] = check("gpu-instance-types", rules.INSTANCE, {"instanceType": "p4d.24xlarge"})
    assert message.startswith("instance type p4d.24xlarge is not allowed (allowed: g4dn.xlarge, ")


@pytest.mark.parametrize(
    ("type_", "tags", "expected"),
    [
        (rules.INSTANCE, NODE_TAGS, []),
        (rules.INSTANCE, TAGS, ["missing required tags: gpuburst.io/node"]),
        (
            rules.INSTANCE,
            None,
            ["missing required tags: gpuburst.io/pool, managed-by, cost-center, gpuburst.io/node"],
        ),
        (rules.INSTANCE, {**NODE_TAGS, "cost-center": ""}, ["missing required tags: cost-center"]),
        ("aws:ec2/securityGroup:SecurityGroup", TAGS, []),
        (
            "aws:ec2/vpc:Vpc",
            {"managed-by": "gpuburst"},
            ["missing required tags: gpuburst.io/pool, cost-center"],
        ),
        ("aws:ec2/route:Route", None, []),  # not taggable
        ("kubernetes:apps/v1:Deployment", None, []),
    ],
)
def test_required_tags(type_: str, tags: dict[str, str] | None, expected: list[str]) -> None:
    props = {} if tags is None else {"tags": tags}
    assert check("required-tags", type_, props) == expected


def test_required_tags_are_configurable() -> None:
    config = {"requiredTags": ["team"], "requiredInstanceTags": []}
    assert check("required-tags", rules.INSTANCE, {"tags": {"team": "ml"}}, config) == []
    assert check("required-tags", rules.INSTANCE, {"tags": NODE_TAGS}, config) == [
        "missing required tags: team"
    ]


@pytest.mark.parametrize(
    ("type_", "options", "violates"),
    [
        (rules.INSTANCE, {"httpTokens": "required"}, False),
        (rules.INSTANCE, {"httpTokens": "optional"}, True),
        (rules.INSTANCE, None, True),
        (rules.INSTANCE, {"httpEndpoint": "disabled"}, False),
        (rules.LAUNCH_TEMPLATE, {"httpTokens": "required", "httpEndpoint": "enabled"}, False),
        (rules.LAUNCH_TEMPLATE, {"httpEndpoint": "enabled"}, True),
        ("aws:ec2/subnet:Subnet", None, False),
    ],
)
def test_imdsv2_required(type_: str, options: dict[str, str] | None, violates: bool) -> None:
    props = {} if options is None else {"metadataOptions": options}
    assert bool(check("imdsv2-required", type_, props)) is violates


@pytest.mark.parametrize(
    ("type_", "props", "expected"),
    [
        (rules.INSTANCE, {"rootBlockDevice": {"encrypted": True}}, []),
        (
            rules.INSTANCE,
            {"rootBlockDevice": {"encrypted": False}},
            ["rootBlockDevice.encrypted must be true"],
        ),
        (rules.INSTANCE, {}, ["rootBlockDevice.encrypted must be true"]),
        (
            rules.INSTANCE,
            {
                "rootBlockDevice": {"encrypted": True},
                "ebsBlockDevices": [{"encrypted": True}, {"volumeSize": 9}],
            },
            ["ebsBlockDevices[1].encrypted must be true"],
        ),
        (rules.LAUNCH_TEMPLATE, {"blockDeviceMappings": [{"ebs": {"encrypted": "true"}}]}, []),
        (
            rules.LAUNCH_TEMPLATE,
            {"blockDeviceMappings": [{"ebs": {"encrypted": "false"}}]},
            ["blockDeviceMappings[0].ebs.encrypted must be true"],
        ),
        (rules.LAUNCH_TEMPLATE, {}, ["blockDeviceMappings must declare the root volume, encrypted"]),
        (rules.VOLUME, {"encrypted": True}, []),
        (rules.VOLUME, {}, ["encrypted must be true"]),
    ],
)
def test_encrypted_volumes(type_: str, props: dict[str, Any], expected: list[str]) -> None:
    assert check("encrypted-volumes", type_, props) == expected


@pytest.mark.parametrize(
    ("type_", "props", "violates"),
    [
        (rules.INSTANCE, {"associatePublicIpAddress": False}, False),
        (rules.INSTANCE, {"associatePublicIpAddress": True}, True),
        (rules.INSTANCE, {}, True),  # unset: the subnet decides, which may hand one out
        (rules.LAUNCH_TEMPLATE, {}, False),
        (rules.LAUNCH_TEMPLATE, {"networkInterfaces": [{"associatePublicIpAddress": "false"}]}, False),
        (rules.LAUNCH_TEMPLATE, {"networkInterfaces": [{"associatePublicIpAddress": "true"}]}, True),
        (rules.SUBNET, {"mapPublicIpOnLaunch": False}, False),
        (rules.SUBNET, {"mapPublicIpOnLaunch": True}, True),
        (rules.EIP, {"domain": "vpc"}, False),  # the NAT gateway's address
        (rules.EIP, {"domain": "vpc", "instance": "i-0123"}, True),
    ],
)
def test_no_public_ips(type_: str, props: dict[str, Any], violates: bool) -> None:
    assert bool(check("no-public-ips", type_, props)) is violates


@pytest.mark.parametrize(
    ("type_", "props", "expected"),
    [
        (
            rules.INSTANCE,
            {"instanceMarketOptions": {"marketType": "spot", "spotOptions": {"maxPrice": "1.5"}}},
            [],
        ),
        (
            rules.INSTANCE,
            {"instanceMarketOptions": {"marketType": "spot", "spotOptions": {"maxPrice": "1.51"}}},
            ["spot max price 1.51 USD/h is above the ceiling of 1.5 USD/h"],
        ),
        (
            rules.INSTANCE,
            {"instanceMarketOptions": {"marketType": "spot"}},
            ["spot max price must be set (at most 1.5 USD/h)"],
        ),
        (
            rules.INSTANCE,
            {"instanceMarketOptions": {"marketType": "spot", "spotOptions": {"maxPrice": "cheap"}}},
            ["spot max price 'cheap' is not a number"],
        ),
        (rules.INSTANCE, {}, []),  # on-demand
        (
            rules.LAUNCH_TEMPLATE,
            {"instanceMarketOptions": {"marketType": "spot", "spotOptions": {"maxPrice": "4"}}},
            ["spot max price 4 USD/h is above the ceiling of 1.5 USD/h"],
        ),
        (rules.SPOT_REQUEST, {"spotPrice": "0.7"}, []),
        (rules.SPOT_REQUEST, {}, ["spot max price must be set (at most 1.5 USD/h)"]),
    ],
)
def test_spot_max_price(type_: str, props: dict[str, Any], expected: list[str]) -> None:
    assert check("spot-max-price", type_, props) == expected


def test_spot_max_price_ceiling_is_configurable() -> None:
    props = {"instanceMarketOptions": {"marketType": "spot", "spotOptions": {"maxPrice": "2.0"}}}
    assert check("spot-max-price", rules.INSTANCE, props, {"spotMaxPriceCeiling": 2.5}) == []


@pytest.mark.parametrize(
    ("spec_type", "annotations", "config", "violates"),
    [
        ("ClusterIP", None, None, False),
        ("LoadBalancer", None, None, True),
        ("LoadBalancer", {"gpuburst.io/allow-load-balancer": "false"}, None, True),
        ("LoadBalancer", {"gpuburst.io/allow-load-balancer": "true"}, None, False),
        ("LoadBalancer", {"example.com/public": "true"}, {"annotation": "example.com/public"}, False),
    ],
)
def test_load_balancer_annotation(
    spec_type: str, annotations: dict[str, str] | None, config: dict[str, Any] | None, violates: bool
) -> None:
    metadata: dict[str, Any] = {"name": "face-compare"}
    if annotations is not None:
        metadata["annotations"] = annotations
    props = {"metadata": metadata, "spec": {"type": spec_type}}
    assert bool(check("load-balancer-annotation", rules.SERVICE, props, config)) is violates


def test_max_nodes_per_pool() -> None:
    rule = RULE["max-nodes-per-pool"]
    assert rule.stack_check is not None

    def stack(count: int) -> list[rules.Resource]:
        nodes = [rules.Resource(rules.INSTANCE, f"node-{i}", f"urn:{i}", GOOD_INSTANCE) for i in range(count)]
        return [*nodes, rules.Resource("aws:ec2/vpc:Vpc", "vpc", "urn:vpc", {})]

    assert rule.stack_check(stack(8), rule.config(None)) == []
    assert rule.stack_check(stack(9), rule.config(None)) == [
        ("9 GPU instances in the stack, more than the limit of 8", None)
    ]
    assert rule.stack_check(stack(3), rule.config({"maxNodes": 2})) != []
