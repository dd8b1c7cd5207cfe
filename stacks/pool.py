"""The cloud GPU pool: one EC2 instance per node name, joined to the private cluster as a burst node.

Owns the node contract on the AWS side: logical names (`node-<name>`), tags, the kubelet labels and
taint applied at join (by the boot script of `stacks.bootstrap`), and the `nodes` export the controller
reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

from stacks import bootstrap
from stacks import config as stack_config

MANAGED_BY = "gpuburst"
TAG_POOL = "gpuburst.io/pool"
TAG_NODE = "gpuburst.io/node"
TAG_MANAGED_BY = "managed-by"
TAG_COST_CENTER = "cost-center"

LABEL_POOL = "gpuburst.io/pool"
LABEL_NODE = "gpuburst.io/node"
LABEL_PLACEMENT = "gpuburst.io/placement"
BURST_TAINT = "gpuburst.io/burst=true:NoSchedule"

# Applied at launch only: a new boot script or a new launch template version (a newer AMI) must not
# stop or replace nodes that already run; the next node picks them up.
NODE_IGNORE_CHANGES = ["launchTemplate", "userData"]


def pool_tags(cfg: stack_config.PoolConfig) -> dict[str, str]:
    return {TAG_POOL: cfg.pool, TAG_MANAGED_BY: MANAGED_BY, TAG_COST_CENTER: cfg.cost_center}


def node_labels(pool: str, node: str) -> dict[str, str]:
    return {LABEL_POOL: pool, LABEL_NODE: node, LABEL_PLACEMENT: "burst"}


def node_user_data(cfg: stack_config.PoolConfig, node: str) -> str:
    """The boot script of one node: installs the kubelet and joins with the pool's labels and taint.

    It carries no secret: the node reads the join token at boot from the pool's join secret.
    """
    return bootstrap.render(
        node_name=node,
        labels=node_labels(cfg.pool, node),
        taints=[BURST_TAINT],
        kubernetes_minor=cfg.kubernetes_version,
        join_secret_arn=cfg.join_secret_arn,
    )


def subnet_index(node: str, count: int) -> int:
    """A node's subnet depends on its name only, so adding or removing other nodes never moves it."""
    return int.from_bytes(hashlib.sha256(node.encode()).digest()[:8], "big") % count


def market_options(cfg: stack_config.PoolConfig) -> aws.ec2.InstanceInstanceMarketOptionsArgs | None:
    if cfg.market != "spot":
        return None
    return aws.ec2.InstanceInstanceMarketOptionsArgs(
        market_type="spot",
        spot_options=aws.ec2.InstanceInstanceMarketOptionsSpotOptionsArgs(
            max_price=str(cfg.spot_max_price),
            spot_instance_type="one-time",
            instance_interruption_behavior="terminate",
        ),
    )


class GpuPool(pulumi.ComponentResource):
    """Security group, node role, launch template and the instances of one pool."""

    nodes: pulumi.Output[dict[str, dict[str, str]]]
    security_group_id: pulumi.Output[str]
    launch_template_id: pulumi.Output[str]

    def __init__(
        self,
        cfg: stack_config.PoolConfig,
        *,
        vpc_id: pulumi.Input[str],
        subnet_ids: Sequence[pulumi.Input[str]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpuburst:aws:GpuPool", cfg.pool, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = pool_tags(cfg)
        security_group = self._security_group(cfg, tags, vpc_id, child)
        profile = self._instance_profile(cfg, tags, child)
        launch_template = self._launch_template(cfg, tags, profile, child)
        instances = self._instances(
            cfg=cfg,
            tags=tags,
            launch_template=launch_template,
            security_group=security_group,
            subnet_ids=subnet_ids,
        )
        # Keyed by node name; Output.all of nothing is a list, hence dict() for an empty pool.
        self.nodes = pulumi.Output.all(
            **{node: _node_record(instance) for node, instance in instances.items()}
        ).apply(dict)
        self.security_group_id = security_group.id
        self.launch_template_id = launch_template.id
        self.register_outputs({"nodes": self.nodes})

    def _security_group(
        self,
        cfg: stack_config.PoolConfig,
        tags: dict[str, str],
        vpc_id: pulumi.Input[str],
        child: pulumi.ResourceOptions,
    ) -> aws.ec2.SecurityGroup:
        """Traffic with the private cluster and the pool's own nodes; out to the internet for images."""
        name = cfg.pool
        cluster = [str(cidr) for cidr in cfg.cluster_cidrs]
        return aws.ec2.SecurityGroup(
            f"{name}-nodes",
            vpc_id=vpc_id,
            description="gpuburst burst nodes: traffic to and from the private cluster only",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="-1", from_port=0, to_port=0, cidr_blocks=cluster, description="private cluster"
                ),
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="-1", from_port=0, to_port=0, self=True, description="nodes of the pool"
                ),
            ],
            egress=[
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="-1", from_port=0, to_port=0, cidr_blocks=cluster, description="private cluster"
                ),
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="-1", from_port=0, to_port=0, self=True, description="nodes of the pool"
                ),
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="tcp",
                    from_port=443,
                    to_port=443,
                    cidr_blocks=["0.0.0.0/0"],
                    description="images, packages and AWS APIs",
                ),
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="tcp",
                    from_port=80,
                    to_port=80,
                    cidr_blocks=["0.0.0.0/0"],
                    description="package mirrors",
                ),
            ],
            tags={**tags, "Name": f"{name}-nodes"},
            opts=child,
        )

    def _instance_profile(
        self, cfg: stack_config.PoolConfig, tags: dict[str, str], child: pulumi.ResourceOptions
    ) -> aws.iam.InstanceProfile:
        name = cfg.pool
        # The node may read its pool's join secret and nothing else; anything more is granted explicitly.
        role = aws.iam.Role(
            f"{name}-node",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "ec2.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
            description=f"gpuburst burst nodes of pool {name}",
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-node-join-secret",
            role=role.name,
            policy=json.dumps(join_secret_policy(cfg.join_secret_arn)),
            opts=child,
        )
        for arn in cfg.node_policy_arns:
            aws.iam.RolePolicyAttachment(
                f"{name}-node-{arn.rsplit('/', 1)[-1]}", role=role.name, policy_arn=arn, opts=child
            )
        return aws.iam.InstanceProfile(f"{name}-node", role=role.name, tags=tags, opts=child)

    def _launch_template(
        self,
        cfg: stack_config.PoolConfig,
        tags: dict[str, str],
        profile: aws.iam.InstanceProfile,
        child: pulumi.ResourceOptions,
    ) -> aws.ec2.LaunchTemplate:
        """The pool's GPU image, booted hardened: `gpuburst:ami` if given, else the newest image of the
        configured name for the instance type's architecture."""
        name = cfg.pool
        ami = self._image(cfg)
        # Hop limit 1 keeps pods (one hop further away) from reading the node role's credentials.
        return aws.ec2.LaunchTemplate(
            f"{name}-nodes",
            description=f"gpuburst burst nodes of pool {name}",
            image_id=ami.id,
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn),
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=ami.root_device_name,
                    # Launch template EBS flags are strings in the AWS provider.
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        encrypted="true",
                        volume_size=cfg.root_volume_gb,
                        volume_type="gp3",
                        delete_on_termination="true",
                    ),
                )
            ],
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="volume", tags=tags),
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="network-interface", tags=tags),
            ],
            update_default_version=True,
            tags=tags,
            opts=child,
        )

    def _image(self, cfg: stack_config.PoolConfig) -> pulumi.Output[aws.ec2.GetAmiResult]:
        """An explicit AMI is only described (for its root device name); otherwise the name filter picks
        the newest image that the instance type can boot."""
        invoke = pulumi.InvokeOptions(parent=self)
        if cfg.ami is not None:
            return aws.ec2.get_ami_output(
                filters=[aws.ec2.GetAmiFilterArgs(name="image-id", values=[cfg.ami])], opts=invoke
            )
        instance_type = aws.ec2.get_instance_type_output(instance_type=cfg.instance_type, opts=invoke)
        return aws.ec2.get_ami_output(
            owners=list(cfg.ami_owners),
            most_recent=True,
            filters=instance_type.supported_architectures.apply(
                lambda architectures: [
                    aws.ec2.GetAmiFilterArgs(name="name", values=[cfg.ami_name]),
                    aws.ec2.GetAmiFilterArgs(name="architecture", values=architectures),
                    aws.ec2.GetAmiFilterArgs(name="state", values=["available"]),
                    aws.ec2.GetAmiFilterArgs(name="root-device-type", values=["ebs"]),
                ]
            ),
            opts=invoke,
        )

    def _instances(
        self,
        *,
        cfg: stack_config.PoolConfig,
        tags: dict[str, str],
        launch_template: aws.ec2.LaunchTemplate,
        security_group: aws.ec2.SecurityGroup,
        subnet_ids: Sequence[pulumi.Input[str]],
    ) -> dict[str, aws.ec2.Instance]:
        """One instance per node name, each carrying its own metadata and disk guarantees."""
        name = cfg.pool
        return {
            node: aws.ec2.Instance(
                f"node-{node}",
                launch_template=aws.ec2.InstanceLaunchTemplateArgs(id=launch_template.id, version="$Default"),
                instance_type=cfg.instance_type,
                subnet_id=subnet_ids[subnet_index(node, len(subnet_ids))],
                vpc_security_group_ids=[security_group.id],
                associate_public_ip_address=cfg.associate_public_ip,
                # Repeated from the launch template so each instance carries its own guarantees
                # (request values win over the template's, and the policy pack checks each instance).
                metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                    http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
                ),
                root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                    encrypted=True,
                    volume_size=cfg.root_volume_gb,
                    volume_type="gp3",
                    delete_on_termination=True,
                ),
                instance_market_options=market_options(cfg),
                instance_initiated_shutdown_behavior="terminate",
                user_data=node_user_data(cfg, node),
                tags={**tags, TAG_NODE: node, "Name": f"{name}-{node}"},
                volume_tags={**tags, TAG_NODE: node},
                opts=pulumi.ResourceOptions(parent=self, ignore_changes=NODE_IGNORE_CHANGES),
            )
            for node in cfg.nodes
        }


def join_secret_policy(secret_arn: str) -> dict[str, object]:
    """Read access to exactly one secret: the pool's join secret, named by its full ARN."""
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": secret_arn}],
    }


def _node_record(instance: aws.ec2.Instance) -> pulumi.Output[dict[str, str]]:
    return pulumi.Output.all(instance.id, instance.private_ip, instance.instance_state).apply(
        lambda values: {"instance_id": values[0], "private_ip": values[1], "state": values[2]}
    )
