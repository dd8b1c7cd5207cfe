"""Where a pool's nodes live: an existing VPC and subnets from config, or a small VPC of its own, and
the optional site-to-site VPN back to the private cluster's network."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

import pulumi
import pulumi_aws as aws

from stacks import config as stack_config

# Two AZs keep the VPC small while a spot shortage in one zone does not stop a whole pool.
MAX_ZONES = 2


class PoolNetwork(pulumi.ComponentResource):
    """Subnets the nodes go in and the route tables that must learn the cluster's routes.

    A created VPC has private subnets only for nodes (egress through one NAT gateway, for images and
    packages); nothing in it takes a public IP.
    """

    vpc_id: pulumi.Output[str]
    subnet_ids: list[pulumi.Output[str]]
    route_table_ids: dict[str, pulumi.Output[str]]

    def __init__(
        self,
        name: str,
        cfg: stack_config.PoolConfig,
        *,
        tags: Mapping[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpuburst:aws:PoolNetwork", name, None, opts)
        if cfg.vpc_id is not None:
            self.vpc_id = pulumi.Output.from_input(cfg.vpc_id)
            self.subnet_ids = [pulumi.Output.from_input(s) for s in cfg.subnet_ids]
            self.route_table_ids = {}
        else:
            self._create(name, cfg, tags=tags)
        self.register_outputs({"vpc_id": self.vpc_id, "subnet_ids": self.subnet_ids})

    def _create(self, name: str, cfg: stack_config.PoolConfig, *, tags: Mapping[str, str]) -> None:
        child = pulumi.ResourceOptions(parent=self)
        zones = offered_zones(cfg.instance_type, parent=self)
        blocks = list(cfg.vpc_cidr.subnets(new_prefix=min(cfg.vpc_cidr.prefixlen + 4, 28)))

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=str(cfg.vpc_cidr),
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags=_named(tags, f"{name}-vpc"),
            opts=child,
        )
        private = [
            aws.ec2.Subnet(
                f"{name}-private-{zone}",
                vpc_id=vpc.id,
                availability_zone=zone,
                cidr_block=str(blocks[index]),
                map_public_ip_on_launch=False,
                tags=_named(tags, f"{name}-private-{zone}"),
                opts=child,
            )
            for index, zone in enumerate(zones)
        ]
        # The NAT gateway needs a subnet routed to the internet; instances never go there.
        public = aws.ec2.Subnet(
            f"{name}-egress",
            vpc_id=vpc.id,
            availability_zone=zones[0],
            cidr_block=str(blocks[-1]),
            map_public_ip_on_launch=False,
            tags=_named(tags, f"{name}-egress"),
            opts=child,
        )
        igw = aws.ec2.InternetGateway(
            f"{name}-igw", vpc_id=vpc.id, tags=_named(tags, f"{name}-igw"), opts=child
        )
        eip = aws.ec2.Eip(f"{name}-nat", domain="vpc", tags=_named(tags, f"{name}-nat"), opts=child)
        nat = aws.ec2.NatGateway(
            f"{name}-nat",
            allocation_id=eip.id,
            subnet_id=public.id,
            tags=_named(tags, f"{name}-nat"),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
        )
        egress_rt = aws.ec2.RouteTable(
            f"{name}-egress", vpc_id=vpc.id, tags=_named(tags, f"{name}-egress"), opts=child
        )
        aws.ec2.Route(
            f"{name}-egress-default",
            route_table_id=egress_rt.id,
            destination_cidr_block="0.0.0.0/0",
            gateway_id=igw.id,
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-egress", route_table_id=egress_rt.id, subnet_id=public.id, opts=child
        )
        private_rt = aws.ec2.RouteTable(
            f"{name}-private", vpc_id=vpc.id, tags=_named(tags, f"{name}-private"), opts=child
        )
        aws.ec2.Route(
            f"{name}-private-default",
            route_table_id=private_rt.id,
            destination_cidr_block="0.0.0.0/0",
            nat_gateway_id=nat.id,
            opts=child,
        )
        for zone, subnet in zip(zones, private, strict=True):
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{zone}", route_table_id=private_rt.id, subnet_id=subnet.id, opts=child
            )
        self.vpc_id = vpc.id
        self.subnet_ids = [subnet.id for subnet in private]
        self.route_table_ids = {"private": private_rt.id}


class HybridVpn(pulumi.ComponentResource):
    """AWS site-to-site VPN with static routes to the cluster CIDRs, for clusters without a link.

    Routes are propagated into the node route tables, so traffic to the cluster goes over the tunnel
    while everything else keeps its default route.
    """

    tunnel_addresses: pulumi.Output[list[str]]

    def __init__(
        self,
        name: str,
        vpn: stack_config.VpnConfig,
        *,
        vpc_id: pulumi.Input[str],
        cluster_cidrs: Sequence[ipaddress.IPv4Network],
        route_table_ids: Mapping[str, pulumi.Input[str]],
        tags: Mapping[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpuburst:aws:HybridVpn", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        gateway = aws.ec2.VpnGateway(
            f"{name}-vgw", vpc_id=vpc_id, tags=_named(tags, f"{name}-vgw"), opts=child
        )
        customer = aws.ec2.CustomerGateway(
            f"{name}-cgw",
            bgp_asn=str(vpn.bgp_asn),
            ip_address=str(vpn.customer_gateway_ip),
            type="ipsec.1",
            tags=_named(tags, f"{name}-cgw"),
            opts=child,
        )
        connection = aws.ec2.VpnConnection(
            f"{name}-vpn",
            vpn_gateway_id=gateway.id,
            customer_gateway_id=customer.id,
            type="ipsec.1",
            static_routes_only=True,
            tags=_named(tags, f"{name}-vpn"),
            opts=child,
        )
        for cidr in cluster_cidrs:
            aws.ec2.VpnConnectionRoute(
                f"{name}-vpn-{_slug(cidr)}",
                vpn_connection_id=connection.id,
                destination_cidr_block=str(cidr),
                opts=child,
            )
        tables = {**route_table_ids, **{rt: rt for rt in vpn.route_table_ids}}
        for key, table_id in tables.items():
            aws.ec2.VpnGatewayRoutePropagation(
                f"{name}-vpn-{key}", vpn_gateway_id=gateway.id, route_table_id=table_id, opts=child
            )
        self.tunnel_addresses = pulumi.Output.all(
            connection.tunnel1_address, connection.tunnel2_address
        ).apply(list)
        self.register_outputs({"tunnel_addresses": self.tunnel_addresses})


def offered_zones(instance_type: str, *, parent: pulumi.Resource) -> list[str]:
    """The zones (at most MAX_ZONES, in name order) where the region offers the pool's instance type.

    Looked up synchronously because the number of subnets must be known while the program runs.
    """
    offerings = aws.ec2.get_instance_type_offerings(
        location_type="availability-zone",
        filters=[{"name": "instance-type", "values": [instance_type]}],
        opts=pulumi.InvokeOptions(parent=parent),
    )
    zones = sorted(offerings.locations)[:MAX_ZONES]
    if not zones:
        raise stack_config.ConfigError(
            f"gpuburst:instanceType {instance_type} is not offered in any availability zone of this region"
        )
    return zones


def _named(tags: Mapping[str, str], name: str) -> dict[str, str]:
    return {**tags, "Name": name}


def _slug(cidr: ipaddress.IPv4Network) -> str:
    return str(cidr).replace(".", "-").replace("/", "-")
