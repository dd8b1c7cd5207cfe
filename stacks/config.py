"""Stack configuration: the `gpuburst:*` keys each stack kind reads, parsed and validated in one place.

Pulumi hands the program every value as a string (structured YAML values arrive as JSON), so the
parsers here take a plain mapping of key -> string and fail with a `ConfigError` naming the key. The
program reads Pulumi's config once at the edge (`read`) and passes typed models on.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal, TypeVar

import pulumi
import pydantic

from stacks import bootstrap
from workloads.face_compare import manifests

NAMESPACE = "gpuburst"
KINDS = ("pool", "private-cluster")
POOL_KEYS = (
    "nodes",
    "instanceType",
    "market",
    "spotMaxPrice",
    "costCenter",
    "clusterCidrs",
    "vpcId",
    "subnetIds",
    "vpcCidr",
    "joinSecretArn",
    "kubernetesVersion",
    "ami",
    "amiName",
    "amiOwners",
    "rootVolumeGb",
    "associatePublicIp",
    "nodePolicyArns",
    "vpn",
)
PRIVATE_CLUSTER_KEYS = (
    "image",
    "namespace",
    "pools",
    "privateReplicas",
    "monitoringNamespace",
    "controller",
    "prometheusOperator",
)
# Keys whose value is JSON (a YAML list or map in the stack file); the rest are scalars.
JSON_KEYS = {
    "nodes": "list of node names",
    "clusterCidrs": "list of CIDRs",
    "subnetIds": "list of subnet ids",
    "amiOwners": "list of AMI owners",
    "nodePolicyArns": "list of IAM policy ARNs",
    "vpn": "object",
    "pools": "list of pool names",
    "controller": "object",
}

# A DNS-1123 label: valid as a Kubernetes node name, a label value and part of a resource name.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_ID = re.compile(r"^[a-z]+-[0-9a-f]{8,17}$")
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(aws|[0-9]{12}):policy/[\w+=,.@/-]+$")


class ConfigError(ValueError):
    """A stack config value is missing or invalid; the message names the key and what was given."""


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{what} {value!r} is not a DNS label (lowercase letters, digits, '-', at most 63)")
    return value


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class VpnConfig(_Model):
    """Site-to-site VPN to the private cluster's network; static routes to the cluster CIDRs."""

    customer_gateway_ip: ipaddress.IPv4Address = pydantic.Field(alias="customerGatewayIp")
    bgp_asn: int = pydantic.Field(65000, alias="bgpAsn", ge=1, le=4294967294)
    # Route tables of an existing VPC that should learn the cluster routes; a VPC the stack creates
    # has its private route table added automatically.
    route_table_ids: tuple[str, ...] = pydantic.Field((), alias="routeTableIds")


class PoolConfig(_Model):
    """One cloud GPU pool: the node set the controller drives and how its nodes are launched."""

    pool: str
    nodes: tuple[str, ...]
    instance_type: str = pydantic.Field(alias="instanceType")
    market: Literal["spot", "on-demand"]
    spot_max_price: Decimal | None = pydantic.Field(None, alias="spotMaxPrice", gt=0)
    cost_center: str = pydantic.Field(alias="costCenter", min_length=1, max_length=256)
    cluster_cidrs: tuple[ipaddress.IPv4Network, ...] = pydantic.Field(alias="clusterCidrs", min_length=1)
    vpc_id: str | None = pydantic.Field(None, alias="vpcId", pattern=_ID.pattern)
    subnet_ids: tuple[str, ...] = pydantic.Field((), alias="subnetIds")
    vpc_cidr: ipaddress.IPv4Network = pydantic.Field(ipaddress.IPv4Network("10.42.0.0/16"), alias="vpcCidr")
    join_secret_arn: str = pydantic.Field(alias="joinSecretArn")
    kubernetes_version: str = pydantic.Field(alias="kubernetesVersion")
    ami: str | None = pydantic.Field(None, pattern=_AMI.pattern)
    ami_name: str = pydantic.Field(
        "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *", alias="amiName", min_length=1
    )
    ami_owners: tuple[str, ...] = pydantic.Field(("amazon",), alias="amiOwners", min_length=1)
    root_volume_gb: int = pydantic.Field(200, alias="rootVolumeGb", ge=8, le=16384)
    associate_public_ip: bool = pydantic.Field(False, alias="associatePublicIp")
    node_policy_arns: tuple[str, ...] = pydantic.Field((), alias="nodePolicyArns")
    vpn: VpnConfig | None = None

    @pydantic.field_validator("instance_type")
    @classmethod
    def _instance_type(cls, value: str) -> str:
        if not _INSTANCE_TYPE.match(value):
            raise ValueError(f"must be an EC2 instance type such as g5.xlarge, got {value!r}")
        return value

    @pydantic.field_validator("join_secret_arn")
    @classmethod
    def _join_secret_arn(cls, value: str) -> str:
        return bootstrap.check_secret_arn(value)

    @pydantic.field_validator("kubernetes_version")
    @classmethod
    def _kubernetes_version(cls, value: str) -> str:
        return bootstrap.check_kubernetes_minor(value)

    @pydantic.field_validator("nodes", mode="before")
    @classmethod
    def _node_list(cls, value: Any) -> Any:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"must be a JSON list of node names, got {value!r}")
        for name in value:
            _check_name(name, "node name")
        if len(set(value)) != len(value):
            raise ValueError(f"must not repeat a node name, got {value!r}")
        if value != sorted(value):
            raise ValueError(f"must be sorted, got {value!r} (expected {sorted(value)!r})")
        return value

    @pydantic.field_validator("subnet_ids")
    @classmethod
    def _subnet_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for subnet in value:
            if not subnet.startswith("subnet-") or not _ID.match(subnet):
                raise ValueError(f"must be subnet ids (subnet-...), got {subnet!r}")
        return value

    @pydantic.field_validator("node_policy_arns")
    @classmethod
    def _policy_arns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arn in value:
            if not _ARN.match(arn):
                raise ValueError(f"must be IAM policy ARNs, got {arn!r}")
        return value

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> PoolConfig:
        if self.market == "spot" and self.spot_max_price is None:
            raise _KeyError("spotMaxPrice", "is required when gpuburst:market is spot (USD per hour)")
        if self.market == "on-demand" and self.spot_max_price is not None:
            raise _KeyError("spotMaxPrice", "only applies when gpuburst:market is spot")
        if (self.vpc_id is None) != (not self.subnet_ids):
            raise _KeyError("subnetIds", "and gpuburst:vpcId must be given together (or neither)")
        if self.vpc_id is None:
            for cidr in self.cluster_cidrs:
                if cidr.overlaps(self.vpc_cidr):
                    raise _KeyError("vpcCidr", f"{self.vpc_cidr} overlaps the cluster CIDR {cidr}")
            if self.vpc_cidr.prefixlen > 24:
                raise _KeyError("vpcCidr", f"must be /24 or larger to hold the subnets, got {self.vpc_cidr}")
        if self.vpn is not None and self.vpc_id is not None and not self.vpn.route_table_ids:
            raise _KeyError("vpn", "needs routeTableIds when gpuburst:vpcId names an existing VPC")
        return self


class ControllerConfig(_Model):
    """The controller's Deployment on the private cluster (stacks/controller_deploy.py)."""

    image: str = pydantic.Field(min_length=1)
    namespace: str = "gpuburst"
    # The controller's config file, relative to the project root: mounted as /etc/gpuburst/config.yaml.
    config: str = pydantic.Field("examples/in-cluster.yaml", min_length=1)
    # Secrets a person creates (docs/deploy.md); the stack only names them.
    tokens_secret: str = pydantic.Field("gpuburst-api-tokens", alias="tokensSecret")
    credentials_secret: str = pydantic.Field("gpuburst-cloud-credentials", alias="credentialsSecret")
    store_secret: str = pydantic.Field("gpuburst-store", alias="storeSecret")

    @pydantic.field_validator("namespace", "tokens_secret", "credentials_secret", "store_secret")
    @classmethod
    def _names(cls, value: str) -> str:
        return _check_name(value, "name")


class PrivateClusterConfig(_Model):
    """The workload objects on the private cluster: one private Deployment, one burst Deployment per pool."""

    image: str = pydantic.Field(min_length=1)
    namespace: str = "face-compare"
    pools: tuple[str, ...] = ()
    private_replicas: int = pydantic.Field(1, alias="privateReplicas", ge=0)
    monitoring_namespace: str | None = pydantic.Field(None, alias="monitoringNamespace")
    controller: ControllerConfig | None = None
    # The Prometheus Operator's CRDs exist: rules as a PrometheusRule and a ServiceMonitor for the
    # controller, instead of the rules ConfigMap for a sidecar.
    prometheus_operator: bool = pydantic.Field(False, alias="prometheusOperator")

    @pydantic.field_validator("namespace", "monitoring_namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        return None if value is None else _check_name(value, "namespace")

    @pydantic.field_validator("pools")
    @classmethod
    def _pools(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pool in value:
            manifests.burst_deployment_name(pool)  # the pool must fit the burst Deployment's name
        if len(set(value)) != len(value):
            raise ValueError(f"must not repeat a pool, got {list(value)!r}")
        return value


M = TypeVar("M", bound=_Model)


class _KeyError(ValueError):
    """Raised inside a cross-field validator to blame one key rather than the whole model."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _key(key: str) -> str:
    return f"{NAMESPACE}:{key}"


def _decode(raw: Mapping[str, str | None], allowed: tuple[str, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in allowed:
        text = raw.get(key)
        if text is None:
            continue
        if key in JSON_KEYS:
            try:
                values[key] = json.loads(text)
            except json.JSONDecodeError:
                raise ConfigError(f"{_key(key)} must be a JSON {JSON_KEYS[key]}, got {text!r}") from None
        else:
            values[key] = text
    return values


def _validate(model: type[M], values: dict[str, Any], *, required: tuple[str, ...]) -> M:
    for key in required:
        if key not in values:
            raise ConfigError(f"{_key(key)} is required (pulumi config set {_key(key)} ...)")
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _KeyError):
            raise ConfigError(f"{_key(cause.key)} {cause}") from None
        key = _key(".".join(str(part) for part in error["loc"]))
        if isinstance(cause, ValueError):
            raise ConfigError(f"{key} {cause}") from None
        raise ConfigError(f"{key}: {error['msg']}, got {error.get('input')!r}") from None


def parse_kind(raw: str | None) -> str:
    """The stack kind selects what the one program builds; there is no default, so a typo cannot
    turn a pool stack into something that deletes its nodes."""
    if raw not in KINDS:
        raise ConfigError(f"{_key('kind')} must be one of {', '.join(KINDS)}, got {raw!r}")
    return raw


def parse_pool(raw: Mapping[str, str | None], *, stack: str) -> PoolConfig:
    """`gpuburst:nodes` is required even when empty: a missing key must never read as "no nodes"."""
    if not _NAME.match(stack):
        raise ConfigError(f"the stack name {stack!r} is the pool name, so it must be a DNS label")
    values = _decode(raw, POOL_KEYS)
    values["pool"] = stack
    return _validate(
        PoolConfig,
        values,
        required=(
            "nodes",
            "instanceType",
            "market",
            "costCenter",
            "clusterCidrs",
            "joinSecretArn",
            "kubernetesVersion",
        ),
    )


def parse_private_cluster(raw: Mapping[str, str | None]) -> PrivateClusterConfig:
    return _validate(PrivateClusterConfig, _decode(raw, PRIVATE_CLUSTER_KEYS), required=("image",))


def read(keys: tuple[str, ...]) -> dict[str, str | None]:
    """The plain (non-secret) values of `keys` from the current stack's config."""
    config = pulumi.Config(NAMESPACE)
    return {key: config.get(key) for key in keys}
