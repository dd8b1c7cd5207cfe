"""Frozen dataclasses to JSON-ready values and back, driven by their type hints.

The store keeps `PolicyState` this way so the state can grow new fields without a migration: a field the
stored JSON lacks takes its default, a stored key the class no longer has is dropped. The API and
`gpuburst run --once` print TickReports and decisions with the same encoder.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import math
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class DecodeError(ValueError):
    """Stored JSON does not fit the type; the message gives the path to the bad value."""


def encode(value: Any) -> Any:
    """JSON-ready form: dataclasses become objects, tuples and sets lists, enums their value.

    Non-finite floats become None: JSON has no NaN, and an unknown value must read as unknown.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, collections.abc.Mapping):
        return {_key(k): encode(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted((encode(v) for v in value), key=repr)
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return value


def _key(k: Any) -> str:
    if isinstance(k, enum.Enum):
        return str(k.value)
    if isinstance(k, tuple):
        return "/".join(str(x) for x in k)
    return str(k)


def decode(tp: type[T], data: Any) -> T:
    """The value of type `tp` that `encode` turned into `data`."""
    return typing.cast(T, _decode(tp, data, "$"))


def _decode(tp: Any, data: Any, path: str) -> Any:
    if tp is Any or tp is object:
        return data
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if data is None and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _decode(arm, data, path)
            except DecodeError as exc:
                errors.append(str(exc))
        raise DecodeError("; ".join(errors) or f"{path}: null for a non-optional value")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(data, collections.abc.Mapping):
            raise DecodeError(f"{path}: expected an object for {tp.__name__}, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {
            f.name: _decode(hints[f.name], data[f.name], f"{path}.{f.name}")
            for f in dataclasses.fields(tp)
            if f.name in data and f.init
        }
        try:
            return tp(**kwargs)
        except TypeError as exc:  # a required field is missing
            raise DecodeError(f"{path}: {exc}") from None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError:
            raise DecodeError(f"{path}: {data!r} is not a {tp.__name__}") from None
    if origin in (tuple, list, frozenset, set) or _is_abc(origin, "Sequence"):
        if not isinstance(data, list):
            raise DecodeError(f"{path}: expected a list, got {type(data).__name__}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis) and args:
            if len(args) != len(data):
                raise DecodeError(f"{path}: expected {len(args)} items, got {len(data)}")
            return tuple(
                _decode(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=True))
            )
        item = args[0] if args else Any
        items = [_decode(item, v, f"{path}[{i}]") for i, v in enumerate(data)]
        if origin is list:
            return items
        if origin in (frozenset, set):
            return frozenset(items) if origin is frozenset else set(items)
        return tuple(items)
    if origin is dict or _is_abc(origin, "Mapping"):
        if not isinstance(data, collections.abc.Mapping):
            raise DecodeError(f"{path}: expected an object, got {type(data).__name__}")
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _decode(key_tp, _from_key(key_tp, k), f"{path}.{k}"): _decode(val_tp, v, f"{path}.{k}")
            for k, v in data.items()
        }
    if tp is float:
        if data is None:
            return math.nan
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise DecodeError(f"{path}: expected a number, got {data!r}")
        return float(data)
    if tp in (int, str, bool):
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            raise DecodeError(f"{path}: expected {tp.__name__}, got {data!r}")
        return data
    raise DecodeError(f"{path}: cannot decode type {tp!r}")


def _is_abc(origin: Any, name: str) -> bool:
    return origin is getattr(collections.abc, name)


def _from_key(tp: Any, key: str) -> Any:
    """JSON object keys are strings; a number-typed key comes back as its number."""
    if tp is int:
        try:
            return int(key)
        except ValueError:
            raise DecodeError(f"key {key!r} is not an int") from None
    if tp is float:
        return float(key)
    return key
