"""The private-cluster stack under Pulumi mocks: the workload objects, who owns replicas, and the
dashboards and alert rules as sidecar ConfigMaps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest

from stacks import config, mocks, program, workload
from workloads.face_compare import manifests

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
CONFIGMAP = "kubernetes:core/v1:ConfigMap"
IMAGE = "registry.example.com/gpuburst/face-compare:0.1.0"
BURST_TOLERATION = {"key": "gpuburst.io/burst", "operator": "Equal", "value": "true", "effect": "NoSchedule"}


def render_cluster(pools: list[str], **overrides: str) -> mocks.Rendering:
    cfg = {
        "gpuburst:kind": "private-cluster",
        "gpuburst:image": IMAGE,
        "gpuburst:pools": json.dumps(pools),
        **{f"gpuburst:{key}": value for key, value in overrides.items()},
    }
    return mocks.render(program.main, config=cfg, stack="private-cluster")


def render_workload(dashboards: Path, **kwargs: Any) -> mocks.Rendering:
    def build() -> None:
        workload.Workload(
            "face-compare",
            image=IMAGE,
            namespace="face-compare",
            pools=["aws-g5-spot"],
            private_replicas=1,
            dashboards_dir=dashboards,
            **kwargs,
        )

    return mocks.render(build, config={})


def kube_objects(rendering: mocks.Rendering) -> list[mocks.Registered]:
    return [r for r in rendering.resources if r.type.startswith("kubernetes:")]


def test_burst_deployment_per_pool_selects_tolerates_and_leaves_replicas_to_the_controller() -> None:
    rendering = render_cluster(["aws-g5-spot", "aws-g5-ondemand"])

    for pool in ("aws-g5-spot", "aws-g5-ondemand"):
        deployment = rendering.get(DEPLOYMENT, f"deployment-face-compare-burst-{pool}")
        assert deployment.ignore_changes == ("spec.replicas",)
        spec = deployment.inputs["spec"]
        assert spec["replicas"] == 0
        pod = spec["template"]["spec"]
        assert pod["nodeSelector"] == {"gpuburst.io/placement": "burst", "gpuburst.io/pool": pool}
        assert BURST_TOLERATION in pod["tolerations"]
        [container] = pod["containers"]
        assert container["image"] == IMAGE
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        assert spec["selector"]["matchLabels"]["gpuburst.io/pool"] == pool
        budget = rendering.get(PDB, f"poddisruptionbudget-face-compare-burst-{pool}")
        assert budget.inputs["spec"]["selector"] == spec["selector"]
        assert budget.ignore_changes == ()


def test_private_deployment_is_owned_by_the_stack_and_stays_off_burst_nodes() -> None:
    rendering = render_cluster(["aws-g5-spot"], privateReplicas="3")

    private = rendering.get(DEPLOYMENT, "deployment-face-compare-private")
    assert private.ignore_changes == ()
    spec = private.inputs["spec"]
    assert spec["replicas"] == 3
    assert BURST_TOLERATION not in spec["template"]["spec"].get("tolerations", [])
    assert spec["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_one_service_spans_both_placements() -> None:
    rendering = render_cluster(["aws-g5-spot"])

    [service] = rendering.of_type("kubernetes:core/v1:Service")
    selector = service.inputs["spec"]["selector"]
    for deployment in rendering.of_type(DEPLOYMENT):
        assert selector.items() <= deployment.inputs["spec"]["template"]["metadata"]["labels"].items()
    assert service.inputs["spec"]["type"] == "ClusterIP"


def test_objects_are_the_workload_manifests_unchanged() -> None:
    rendering = render_cluster(["aws-g5-spot"], namespace="inference")

    expected = [
        manifests.render_namespace(namespace="inference"),
        *manifests.render("private", image=IMAGE, namespace="inference", replicas=1),
        *manifests.render("burst", pool="aws-g5-spot", image=IMAGE, namespace="inference", replicas=0),
        manifests.render_service(namespace="inference"),
    ]
    # Dashboards and rules ride along as ConfigMaps; the test below covers those.
    registered = {r.name: mocks.integral(r.inputs) for r in kube_objects(rendering) if r.type != CONFIGMAP}
    assert registered == {workload.logical_name(obj): obj for obj in expected}


def test_removing_a_pool_removes_exactly_its_deployment_and_budget() -> None:
    before = render_cluster(["aws-g5-ondemand", "aws-g5-spot"])
    after = render_cluster(["aws-g5-ondemand"])

    before_inputs = {r.urn: r.inputs for r in before.resources}
    after_inputs = {r.urn: r.inputs for r in after.resources}
    removed = set(before_inputs) - set(after_inputs)
    assert {urn.rsplit("::", 1)[-1] for urn in removed} == {
        "deployment-face-compare-burst-aws-g5-spot",
        "poddisruptionbudget-face-compare-burst-aws-g5-spot",
    }
    assert all(before_inputs[urn] == inputs for urn, inputs in after_inputs.items())


def test_rendered_objects_validate_against_the_kubernetes_schema(tmp_path: Path) -> None:
    (tmp_path / "overview.json").write_text('{"title": "gpuburst"}')
    (tmp_path / "gpuburst-rules.yaml").write_text("groups: []\n")
    rendering = render_workload(tmp_path)
    version = kubernetes_validate.utils.latest_version()

    objects = kube_objects(rendering)
    assert {r.type for r in objects} == {
        "kubernetes:core/v1:Namespace",
        DEPLOYMENT,
        PDB,
        "kubernetes:core/v1:Service",
        CONFIGMAP,
    }
    for resource in objects:
        kubernetes_validate.validate(mocks.integral(resource.inputs), version, strict=True)


def test_dashboards_and_rules_become_sidecar_configmaps(tmp_path: Path) -> None:
    (tmp_path / "gpuburst").mkdir()
    (tmp_path / "gpuburst" / "fleet_overview.json").write_text('{"title": "fleet"}')
    (tmp_path / "alerts").mkdir()
    (tmp_path / "alerts" / "gpuburst-rules.yml").write_text("groups: []\n")
    (tmp_path / "alerts" / "recording.yaml").write_text("groups: []\n")  # not a *rules* file
    (tmp_path / "build.py").write_text("")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "stale.json").write_text("{}")

    rendering = render_workload(tmp_path, monitoring_namespace="monitoring")

    maps = {r.name: r.inputs for r in rendering.of_type(CONFIGMAP)}
    assert sorted(maps) == [
        "configmap-gpuburst-dashboard-gpuburst-fleet-overview",
        "configmap-gpuburst-rules-alerts-gpuburst-rules",
    ]
    dashboard = maps["configmap-gpuburst-dashboard-gpuburst-fleet-overview"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["data"] == {"fleet_overview.json": '{"title": "fleet"}'}
    rules = maps["configmap-gpuburst-rules-alerts-gpuburst-rules"]
    assert rules["metadata"]["labels"]["prometheus_rule"] == "1"
    assert "grafana_dashboard" not in rules["metadata"]["labels"]
    assert rules["data"] == {"gpuburst-rules.yml": "groups: []\n"}


def test_no_dashboards_no_configmaps(tmp_path: Path) -> None:
    assert render_workload(tmp_path).of_type(CONFIGMAP) == []
    assert render_workload(tmp_path / "missing").of_type(CONFIGMAP) == []


def test_the_stack_publishes_what_the_dashboards_folder_holds() -> None:
    rendering = render_cluster(["aws-g5-spot"])

    expected = workload.monitoring_configmaps(program.DASHBOARDS_DIR, namespace="face-compare")
    # The mocks register resources in no fixed order.
    assert sorted(r.inputs["metadata"]["name"] for r in rendering.of_type(CONFIGMAP)) == sorted(
        obj["metadata"]["name"] for obj in expected
    )
    assert len(expected) == 3, "two dashboards and one rules file"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"gpuburst:image": None}, "gpuburst:image is required"),
        ({"gpuburst:pools": "aws-g5-spot"}, "gpuburst:pools must be a JSON list of pool names"),
        ({"gpuburst:pools": '["aws-g5-spot", "aws-g5-spot"]'}, "gpuburst:pools must not repeat a pool"),
        ({"gpuburst:pools": '["AWS"]'}, "gpuburst:pools pool must be lowercase letters"),
        (
            {"gpuburst:privateReplicas": "-1"},
            "gpuburst:privateReplicas: Input should be greater than or equal to 0",
        ),
        (
            {"gpuburst:namespace": "Face Compare"},
            "gpuburst:namespace namespace 'Face Compare' is not a DNS label",
        ),
    ],
)
def test_invalid_config_fails_naming_the_key(overrides: dict[str, str | None], message: str) -> None:
    cfg = {"gpuburst:kind": "private-cluster", "gpuburst:image": IMAGE, **overrides}
    cfg = {key: value for key, value in cfg.items() if value is not None}
    with pytest.raises(config.ConfigError) as raised:
        mocks.render(program.main, config=cfg, stack="private-cluster")
    assert message in str(raised.value)
