"""The workload objects on the private cluster: namespace, private and burst Deployments, Service,
PodDisruptionBudgets, and the dashboards and alert rules as ConfigMaps for the monitoring sidecars.

The objects come from `workloads.face_compare.manifests` (one source of truth with `kubectl apply -k`);
this module only decides which of them exist and who owns which field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from workloads.face_compare import manifests

Obj = dict[str, Any]

DASHBOARD_LABEL = {"grafana_dashboard": "1"}
RULES_LABEL = {"prometheus_rule": "1"}
PART_OF = {"app.kubernetes.io/part-of": "gpuburst"}
# The controller scales burst Deployments; Pulumi keeps the rest of their spec.
BURST_IGNORE_CHANGES = ["spec.replicas"]
# A ConfigMap holds at most 1 MiB; better to fail at preview than at apply.
CONFIGMAP_LIMIT = 1024 * 1024

_KINDS: dict[tuple[str, str], Callable[..., pulumi.CustomResource]] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "Service"): k8s.core.v1.Service,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
}
_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "data"})


class Workload(pulumi.ComponentResource):
    """One private Deployment, one burst Deployment (and PDB) per pool, the Service in front of all,
    and one ConfigMap per dashboard or rule file (rule files not, where a PrometheusRule carries them)."""

    def __init__(
        self,
        name: str,
        *,
        image: str,
        namespace: str,
        pools: Sequence[str],
        private_replicas: int,
        dashboards_dir: Path,
        monitoring_namespace: str | None = None,
        rule_configmaps: bool = True,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpuburst:k8s:Workload", name, None, opts)
        ns = _resource(manifests.render_namespace(namespace=namespace), parent=self)
        in_namespace = pulumi.ResourceOptions(parent=self, depends_on=[ns])

        for obj in manifests.render("private", image=image, namespace=namespace, replicas=private_replicas):
            _resource(obj, opts=in_namespace)
        for pool in pools:
            # Burst pools start empty: the controller scales them once their nodes are ready.
            for obj in manifests.render("burst", pool=pool, image=image, namespace=namespace, replicas=0):
                ignore = BURST_IGNORE_CHANGES if obj["kind"] == "Deployment" else None
                _resource(obj, opts=pulumi.ResourceOptions.merge(in_namespace, _ignore(ignore)))
        _resource(manifests.render_service(namespace=namespace), opts=in_namespace)

        monitoring = monitoring_namespace or namespace
        # A separate monitoring namespace belongs to the monitoring stack and must already exist.
        cm_opts = in_namespace if monitoring == namespace else pulumi.ResourceOptions(parent=self)
        for obj in monitoring_configmaps(dashboards_dir, namespace=monitoring):
            if rule_configmaps or not RULES_LABEL.items() <= obj["metadata"]["labels"].items():
                _resource(obj, opts=cm_opts)
        self.register_outputs({})


def monitoring_configmaps(directory: Path, *, namespace: str) -> list[Obj]:
    """Every `**/*.json` as a Grafana dashboard ConfigMap and every `**/*rules*.y*ml` as a Prometheus
    rule ConfigMap, named after the file's path under `directory`; none when there are no such files."""
    found: dict[str, Obj] = {}
    for pattern, prefix, labels in (
        ("*.json", "gpuburst-dashboard-", DASHBOARD_LABEL),
        ("*rules*.y*ml", "gpuburst-rules-", RULES_LABEL),
    ):
        for path in sorted(directory.rglob(pattern)) if directory.is_dir() else []:
            relative = path.relative_to(directory)
            if any(part.startswith((".", "__")) for part in relative.parts) or not path.is_file():
                continue
            if pattern != "*.json" and path.suffix not in (".yaml", ".yml"):
                continue
            name = prefix + _slug(str(relative.with_suffix("")))
            if name in found:
                raise ValueError(f"{path} and another file under {directory} both map to ConfigMap {name}")
            text = path.read_text(encoding="utf-8")
            if len(text.encode()) > CONFIGMAP_LIMIT:
                raise ValueError(f"{path} is larger than a ConfigMap can hold (1 MiB)")
            found[name] = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace, "labels": {**labels, **PART_OF}},
                "data": {_data_key(path.name): text},
            }
    return [found[name] for name in sorted(found)]


def logical_name(obj: Mapping[str, Any]) -> str:
    """Stable per object: removing one pool removes exactly its objects."""
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}"


def _resource(
    obj: Obj, *, parent: pulumi.Resource | None = None, opts: pulumi.ResourceOptions | None = None
) -> pulumi.CustomResource:
    key = (obj["apiVersion"], obj["kind"])
    if key not in _KINDS:
        raise ValueError(f"no Pulumi resource for {obj['apiVersion']} {obj['kind']}")
    unknown = set(obj) - _FIELDS
    if unknown:
        raise ValueError(f"{obj['kind']} {obj['metadata']['name']}: unexpected fields {sorted(unknown)}")
    fields = {field: obj[field] for field in ("metadata", "spec", "data") if field in obj}
    options = opts if opts is not None else pulumi.ResourceOptions(parent=parent)
    return _KINDS[key](logical_name(obj), opts=options, **fields)


def _ignore(fields: list[str] | None) -> pulumi.ResourceOptions | None:
    return pulumi.ResourceOptions(ignore_changes=fields) if fields else None


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:200]


def _data_key(file_name: str) -> str:
    return re.sub(r"[^-._a-zA-Z0-9]", "-", file_name)
