"""`gpuburst status|nodes|decisions|audit|override|drain|pool|reconcile|policy show|policy reload|whatif|
token add`: a kubectl-like client of the admin API.

The URL and token come from GPUBURST_URL and GPUBURST_TOKEN, else from the client config file
(GPUBURST_CONFIG, default ~/.config/gpuburst/client.yaml: `url`, and `token` or `token_file`). Output
is a table; `-o json` prints the API's JSON. Imports are made inside functions: `gpuburst --help`
stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from controller.runtime import errors

DEFAULT_URL = "http://127.0.0.1:8080"
CONFIG = Path("~/.config/gpuburst/client.yaml")


def settings() -> tuple[str, str]:
    """(url, token) from the environment, else the client config file."""
    path = Path(os.environ.get("GPUBURST_CONFIG", str(CONFIG))).expanduser()
    data: dict[str, Any] = {}
    if path.exists():
        loaded = errors.read_yaml(path, what="client config")
        if not isinstance(loaded, dict):
            raise errors.UserError(f"{path}: a mapping of url, token or token_file is expected")
        data = loaded
    url = os.environ.get("GPUBURST_URL") or str(data.get("url") or DEFAULT_URL)
    token = os.environ.get("GPUBURST_TOKEN") or str(data.get("token") or "")
    if not token and data.get("token_file"):
        token_file = (path.parent / str(data["token_file"])).expanduser()
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise errors.UserError(f"{path}: token_file {token_file}: {exc.strerror}") from None
    if not token:
        raise errors.UserError(
            f"no API token: set GPUBURST_TOKEN or `token` in {path} "
            "(a new controller writes its first admin token to admin-token next to its store)"
        )
    return url.rstrip("/"), token


def call(
    method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
    csv: bytes | None = None,
) -> Any:  # fmt: skip
    """One API call (a JSON body, or `csv` sent as text/csv); a problem document becomes a one-line
    UserError."""
    import httpx

    url, token = settings()
    headers = {"Authorization": f"Bearer {token}"}
    if csv is not None:
        headers["Content-Type"] = "text/csv"
    try:
        r = httpx.request(
            method, url + path, params={k: v for k, v in (params or {}).items() if v is not None},
            json=body, content=csv, headers=headers, timeout=30.0,
        )  # fmt: skip
    except httpx.HTTPError as exc:
        raise errors.UserError(f"{url}: {exc}") from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise errors.UserError(f"{method} {path}: {r.status_code}: {detail}")
    return r.json()


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _emit(args: argparse.Namespace, data: Any, rows: list[dict[str, Any]], columns: list[str]) -> int:
    import json

    if args.output == "json":
        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(table(rows, columns))
    return 0


# -- commands -----------------------------------------------------------------------------------------
def _status(args: argparse.Namespace) -> int:
    s = call("GET", "/v1/status")
    report = s.get("report") or {}
    decision = report.get("decision") or {}
    row = {
        "leader": s["leader"],
        "last_tick": s["last_tick_at"],
        "action": decision.get("action"),
        "targets": decision.get("target_nodes"),
        "usd_per_h": report.get("usd_per_hour"),
        "hold": s["overrides"]["hold"],
    }
    return _emit(args, s, [row], list(row))


def _nodes(args: argparse.Namespace) -> int:
    data = call("GET", "/v1/nodes", params={"include_released": args.all or None})
    return _emit(args, data, data, ["name", "pool", "status", "since", "ready_at", "reason"])


def _decisions(args: argparse.Namespace) -> int:
    data = call("GET", "/v1/decisions", params={"limit": args.limit, "cursor": args.cursor})
    rows = [
        {
            **d,
            "targets": d["decision"].get("target_nodes"),
            "reasons": "; ".join(d["decision"].get("reasons", [])),
        }
        for d in data["items"]
    ]
    return _emit(args, data, rows, ["version", "at", "action", "targets", "reasons"])


def _audit(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, "cursor": args.cursor, "action": args.action, "actor": args.actor}
    data = call("GET", "/v1/audit", params=params)
    return _emit(args, data, data["items"], ["id", "at", "action", "actor", "target", "node", "detail"])


def _override(args: argparse.Namespace) -> int:
    if args.clear:
        data = call("DELETE", "/v1/overrides")
    else:
        body: dict[str, Any] = {"hold": args.hold, "reason": args.reason}
        if args.budget is not None:
            body["budget_usd_per_hour"] = args.budget
        body["max_nodes"] = dict(_pool_cap(s) for s in args.max_nodes)
        data = call("PUT", "/v1/overrides", body=body)
    return _emit(args, data, [data], ["hold", "budget_usd_per_hour", "max_nodes", "reason"])


def _pool_cap(text: str) -> tuple[str, int]:
    pool, _, n = text.partition("=")
    if not pool or not n.isdigit():
        raise errors.UserError(f"--max-nodes {text!r}: expected POOL=N")
    return pool, int(n)


def _drain(args: argparse.Namespace) -> int:
    data = call("POST", f"/v1/nodes/{args.node}/drain")
    return _emit(args, data, [data], ["drain", "max_nodes", "paused"])


def _pool(args: argparse.Namespace) -> int:
    data = call("POST", f"/v1/pools/{args.pool}/{args.verb}")
    return _emit(args, data, [data], ["paused", "drain", "max_nodes"])


def _reconcile(args: argparse.Namespace) -> int:
    data = call("POST", "/v1/reconcile")
    decision = (data.get("report") or {}).get("decision") or {}
    row = {
        "ticked": data["ticked"],
        "action": decision.get("action"),
        "targets": decision.get("target_nodes"),
    }
    return _emit(args, data, [row], list(row))


def _policy_show(args: argparse.Namespace) -> int:
    data = call("GET", "/v1/policy")
    rows = [{"field": k, "value": v} for k, v in data["policy"].items()]
    return _emit(args, data, rows, ["field", "value"])


def _policy_reload(args: argparse.Namespace) -> int:
    data = call("POST", "/v1/policy/reload")
    rows = [{"field": k, "running": a, "new": b} for k, (a, b) in data["changed"].items()]
    if args.output != "json" and not rows:
        print("policy unchanged")
        return 0
    return _emit(args, data, rows, ["field", "running", "new"])


def _whatif(args: argparse.Namespace) -> int:
    import time

    try:
        trace = args.trace.read_bytes()
    except OSError as exc:
        raise errors.UserError(f"{args.trace}: {exc.strerror}") from None
    job = call("POST", "/v1/whatif", params={"scenario": args.scenario}, csv=trace)
    while job["state"] == "running":
        line = f"\rwhat-if {job['id'][:8]}: {100 * job['progress']:5.1f}%"
        print(line, end="", file=sys.stderr, flush=True)
        time.sleep(args.poll)
        job = call("GET", f"/v1/whatif/{job['id']}")
    print(file=sys.stderr)
    if job["state"] == "failed":
        raise errors.UserError(f"what-if {job['id']}: {job['error']}")
    if args.output == "json":
        return _emit(args, job, [], [])
    from controller.sim import report

    print(report.table(job["result"]))
    if job["plot"]:
        url, _ = settings()
        print(f"plot: {url}{job['plot']}")
    return 0


def _token_add(args: argparse.Namespace) -> int:
    from controller.runtime import auth

    token = auth.add_token(args.file, args.name, auth.Role[args.role.upper()])
    print(token)
    print(f"added {args.name!r} ({args.role}) to {args.file}; the token is shown once", file=sys.stderr)
    return 0


def _output() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("-o", "--output", choices=("table", "json"), default="table")
    return out


def register_policy(sub: Any) -> None:
    """`gpuburst policy` exists (validate FILE, offline): add the API verbs to it."""
    out = _output()
    policy = sub.choices["policy"]
    (verbs,) = [a for a in policy._actions if isinstance(a, argparse._SubParsersAction)]
    verbs.add_parser("show", parents=[out], help="API: the running policy").set_defaults(func=_policy_show)
    verbs.add_parser(
        "reload", parents=[out], help="API: re-read the controller's policy file (admin)"
    ).set_defaults(func=_policy_reload)


def register(sub: Any) -> None:
    out = _output()
    page = argparse.ArgumentParser(add_help=False)
    page.add_argument("--limit", type=int, default=20)
    page.add_argument("--cursor", help="next_cursor of the previous page (-o json shows it)")

    sub.add_parser("status", parents=[out], help="API: the controller's last tick").set_defaults(func=_status)
    p = sub.add_parser("nodes", parents=[out], help="API: burst nodes")
    p.add_argument("--all", action="store_true", help="include released nodes")
    p.set_defaults(func=_nodes)
    sub.add_parser("decisions", parents=[out, page], help="API: latest decisions").set_defaults(
        func=_decisions
    )
    p = sub.add_parser("audit", parents=[out, page], help="API: the audit log")
    p.add_argument("--action", help="override, reconcile, policy_reload, transition, action, error, ...")
    p.add_argument("--actor", help="token name")
    p.set_defaults(func=_audit)
    p = sub.add_parser("override", parents=[out], help="API: set (or --clear) the operator's overrides")
    p.add_argument("--hold", action="store_true", help="pause bursting: no launch, no release")
    p.add_argument("--budget", type=float, help="USD per hour, lowers the policy budget")
    p.add_argument("--max-nodes", action="append", default=[], metavar="POOL=N", help="lowers a pool's cap")
    p.add_argument("--reason", default="")
    p.add_argument("--clear", action="store_true", help="remove every override")
    p.set_defaults(func=_override)
    sub.add_parser("reconcile", parents=[out], help="API: tick now").set_defaults(func=_reconcile)
    p = sub.add_parser("drain", parents=[out], help="API: drain and release one node (not relaunched)")
    p.add_argument("node")
    p.set_defaults(func=_drain)
    p = sub.add_parser("pool", parents=[out], help="API: pause or resume a pool's launches and releases")
    p.add_argument("verb", choices=("pause", "resume"))
    p.add_argument("pool")
    p.set_defaults(func=_pool)

    p = sub.add_parser(
        "whatif", parents=[out], help="API: replay a trace through gpuburst, the baselines and the oracle"
    )
    p.add_argument("--trace", type=Path, required=True, help="a t_seconds,requests CSV")
    p.add_argument("--scenario", required=True, help="the shipped scenario: service, pools, billing")
    p.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    p.set_defaults(func=_whatif)

    p = sub.add_parser("token", help="admin API tokens")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    a = verbs.add_parser("add", help="add a named token to a token file and print it once")
    a.add_argument("name")
    a.add_argument("--role", choices=("viewer", "operator", "admin"), required=True)
    a.add_argument("--file", type=Path, required=True, help="the controller's api.tokens_file")
    a.set_defaults(func=_token_add)
