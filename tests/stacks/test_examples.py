"""The project file and the example stack files: they say what the program reads, and it accepts them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stacks import config, mocks, program

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(REPO.glob("Pulumi.*.yaml"))
KNOWN_KEYS = {"kind", *config.POOL_KEYS, *config.PRIVATE_CLUSTER_KEYS}


def test_project_file() -> None:
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())

    assert project["name"] == "gpuburst"
    assert project["main"] == "stacks/"
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}}
    assert (REPO / project["main"] / "__main__.py").is_file()


def test_examples_cover_the_three_stacks() -> None:
    assert [path.name for path in EXAMPLES] == [
        "Pulumi.aws-g5-ondemand.yaml",
        "Pulumi.aws-g5-spot.yaml",
        "Pulumi.private-cluster.yaml",
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_key_is_known_and_documented(path: Path) -> None:
    lines = path.read_text().splitlines()
    keys = yaml.safe_load(path.read_text())["config"]

    for key in keys:
        namespace, name = key.split(":")
        assert namespace in ("gpuburst", "aws", "kubernetes"), key
        if namespace == "gpuburst":
            assert name in KNOWN_KEYS, key
        index = next(i for i, line in enumerate(lines) if line.startswith(f"  {key}:"))
        assert lines[index - 1].strip().startswith("#"), f"{key} has no comment above it"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_no_secret_in_the_stack_files(path: Path) -> None:
    """Nodes read the join token at boot; the stack's config and state never hold it."""
    for key, value in yaml.safe_load(path.read_text())["config"].items():
        assert not isinstance(value, dict) or "secure" not in value, key


@pytest.mark.parametrize("uncomment", [False, True], ids=["as-is", "optional-keys-uncommented"])
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_render(path: Path, uncomment: bool, tmp_path: Path) -> None:
    """The documented optional keys are real keys with valid values, too."""
    if uncomment:
        text = re.sub(r"^  # ((?:gpuburst|kubernetes):\w+: .*)$", r"  \1", path.read_text(), flags=re.M)
        path = tmp_path / path.name
        path.write_text(text)
    stack = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    cfg, secret_keys = mocks.stack_file_config(path, secrets={})

    rendering = mocks.render(program.main, config=cfg, secret_keys=secret_keys, stack=stack)

    assert rendering.resources
    if cfg["gpuburst:kind"] == "pool":
        assert sorted(rendering.outputs["nodes"]) == yaml.safe_load(cfg["gpuburst:nodes"])


# What bills by the hour whether or not a node runs, besides the nodes themselves.
PAID = (
    "aws:ec2/instance:Instance",
    "aws:ec2/natGateway:NatGateway",
    "aws:ec2/eip:Eip",
    "aws:ec2/vpnConnection:VpnConnection",
    "aws:ec2/vpnGateway:VpnGateway",
)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_launch_nothing_paid_until_edited(path: Path) -> None:
    """A copied example must not start billing: no nodes, no NAT gateway, no VPN until a person asks."""
    stack = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    cfg, secret_keys = mocks.stack_file_config(path, secrets={})

    rendering = mocks.render(program.main, config=cfg, secret_keys=secret_keys, stack=stack)

    assert {type_: rendering.of_type(type_) for type_ in PAID} == {type_: [] for type_ in PAID}
    if cfg["gpuburst:kind"] == "pool":
        assert rendering.outputs["nodes"] == {}


def test_the_spot_example_documents_the_paid_options(tmp_path: Path) -> None:
    """The commented VPN line and one node name are all it takes to get paid resources."""
    text = (REPO / "Pulumi.aws-g5-spot.yaml").read_text()
    text = re.sub(r"^  # (gpuburst:vpn: .*)$", r"  \1", text, flags=re.M)
    text = text.replace("gpuburst:nodes: []", "gpuburst:nodes: [aws-g5-spot-1]")
    path = tmp_path / "Pulumi.aws-g5-spot.yaml"
    path.write_text(text)
    cfg, secret_keys = mocks.stack_file_config(path, secrets={})

    rendering = mocks.render(program.main, config=cfg, secret_keys=secret_keys, stack="aws-g5-spot")

    assert len(rendering.of_type("aws:ec2/instance:Instance")) == 1
    assert len(rendering.of_type("aws:ec2/vpnConnection:VpnConnection")) == 1
