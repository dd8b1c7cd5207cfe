"""The controller's image definition: lint-clean, non-root, Pulumi pinned to the lock, the PostgreSQL driver
and no workload extra.

No Docker engine runs here, so the image is not built in the tests; these checks catch the drift that
would otherwise show up only when the image is built or first runs in the cluster.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile.controller"
# Dockerfile ARG -> the locked Python package whose release the CLI or plugin must match.
PINNED = {
    "PULUMI_VERSION": "pulumi",
    "PULUMI_AWS_VERSION": "pulumi-aws",
    "PULUMI_KUBERNETES_VERSION": "pulumi-kubernetes",
}
EXTRAS = ("postgres",)
"""The project's extras the image installs: the driver of the shared store, nothing else."""


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined = (pending + line).strip()
        pending = ""
        keyword, _, rest = joined.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            current = []
            found[rest.split(" AS ")[-1].strip()] = current
        current.append((keyword, rest))
    return found


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def args_of(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))


def locked() -> dict[str, dict[str, Any]]:
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    return {package["name"]: package for package in lock["package"]}


def closure(extras: tuple[str, ...] = ()) -> set[str]:
    """Every locked package the project's base install with `extras` pulls in, the extras of the
    dependencies followed too (psycopg[binary]), markers ignored."""
    packages = locked()
    project = packages["gpuburst"]
    todo: list[dict[str, Any]] = list(project["dependencies"])
    for extra in extras:
        todo += project["optional-dependencies"][extra]
    seen: set[str] = set()
    followed: set[tuple[str, str]] = set()
    while todo:
        dep = todo.pop()
        name = dep["name"]
        package = packages[name]
        for extra in dep.get("extra", []):
            if (name, extra) not in followed:
                followed.add((name, extra))
                todo += package["optional-dependencies"][extra]
        if name not in seen:
            seen.add(name)
            todo += package.get("dependencies", [])
    return seen


TEXT = DOCKERFILE.read_text(encoding="utf-8")
STAGES = stages(TEXT)
RUNTIME = STAGES["runtime"]


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_multi_stage_and_the_last_stage_runs_as_a_numeric_non_root_user() -> None:
    assert list(STAGES) == ["uv", "pulumi", "build", "runtime"]
    [user] = [rest for keyword, rest in RUNTIME if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), user
    assert int(uid) != 0 and int(gid) != 0
    assert not any(keyword in ("RUN", "ADD") for keyword, _ in RUNTIME[RUNTIME.index(("USER", user)) :])


@pytest.mark.parametrize(("arg", "package"), sorted(PINNED.items()))
def test_pulumi_cli_and_plugins_match_the_locked_packages(arg: str, package: str) -> None:
    """A lock bump that forgets the image fails here."""
    version = args_of(TEXT)[arg]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{arg}={version} is not an exact version"
    assert version == locked()[package]["version"]


def test_plugins_are_installed_at_the_pinned_versions_and_on_the_path() -> None:
    pulumi = " ".join(rest for keyword, rest in STAGES["pulumi"] if keyword in ("RUN", "ADD"))
    assert "pulumi-v${PULUMI_VERSION}-linux-x64.tar.gz" in pulumi
    assert "sha256sum -c" in pulumi
    assert 'plugin install resource aws "${PULUMI_AWS_VERSION}"' in pulumi
    assert 'plugin install resource kubernetes "${PULUMI_KUBERNETES_VERSION}"' in pulumi
    path = env_of(RUNTIME)["PATH"].split(":")
    assert {"/opt/pulumi", "/opt/pulumi-plugins", "/app/.venv/bin"} <= set(path)
    # Found on PATH, so the writable PULUMI_HOME volume starts empty and nothing is fetched at run time.
    assert env_of(RUNTIME)["PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"] == "true"


def test_the_python_environment_is_the_locked_base_install_and_the_postgres_extra_only() -> None:
    syncs = [rest for keyword, rest in STAGES["build"] if keyword == "RUN" and "uv sync" in rest]
    assert len(syncs) == 2
    for command in syncs:
        assert "--frozen" in command
        assert re.findall(r"--(?:all-)?extras?(?:[ =](\S+))?", command) == list(EXTRAS), command
        assert "--group" not in command and "--all-groups" not in command, command
    image = closure(EXTRAS)
    assert {"pulumi", "pulumi-aws", "pulumi-kubernetes", "kubernetes", "fastapi"} <= image
    assert {"psycopg", "psycopg-binary", "sqlalchemy", "alembic"} <= image
    assert not {name for name in image if name.startswith("onnx")}
    assert "numpy" not in image
    # The walk follows extras: the workload extra would bring what the image must not have.
    assert {"onnx", "numpy"} <= closure(("workload",))


def test_the_base_install_imports_everything_the_controller_and_its_stacks_need() -> None:
    """Imports with every distribution outside the image's install hidden: what the image would lack."""
    allowed = sorted(closure(EXTRAS))
    script = f"""
import importlib.abc, importlib.metadata, sys
allowed = set({allowed!r}) | {{"gpuburst"}}
owners = importlib.metadata.packages_distributions()
def canonical(name):
    return name.lower().replace("_", "-").replace(".", "-")
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        dists = {{canonical(d) for d in owners.get(top, [])}}
        if dists and not dists & allowed:
            raise ImportError(f"{{name}} is not in the controller image ({{sorted(dists)}})")
        return None
sys.meta_path.insert(0, Hide())
import controller.app.cli, controller.app.live, stacks.program, policies
import psycopg
assert psycopg.pq.__impl__ == "binary", psycopg.pq.__impl__  # its own libpq: the slim image has none
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_probes_and_writable_paths_are_declared() -> None:
    keywords = [keyword for keyword, _ in RUNTIME]
    assert "HEALTHCHECK" in keywords
    [healthcheck] = [rest for keyword, rest in RUNTIME if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "EXPOSE 8080" in TEXT
    env = env_of(RUNTIME)
    # The read-only root filesystem: these are the volumes the Deployment mounts.
    assert env["PULUMI_HOME"] == "/var/lib/pulumi"
    assert env["HOME"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_dockerignore_sends_what_the_copies_need() -> None:
    ignore = (REPO / "Dockerfile.controller.dockerignore").read_text(encoding="utf-8")
    kept = [line[1:] for line in ignore.splitlines() if line.startswith("!")]
    assert ignore.splitlines()[1] == "*"
    copied = [
        source
        for keyword, rest in instructions(TEXT)
        if keyword == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    for source in copied:
        assert any(Path(source).match(pattern) or source == pattern for pattern in kept), source
        assert list(REPO.glob(source)), source
