"""What a PromQL expression refers to: metric names, label matchers and grouping labels.

A lexer, not a parser: the tests first have promtool parse every expression, and on valid PromQL the
tokens say unambiguously what each identifier is (a function or aggregation before `(`, a label inside
`{...}` or after by/without/on/ignoring/group_*, a keyword, or else a metric name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+)(?![\w.])
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@:])
    """,
    re.VERBOSE,
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"})
AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    }
)
"""Aggregation operators: followed by `(` or by a by/without clause."""
MATCH_OPS = frozenset({"=", "!=", "=~", "!~"})


@dataclass(frozen=True)
class Matcher:
    metric: str
    label: str
    op: str
    value: str


@dataclass
class References:
    metrics: set[str] = field(default_factory=set)
    matchers: list[Matcher] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 20]!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def _unquote(s: str) -> str:
    if s.startswith("`"):
        return s[1:-1]
    return s[1:-1].encode().decode("unicode_escape")


def references(expr: str) -> References:
    refs = References()
    toks = tokens(expr)
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in GROUPING:
            i += 1
            if following == "(":  # a label list; group_left/right may have none
                i += 1
                while toks[i][1] != ")":
                    if toks[i][0] == "ident":
                        refs.grouping.add(toks[i][1])
                    i += 1
                i += 1
            continue
        if kind == "ident" and (following == "(" or text in AGGREGATIONS):
            refs.functions.add(text)
            i += 1
            continue
        if kind == "ident" and text.lower() in KEYWORDS:
            i += 1
            continue
        if kind == "ident":
            refs.metrics.add(text)
            i += 1
            if i < len(toks) and toks[i][1] == "{":
                i = _matchers(toks, i + 1, text, refs)
            continue
        if text == "{":  # a selector without a metric name
            i = _matchers(toks, i + 1, "", refs)
            continue
        i += 1
    return refs


def _matchers(toks: list[tuple[str, str]], i: int, metric: str, refs: References) -> int:
    """Read `label op "value", ...}` from token i; returns the index after the closing brace."""
    while toks[i][1] != "}":
        if toks[i][1] == ",":
            i += 1
            continue
        label, op, value = toks[i][1], toks[i + 1][1], toks[i + 2]
        if op not in MATCH_OPS or value[0] != "string":
            raise ValueError(f"unexpected matcher {label} {op} {value[1]}")
        refs.matchers.append(Matcher(metric, label, op, _unquote(value[1])))
        i += 3
    return i + 1
