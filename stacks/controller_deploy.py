"""The controller on the private cluster: ServiceAccount, least-privilege RBAC, a two-replica Deployment
with Lease leader election on a PostgreSQL store both replicas share, its Service and PodDisruptionBudget,
and (with the Prometheus Operator) a ServiceMonitor and a PrometheusRule from dashboards/.

The RBAC rules below are the Kubernetes API calls of `controller.adapters.kube`, one rule per resource and
scope; tests/stacks/test_controller_deploy.py derives the calls from the adapter's source and fails when
the two differ. Secrets (API tokens, cloud and Pulumi credentials, the store's password) are referenced by
name and created by a person (docs/deploy.md), never by this stack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from stacks.config import ConfigError, ControllerConfig

Obj = dict[str, Any]

NAME = "gpuburst-controller"
LEASE = "gpuburst-controller"
PORT = 8080
UID = 10001
"""The image's user (Dockerfile.controller)."""
CONFIG_DIR = "/etc/gpuburst"
TOKENS_DIR = "/etc/gpuburst/tokens"
TOKENS_KEY = "api-tokens.json"
STORE_PASSWORD_KEY = "password"
"""The key of the store Secret whose value becomes the variable `store.password_env` names."""
WRITABLE = {"tmp": "/tmp", "state": "/var/lib/gpuburst", "pulumi-home": "/var/lib/pulumi"}
"""emptyDir volumes over a read-only root filesystem: scratch and HOME, the state directory (the
directory of `store.path`, where the controller writes the pool stacks' node sets), PULUMI_HOME."""
REPLICAS = 2
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NODE_EVENT_NAMESPACE = "default"
"""Where the controller records Events about Nodes (cluster-scoped objects), as the kubelet does."""
RULES_FILE = Path("rules") / "gpuburst-rules.yaml"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "gpuburst"}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One RBAC rule: an API group, one resource (or subresource), its verbs, optionally named objects."""

    group: str
    resource: str
    verbs: tuple[str, ...]
    names: tuple[str, ...] = ()

    def render(self) -> Obj:
        rule: Obj = {"apiGroups": [self.group], "resources": [self.resource], "verbs": list(self.verbs)}
        if self.names:
            rule["resourceNames"] = list(self.names)
        return rule


CLUSTER_RULES = (
    # The burst-node watch cache, cordon.
    Rule("", "nodes", ("list", "watch", "patch")),
    # Pods on a node being drained, in any namespace: found, marked to go first, evicted.
    Rule("", "pods", ("list", "patch")),
    Rule("", "pods/eviction", ("create",)),
)
WORKLOAD_RULES = (
    # The burst-pod watch cache, the burst Deployments' scale, Events on them.
    Rule("", "pods", ("list", "watch")),
    Rule("apps", "deployments", ("get",)),
    Rule("apps", "deployments/scale", ("get", "update")),
    Rule("", "events", ("create",)),
)
NODE_EVENT_RULES = (Rule("", "events", ("create",)),)
# `create` cannot be limited to a name (the object does not exist yet); reading and renewing can.
LEASE_RULES = (
    Rule("coordination.k8s.io", "leases", ("get", "update"), (LEASE,)),
    Rule("coordination.k8s.io", "leases", ("create",)),
)


def check_config_file(document: Any, cfg: ControllerConfig, *, workload_namespace: str) -> None:
    """The controller's config must agree with what the Deployment gives it; the error names the key."""
    where = f"gpuburst:controller.config ({cfg.config})"
    if not isinstance(document, dict):
        raise ConfigError(f"{where} is not a controller config (a YAML mapping)")

    def get(path: str) -> Any:
        value: Any = document
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    expected = {
        "kubernetes.namespace": workload_namespace,
        "leader_election.enabled": True,
        "leader_election.namespace": cfg.namespace,
        "api.listen": f"0.0.0.0:{PORT}",
        "api.tokens_file": f"{TOKENS_DIR}/{TOKENS_KEY}",
    }
    for path, want in expected.items():
        if get(path) != want:
            raise ConfigError(f"{where}: {path} must be {want!r} for this deployment, got {get(path)!r}")
    for path in ("kubernetes.host", "kubernetes.kubeconfig", "kubernetes.context"):
        if get(path) is not None:
            raise ConfigError(f"{where}: {path} must be unset: in the cluster the service account is used")
    lease = get("leader_election.lease_name")
    if lease not in (None, LEASE):
        raise ConfigError(f"{where}: leader_election.lease_name must be {LEASE!r} (its Role names it)")
    # The state directory is the store path's, even when the store itself is PostgreSQL.
    store = str(get("store.path") or "")
    if not store.startswith(WRITABLE["state"] + "/"):
        raise ConfigError(f"{where}: store.path must be under {WRITABLE['state']} (the writable volume)")
    url = get("store.url")
    if not isinstance(url, str) or not url.startswith("postgresql"):
        raise ConfigError(
            f"{where}: store.url must be a postgresql:// URL: the {REPLICAS} replicas share the store "
            f"(an SQLite file per replica is not shared state), got {url!r}"
        )
    if urllib.parse.urlsplit(url).password is not None:
        raise ConfigError(f"{where}: store.url must not hold the password (the ConfigMap is plain text)")
    password_env = get("store.password_env")
    if not isinstance(password_env, str) or not _ENV_NAME.fullmatch(password_env):
        raise ConfigError(
            f"{where}: store.password_env must name the variable set from the Secret "
            f"{cfg.store_secret!r} (key {STORE_PASSWORD_KEY!r}), got {password_env!r}"
        )


class Controller(pulumi.ComponentResource):
    """Everything the controller needs on the private cluster, built from `objects()`."""

    def __init__(
        self,
        name: str,
        *,
        cfg: ControllerConfig,
        config_text: str,
        workload_namespace: str,
        dashboards_dir: Path,
        prometheus_operator: bool,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpuburst:k8s:Controller", name, None, opts)
        try:
            document = yaml.safe_load(config_text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"gpuburst:controller.config ({cfg.config}) is not YAML: {exc}") from None
        check_config_file(document, cfg, workload_namespace=workload_namespace)
        namespace: pulumi.CustomResource | None = None
        for obj in objects(
            cfg,
            config_text=config_text,
            workload_namespace=workload_namespace,
            dashboards_dir=dashboards_dir,
            prometheus_operator=prometheus_operator,
        ):
            depends = [namespace] if namespace is not None else None
            made = _resource(obj, pulumi.ResourceOptions(parent=self, depends_on=depends))
            if obj["kind"] == "Namespace":
                namespace = made
        self.register_outputs({})


def objects(
    cfg: ControllerConfig,
    *,
    config_text: str,
    workload_namespace: str,
    dashboards_dir: Path,
    prometheus_operator: bool,
) -> list[Obj]:
    """The controller's Kubernetes objects, as plain manifests (the namespace first when it is new)."""
    ns = cfg.namespace
    out: list[Obj] = []
    if ns != workload_namespace:
        out.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": LABELS}})
    out.append(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(NAME, ns),
            "automountServiceAccountToken": True,
        }
    )
    out += _binding("ClusterRole", NAME, None, CLUSTER_RULES, ns)
    out += _binding("Role", NAME, workload_namespace, WORKLOAD_RULES, ns)
    out += _binding("Role", f"{NAME}-node-events", NODE_EVENT_NAMESPACE, NODE_EVENT_RULES, ns)
    out += _binding("Role", f"{NAME}-lease", ns, LEASE_RULES, ns)
    out.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(NAME, ns),
            "data": {"config.yaml": config_text},
        }
    )
    out.append(deployment(cfg, config_text=config_text))
    out.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(NAME, ns),
            "spec": {
                "type": "ClusterIP",
                "selector": LABELS,
                "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        }
    )
    out.append(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta(NAME, ns),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": LABELS}},
        }
    )
    if prometheus_operator:
        out += monitoring(ns, dashboards_dir)
    return out


def container(cfg: ControllerConfig, *, password_env: str) -> Obj:
    """The controller container: probes, resources, a locked-down security context, its mounts."""
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 5}
    return {
        "name": "controller",
        "image": cfg.image,
        "args": ["run", "--config", f"{CONFIG_DIR}/config.yaml"],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        # AWS_* for the pools' EC2 API, PULUMI_* for the stacks' backend (docs/deploy.md).
        "envFrom": [{"secretRef": {"name": cfg.credentials_secret, "optional": False}}],
        # The store's password, by reference: never in the ConfigMap, Pulumi config or state.
        "env": [
            {
                "name": password_env,
                "valueFrom": {
                    "secretKeyRef": {"name": cfg.store_secret, "key": STORE_PASSWORD_KEY, "optional": False}
                },
            }
        ],
        # The pulumi CLI and its provider plugins run beside the controller: the memory is theirs.
        "resources": {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": "2", "memory": "2Gi"},
        },
        # The API answers once the pool stacks are opened (a backend login each): give it time.
        "startupProbe": {**probe, "failureThreshold": 30},
        "livenessProbe": {**probe, "failureThreshold": 3},
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tokens", "mountPath": TOKENS_DIR, "readOnly": True},
            *({"name": name, "mountPath": path} for name, path in WRITABLE.items()),
        ],
    }


def deployment(cfg: ControllerConfig, *, config_text: str) -> Obj:
    """The Deployment for a config file `check_config_file` accepted."""
    digest = hashlib.sha256(config_text.encode()).hexdigest()
    password_env = yaml.safe_load(config_text)["store"]["password_env"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(NAME, cfg.namespace),
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": LABELS},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                # A changed config rolls the pods.
                "metadata": {"labels": LABELS, "annotations": {"gpuburst.io/config-sha256": digest}},
                "spec": {
                    "serviceAccountName": NAME,
                    "automountServiceAccountToken": True,
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    # Two replicas on two nodes where the cluster allows it.
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "topologyKey": "kubernetes.io/hostname",
                                        "labelSelector": {"matchLabels": LABELS},
                                    },
                                }
                            ]
                        }
                    },
                    "containers": [container(cfg, password_env=password_env)],
                    "volumes": [
                        {"name": "config", "configMap": {"name": NAME}},
                        {
                            "name": "tokens",
                            "secret": {
                                "secretName": cfg.tokens_secret,
                                "items": [{"key": TOKENS_KEY, "path": TOKENS_KEY}],
                                "optional": False,
                            },
                        },
                        *({"name": name, "emptyDir": {}} for name in WRITABLE),
                    ],
                },
            },
        },
    }


def monitoring(namespace: str, dashboards_dir: Path) -> list[Obj]:
    """A ServiceMonitor for the controller's /metrics and the project's rules as a PrometheusRule."""
    out: list[Obj] = [
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": _meta(NAME, namespace),
            "spec": {
                "selector": {"matchLabels": LABELS},
                "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            },
        }
    ]
    rules_path = dashboards_dir / RULES_FILE
    if rules_path.is_file():
        rules = yaml.safe_load(rules_path.read_text(encoding="utf-8")) or {}
        out.append(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PrometheusRule",
                "metadata": _meta("gpuburst", namespace),
                "spec": {"groups": rules.get("groups", [])},
            }
        )
    return out


def _meta(name: str, namespace: str | None) -> Obj:
    meta: Obj = {"name": name, "labels": LABELS}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def _binding(
    kind: str, name: str, namespace: str | None, rules: tuple[Rule, ...], sa_namespace: str
) -> list[Obj]:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": _meta(name, namespace),
        "rules": [rule.render() for rule in rules],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": f"{kind}Binding",
        "metadata": _meta(name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": sa_namespace}],
    }
    return [role, binding]


_KINDS: dict[str, Any] = {
    "Namespace": k8s.core.v1.Namespace,
    "ServiceAccount": k8s.core.v1.ServiceAccount,
    "ConfigMap": k8s.core.v1.ConfigMap,
    "Service": k8s.core.v1.Service,
    "ClusterRole": k8s.rbac.v1.ClusterRole,
    "ClusterRoleBinding": k8s.rbac.v1.ClusterRoleBinding,
    "Role": k8s.rbac.v1.Role,
    "RoleBinding": k8s.rbac.v1.RoleBinding,
    "Deployment": k8s.apps.v1.Deployment,
    "PodDisruptionBudget": k8s.policy.v1.PodDisruptionBudget,
}


def logical_name(obj: Obj) -> str:
    """Unique per object: kind, namespace (Roles of one name live in several) and name."""
    meta = obj["metadata"]
    return "-".join(part for part in (obj["kind"].lower(), meta.get("namespace"), meta["name"]) if part)


def _resource(obj: Obj, opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    fields = {key: value for key, value in obj.items() if key not in ("apiVersion", "kind")}
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        return k8s.apiextensions.CustomResource(
            logical_name(obj), api_version=obj["apiVersion"], kind=obj["kind"], opts=opts, **fields
        )
    cls = _KINDS[obj["kind"]]
    if obj["kind"] in ("ServiceAccount",):
        fields["automount_service_account_token"] = fields.pop("automountServiceAccountToken")
    if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
        fields["role_ref"] = fields.pop("roleRef")
    return cls(logical_name(obj), opts=opts, **fields)  # type: ignore[no-any-return]
