"""The one mapping from Pulumi CLI failures to what the controller does about them (`classify`)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from pulumi.automation import errors as auto_errors

CAPACITY_ERRORS = (
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientFreeAddressesInSubnet",
    "InstanceLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "VcpuLimitExceeded",
    "SpotMaxPriceTooLow",
    "UnfulfillableCapacity",
    "Unsupported",
)
"""EC2 error codes meaning "not here, not now": the pool is unavailable for a while and the policy falls
back to another pool (Karpenter's unfulfillable-capacity list, plus quotas)."""
_CAPACITY = re.compile(r"\b(" + "|".join(map(re.escape, CAPACITY_ERRORS)) + r")\b")

_AWS_CREDENTIALS = "no usable AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY"
_PLUGIN = "a Pulumi provider plugin is missing: run `pulumi install` in the project directory"
SETUP_ERRORS: tuple[tuple[str, str], ...] = (
    (
        "PULUMI_ACCESS_TOKEN must be set",
        "not logged in to a Pulumi backend: run `pulumi login`, or set PULUMI_ACCESS_TOKEN "
        "(PULUMI_BACKEND_URL for a self-managed backend)",
    ),
    ("problem logging in", "the Pulumi backend refused the login: check PULUMI_ACCESS_TOKEN, `pulumi login`"),
    (
        "PULUMI_CONFIG_PASSPHRASE",
        "the stack's secrets passphrase is missing: "
        "set PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE",
    ),
    ("incorrect passphrase", "the stack's secrets passphrase is wrong (PULUMI_CONFIG_PASSPHRASE)"),
    ("No valid credential sources found", _AWS_CREDENTIALS),
    ("NoCredentialProviders", _AWS_CREDENTIALS),
    ("ExpiredToken", "the AWS credentials have expired: renew the session (e.g. `aws sso login`)"),
    ("InvalidClientTokenId", _AWS_CREDENTIALS),
    ("no resource plugin", _PLUGIN),
    ("could not load plugin", _PLUGIN),
)
"""CLI text that means the setup is incomplete (login, passphrase, cloud credentials, plugins), with what
to do about it. Matched case-insensitively; the first match wins."""

_RESULT = re.compile(r"\A\s*code: (?P<code>-?\d+)\n stdout: (?P<stdout>.*)\n stderr: (?P<stderr>.*)\Z", re.S)


class Verdict(enum.StrEnum):
    OK = "ok"
    BUSY = "busy"
    """The stack is locked by another update: retried after a backoff."""
    UNAVAILABLE = "unavailable"
    """The cloud refused capacity or quota: the pool is unavailable for a TTL, the apply failed."""
    SETUP = "setup"
    """Something is missing here (CLI, login, credentials): a start-up error, later a failed apply."""
    REFUSED = "refused"
    """The guardrails refused the desired node set in-process: no CLI call was made; retried like a
    failure (the next set, or an edited stack file, may pass)."""
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    message: str = ""


def classify(exc: BaseException) -> Outcome:
    """What a failed Automation API call means for the controller: the one place that maps CLI failures.

    The Automation API raises the builtin `FileNotFoundError` for a missing CLI and `CommandError`
    subclasses that carry only the CLI's text, so everything past the lock is recognised by its text.
    """
    if isinstance(exc, FileNotFoundError):
        missing = str(exc.filename or "")
        if not missing or Path(missing).name == "pulumi":
            return Outcome(
                Verdict.SETUP,
                "the `pulumi` CLI was not found: install it "
                "(https://www.pulumi.com/docs/iac/download-install/) and put it on PATH",
            )
        return Outcome(Verdict.SETUP, f"file not found: {missing}")
    if isinstance(exc, auto_errors.InvalidVersionError):
        return Outcome(Verdict.SETUP, f"the `pulumi` CLI cannot be used: {exc}")
    text = str(exc)
    if isinstance(exc, auto_errors.ConcurrentUpdateError):
        return Outcome(Verdict.BUSY, f"stack locked by another update: {cli_message(text)}")
    if isinstance(exc, auto_errors.StackNotFoundError):
        return Outcome(Verdict.SETUP, cli_message(text))
    lowered = text.lower()
    for needle, hint in SETUP_ERRORS:
        if needle.lower() in lowered:
            return Outcome(Verdict.SETUP, f"{hint} ({cli_message(text, prefer=needle)})")
    found = _CAPACITY.search(text)
    if found:
        return Outcome(Verdict.UNAVAILABLE, cli_message(text, prefer=found.group(1)))
    if isinstance(exc, auto_errors.CommandError):
        return Outcome(Verdict.FAILED, cli_message(text))
    return Outcome(Verdict.FAILED, f"{type(exc).__name__}: {_clip(text)}")


def cli_message(text: str, *, prefer: str | None = None) -> str:
    """The line of a CLI failure that says what went wrong, for a message a person reads.

    `text` is a `CommandError`'s text (code, stdout, stderr). The line naming `prefer` wins; then the
    specific `error:` lines (not the closing "update failed"); then the tail of stderr, then of stdout.
    """
    parsed = _RESULT.match(text)
    stdout, stderr = (parsed["stdout"], parsed["stderr"]) if parsed else ("", text)
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    if prefer is not None:
        for line in lines:
            if prefer.lower() in line.lower():
                return _clip(line)
    specific = [
        ln for ln in lines if ln.lower().startswith(("error:", "* ")) and "update failed" not in ln.lower()
    ]
    # "error: 1 error occurred:" heads a list; the item after it is the cause.
    specific = [ln for ln in specific if not re.match(r"error: \d+ errors? occurred:?$", ln)]
    specific = list(dict.fromkeys(specific))  # the CLI repeats a diagnostic on stdout and stderr
    if specific:
        return _clip(" | ".join(specific[:2]))
    for part in (stderr, stdout):
        tail = [ln.strip() for ln in part.splitlines() if ln.strip()]
        if tail:
            return _clip(tail[-1])
    return f"exit code {parsed['code']}" if parsed else _clip(text)


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
