"""The container image definition agrees with the project's lock file and with the Kubernetes manifests.

No Docker engine runs here, so the image is not built in the tests; these checks catch the drift that
would otherwise show up only on a GPU node.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from workloads.face_compare import manifests

PACKAGE = Path(manifests.__file__).parent
REPO = PACKAGE.parents[1]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def _dockerfile() -> str:
    return (PACKAGE / "Dockerfile").read_text(encoding="utf-8")


def test_image_requirements_pin_the_same_versions_as_the_lock() -> None:
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    locked: dict[str, set[str]] = {}
    for package in lock["package"]:
        locked.setdefault(package["name"].lower().replace("_", "-"), set()).add(package["version"])
    image = _pins((PACKAGE / "requirements.txt").read_text(encoding="utf-8").splitlines())
    assert image, "requirements.txt is empty"
    assert {name: v for name, v in image.items() if v not in locked.get(name, set())} == {}


def test_dockerfile_is_multi_stage_on_a_cuda_runtime_and_runs_as_non_root() -> None:
    text = _dockerfile()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:13\.[\d.]+-cudnn-runtime-ubuntu", text, re.M)
    stages = re.findall(r"^FROM \$\{CUDA_IMAGE\} AS (\w+)$", text, re.M)
    assert stages == ["build", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    user = re.search(r"^USER (\d+):(\d+)$", runtime, re.M)
    assert user and int(user.group(1)) != 0
    assert "make-model /opt/face-compare/models/reference.onnx" in text.split("AS runtime", 1)[0]


def test_dockerfile_matches_the_deployment() -> None:
    text = _dockerfile()
    (deployment,) = manifests.render("private", image="x")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert f"FACECOMPARE_MODEL_PATH={env['FACECOMPARE_MODEL_PATH']}" in text
    port = container["ports"][0]["containerPort"]
    assert f"EXPOSE {port}" in text
    assert container["args"][:3] == ["serve", "--port", str(port)]
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert user and int(user.group(1)) == pod["securityContext"]["runAsUser"]
    assert int(user.group(2)) == pod["securityContext"]["runAsGroup"]


def test_dockerignore_sends_only_the_workload() -> None:
    text = (PACKAGE / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*" and "!workloads/face_compare" in lines
    copied = re.findall(r"^COPY (?!--from)(\S+)", _dockerfile(), re.M)
    for source in copied:
        assert (REPO / source).exists(), source


def test_kustomize_files_are_valid_yaml_with_one_document_each() -> None:
    for path in sorted((PACKAGE / "k8s").rglob("*.yaml")):
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        assert len(documents) == 1, path
