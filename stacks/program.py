"""The one Pulumi program behind every stack of the project; `gpuburst:kind` selects what it builds.

`pool` stacks (one per cloud pool, named after the pool) hold the pool's network and nodes and are
driven by the controller through the Automation API; the `private-cluster` stack holds the workload
objects on the private cluster.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pulumi

from stacks import config as stack_config
from stacks import controller_deploy, network, pool, workload

DASHBOARDS_DIR = Path(str(resources.files("dashboards")))
"""The dashboards package, whose JSON the monitoring ConfigMaps carry."""
PROJECT_DIR = Path(__file__).resolve().parents[1]
"""Where Pulumi.yaml is: the controller's config file is named relative to it."""


def main() -> None:
    kind = stack_config.parse_kind(pulumi.Config(stack_config.NAMESPACE).get("kind"))
    outputs = pool_stack() if kind == "pool" else private_cluster_stack()
    for name, value in outputs.items():
        pulumi.export(name, value)


def pool_stack() -> dict[str, Any]:
    cfg = stack_config.parse_pool(stack_config.read(stack_config.POOL_KEYS), stack=pulumi.get_stack())
    tags = pool.pool_tags(cfg)
    net = network.PoolNetwork(cfg.pool, cfg, tags=tags)
    outputs: dict[str, Any] = {}
    if cfg.vpn is not None:
        vpn = network.HybridVpn(
            cfg.pool,
            cfg.vpn,
            vpc_id=net.vpc_id,
            cluster_cidrs=cfg.cluster_cidrs,
            route_table_ids=net.route_table_ids,
            tags=tags,
        )
        outputs["vpnTunnelAddresses"] = vpn.tunnel_addresses
    gpus = pool.GpuPool(cfg, vpc_id=net.vpc_id, subnet_ids=net.subnet_ids)
    return {
        "nodes": gpus.nodes,
        "vpcId": net.vpc_id,
        "subnetIds": net.subnet_ids,
        "securityGroupId": gpus.security_group_id,
        "launchTemplateId": gpus.launch_template_id,
        **outputs,
    }


def private_cluster_stack() -> dict[str, Any]:
    cfg = stack_config.parse_private_cluster(stack_config.read(stack_config.PRIVATE_CLUSTER_KEYS))
    objects = workload.Workload(
        "face-compare",
        image=cfg.image,
        namespace=cfg.namespace,
        pools=cfg.pools,
        private_replicas=cfg.private_replicas,
        dashboards_dir=DASHBOARDS_DIR,
        monitoring_namespace=cfg.monitoring_namespace,
        rule_configmaps=not cfg.prometheus_operator,
    )
    if cfg.controller is not None:
        path = PROJECT_DIR / cfg.controller.config
        if not path.is_file():
            raise stack_config.ConfigError(f"gpuburst:controller.config: no file {path}")
        controller_deploy.Controller(
            "gpuburst-controller",
            cfg=cfg.controller,
            config_text=path.read_text(encoding="utf-8"),
            workload_namespace=cfg.namespace,
            dashboards_dir=DASHBOARDS_DIR,
            prometheus_operator=cfg.prometheus_operator,
            opts=pulumi.ResourceOptions(depends_on=[objects]),
        )
    return {"namespace": cfg.namespace, "pools": list(cfg.pools)}
