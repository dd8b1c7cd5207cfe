"""Frozen dataclasses to JSON and back, driven by their type hints.

The store keeps `PolicyState` this way so the state can grow new fields without a migration: a field the
stored JSON lacks takes its default, a stored key the class no longer has is dropped. The API and
`gpuburst run --once` print TickReports and decisions with the same encoder.

Two flavours: `encode` gives JSON-ready values for people and tools (non-finite floats become null,
since JSON has none); `dumps`/`loads` are the store's exact round trip (NaN and infinities kept as
Python's JSON tokens) and lean on the C JSON codec, because a policy state may hold a million numbers.
Decoders are compiled once per type.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import functools
import json
import math
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

Decoder = Callable[[Any, str], Any]
"""(data, path of data for error messages) -> value."""


class DecodeError(ValueError):
    """Stored JSON does not fit the type; the message gives the path to the bad value."""


# -- encoding -----------------------------------------------------------------------------------------------
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


def dumps(value: Any) -> str:
    """Compact JSON for the store: the C encoder does the walking, this module only the dataclasses."""
    return json.dumps(value, default=_default, separators=(",", ":"))


def loads(tp: type[T], text: str) -> T:
    return decode(tp, json.loads(text))


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, frozenset | set):
        return sorted(value, key=repr)
    if isinstance(value, collections.abc.Mapping):
        return {_key(k): v for k, v in value.items()}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _key(k: Any) -> str:
    if isinstance(k, enum.Enum):
        return str(k.value)
    if isinstance(k, tuple):
        return "/".join(str(x) for x in k)
    return str(k)


# -- decoding -----------------------------------------------------------------------------------------------
def decode(tp: type[T], data: Any) -> T:
    """The value of type `tp` that `encode` or `dumps` turned into `data`."""
    return typing.cast(T, _decoder(typing.cast(Any, tp))(data, "$"))


@functools.lru_cache(maxsize=512)
def _decoder(tp: Any) -> Decoder:
    if tp is Any or tp is object:
        return lambda data, path: data
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return _union(args)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        return _fixed_tuple(args)
    if origin in (tuple, list, frozenset, set) or origin is collections.abc.Sequence:
        return _sequence(origin, args[0] if args else Any)
    if origin is dict or origin is collections.abc.Mapping:
        key_tp, val_tp = args if args else (Any, Any)
        return _mapping(key_tp, val_tp)
    if tp is float:
        return _float
    if tp in (int, str, bool):
        return _primitive(tp)
    raise DecodeError(f"cannot decode type {tp!r}")


def _union(args: tuple[Any, ...]) -> Decoder:
    optional = type(None) in args
    arms = [_decoder(a) for a in args if a is not type(None)]

    def decode_union(data: Any, path: str) -> Any:
        if data is None and optional:
            return None
        errors = []
        for arm in arms:
            try:
                return arm(data, path)
            except DecodeError as exc:
                errors.append(str(exc))
        raise DecodeError("; ".join(errors) or f"{path}: null for a non-optional value")

    return decode_union


def _dataclass(tp: type) -> Decoder:
    hints = typing.get_type_hints(tp)
    fields = [(f.name, _decoder(hints[f.name])) for f in dataclasses.fields(tp) if f.init]

    def decode_dataclass(data: Any, path: str) -> Any:
        if not isinstance(data, collections.abc.Mapping):
            raise DecodeError(f"{path}: expected an object for {tp.__name__}, got {type(data).__name__}")
        kwargs = {name: dec(data[name], f"{path}.{name}") for name, dec in fields if name in data}
        try:
            return tp(**kwargs)
        except TypeError as exc:  # a required field is missing
            raise DecodeError(f"{path}: {exc}") from None

    return decode_dataclass


def _enum(tp: type[enum.Enum]) -> Decoder:
    def decode_enum(data: Any, path: str) -> Any:
        try:
            return tp(data)
        except ValueError:
            raise DecodeError(f"{path}: {data!r} is not a {tp.__name__}") from None

    return decode_enum


def _fixed_tuple(args: tuple[Any, ...]) -> Decoder:
    decs = [_decoder(a) for a in args]

    def decode_fixed(data: Any, path: str) -> Any:
        if not isinstance(data, list):
            raise DecodeError(f"{path}: expected a list, got {type(data).__name__}")
        if len(data) != len(decs):
            raise DecodeError(f"{path}: expected {len(decs)} items, got {len(data)}")
        return tuple(dec(v, f"{path}[{i}]") for i, (dec, v) in enumerate(zip(decs, data, strict=True)))

    return decode_fixed


_FAST = {float: (float, int), int: (int,), str: (str,), bool: (bool,)}
"""Item types whose lists are checked and converted in one pass (no per-item paths unless one is bad)."""


def _sequence(origin: Any, item_tp: Any) -> Decoder:
    build: Callable[[Any], Any] = (
        list if origin is list else frozenset if origin is frozenset else set if origin is set else tuple
    )
    item = _decoder(item_tp)
    fast = _FAST.get(item_tp)

    def decode_sequence(data: Any, path: str) -> Any:
        if not isinstance(data, list):
            raise DecodeError(f"{path}: expected a list, got {type(data).__name__}")
        if fast is not None and all(type(v) in fast for v in data):
            return build(map(float, data) if item_tp is float else data)
        return build(item(v, f"{path}[{i}]") for i, v in enumerate(data))

    return decode_sequence


def _mapping(key_tp: Any, val_tp: Any) -> Decoder:
    key = _decoder(key_tp)
    val = _decoder(val_tp)

    def decode_mapping(data: Any, path: str) -> Any:
        if not isinstance(data, collections.abc.Mapping):
            raise DecodeError(f"{path}: expected an object, got {type(data).__name__}")
        return {
            key(_from_key(key_tp, k, path), f"{path}.{k}"): val(v, f"{path}.{k}") for k, v in data.items()
        }

    return decode_mapping


def _float(data: Any, path: str) -> float:
    if data is None:  # `encode` wrote an unknown value as null
        return math.nan
    if isinstance(data, bool) or not isinstance(data, int | float):
        raise DecodeError(f"{path}: expected a number, got {data!r}")
    return float(data)


def _primitive(tp: type) -> Decoder:
    def decode_primitive(data: Any, path: str) -> Any:
        if type(data) is not tp:
            raise DecodeError(f"{path}: expected {tp.__name__}, got {data!r}")
        return data

    return decode_primitive


def _from_key(tp: Any, key: str, path: str) -> Any:
    """JSON object keys are strings; a number-typed key comes back as its number."""
    if tp is int:
        try:
            return int(key)
        except ValueError:
            raise DecodeError(f"{path}: key {key!r} is not an int") from None
    if tp is float:
        try:
            return float(key)
        except ValueError:
            raise DecodeError(f"{path}: key {key!r} is not a number") from None
    return key
