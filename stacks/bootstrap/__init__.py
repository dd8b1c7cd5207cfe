"""The boot script that turns a GPU image into a burst node of the private cluster (docs/node-join.md).

`render` fills `join.sh` with the node's values, each checked (label and taint syntax, secret ARN,
Kubernetes version) and then shell-quoted, so no config value can become shell code. The join token is
no input here: the node reads it at boot from Secrets Manager (`join_config.py`, embedded in the script),
so it is never in the stack's config, its state or the user-data.
"""

from __future__ import annotations

import re
import shlex
import string
from collections.abc import Mapping, Sequence
from importlib import resources

# EC2 refuses user-data over 16 KiB (before base64).
USER_DATA_LIMIT = 16 * 1024
# kubelet packages on pkgs.k8s.io exist per minor version from 1.24; older minors are out of support.
MIN_MINOR = 28
# kubeadm's JoinConfiguration v1beta4 arrived in 1.31; the fields used here are the same in v1beta3.
V1BETA4_FROM_MINOR = 31

_FILES = resources.files(__name__)
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$")
_LABEL_VALUE = re.compile(rf"^({_LABEL_NAME})?$")
_TAINT = re.compile(r"^(?P<key>[^=:]+)(=(?P<value>[^:]*))?:(NoSchedule|PreferNoSchedule|NoExecute)$")
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+$")
_MINOR = re.compile(r"^1\.(?P<minor>[0-9]{2})$")


class _Script(string.Template):
    """`@@name` placeholders, which bash never uses, so the script's own `$` needs no escaping."""

    delimiter = "@@"


def check_secret_arn(arn: str) -> str:
    if not _SECRET_ARN.match(arn):
        raise ValueError(
            f"must be the full ARN of a Secrets Manager secret (arn:aws:secretsmanager:<region>:<account>:"
            f"secret:<name>-<suffix>), got {arn!r}"
        )
    return arn


def check_kubernetes_minor(version: str) -> str:
    match = _MINOR.match(version)
    if not match or int(match["minor"]) < MIN_MINOR:
        raise ValueError(
            f"must be a Kubernetes minor version 1.{MIN_MINOR} or later, such as 1.33, got {version!r}"
        )
    return version


def kubeadm_api(kubernetes_minor: str) -> str:
    minor = int(check_kubernetes_minor(kubernetes_minor).split(".")[1])
    return "v1beta4" if minor >= V1BETA4_FROM_MINOR else "v1beta3"


def _labels(labels: Mapping[str, str]) -> str:
    for key, value in labels.items():
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise ValueError(f"node label {key!r}={value!r} is not a valid Kubernetes label")
    return ",".join(f"{key}={value}" for key, value in labels.items())


def _taints(taints: Sequence[str]) -> str:
    for taint in taints:
        match = _TAINT.match(taint)
        if not match or not _LABEL_KEY.match(match["key"]) or not _LABEL_VALUE.match(match["value"] or ""):
            raise ValueError(f"node taint {taint!r} is not key[=value]:effect with a valid key and value")
    return ",".join(taints)


def render(
    *,
    node_name: str,
    labels: Mapping[str, str],
    taints: Sequence[str],
    kubernetes_minor: str,
    join_secret_arn: str,
) -> str:
    """The user-data of one node; raises ValueError naming the first value that cannot be used."""
    if not _NODE_NAME.match(node_name):
        raise ValueError(f"node name {node_name!r} is not a DNS label")
    helper = _FILES.joinpath("join_config.py").read_text()
    values = {
        "node_name": node_name,
        "node_labels": _labels(labels),
        "node_taints": _taints(taints),
        "kubernetes_minor": check_kubernetes_minor(kubernetes_minor),
        "kubeadm_api": kubeadm_api(kubernetes_minor),
        "join_secret_arn": check_secret_arn(join_secret_arn),
    }
    script = _Script(_FILES.joinpath("join.sh").read_text()).substitute(
        {key: shlex.quote(value) for key, value in values.items()}, join_config_py=helper.rstrip("\n")
    )
    if len(script.encode()) > USER_DATA_LIMIT:
        raise ValueError(f"the boot script is {len(script.encode())} bytes, over EC2's {USER_DATA_LIMIT}")
    return script
