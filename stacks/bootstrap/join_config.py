"""Runs on a burst node at first boot: reads the join secret and writes kubeadm's JoinConfiguration.

The bootstrap token goes from Secrets Manager (fetched with the instance role) straight into a root-only
file, so it never appears in a command line, an environment, the user-data or the console log. Errors
name the field that is wrong, never its value. Kept to the standard library and boto3, and to Python
3.8 syntax, because it runs on the node image's system Python.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

# What `kubeadm token create --print-join-command` prints, one field each.
FIELDS = {
    "apiServerEndpoint": re.compile(r"^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):[0-9]{1,5}$"),
    "token": re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$"),
    "caCertHash": re.compile(r"^sha256:[0-9a-f]{64}$"),
}


class JoinSecretError(ValueError):
    """The secret cannot be read or has a missing or malformed field; the message holds no secret."""


def join_configuration(secret: str, *, node_name: str, api_version: str, cri_socket: str) -> dict[str, Any]:
    """The JoinConfiguration for this node from the secret's JSON object (extra keys are ignored)."""
    try:
        values = json.loads(secret)
    except ValueError:
        raise JoinSecretError("the join secret is not JSON") from None
    if not isinstance(values, dict):
        raise JoinSecretError("the join secret is not a JSON object")
    for field, pattern in FIELDS.items():
        value = values.get(field)
        if not isinstance(value, str) or not pattern.match(value):
            raise JoinSecretError(f"the join secret's {field} is missing or malformed")
    return {
        "apiVersion": f"kubeadm.k8s.io/{api_version}",
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": values["apiServerEndpoint"],
                "token": values["token"],
                "caCertHashes": [values["caCertHash"]],
            }
        },
        "nodeRegistration": {"name": node_name, "criSocket": cri_socket},
    }


def fetch(secret_arn: str) -> str:
    """The secret's string, from the secret's own region, with the instance role's credentials."""
    import boto3

    region = secret_arn.split(":")[3]
    try:
        response = boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=secret_arn)
    except Exception as exc:  # botocore's errors name the call and the ARN, never the value
        raise JoinSecretError(f"cannot read {secret_arn}: {exc}") from None
    secret = response.get("SecretString")
    if not isinstance(secret, str):
        raise JoinSecretError(f"{secret_arn} has no string value (SecretString)")
    return secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret-arn", required=True)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--api-version", required=True)
    parser.add_argument("--cri-socket", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        config = join_configuration(
            fetch(args.secret_arn),
            node_name=args.node_name,
            api_version=args.api_version,
            cri_socket=args.cri_socket,
        )
    except JoinSecretError as exc:
        print(f"gpuburst-join: {exc}", file=sys.stderr)
        return 1
    # JSON is YAML, which kubeadm reads; the file is root's alone from its creation on.
    descriptor = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(config, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
