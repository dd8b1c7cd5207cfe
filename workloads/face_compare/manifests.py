"""Kubernetes objects of the face-compare workload, rendered from the kustomize files under ``k8s/``.

The YAML under ``k8s/`` is the one source of truth: ``kubectl apply -k`` reads it, and :func:`render`
reads the same files, applies each overlay's JSON 6902 patches in Python (the subset of kustomize those
files use) and re-targets the burst overlay, written for one example pool, to the pool asked for. The
Pulumi workload component in ``stacks/`` calls this module; it imports only PyYAML and jsonpatch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import jsonpatch
import yaml

K8S_DIR: Final = Path(__file__).parent / "k8s"

APP_NAME: Final = "face-compare"
CONTAINER_NAME: Final = "face-compare"
DEFAULT_NAMESPACE: Final = "face-compare"
SERVICE_NAME: Final = "face-compare"
PRIVATE_DEPLOYMENT: Final = "face-compare-private"
BURST_DEPLOYMENT_PREFIX: Final = "face-compare-burst-"

# The burst node contract (docs/architecture.md, contracts) and the pod labels built on it.
LABEL_APP: Final = "app.kubernetes.io/name"
LABEL_PLACEMENT: Final = "gpuburst.io/placement"
LABEL_POOL: Final = "gpuburst.io/pool"
LABEL_NODE: Final = "gpuburst.io/node"
BURST_TAINT_KEY: Final = "gpuburst.io/burst"
ENV_PLACEMENT: Final = "GPUBURST_PLACEMENT"
ENV_POOL: Final = "GPUBURST_POOL"

PLACEMENTS: Final = ("private", "burst")
PRIVATE_POOL: Final = "private"

_KUSTOMIZATION_KEYS: Final = frozenset({"apiVersion", "kind", "namespace", "resources", "patches"})
_PATCH_KEYS: Final = frozenset({"path", "target", "options"})
_CLUSTER_SCOPED_KINDS: Final = frozenset({"Namespace"})
# A pool name ends up in a label value (<= 63 characters) and in the Deployment name.
_POOL_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_POOL_MAX_LEN: Final = 63 - len(BURST_DEPLOYMENT_PREFIX)

Obj = dict[str, Any]


def burst_deployment_name(pool: str) -> str:
    """The Deployment (and PodDisruptionBudget) name of one burst pool."""
    _check_pool(pool)
    return BURST_DEPLOYMENT_PREFIX + pool


def deployment_name(placement: str, *, pool: str | None = None) -> str:
    """The Deployment a placement (and, for burst, a pool) runs as; the controller scales it."""
    if placement == "private":
        return PRIVATE_DEPLOYMENT
    if placement == "burst":
        if pool is None:
            raise ValueError("placement 'burst' needs a pool")
        return burst_deployment_name(pool)
    raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}")


def render(
    placement: str,
    *,
    pool: str | None = None,
    image: str,
    namespace: str = DEFAULT_NAMESPACE,
    replicas: int = 1,
) -> list[Obj]:
    """The objects of one placement: the private Deployment, or one burst pool's Deployment and PDB.

    The Service and the Namespace are shared by every placement: see :func:`render_service` and
    :func:`render_namespace`.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}")
    if placement == "burst":
        if pool is None:
            raise ValueError("placement 'burst' needs a pool (one burst Deployment per pool)")
        _check_pool(pool)
    elif pool not in (None, PRIVATE_POOL):
        raise ValueError(f"placement 'private' has the pool {PRIVATE_POOL!r}; got {pool!r}")
    if not image:
        raise ValueError("image must not be empty")
    if replicas < 0:
        raise ValueError(f"replicas must be >= 0; got {replicas}")

    objects = [
        obj
        for obj in build(K8S_DIR / "overlays" / placement)
        if obj["kind"] in ("Deployment", "PodDisruptionBudget")
    ]
    deployment = _only(objects, "Deployment")
    deployment["spec"]["replicas"] = replicas
    _container(deployment)["image"] = image
    if placement == "burst":
        assert pool is not None
        _retarget_pool(objects, pool)
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
    return objects


def render_service(*, namespace: str = DEFAULT_NAMESPACE) -> Obj:
    """The one Service in front of both placements."""
    service = _only(build(K8S_DIR / "base"), "Service")
    service["metadata"]["namespace"] = namespace
    return service


def render_namespace(*, namespace: str = DEFAULT_NAMESPACE) -> Obj:
    """The Namespace object, for callers that create it themselves."""
    ns = _only(build(K8S_DIR / "base"), "Namespace")
    ns["metadata"]["name"] = namespace
    ns["metadata"].pop("namespace", None)
    return ns


def to_yaml(objects: list[Obj]) -> str:
    """A multi-document YAML stream, as ``kubectl apply -f -`` reads it."""
    return yaml.safe_dump_all(objects, sort_keys=False)


def build(directory: Path) -> list[Obj]:
    """Build a kustomization directory with the kustomize features these files use.

    Anything else (strategic-merge patches, generators, transformers) is refused rather than ignored,
    so a change to the YAML that this renderer cannot follow fails loudly instead of diverging.
    """
    kustomization = _load_one(directory / "kustomization.yaml")
    unknown = set(kustomization) - _KUSTOMIZATION_KEYS
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml: unsupported fields {sorted(unknown)}")
    objects: list[Obj] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        objects.extend(build(path) if path.is_dir() else _load_all(path))
    for patch in kustomization.get("patches", []):
        _apply_patch(directory, patch, objects)
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in _CLUSTER_SCOPED_KINDS:
                obj["metadata"]["namespace"] = namespace
    return objects


def _apply_patch(directory: Path, patch: Obj, objects: list[Obj]) -> None:
    where = f"{directory}/kustomization.yaml patch {patch.get('path')!r}"
    unknown = set(patch) - _PATCH_KEYS
    if unknown or "path" not in patch or "target" not in patch:
        raise ValueError(f"{where}: only JSON 6902 patches with path and target are supported")
    ops = _load_one(directory / patch["path"])
    if not isinstance(ops, list):
        raise ValueError(f"{where}: not a JSON 6902 patch (a list of operations)")
    target = patch["target"]
    allow_rename = bool(patch.get("options", {}).get("allowNameChange", False))
    matched = False
    for index, obj in enumerate(objects):
        if not _matches(obj, target):
            continue
        matched = True
        patched = jsonpatch.apply_patch(obj, ops)
        if patched["metadata"]["name"] != obj["metadata"]["name"] and not allow_rename:
            raise ValueError(f"{where}: renames {obj['metadata']['name']!r} without allowNameChange")
        objects[index] = patched
    if not matched:
        raise ValueError(f"{where}: no object matches the target {target}")


def _matches(obj: Obj, target: Obj) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}
    return all(wanted.get(key) == value for key, value in target.items())


def _retarget_pool(objects: list[Obj], pool: str) -> None:
    """Set every pool-specific field of the burst overlay to ``pool``."""
    name = burst_deployment_name(pool)
    for obj in objects:
        obj["metadata"]["name"] = name
        obj["metadata"]["labels"][LABEL_POOL] = pool
        obj["spec"]["selector"]["matchLabels"][LABEL_POOL] = pool
    pod = _only(objects, "Deployment")["spec"]["template"]
    pod["metadata"]["labels"][LABEL_POOL] = pool
    pod["spec"]["nodeSelector"][LABEL_POOL] = pool
    _container_env(pod, ENV_POOL)["value"] = pool


def _container(deployment: Obj) -> Obj:
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if container["name"] == CONTAINER_NAME:
            return container  # type: ignore[no-any-return]
    raise ValueError(f"Deployment {deployment['metadata']['name']!r} has no container {CONTAINER_NAME!r}")


def _container_env(pod_template: Obj, name: str) -> Obj:
    for container in pod_template["spec"]["containers"]:
        if container["name"] == CONTAINER_NAME:
            for env in container.get("env", []):
                if env["name"] == name:
                    return env  # type: ignore[no-any-return]
    raise ValueError(f"container {CONTAINER_NAME!r} has no env {name!r}")


def _only(objects: list[Obj], kind: str) -> Obj:
    found = [obj for obj in objects if obj["kind"] == kind]
    if len(found) != 1:
        raise ValueError(f"expected one {kind}, found {len(found)}")
    return found[0]


def _check_pool(pool: str) -> None:
    if not _POOL_RE.match(pool) or len(pool) > _POOL_MAX_LEN:
        raise ValueError(
            f"pool must be lowercase letters, digits and '-', start and end alphanumeric, at most "
            f"{_POOL_MAX_LEN} characters; got {pool!r}"
        )


def _load_one(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _load_all(path: Path) -> list[Obj]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]
