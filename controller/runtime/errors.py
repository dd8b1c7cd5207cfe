"""Errors a user can fix, and reading the YAML files they write: one line naming the file and field.

The CLI prints a UserError as that one line and exits 2.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

M = TypeVar("M", bound=pydantic.BaseModel)


class UserError(Exception):
    """Bad input (a file, a field, a line, a name): the message says what is wrong and where."""


def read_yaml(path: Path, *, what: str) -> Any:
    """The parsed document; a missing file or broken YAML is a UserError naming the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None


def output_path(value: str) -> Path:
    """An argparse `type` for files a command writes: checked before the run, not after it.

    The path must not be a directory and its nearest existing ancestor must be a writable directory
    (commands create missing parents).
    """
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: is a directory, not a file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"{path}: not writable")
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{path}: cannot create it: {parent} is not a writable directory")
    return path


def validated(model: type[M], data: Any, *, where: object, what: str) -> M:
    """`data` as `model`; anything else is a UserError naming `where` and every bad field."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: {what} is a mapping of fields, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise UserError(f"{where}: {describe(exc)}") from None


def describe(exc: pydantic.ValidationError) -> str:
    """Pydantic's errors as `field.path: message; ...`, the way a person reads them."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
