"""The GPU pool stack under Pulumi mocks: one instance per node name, guarded, and nothing else moves."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from stacks import config, mocks, pool
from tests.stacks.conftest import JOIN_SECRET_ARN, POOL
from tests.stacks.test_bootstrap import settings

INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"

Render = Callable[..., mocks.Rendering]


def instances(rendering: mocks.Rendering) -> dict[str, mocks.Registered]:
    return {r.name: r for r in rendering.of_type(INSTANCE)}


def test_one_instance_per_node_name_with_type_tags_and_guarantees(render_pool: Render) -> None:
    rendering = render_pool()

    nodes = instances(rendering)
    assert sorted(nodes) == ["node-node-a", "node-node-b", "node-node-c"]
    for name, instance in nodes.items():
        node = name.removeprefix("node-")
        inputs = instance.inputs
        assert inputs["instanceType"] == "g5.xlarge"
        assert inputs["tags"] == {
            "gpuburst.io/pool": "aws-g5-spot",
            "gpuburst.io/node": node,
            "managed-by": "gpuburst",
            "cost-center": "ml-inference",
            "Name": f"aws-g5-spot-{node}",
        }
        assert inputs["metadataOptions"]["httpTokens"] == "required"
        assert inputs["rootBlockDevice"]["encrypted"] is True
        assert inputs["associatePublicIpAddress"] is False
        assert inputs["instanceMarketOptions"] == {
            "marketType": "spot",
            "spotOptions": {
                "maxPrice": "0.9",
                "spotInstanceType": "one-time",
                "instanceInterruptionBehavior": "terminate",
            },
        }
        # Launch-time settings never cause an update of a running node.
        assert set(instance.ignore_changes) == {"launchTemplate", "userData"}
        assert instance.parent.endswith("gpuburst:aws:GpuPool::aws-g5-spot")


def test_on_demand_pool_has_no_market_options(render_pool: Render) -> None:
    rendering = render_pool(stack="aws-g5-ondemand", market="on-demand", spotMaxPrice=None)

    for instance in instances(rendering).values():
        assert "instanceMarketOptions" not in instance.inputs
        assert instance.inputs["tags"]["gpuburst.io/pool"] == "aws-g5-ondemand"


def test_user_data_joins_with_the_contract_labels_and_taint(render_pool: Render) -> None:
    instance = render_pool().get(INSTANCE, "node-node-b")
    script = instance.inputs["userData"]

    assert script == pool.node_user_data(
        config.parse_pool({k.split(":")[1]: v for k, v in POOL.items()}, stack="aws-g5-spot"), "node-b"
    )
    assert "userData" not in instance.secret_inputs  # it holds no secret: the node fetches the token
    assert script.startswith("#!/bin/bash\n")
    # What kubelet gets, as bash evaluates the script's settings.
    shown = settings(script)
    assert shown["NODE_NAME"] == "node-b"
    assert dict(label.split("=") for label in shown["NODE_LABELS"].split(",")) == {
        "gpuburst.io/pool": "aws-g5-spot",
        "gpuburst.io/node": "node-b",
        "gpuburst.io/placement": "burst",
    }
    assert shown["NODE_TAINTS"] == "gpuburst.io/burst=true:NoSchedule"
    assert shown["KUBERNETES_MINOR"] == "1.33"
    assert shown["JOIN_SECRET_ARN"] == JOIN_SECRET_ARN


def test_node_role_reads_exactly_the_join_secret(render_pool: Render) -> None:
    rendering = render_pool()

    [policy] = rendering.of_type("aws:iam/rolePolicy:RolePolicy")
    [role] = rendering.of_type("aws:iam/role:Role")
    assert policy.inputs["role"] == role.name
    assert json.loads(policy.inputs["policy"]) == {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": JOIN_SECRET_ARN}
        ],
    }


def test_removing_a_name_removes_exactly_that_instance(render_pool: Render) -> None:
    before = render_pool(nodes='["node-a", "node-b", "node-c"]')
    after = render_pool(nodes='["node-a", "node-c"]')

    def state(rendering: mocks.Rendering) -> dict[str, Any]:
        return {r.urn: r.inputs for r in rendering.resources}

    removed = set(state(before)) - set(state(after))
    assert removed == {before.get(INSTANCE, "node-node-b").urn}
    assert set(state(after)) <= set(state(before))
    # Every remaining resource is registered with the same inputs, so nothing else is updated or replaced.
    for urn, inputs in state(after).items():
        assert inputs == state(before)[urn], urn
    assert sorted(after.outputs["nodes"]) == ["node-a", "node-c"]


def test_adding_a_name_adds_exactly_that_instance(render_pool: Render) -> None:
    before = render_pool(nodes='["node-a"]')
    after = render_pool(nodes='["node-a", "node-b"]')

    before_urns = {r.urn: r.inputs for r in before.resources}
    added = [r for r in after.resources if r.urn not in before_urns]
    assert [(r.type, r.name) for r in added] == [(INSTANCE, "node-node-b")]
    assert all(before_urns[r.urn] == r.inputs for r in after.resources if r.urn in before_urns)


def test_nodes_spread_over_subnets_by_name() -> None:
    names = [f"node-{i}" for i in range(40)]
    placements = {name: pool.subnet_index(name, 2) for name in names}
    assert set(placements.values()) == {0, 1}
    assert placements == {name: pool.subnet_index(name, 2) for name in reversed(names)}


def test_nodes_export_per_contract(render_pool: Render) -> None:
    rendering = render_pool()

    exported = rendering.outputs["nodes"]
    assert sorted(exported) == ["node-a", "node-b", "node-c"]
    for name, record in exported.items():
        instance = rendering.get(INSTANCE, f"node-{name}")
        assert set(record) == {"instance_id", "private_ip", "state"}
        assert record["instance_id"].startswith("i-")
        assert record["state"] == "running"
        assert record["private_ip"].startswith("10.42.")
        assert instance.inputs["instanceType"] == "g5.xlarge"
    assert json.loads(json.dumps(exported)) == exported  # plain JSON for the Automation API


def test_empty_pool_exports_an_empty_map(render_pool: Render) -> None:
    rendering = render_pool(nodes="[]")

    assert rendering.of_type(INSTANCE) == []
    assert rendering.outputs["nodes"] == {}
    assert rendering.of_type(LAUNCH_TEMPLATE)  # the pool is ready for its first node


def test_launch_template_looks_up_the_gpu_ami_and_requires_imdsv2_and_encryption(render_pool: Render) -> None:
    ami_requests: list[dict[str, Any]] = []

    def get_ami(args: Any) -> dict[str, Any]:
        ami_requests.append(dict(args))
        return {"id": "ami-0fedcba9876543210", "rootDeviceName": "/dev/xvda"}

    rendering = render_pool(calls={"aws:ec2/getAmi:getAmi": get_ami}, amiName="my-gpu-ami-*")

    [request] = ami_requests
    filters = {f["name"]: f["values"] for f in request["filters"]}
    assert filters["name"] == ["my-gpu-ami-*"]
    assert filters["architecture"] == ["x86_64"]  # what the instance type supports
    assert request["owners"] == ["amazon"] and request["mostRecent"] is True
    [template] = rendering.of_type(LAUNCH_TEMPLATE)
    inputs = template.inputs
    assert inputs["imageId"] == "ami-0fedcba9876543210"
    assert inputs["metadataOptions"] == {
        "httpEndpoint": "enabled",
        "httpTokens": "required",
        "httpPutResponseHopLimit": 1,
    }
    assert inputs["blockDeviceMappings"] == [
        {
            "deviceName": "/dev/xvda",
            "ebs": {
                "encrypted": "true",
                "volumeSize": 200,
                "volumeType": "gp3",
                "deleteOnTermination": "true",
            },
        }
    ]
    assert "networkInterfaces" not in inputs  # no public IP from the template either
    for instance in rendering.of_type(INSTANCE):
        assert instance.inputs["launchTemplate"] == {
            "id": rendering.outputs["launchTemplateId"],
            "version": "$Default",
        }


def test_security_group_admits_only_the_cluster(render_pool: Render) -> None:
    [group] = render_pool().of_type(SECURITY_GROUP)

    ingress = group.inputs["ingress"]
    assert {tuple(rule.get("cidrBlocks", ())) for rule in ingress} == {("10.0.0.0/16", "10.244.0.0/16"), ()}
    assert [rule.get("self") for rule in ingress if not rule.get("cidrBlocks")] == [True]
    open_egress = [rule for rule in group.inputs["egress"] if "0.0.0.0/0" in rule.get("cidrBlocks", ())]
    assert sorted((rule["protocol"], rule["fromPort"]) for rule in open_egress) == [("tcp", 80), ("tcp", 443)]


def test_explicit_ami_skips_the_lookup_by_name(render_pool: Render) -> None:
    ami_requests: list[dict[str, Any]] = []
    type_requests: list[dict[str, Any]] = []

    def get_ami(args: Any) -> dict[str, Any]:
        ami_requests.append(dict(args))
        return {"id": "ami-0aaaabbbbccccdddd", "rootDeviceName": "/dev/sda1"}

    def get_instance_type(args: Any) -> dict[str, Any]:
        type_requests.append(dict(args))
        return {"instanceType": args["instanceType"], "supportedArchitectures": ["x86_64"]}

    rendering = render_pool(
        calls={
            "aws:ec2/getAmi:getAmi": get_ami,
            "aws:ec2/getInstanceType:getInstanceType": get_instance_type,
        },
        ami="ami-0aaaabbbbccccdddd",
    )

    # Described by id only, for its root device: no name filter, no owner, no "most recent".
    [request] = ami_requests
    assert request["filters"] == [{"name": "image-id", "values": ["ami-0aaaabbbbccccdddd"]}]
    assert "owners" not in request and "mostRecent" not in request
    assert type_requests == []
    [template] = rendering.of_type(LAUNCH_TEMPLATE)
    assert template.inputs["imageId"] == "ami-0aaaabbbbccccdddd"
    assert template.inputs["blockDeviceMappings"][0]["deviceName"] == "/dev/sda1"


def test_default_ami_is_the_gpu_base_image_with_driver_and_toolkit(render_pool: Render) -> None:
    ami_requests: list[dict[str, Any]] = []

    def get_ami(args: Any) -> dict[str, Any]:
        ami_requests.append(dict(args))
        return {"id": "ami-0fedcba9876543210", "rootDeviceName": "/dev/sda1"}

    render_pool(calls={"aws:ec2/getAmi:getAmi": get_ami})

    [request] = ami_requests
    filters = {f["name"]: f["values"] for f in request["filters"]}
    assert filters["name"] == ["Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"]
    assert request["owners"] == ["amazon"] and request["mostRecent"] is True


def test_node_role_has_no_permissions_unless_granted(render_pool: Render) -> None:
    attachment = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
    rendering = render_pool()
    [role] = rendering.of_type("aws:iam/role:Role")
    trust = json.loads(role.inputs["assumeRolePolicy"])
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ec2.amazonaws.com"}]
    assert rendering.of_type(attachment) == []  # only the join secret (tested above)

    ssm = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    granted = render_pool(nodePolicyArns=json.dumps([ssm])).of_type(attachment)
    assert [r.inputs["policyArn"] for r in granted] == [ssm]


def test_small_vpc_when_none_is_given(render_pool: Render) -> None:
    rendering = render_pool()

    [vpc] = rendering.of_type("aws:ec2/vpc:Vpc")
    assert vpc.inputs["cidrBlock"] == "10.42.0.0/16"
    subnets = {r.name: r.inputs for r in rendering.of_type("aws:ec2/subnet:Subnet")}
    # Private subnets in the two first zones offering the instance type, plus one for the NAT gateway.
    assert sorted(subnets) == [
        "aws-g5-spot-egress",
        "aws-g5-spot-private-eu-west-1a",
        "aws-g5-spot-private-eu-west-1b",
    ]
    assert not any(s["mapPublicIpOnLaunch"] for s in subnets.values())
    node_subnets = {i.inputs["subnetId"] for i in rendering.of_type(INSTANCE)}
    assert node_subnets <= set(rendering.outputs["subnetIds"])
    assert len(rendering.outputs["subnetIds"]) == 2
    assert rendering.of_type("aws:ec2/natGateway:NatGateway")


def test_existing_vpc_and_subnets_from_config(render_pool: Render) -> None:
    subnets = ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"]
    rendering = render_pool(vpcId="vpc-0123456789abcdef0", subnetIds=json.dumps(subnets))

    assert rendering.of_type("aws:ec2/vpc:Vpc") == []
    assert rendering.of_type("aws:ec2/subnet:Subnet") == []
    [group] = rendering.of_type(SECURITY_GROUP)
    assert group.inputs["vpcId"] == "vpc-0123456789abcdef0"
    assert {i.inputs["subnetId"] for i in rendering.of_type(INSTANCE)} <= set(subnets)
    assert rendering.outputs["subnetIds"] == subnets


def test_vpn_is_off_by_default(render_pool: Render) -> None:
    rendering = render_pool()

    assert not [r for r in rendering.resources if r.type.startswith("aws:ec2/vpn")]
    assert "vpnTunnelAddresses" not in rendering.outputs


def test_vpn_from_config_routes_the_cluster_cidrs(render_pool: Render) -> None:
    rendering = render_pool(vpn='{"customerGatewayIp": "203.0.113.10", "bgpAsn": 65010}')

    [customer] = rendering.of_type("aws:ec2/customerGateway:CustomerGateway")
    assert customer.inputs["ipAddress"] == "203.0.113.10"
    assert customer.inputs["bgpAsn"] == "65010"
    [connection] = rendering.of_type("aws:ec2/vpnConnection:VpnConnection")
    assert connection.inputs["staticRoutesOnly"] is True
    routes = rendering.of_type("aws:ec2/vpnConnectionRoute:VpnConnectionRoute")
    assert sorted(r.inputs["destinationCidrBlock"] for r in routes) == ["10.0.0.0/16", "10.244.0.0/16"]
    [propagation] = rendering.of_type("aws:ec2/vpnGatewayRoutePropagation:VpnGatewayRoutePropagation")
    private_table = rendering.get("aws:ec2/routeTable:RouteTable", "aws-g5-spot-private")
    assert propagation.inputs["routeTableId"] == mocks._fake_id(private_table.type, private_table.name)
    assert rendering.outputs["vpnTunnelAddresses"] == ["198.51.100.1", "198.51.100.2"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nodes": None}, "gpuburst:nodes is required"),
        ({"nodes": "node-a,node-b"}, "gpuburst:nodes must be a JSON list of node names, got 'node-a,node-b'"),
        ({"nodes": '["node-b", "node-a"]'}, "gpuburst:nodes must be sorted"),
        ({"nodes": '["node-a", "node-a"]'}, "gpuburst:nodes must not repeat a node name"),
        ({"nodes": '["Node_A"]'}, "gpuburst:nodes node name 'Node_A' is not a DNS label"),
        ({"kind": None}, "gpuburst:kind must be one of pool, private-cluster, got None"),
        ({"kind": "pools"}, "gpuburst:kind must be one of pool, private-cluster, got 'pools'"),
        ({"instanceType": None}, "gpuburst:instanceType is required"),
        ({"instanceType": "G5 xlarge"}, "gpuburst:instanceType must be an EC2 instance type"),
        ({"market": "reserved"}, "gpuburst:market: Input should be 'spot' or 'on-demand', got 'reserved'"),
        ({"spotMaxPrice": None}, "gpuburst:spotMaxPrice is required when gpuburst:market is spot"),
        ({"spotMaxPrice": "-1"}, "gpuburst:spotMaxPrice: Input should be greater than 0"),
        ({"market": "on-demand"}, "gpuburst:spotMaxPrice only applies when gpuburst:market is spot"),
        ({"costCenter": None}, "gpuburst:costCenter is required"),
        ({"clusterCidrs": '["10.0.0.0/33"]'}, "gpuburst:clusterCidrs.0: Input is not a valid IPv4 network"),
        ({"clusterCidrs": '["10.42.0.0/24"]'}, "gpuburst:vpcCidr 10.42.0.0/16 overlaps the cluster CIDR"),
        ({"vpcId": "vpc-0123456789abcdef0"}, "gpuburst:subnetIds and gpuburst:vpcId must be given together"),
        ({"rootVolumeGb": "lots"}, "gpuburst:rootVolumeGb: Input should be a valid integer"),
        (
            {"vpn": '{"customerGatewayIp": "my-router"}'},
            "gpuburst:vpn.customerGatewayIp: Input is not a valid IPv4",
        ),
        (
            {"vpn": '{"customerGatewayIp": "203.0.113.1", "psk": "x"}'},
            "gpuburst:vpn.psk: Extra inputs are not permitted",
        ),
        ({"joinSecretArn": None}, "gpuburst:joinSecretArn is required"),
        (
            {"joinSecretArn": "gpuburst/join"},
            "gpuburst:joinSecretArn must be the full ARN of a Secrets Manager",
        ),
        (
            {"joinSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x';reboot;'"},
            "gpuburst:joinSecretArn must be the full ARN",
        ),
        ({"kubernetesVersion": None}, "gpuburst:kubernetesVersion is required"),
        ({"kubernetesVersion": "1.3"}, "gpuburst:kubernetesVersion must be a Kubernetes minor version"),
        ({"kubernetesVersion": "1.33.2"}, "gpuburst:kubernetesVersion must be a Kubernetes minor version"),
        ({"kubernetesVersion": "1.27"}, "gpuburst:kubernetesVersion must be a Kubernetes minor version 1.28"),
        ({"ami": "ubuntu-22.04"}, "gpuburst:ami: String should match pattern"),
    ],
)
def test_invalid_config_fails_naming_the_key(
    render_pool: Render, overrides: dict[str, str | None], message: str
) -> None:
    with pytest.raises(config.ConfigError) as raised:
        render_pool(**overrides)
    assert message in str(raised.value)


def test_vpn_in_an_existing_vpc_needs_its_route_tables(render_pool: Render) -> None:
    with pytest.raises(config.ConfigError, match="gpuburst:vpn needs routeTableIds"):
        render_pool(
            vpcId="vpc-0123456789abcdef0",
            subnetIds='["subnet-0123456789abcdef0"]',
            vpn='{"customerGatewayIp": "203.0.113.10"}',
        )


def test_stack_name_must_be_a_pool_name(render_pool: Render) -> None:
    with pytest.raises(config.ConfigError, match="the stack name 'AWS_g5' is the pool name"):
        render_pool(stack="AWS_g5")


def test_instance_type_offered_nowhere_fails_naming_the_key(render_pool: Render) -> None:
    def no_offerings(args: Any) -> dict[str, Any]:
        return {"id": "eu-west-1", "locations": [], "locationTypes": [], "instanceTypes": []}

    with pytest.raises(config.ConfigError, match=r"gpuburst:instanceType g5\.xlarge is not offered"):
        render_pool(calls={"aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings": no_offerings})
