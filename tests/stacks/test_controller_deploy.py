"""The controller's deployment on the private cluster under Pulumi mocks: what the committed stack
creates, RBAC that is exactly the kube adapter's API calls, the pod's security and probes, the shared
PostgreSQL store with its password from a Secret, and the Prometheus Operator objects only when the stack
says its CRDs exist."""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from controller.adapters.kube import events, lease
from controller.app import config as controller_config
from stacks import config, controller_deploy, mocks, program

REPO = Path(__file__).resolve().parents[2]
KUBE_ADAPTER = REPO / "controller" / "adapters" / "kube"
STACK_FILE = REPO / "Pulumi.private-cluster.yaml"
DOCKERFILE = REPO / "Dockerfile.controller"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
RBAC = "kubernetes:rbac.authorization.k8s.io/v1:"
SERVICE_MONITOR = "kubernetes:monitoring.coreos.com/v1:ServiceMonitor"
PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
CONTROLLER = {"image": "registry.example.com/gpuburst/controller:0.1.0"}


def render_stack_file(**overrides: str) -> mocks.Rendering:
    cfg, secret_keys = mocks.stack_file_config(STACK_FILE, secrets={})
    cfg.update({f"gpuburst:{key}": value for key, value in overrides.items()})
    return mocks.render(program.main, config=cfg, secret_keys=secret_keys, stack="private-cluster")


def render(controller: dict[str, Any] | None = None, **overrides: str) -> mocks.Rendering:
    cfg = {
        "gpuburst:kind": "private-cluster",
        "gpuburst:image": "registry.example.com/gpuburst/face-compare:0.1.0",
        "gpuburst:pools": '["aws-g5-spot"]',
        "gpuburst:controller": json.dumps(controller or CONTROLLER),
        **{f"gpuburst:{key}": value for key, value in overrides.items()},
    }
    return mocks.render(program.main, config=cfg, stack="private-cluster")


def controller_objects(rendering: mocks.Rendering) -> list[mocks.Registered]:
    [component] = [r for r in rendering.resources if r.type == "gpuburst:k8s:Controller"]
    return [r for r in rendering.resources if r.parent == component.urn]


def roles(rendering: mocks.Rendering) -> list[mocks.Registered]:
    return rendering.of_type(RBAC + "Role") + rendering.of_type(RBAC + "ClusterRole")


# -- the committed stack -------------------------------------------------------------------------------
def test_the_committed_stack_deploys_the_controller_with_two_replicas_and_no_rbac_wildcards() -> None:
    rendering = render_stack_file()

    [deployment] = [
        d for d in rendering.of_type(DEPLOYMENT) if d.inputs["metadata"]["name"] == "gpuburst-controller"
    ]
    assert deployment.inputs["spec"]["replicas"] == 2
    [account] = rendering.of_type("kubernetes:core/v1:ServiceAccount")
    assert account.inputs["metadata"] == {
        "name": "gpuburst-controller",
        "namespace": "gpuburst",
        "labels": controller_deploy.LABELS,
    }
    assert deployment.inputs["spec"]["template"]["spec"]["serviceAccountName"] == "gpuburst-controller"
    found = roles(rendering)
    assert len(found) == 4
    for role in found:
        for rule in role.inputs["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not any("*" in value for value in rule.get(field, [])), (role.name, rule)
    bindings = rendering.of_type(RBAC + "RoleBinding") + rendering.of_type(RBAC + "ClusterRoleBinding")
    assert len(bindings) == 4
    for binding in bindings:
        assert binding.inputs["subjects"] == [
            {"kind": "ServiceAccount", "name": "gpuburst-controller", "namespace": "gpuburst"}
        ]
    assert rendering.of_type(SERVICE_MONITOR) == rendering.of_type(PROMETHEUS_RULE) == []


def test_no_controller_key_no_controller() -> None:
    cfg = {"gpuburst:kind": "private-cluster", "gpuburst:image": "x:1"}
    rendering = mocks.render(program.main, config=cfg, stack="private-cluster")
    assert rendering.of_type("kubernetes:core/v1:ServiceAccount") == []
    assert roles(rendering) == []


# -- RBAC: exactly the adapter's calls -----------------------------------------------------------------
_APIS = {
    "core": kubernetes.client.CoreV1Api,
    "apps": kubernetes.client.AppsV1Api,
    "coordination": kubernetes.client.CoordinationV1Api,
}
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def adapter_calls() -> set[tuple[str, str, str, bool]]:
    """(apiGroup, resource, verb, cluster-wide) for every client method the kube adapter names; a list
    method handed to the watch cache is watched too."""
    calls: set[tuple[str, str, str, bool]] = set()
    for path in sorted(KUBE_ADAPTER.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        watched = {
            id(arg)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Reflector"
            for arg in node.args
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)):
                continue
            if node.value.attr not in _APIS or node.attr.startswith("_"):
                continue
            api = _APIS[node.value.attr]
            source = inspect.getsource(getattr(api, f"_{node.attr}_serialize"))
            method = re.search(r"method='(\w+)'", source)
            resource_path = re.search(r"resource_path='([^']+)'", source)
            assert method and resource_path, node.attr
            calls |= _rbac(method.group(1), resource_path.group(1), watch=id(node) in watched)
    return calls


def _rbac(method: str, path: str, *, watch: bool) -> set[tuple[str, str, str, bool]]:
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    cluster_wide = rest[0] != "namespaces"
    if not cluster_wide:
        rest = rest[2:]
    resource = "/".join([rest[0], *rest[2:3]])
    named = len(rest) > 1
    if method == "GET":
        verbs = ["get"] if named else ["list", *(["watch"] if watch else [])]
    else:
        verbs = [_VERBS[method]]
    return {(group, resource, verb, cluster_wide) for verb in verbs}


def granted(rules: tuple[controller_deploy.Rule, ...]) -> set[tuple[str, str, str]]:
    return {(rule.group, rule.resource, verb) for rule in rules for verb in rule.verbs}


def test_rbac_is_exactly_what_the_kube_adapter_calls() -> None:
    calls = adapter_calls()
    assert ("", "pods/eviction", "create", False) in calls  # the scan sees subresources
    assert ("", "nodes", "watch", True) in calls  # and the watch caches

    every = (
        controller_deploy.CLUSTER_RULES
        + controller_deploy.WORKLOAD_RULES
        + controller_deploy.NODE_EVENT_RULES
        + controller_deploy.LEASE_RULES
    )
    assert granted(every) == {(group, resource, verb) for group, resource, verb, _ in calls}
    # Cluster-scoped objects and calls across namespaces need the ClusterRole.
    assert {c[:3] for c in calls if c[3]} <= granted(controller_deploy.CLUSTER_RULES)


def test_rbac_names_the_same_lease_and_event_namespace_as_the_controller() -> None:
    assert controller_config.LeaderElectionConfig().lease_name == controller_deploy.LEASE
    assert events.NODE_EVENT_NAMESPACE == controller_deploy.NODE_EVENT_NAMESPACE
    assert lease.LeaseElector.__init__.__kwdefaults__["name"] == controller_deploy.LEASE  # type: ignore[index]


def test_roles_are_bound_where_the_controller_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (REPO / "examples" / "in-cluster.yaml").read_text()
    (tmp_path / "controller.yaml").write_text(text.replace("namespace: face-compare", "namespace: inference"))
    monkeypatch.setattr(program, "PROJECT_DIR", tmp_path)
    rendering = render({**CONTROLLER, "config": "controller.yaml"}, namespace="inference")

    by_namespace = {
        r.inputs["metadata"].get("namespace"): r.inputs["rules"] for r in rendering.of_type(RBAC + "Role")
    }
    assert set(by_namespace) == {"inference", "default", "gpuburst"}
    assert {rule["resources"][0] for rule in by_namespace["gpuburst"]} == {"leases"}
    assert by_namespace["gpuburst"][0]["resourceNames"] == ["gpuburst-controller"]
    [cluster_role] = rendering.of_type(RBAC + "ClusterRole")
    assert {rule["resources"][0] for rule in cluster_role.inputs["rules"]} == {
        "nodes",
        "pods",
        "pods/eviction",
    }


# -- the pod -------------------------------------------------------------------------------------------
def test_the_pod_is_locked_down_probed_and_sized() -> None:
    pod = (
        render().get(DEPLOYMENT, "deployment-gpuburst-gpuburst-controller").inputs["spec"]["template"]["spec"]
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]


def test_the_probe_paths_are_the_api_routes() -> None:
    from controller.runtime.api import reads

    source = inspect.getsource(reads.health_router)
    assert '@r.get("/healthz")' in source and '@r.get("/readyz"' in source


def test_every_path_the_image_writes_is_a_volume() -> None:
    """Read-only root: HOME, PULUMI_HOME, /tmp and the state directory (the store path's, where the
    pool stacks' node sets are written) are emptyDirs."""
    pod = (
        render().get(DEPLOYMENT, "deployment-gpuburst-gpuburst-controller").inputs["spec"]["template"]["spec"]
    )
    [container] = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    image_env = dict(re.findall(r"^\s+(?:ENV )?(\w+)=(\S+)", DOCKERFILE.read_text(), re.M))
    in_cluster = controller_config.load(REPO / "examples" / "in-cluster.yaml")
    for path in ("/tmp", image_env["HOME"], image_env["PULUMI_HOME"], str(in_cluster.store_path.parent)):
        mount = mounts[path]
        assert volumes[mount["name"]] == {"name": mount["name"], "emptyDir": {}}, path
        assert not mount.get("readOnly"), path


def test_secrets_are_referenced_never_created() -> None:
    rendering = render({**CONTROLLER, "tokensSecret": "my-tokens", "credentialsSecret": "my-aws"})

    assert not [r for r in rendering.resources if r.type == "kubernetes:core/v1:Secret"]
    pod = rendering.get(DEPLOYMENT, "deployment-gpuburst-gpuburst-controller").inputs["spec"]["template"][
        "spec"
    ]
    [container] = pod["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "my-aws", "optional": False}}]
    [tokens] = [v for v in pod["volumes"] if "secret" in v]
    assert tokens["secret"]["secretName"] == "my-tokens"
    in_cluster = controller_config.load(REPO / "examples" / "in-cluster.yaml")
    mount = next(m for m in container["volumeMounts"] if m["name"] == tokens["name"])
    assert (
        str(in_cluster.config.api.tokens_file)
        == f"{mount['mountPath']}/{tokens['secret']['items'][0]['path']}"
    )


def test_the_store_is_the_shared_postgresql_with_its_password_from_a_secret() -> None:
    rendering = render({**CONTROLLER, "storeSecret": "pg-credentials"})

    pod = rendering.get(DEPLOYMENT, "deployment-gpuburst-gpuburst-controller").inputs["spec"]["template"][
        "spec"
    ]
    [container] = pod["containers"]
    in_cluster = controller_config.load(REPO / "examples" / "in-cluster.yaml").config.store
    assert in_cluster.url is not None and in_cluster.url.startswith("postgresql://")
    assert container["env"] == [
        {
            "name": in_cluster.password_env,
            "valueFrom": {"secretKeyRef": {"name": "pg-credentials", "key": "password", "optional": False}},
        }
    ]
    assert not [r for r in rendering.resources if r.type == "kubernetes:core/v1:Secret"]


def test_no_literal_store_password_anywhere_in_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the password in the environment of whoever runs `pulumi up`, it still reaches no resource, and
    no variable of the controller carries a literal value: the stack only names the Secret."""
    password = "s3cret-Value-nowhere"
    monkeypatch.setenv("GPUBURST_STORE_PASSWORD", password)
    rendering = render_stack_file()

    assert password not in json.dumps([r.inputs for r in rendering.resources])
    [deployment] = [r for r in controller_objects(rendering) if r.type == DEPLOYMENT]
    [container] = deployment.inputs["spec"]["template"]["spec"]["containers"]
    assert container["env"]
    for env in container["env"]:
        assert set(env) == {"name", "valueFrom"}, env


def test_the_config_map_is_the_config_file_and_the_pods_roll_when_it_changes() -> None:
    rendering = render()
    [cm] = [r for r in controller_objects(rendering) if r.type == "kubernetes:core/v1:ConfigMap"]
    text = (REPO / "examples" / "in-cluster.yaml").read_text()
    assert cm.inputs["data"] == {"config.yaml": text}
    loaded = controller_config.parse(yaml.safe_load(text), source=Path("/etc/gpuburst/config.yaml"))
    assert loaded.config.leader_election.enabled
    assert loaded.config.api.address() == ("0.0.0.0", controller_deploy.PORT)

    cfg = config.ControllerConfig.model_validate(CONTROLLER)
    [before, after] = [
        controller_deploy.deployment(cfg, config_text=t)["spec"]["template"]["metadata"]["annotations"]
        for t in (text, text + "tick_interval_s: 30\n")
    ]
    assert before != after


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("face-compare", "other"), "kubernetes.namespace must be 'face-compare'"),
        (("enabled: true", "enabled: false"), "leader_election.enabled must be True"),
        (("0.0.0.0:8080", "127.0.0.1:8080"), "api.listen must be '0.0.0.0:8080'"),
        (("/var/lib/gpuburst/gpuburst.db", "gpuburst.db"), "store.path must be under /var/lib/gpuburst"),
        (("kubernetes:\n", "kubernetes:\n  kubeconfig: /x\n"), "kubernetes.kubeconfig must be unset"),
        (
            ("  url: postgresql://gpuburst@", "  # url: postgresql://gpuburst@"),
            "store.url must be a postgresql:// URL: the 2 replicas share the store",
        ),
        (
            ("postgresql://gpuburst@", "postgresql://gpuburst:hunter2@"),
            "store.url must not hold the password",
        ),
        (("  password_env: GPUBURST_STORE_PASSWORD\n", ""), "store.password_env must name the variable"),
    ],
)
def test_a_config_file_that_disagrees_with_the_deployment_fails_naming_the_key(
    edit: tuple[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (REPO / "examples" / "in-cluster.yaml").read_text().replace(*edit)
    (tmp_path / "controller.yaml").write_text(text)
    monkeypatch.setattr(program, "PROJECT_DIR", tmp_path)
    with pytest.raises(config.ConfigError) as raised:
        render({**CONTROLLER, "config": "controller.yaml"})
    assert message in str(raised.value)


def test_a_missing_config_file_fails_naming_the_key() -> None:
    with pytest.raises(config.ConfigError, match=r"gpuburst:controller.config: no file .*nope.yaml"):
        render({**CONTROLLER, "config": "nope.yaml"})


# -- Prometheus Operator -------------------------------------------------------------------------------
def test_without_the_operator_no_crd_objects_and_the_rules_stay_a_configmap() -> None:
    rendering = render(prometheusOperator="false")

    assert rendering.of_type(SERVICE_MONITOR) == rendering.of_type(PROMETHEUS_RULE) == []
    labels = [r.inputs["metadata"]["labels"] for r in rendering.of_type("kubernetes:core/v1:ConfigMap")]
    assert sum("prometheus_rule" in label for label in labels) == 1
    assert sum("grafana_dashboard" in label for label in labels) == 2


def test_with_the_operator_a_service_monitor_and_the_rules_as_a_prometheus_rule() -> None:
    rendering = render(prometheusOperator="true")

    [monitor] = rendering.of_type(SERVICE_MONITOR)
    [service] = [
        s
        for s in rendering.of_type("kubernetes:core/v1:Service")
        if s.inputs["metadata"]["name"] == "gpuburst-controller"
    ]
    assert monitor.inputs["spec"]["selector"]["matchLabels"] == service.inputs["metadata"]["labels"]
    assert monitor.inputs["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    [rule] = rendering.of_type(PROMETHEUS_RULE)
    committed = yaml.safe_load((program.DASHBOARDS_DIR / "rules" / "gpuburst-rules.yaml").read_text())
    assert mocks.integral(rule.inputs["spec"]) == {"groups": committed["groups"]}
    labels = [r.inputs["metadata"]["labels"] for r in rendering.of_type("kubernetes:core/v1:ConfigMap")]
    assert not any("prometheus_rule" in label for label in labels)  # not evaluated twice
    assert sum("grafana_dashboard" in label for label in labels) == 2  # dashboards stay ConfigMaps


def test_a_non_boolean_operator_flag_fails_naming_the_key() -> None:
    with pytest.raises(config.ConfigError, match="gpuburst:prometheusOperator"):
        render(prometheusOperator="maybe")


# -- schema --------------------------------------------------------------------------------------------
def test_the_controller_objects_validate_against_the_kubernetes_schema() -> None:
    version = kubernetes_validate.utils.latest_version()
    objects = [
        r
        for r in controller_objects(render(prometheusOperator="true"))
        if "monitoring.coreos.com" not in r.type
    ]
    assert len(objects) == 14
    for resource in objects:
        group_version, kind = resource.type.removeprefix("kubernetes:").rsplit(":", 1)
        group, _, api_version = group_version.rpartition("/")
        manifest = {
            "apiVersion": api_version if group == "core" else f"{group}/{api_version}",
            "kind": kind,
            **mocks.integral(resource.inputs),
        }
        kubernetes_validate.validate(manifest, version, strict=True)
