"""The CrossGuard guardrails as pure functions over resource inputs, plus their defaults.

Each rule takes a resource's type and inputs (the engine's camelCase names, as the policy SDK and the
Pulumi mocks both present them) and returns violation messages. Nothing here imports the policy SDK,
so rules can be tested directly; `pack.py` adapts them to the SDK.
Config defaults are applied here because the policy SDK does not apply config-schema defaults.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
SPOT_REQUEST = "aws:ec2/spotInstanceRequest:SpotInstanceRequest"
VOLUME = "aws:ebs/volume:Volume"
SUBNET = "aws:ec2/subnet:Subnet"
EIP = "aws:ec2/eip:Eip"
SERVICE = "kubernetes:core/v1:Service"

# AWS resources the pools create that can carry tags; every one must carry the required tags.
TAGGED_TYPES = frozenset(
    {
        INSTANCE,
        LAUNCH_TEMPLATE,
        SPOT_REQUEST,
        VOLUME,
        SUBNET,
        EIP,
        "aws:ec2/vpc:Vpc",
        "aws:ec2/securityGroup:SecurityGroup",
        "aws:ec2/internetGateway:InternetGateway",
        "aws:ec2/natGateway:NatGateway",
        "aws:ec2/routeTable:RouteTable",
        "aws:ec2/vpnGateway:VpnGateway",
        "aws:ec2/customerGateway:CustomerGateway",
        "aws:ec2/vpnConnection:VpnConnection",
        "aws:iam/role:Role",
        "aws:iam/instanceProfile:InstanceProfile",
    }
)


class ResourceCheck(Protocol):
    def __call__(self, type_: str, props: Mapping[str, Any], *, config: Mapping[str, Any]) -> list[str]: ...


@dataclasses.dataclass(frozen=True)
class Resource:
    """A resource as a stack-level rule sees it."""

    type: str
    name: str
    urn: str
    props: Mapping[str, Any]


StackCheck = Callable[[Sequence[Resource], Mapping[str, Any]], list[tuple[str, str | None]]]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One policy of the pack: its name, what it checks, its config schema and defaults."""

    name: str
    description: str
    defaults: Mapping[str, Any]
    schema: Mapping[str, Mapping[str, Any]]
    resource_check: ResourceCheck | None = None
    stack_check: StackCheck | None = None

    def config(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """The rule's config: defaults, overridden by what the pack config gives (unknown keys dropped)."""
        given = given or {}
        return {key: given.get(key, default) for key, default in self.defaults.items()}


def _get(props: Mapping[str, Any], *path: str) -> Any:
    value: Any = props
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _items(value: Any) -> list[Any]:
    """A list input, tolerating absence (and the SDK's read-only list proxies)."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def _is_true(value: Any) -> bool:
    """Instances take booleans, launch templates the strings "true"/"false"."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _is_false(value: Any) -> bool:
    return value is False or (isinstance(value, str) and value.lower() == "false")


# --- resource rules -----------------------------------------------------------------------------


def gpu_instance_types(type_: str, props: Mapping[str, Any], *, config: Mapping[str, Any]) -> list[str]:
    """Only GPU types on the allowlist (exact names or shell patterns such as `g6.*`)."""
    if type_ not in (INSTANCE, LAUNCH_TEMPLATE, SPOT_REQUEST):
        return []
    allowed: list[str] = list(config["allowedInstanceTypes"])
    instance_type = props.get("instanceType")
    if instance_type is None:
        if type_ == INSTANCE and props.get("launchTemplate") is None:
            return ["instance sets no instanceType and no launch template"]
        return []  # inherited from a launch template, which is checked itself
    if any(fnmatch.fnmatchcase(str(instance_type), pattern) for pattern in allowed):
        return []
    return [f"instance type {instance_type} is not allowed (allowed: {', '.join(allowed)})"]


def required_tags(type_: str, props: Mapping[str, Any], *, config: Mapping[str, Any]) -> list[str]:
    """Taggable AWS resources carry the pool, owner and cost center; instances also their node name."""
    if type_ not in TAGGED_TYPES:
        return []
    required = list(config["requiredTags"])
    if type_ in (INSTANCE, SPOT_REQUEST):
        required += list(config["requiredInstanceTags"])
    tags = props.get("tags")
    tags = tags if isinstance(tags, Mapping) else {}
    missing = [key for key in required if not tags.get(key)]
    return [f"missing required tags: {', '.join(missing)}"] if missing else []


def imdsv2_required(type_: str, props: Mapping[str, Any], *, config: Mapping[str, Any]) -> list[str]:
    """Instance metadata only with session tokens (IMDSv2), unless the endpoint is off."""
    if type_ not in (INSTANCE, LAUNCH_TEMPLATE):
        return []
    if _get(props, "metadataOptions", "httpEndpoint") == "disabled":
        return []
    if _get(props, "metadataOptions", "httpTokens") != "required":
        return ["metadataOptions.httpTokens must be 'required' (IMDSv2)"]
    return []


def encrypted_volumes(type_: str, props: Mapping[str, Any], *, config: Mapping[str, Any]) -> list[str]:
    """Every EBS volume is encrypted, stated on the resource itself rather than left to account defaults."""
    if type_ == INSTANCE:
        problems = []
        if not _is_true(_get(props, "rootBlockDevice", "encrypted")):
            problems.append("rootBlockDevice.encrypted must be true")
        for index, device in enumerate(_items(props.get("ebsBlockDevices"))):
            if not _is_true(_get(device, "encrypted")):
                problems.append(f"ebsBlockDevices[{index}].encrypted must be true")
        return problems
    if type_ == LAUNCH_TEMPLATE:
        mappings = _items(props.get("blockDeviceMappings"))
        if not mappings:
            return ["blockDeviceMappings must declare the root volume, encrypted"]
        return [
            f"blockDeviceMappings[{index}].ebs.encrypted must be true"
            for index, mapping in enumerate(mappings)
            if _get(mapping, "ebs") is not None and not _is_true(_get(mapping, "ebs", "encrypted"))
        ]
    if type_ == VOLUME and not _is_true(props.get("encrypted")):
        return ["encrypted must be true"]
    return []


def no_public_ips(type_: str, props: Mapping[str, Any], *, config: Mapping[str, Any]) -> list[str]:
    """Nodes are reached over the private link only. An instance must say so explicitly, since leaving
    it unset lets the subnet's default hand out a public address."""
    if type_ == INSTANCE and not _is_false(props.get("associatePublicIpAddress")):
        return ["associatePublicIpAddress must be false"]
    if type_ == LAUNCH_TEMPLATE:
        return [
            f"networkInterfaces[{index}].associatePublicIpAddress must not be true"
            for index, nic in enumerate(_items(props.get("networkInterfaces")))
            if _is_true(_get(nic, "associatePublicIpAddress"))
        ]
    if type_ == SUBNET and _is_true(props.get("mapPublicIpOnLaunch")):
        return ["mapPublicIpOnLaunch must not be true"]
    if type_ == EIP and (props.get("instance") or props.get("networkInterface")):
        return ["elastic IPs must not be attached to instances or their interfaces"]
    return []


def spot_max_price(type_: str, props: Mapping[str, Any], *, config: Mapping[str, Any]) -> list[str]:
    """Spot requests name a max price, at most the ceiling (USD per instance-hour); without one AWS
    would pay up to the on-demand price."""
    if type_ == SPOT_REQUEST:
        price = props.get("spotPrice")
    elif type_ in (INSTANCE, LAUNCH_TEMPLATE):
        if _get(props, "instanceMarketOptions", "marketType") != "spot":
            return []
        price = _get(props, "instanceMarketOptions", "spotOptions", "maxPrice")
    else:
        return []
    ceiling = Decimal(str(config["spotMaxPriceCeiling"]))
    if price is None:
        return [f"spot max price must be set (at most {ceiling} USD/h)"]
    try:
        value = Decimal(str(price))
    except InvalidOperation:
        return [f"spot max price {price!r} is not a number"]
    if value > ceiling:
        return [f"spot max price {value} USD/h is above the ceiling of {ceiling} USD/h"]
    return []


def load_balancer_annotation(type_: str, props: Mapping[str, Any], *, config: Mapping[str, Any]) -> list[str]:
    """A LoadBalancer Service exposes the cluster outside the private network: it has to be asked for."""
    if type_ != SERVICE or _get(props, "spec", "type") != "LoadBalancer":
        return []
    key = str(config["annotation"])
    annotations = _get(props, "metadata", "annotations")
    if isinstance(annotations, Mapping) and str(annotations.get(key, "")).lower() == "true":
        return []
    return [f'Service of type LoadBalancer needs the annotation {key}: "true"']


# --- stack rules --------------------------------------------------------------------------------


def max_nodes_per_pool(
    resources: Sequence[Resource], config: Mapping[str, Any]
) -> list[tuple[str, str | None]]:
    """A pool stack holds at most N GPU instances, whatever the controller asks for."""
    limit = int(config["maxNodes"])
    nodes = [r for r in resources if r.type in (INSTANCE, SPOT_REQUEST)]
    if len(nodes) <= limit:
        return []
    return [(f"{len(nodes)} GPU instances in the stack, more than the limit of {limit}", None)]


def _array(description: str) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string"}, "description": description}


DEFAULT_INSTANCE_TYPES = (
    "g4dn.xlarge",
    "g4dn.2xlarge",
    "g5.xlarge",
    "g5.2xlarge",
    "g5.4xlarge",
    "g6.xlarge",
    "g6.2xlarge",
    "g6.4xlarge",
)

RULES: tuple[Rule, ...] = (
    Rule(
        name="gpu-instance-types",
        description="EC2 instances and launch templates use an allowed GPU instance type.",
        defaults={"allowedInstanceTypes": list(DEFAULT_INSTANCE_TYPES)},
        schema={"allowedInstanceTypes": _array("Instance types or shell patterns, e.g. g6.*")},
        resource_check=gpu_instance_types,
    ),
    Rule(
        name="max-nodes-per-pool",
        description="A pool stack holds no more than the allowed number of GPU instances.",
        defaults={"maxNodes": 8},
        schema={"maxNodes": {"type": "integer", "minimum": 0}},
        stack_check=max_nodes_per_pool,
    ),
    Rule(
        name="required-tags",
        description="Taggable AWS resources carry the pool, managed-by and cost-center tags.",
        defaults={
            "requiredTags": ["gpuburst.io/pool", "managed-by", "cost-center"],
            "requiredInstanceTags": ["gpuburst.io/node"],
        },
        schema={
            "requiredTags": _array("Tags every taggable resource needs"),
            "requiredInstanceTags": _array("Further tags instances need"),
        },
        resource_check=required_tags,
    ),
    Rule(
        name="imdsv2-required",
        description="Instances and launch templates require IMDSv2 session tokens.",
        defaults={},
        schema={},
        resource_check=imdsv2_required,
    ),
    Rule(
        name="encrypted-volumes",
        description="EBS volumes of instances, launch templates and standalone volumes are encrypted.",
        defaults={},
        schema={},
        resource_check=encrypted_volumes,
    ),
    Rule(
        name="no-public-ips",
        description="Instances get no public IP; subnets do not hand them out; no EIPs on instances.",
        defaults={},
        schema={},
        resource_check=no_public_ips,
    ),
    Rule(
        name="spot-max-price",
        description="Spot requests set a max price no higher than the ceiling (USD per instance-hour).",
        defaults={"spotMaxPriceCeiling": 1.5},
        schema={"spotMaxPriceCeiling": {"type": "number", "exclusiveMinimum": 0}},
        resource_check=spot_max_price,
    ),
    Rule(
        name="load-balancer-annotation",
        description="Kubernetes Services of type LoadBalancer carry an explicit opt-in annotation.",
        defaults={"annotation": "gpuburst.io/allow-load-balancer"},
        schema={"annotation": {"type": "string"}},
        resource_check=load_balancer_annotation,
    ),
)
