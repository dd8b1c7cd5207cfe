"""The face-compare Kubernetes objects: the renderer, the kustomize files and the burst node contract."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from workloads.face_compare import manifests

IMAGE = "registry.example/face-compare:1.2.3"
K8S_VERSION = "1.33.0"


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(deployment)["env"]}


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), kinds
    return {o["kind"]: o for o in objects}


def test_burst_renders_one_deployment_and_pdb_per_pool_on_the_node_contract() -> None:
    objects = manifests.render("burst", pool="gcp-a100-spot", image=IMAGE, namespace="fc", replicas=3)
    kinds = _by_kind(objects)
    assert set(kinds) == {"Deployment", "PodDisruptionBudget"}
    deployment, pdb = kinds["Deployment"], kinds["PodDisruptionBudget"]

    assert deployment["metadata"]["name"] == "face-compare-burst-gcp-a100-spot"
    assert deployment["metadata"]["namespace"] == "fc"
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "face-compare"
    assert pod["metadata"]["labels"]["gpuburst.io/placement"] == "burst"
    assert pod["metadata"]["labels"]["gpuburst.io/pool"] == "gcp-a100-spot"
    assert pod["spec"]["nodeSelector"] == {
        "gpuburst.io/placement": "burst",
        "gpuburst.io/pool": "gcp-a100-spot",
    }
    assert {
        "key": "gpuburst.io/burst",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    } in pod["spec"]["tolerations"]
    container = _container(deployment)
    assert container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _env(deployment)["GPUBURST_PLACEMENT"] == "burst"
    assert _env(deployment)["GPUBURST_POOL"] == "gcp-a100-spot"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    # The grace period must cover the preStop sleep and the service's own drain timeout.
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    drain_s = float(_env(deployment)["FACECOMPARE_DRAIN_TIMEOUT_S"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop_s + drain_s

    assert pdb["metadata"]["name"] == "face-compare-burst-gcp-a100-spot"
    assert pdb["metadata"]["namespace"] == "fc"
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert all(pod["metadata"]["labels"][k] == v for k, v in selector.items())


def test_burst_retarget_leaves_no_trace_of_the_overlay_example_pool() -> None:
    example = yaml.safe_dump_all(manifests.render("burst", pool="aws-g5-spot", image=IMAGE))
    assert "aws-g5-spot" in example
    other = yaml.safe_dump_all(manifests.render("burst", pool="other-pool", image=IMAGE))
    assert "aws-g5-spot" not in other
    assert other.replace("other-pool", "aws-g5-spot") == example


def test_private_renders_the_private_deployment() -> None:
    (deployment,) = manifests.render("private", image=IMAGE, replicas=8)
    assert deployment["kind"] == "Deployment"
    assert deployment["metadata"]["name"] == "face-compare-private"
    assert deployment["metadata"]["namespace"] == "face-compare"
    assert deployment["spec"]["replicas"] == 8
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["gpuburst.io/placement"] == "private"
    assert "nodeSelector" not in pod["spec"]
    assert all(t["key"] != "gpuburst.io/burst" for t in pod["spec"]["tolerations"])
    assert _env(deployment)["GPUBURST_PLACEMENT"] == "private"
    assert _env(deployment)["GPUBURST_POOL"] == "private"
    assert _container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_service_selects_both_placements() -> None:
    service = manifests.render_service(namespace="fc")
    assert service["metadata"] == {**service["metadata"], "name": "face-compare", "namespace": "fc"}
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "face-compare"}
    for objects in (
        manifests.render("private", image=IMAGE),
        manifests.render("burst", pool="p1", image=IMAGE),
    ):
        labels = _by_kind(objects)["Deployment"]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()


def test_selectors_of_placements_and_pools_never_overlap() -> None:
    """Overlapping Deployment selectors would make ReplicaSets fight over each other's pods."""
    deployments = [
        _by_kind(manifests.render("private", image=IMAGE))["Deployment"],
        _by_kind(manifests.render("burst", pool="a", image=IMAGE))["Deployment"],
        _by_kind(manifests.render("burst", pool="b", image=IMAGE))["Deployment"],
    ]
    for owner in deployments:
        for other in deployments:
            if other is owner:
                continue
            pod_labels = other["spec"]["template"]["metadata"]["labels"]
            selector = owner["spec"]["selector"]["matchLabels"]
            assert not selector.items() <= pod_labels.items()


@pytest.mark.parametrize(
    "objects",
    [
        pytest.param(lambda: manifests.render("private", image=IMAGE), id="private"),
        pytest.param(lambda: manifests.render("burst", pool="aws-g5-spot", image=IMAGE), id="burst"),
        pytest.param(lambda: [manifests.render_service()], id="service"),
        pytest.param(lambda: [manifests.render_namespace(namespace="fc")], id="namespace"),
    ],
)
def test_every_rendered_object_validates_against_the_kubernetes_schema(objects: Any) -> None:
    for obj in objects():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"placement": "burst"}, "needs a pool"),
        ({"placement": "burst", "pool": "Bad_Pool"}, "pool must be lowercase"),
        ({"placement": "burst", "pool": "x" * 60}, "at most"),
        ({"placement": "edge"}, "placement must be one of"),
        ({"placement": "private", "pool": "aws"}, "has the pool 'private'"),
        ({"placement": "private", "replicas": -1}, "replicas must be >= 0"),
    ],
)
def test_render_refuses_bad_arguments_with_a_clear_message(kwargs: dict[str, Any], message: str) -> None:
    placement = kwargs.pop("placement")
    with pytest.raises(ValueError, match=message):
        manifests.render(placement, image=IMAGE, **kwargs)


def test_build_refuses_kustomize_features_it_cannot_follow(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {team: x}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported fields"):
        manifests.build(tmp_path)


_KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(_KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("placement", ["private", "burst"])
def test_render_matches_kubectl_kustomize_on_the_same_files(placement: str) -> None:
    """`kubectl apply -k` and the Pulumi component deploy the same objects."""
    assert _KUBECTL is not None
    overlay = manifests.K8S_DIR / "overlays" / placement
    out = subprocess.run(
        [_KUBECTL, "kustomize", str(overlay)], check=True, capture_output=True, text=True
    ).stdout
    kustomized = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out)}

    base_deployment = yaml.safe_load((manifests.K8S_DIR / "base" / "deployment.yaml").read_text())
    image = base_deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    pool = "aws-g5-spot" if placement == "burst" else None
    replicas = 0 if placement == "burst" else 1
    rendered = manifests.render(placement, pool=pool, image=image, replicas=replicas)
    rendered.append(manifests.render_service())
    rendered.append(manifests.render_namespace())
    assert {(o["kind"], o["metadata"]["name"]): o for o in rendered} == kustomized
