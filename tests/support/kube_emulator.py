"""A Kubernetes API server for tests: kmock's emulator with what a real API server adds on top.

kmock 0.8's `KubernetesEmulator` stores objects and serves list, fetch, create, merge-patch, delete and
watch. The cluster adapter relies on more of the real API, so `KubeEmulator` serves every object request
itself, on kmock's storage (`emulator.objects`, with each object's history; kmock's own watch streams see
every write, though they ignore selectors):

- label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!key`) and the field selectors the real server
  accepts per kind (anything else is a 400, as there);
- `resourceVersion` on every write; PUT (replace) and patches carrying a stale one get 409 Conflict;
- JSON patch, merge patch and strategic merge patch (maps merge, lists are replaced);
- the Deployment `scale` subresource (GET, PUT, PATCH) and the `status` subresource;
- the pod `eviction` subresource under PodDisruptionBudgets: 429 when the budget allows no disruption;
- graceful pod deletion: a pod bound to a node keeps running with a `deletionTimestamp` until `step()`;
- watch from a `resourceVersion` (the events since then, from a history), with label and field selectors,
  `timeoutSeconds`, a BOOKMARK after each batch of writes when asked for (`allowWatchBookmarks`), and
  410 Gone (`expire_watches()`: the history is compacted and every open watch gets an ERROR event).

Its reaction sits just above kmock's fallbacks, so a test's own kmock reactions still take precedence.
`running()` serves it on a loopback port from a background thread for the synchronous `kubernetes`
client and yields a `Kube`: the real `ApiClient`, helpers that build a cluster (nodes, pods, Deployments,
PDBs), fault and conflict injection, and `step()`, a tiny kubelet + ReplicaSet controller + scheduler so
that an end-to-end test sees a cluster that moves. The `kube` fixture wraps `running()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import http
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import jsonpatch
import kmock
import kubernetes.client
import pytest

from controller import ports
from controller.ports import clock as clock_mod

Obj = dict[str, Any]
T = TypeVar("T")

NAMESPACE = "face-compare"
GPU = "nvidia.com/gpu"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
BURST_TAINT = {"key": "gpuburst.io/burst", "value": "true", "effect": "NoSchedule"}

KINDS: dict[str, tuple[str, str]] = {
    "nodes": ("v1", "Node"),
    "pods": ("v1", "Pod"),
    "namespaces": ("v1", "Namespace"),
    "services": ("v1", "Service"),
    "deployments": ("apps/v1", "Deployment"),
    "poddisruptionbudgets": ("policy/v1", "PodDisruptionBudget"),
    "leases": ("coordination.k8s.io/v1", "Lease"),
    "events": ("v1", "Event"),
}
"""plural -> (apiVersion, kind) of the resources the helpers know; the server accepts any resource."""

FIELD_LABELS: dict[str, frozenset[str]] = {
    "pods": frozenset(
        {"metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName"}
        | {"spec.serviceAccountName", "status.phase", "status.podIP", "status.nominatedNodeName"}
    ),
    "nodes": frozenset({"metadata.name", "spec.unschedulable"}),
}
DEFAULT_FIELD_LABELS = frozenset({"metadata.name", "metadata.namespace"})
NO_STATUS_SUBRESOURCE = frozenset({"leases", "namespaces", "services"})
PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def resource(plural: str) -> kmock.resource:
    api_version = KINDS[plural][0]
    group, _, version = api_version.rpartition("/")
    return kmock.resource(group, version, plural)


def error(status: int, message: str, **details: Any) -> kmock.KubernetesError:
    """A Status body like the API server's: the client raises ApiException with this status."""
    reason = http.HTTPStatus(status).phrase.replace(" ", "")
    return kmock.KubernetesError(
        status=status, reason=reason, message=message, details=details or {"causes": []}
    )


def _expired() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "message": "too old resource version",
        "reason": "Expired",
        "code": 410,
    }


# -- selectors ----------------------------------------------------------------------------------------
_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[\w./-]+)\s*"
    r"(?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<value>\([^)]*\)|[\w./-]*))?\s*$"
)


def label_selector_matches(labels: Mapping[str, str], selector: str) -> bool:
    """The string form (`?labelSelector=`): comma-separated requirements, all of which must hold."""
    for req in re.split(r",(?![^(]*\))", selector):
        if not req.strip():
            continue
        m = _REQUIREMENT.match(req)
        if m is None:
            raise error(400, f"unable to parse requirement: {req!r}")
        key, op, value = m["key"], (m["op"] or "").strip(), m["value"]
        if m["neg"]:
            ok = key not in labels
        elif not op:
            ok = key in labels
        elif op in ("in", "notin"):
            values = {v.strip() for v in value.strip("()").split(",")}
            ok = (labels.get(key) in values) == (op == "in")
        else:
            ok = (labels.get(key) == value) == (op != "!=")
        if not ok:
            return False
    return True


def selector_matches(labels: Mapping[str, str], selector: Mapping[str, Any] | None) -> bool:
    """The object form (matchLabels, matchExpressions) of Deployments and PDBs."""
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or ())
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def field_selector_matches(obj: Obj, plural: str, selector: str) -> bool:
    for req in selector.split(","):
        if not req.strip():
            continue
        m = re.match(r"^\s*([\w.]+)\s*(==|!=|=)\s*(.*?)\s*$", req)
        if m is None:
            raise error(400, f"invalid field selector: {req!r}")
        path, op, value = m.groups()
        if path not in FIELD_LABELS.get(plural, DEFAULT_FIELD_LABELS):
            raise error(400, f'field label not supported: "{path}"')
        actual: Any = obj
        for part in path.split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        text = "" if actual is None else str(actual).lower() if isinstance(actual, bool) else str(actual)
        if (text == value) != (op != "!="):
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch: maps merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# -- pod and node facts, shared by the server (PDBs) and step() ---------------------------------------
def terminating(pod: Obj) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def healthy(pod: Obj) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions") or []}
    return (
        pod.get("status", {}).get("phase") == "Running"
        and not terminating(pod)
        and (conditions.get("Ready", "True") == "True")
    )


def node_ready(node: Obj) -> bool:
    conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions") or []}
    return conditions.get("Ready") == "True"


def gpu_request(pod: Obj) -> int:
    total = 0
    for container in pod["spec"].get("containers") or []:
        res = container.get("resources") or {}
        total += int((res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU) or 0)
    return total


def tolerates(pod: Obj, taint: Mapping[str, Any]) -> bool:
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for tol in pod["spec"].get("tolerations") or []:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists" and tol.get("key") in (None, "", taint["key"]):
            return True
        if tol.get("key") == taint["key"] and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def deletion_cost(pod: Obj) -> int:
    return int((pod["metadata"].get("annotations") or {}).get(DELETION_COST, "0"))


@dataclasses.dataclass
class _Fault:
    method: str | None
    path: re.Pattern[str]
    status: int
    remaining: int | None


@dataclasses.dataclass
class _Interference:
    key: tuple[kmock.resource, str | None, str]
    mutate: Callable[[Obj], None]
    remaining: int | None


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator serving objects the way the API server does (see the module docstring)."""

    clock: ports.Clock = attrs.field(factory=clock_mod.SystemClock)
    _rv: int = attrs.field(default=0, init=False)
    _seq: int = attrs.field(default=0, init=False)
    _events: list[tuple[kmock.resource, Obj]] = attrs.field(factory=list, init=False)
    faults: list[_Fault] = attrs.field(factory=list, init=False)
    interferences: list[_Interference] = attrs.field(factory=list, init=False)
    _history: list[tuple[int, kmock.resource, Obj]] = attrs.field(factory=list, init=False)
    _compacted: int = attrs.field(default=0, init=False)
    _watchers: set[asyncio.Queue[Any]] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # Above kmock's own fallbacks (priority -inf), below any reaction a test adds (priority 0).
        (self**-1000) << self._serve

    async def _handle(self, request: kmock.Request) -> Any:
        # Skip KubernetesEmulator._handle, which writes objects before any reaction runs: here the writes
        # happen in _serve, so that a write a test intercepts (a fault) does not happen.
        return await kmock.RawHandler._handle(self, request)

    async def _serve(self, request: kmock.Request) -> Any:
        res = request.resource
        if res is None or res.plural is None:
            raise NotImplementedError  # discovery: kmock's own
        if request.action == kmock.action.WATCH:
            async with self._lock:
                self._inject(request)
                return self._watch(request)
        async with self._lock:
            self._inject(request)
            result = self._dispatch(request)
        await self.flush()
        return result

    async def flush(self) -> None:
        """Publish the queued events to kmock's watch streams (outside the lock, as kmock does)."""
        events, self._events = self._events, []
        for res, event in events:
            await self._buses[res].put(event)
            for queue in self._watchers:
                queue.put_nowait((res, event))
        if events:  # the batch's own last version: a write after the swap is in the next batch
            last = max(int(e["object"]["metadata"]["resourceVersion"]) for _, e in events)
            for queue in self._watchers:
                queue.put_nowait(("bookmark", last))

    # -- watch ----------------------------------------------------------------------------------------
    def _watch(self, rq: kmock.Request) -> Any:
        """The stream of one watch request; called under the lock, so that no write slips in between
        the backlog and the live events."""
        res, ns, params = rq.resource, rq.namespace, rq.params
        assert res is not None
        since = params.get("resourceVersion") or ""
        timeout = float(params.get("timeoutSeconds") or 0) or None
        bookmarks = params.get("allowWatchBookmarks") == "true"
        labels, fields = params.get("labelSelector") or "", params.get("fieldSelector") or ""

        def matches(obj: Obj) -> bool:
            return (
                (ns is None or obj["metadata"].get("namespace") == ns)
                and label_selector_matches(obj["metadata"].get("labels") or {}, labels)
                and field_selector_matches(obj, str(res.plural), fields)
            )

        gone = since not in ("", "0") and int(since) < self._compacted
        if since in ("", "0"):
            backlog = [{"type": "ADDED", "object": o} for o in self.items(res, ns) if matches(o)]
        else:
            backlog = [
                copy.deepcopy(e)
                for v, r, e in self._history
                if v > int(since) and r == res and matches(e["object"])
            ]
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._watchers.add(queue)
        queue.put_nowait(("bookmark", self._rv))  # what the backlog brings it up to
        api_version, kind = KINDS.get(str(res.plural), ("v1", "Object"))

        async def stream() -> Any:
            try:
                yield b""  # the headers go now, as the API server sends them before any event
                if gone:
                    yield {"type": "ERROR", "object": _expired()}
                    return
                for event in backlog:
                    yield event
                deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
                while True:
                    left = None if deadline is None else deadline - asyncio.get_running_loop().time()
                    try:
                        item = await asyncio.wait_for(queue.get(), left)
                    except TimeoutError:
                        return  # the server-side timeout: a normal end
                    if item is None:
                        return
                    if item == "expire":
                        yield {"type": "ERROR", "object": _expired()}
                        return
                    if item[0] == "bookmark":
                        if bookmarks:
                            meta = {"resourceVersion": str(item[1])}
                            yield {
                                "type": "BOOKMARK",
                                "object": {"apiVersion": api_version, "kind": kind, "metadata": meta},
                            }
                        continue
                    r, event = item
                    if r == res and matches(event["object"]):
                        yield copy.deepcopy(event)
            finally:
                self._watchers.discard(queue)

        return stream()

    def expire_watches(self) -> None:
        """Compact the history (a resume from any version seen so far gets 410 Gone) and end every open
        watch with a 410 ERROR event, as an API server does when etcd compacted past a watcher.

        Compaction past a watcher means the store has moved on (writes elsewhere): the revision advances,
        so a fresh list returns a version a watch can resume from, as a real server's list does."""
        self._rv += 1
        self._compacted = self._rv
        self._history.clear()
        for queue in self._watchers:
            queue.put_nowait("expire")

    def close_watches(self) -> None:
        """End every open watch (the server shutting down)."""
        for queue in self._watchers:
            queue.put_nowait(None)

    # -- storage --------------------------------------------------------------------------------------
    def read(self, res: kmock.resource, ns: str | None, name: str) -> Obj | None:
        key = (res, ns, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def require(self, res: kmock.resource, ns: str | None, name: str) -> Obj:
        obj = self.read(res, ns, name)
        if obj is None:
            kind = f"{res.plural}.{res.group}" if res.group else res.plural
            raise error(404, f'{kind} "{name}" not found', name=name, kind=res.plural)
        return obj

    def items(self, res: kmock.resource, ns: str | None = None) -> list[Obj]:
        out = [
            copy.deepcopy(obj.raw)
            for (r, ons, _), obj in self.objects.items()
            if r == res and (ns is None or ons == ns) and not obj.deleted
        ]
        return sorted(out, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))

    def store(self, res: kmock.resource, obj: Obj, *, event: str) -> Obj:
        """Write a new version with a fresh resourceVersion and queue its watch event."""
        obj = copy.deepcopy(obj)
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (res, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if key in self.objects:
            self.objects[key].history.append(obj)
        else:
            self.objects[key] = obj
        self._events.append((res, {"type": event, "object": copy.deepcopy(obj)}))
        self._history.append((self._rv, res, {"type": event, "object": copy.deepcopy(obj)}))
        return copy.deepcopy(obj)

    def remove(self, res: kmock.resource, obj: Obj) -> None:
        self.objects[res, obj["metadata"].get("namespace"), obj["metadata"]["name"]].delete()
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._events.append((res, {"type": "DELETED", "object": obj}))
        self._history.append((self._rv, res, {"type": "DELETED", "object": copy.deepcopy(obj)}))

    def now(self) -> str:
        t = datetime.datetime.fromtimestamp(self.clock.now(), tz=datetime.UTC)
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    # -- requests -------------------------------------------------------------------------------------
    def _inject(self, request: kmock.Request) -> None:
        for fault in self.faults:
            if fault.remaining == 0 or (fault.method and fault.method != request.method):
                continue
            if fault.path.search(request.url.path_qs):
                if fault.remaining is not None:
                    fault.remaining -= 1
                raise error(fault.status, f"injected fault on {request.method.value} {request.url.path}")
        if request.method in ("PUT", "PATCH") and request.name is not None:
            key = (request.resource, request.namespace, request.name)
            for other in self.interferences:
                if other.key == key and other.remaining != 0 and (obj := self.read(*key)) is not None:
                    if other.remaining is not None:
                        other.remaining -= 1
                    other.mutate(obj)  # another writer got there first
                    self.store(key[0], obj, event="MODIFIED")

    def _dispatch(self, rq: kmock.Request) -> Obj:
        res, ns, name, sub, method = rq.resource, rq.namespace, rq.name, rq.subresource, rq.method
        assert res is not None
        if name is None and method == "GET":
            return self._list(res, ns, rq.params)
        if name is None and method == "POST":
            return self._create(res, ns, rq.data)
        if name is not None and sub == "eviction" and method == "POST":
            return self._evict(ns, name)
        if name is not None and sub in (None, "status", "scale"):
            if sub == "scale" and res.plural != "deployments":
                raise error(404, f"{res.plural} have no scale subresource")
            if method == "GET":
                return self._view(self.require(res, ns, name), sub)
            if method == "DELETE":
                return self._delete(res, ns, name, rq.data)
            if method in ("PUT", "PATCH"):
                current = self.require(res, ns, name)
                body = rq.data
                if method == "PATCH":
                    body = self._patched(self._view(current, sub), body, rq.headers.get("Content-Type", ""))
                return self._update(res, current, sub, body)
        raise error(405, f"{method.value} {rq.url.path} is not served by the emulator")

    def _list(self, res: kmock.resource, ns: str | None, params: Mapping[str, str]) -> Obj:
        items = self.items(res, ns)
        if params.get("labelSelector"):
            labels = params["labelSelector"]
            items = [o for o in items if label_selector_matches(o["metadata"].get("labels") or {}, labels)]
        if params.get("fieldSelector"):
            fields = params["fieldSelector"]
            items = [o for o in items if field_selector_matches(o, str(res.plural), fields)]
        api_version, kind = KINDS.get(str(res.plural), (f"{res.group}/{res.version}", "Object"))
        return {
            "apiVersion": api_version,
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    def _create(self, res: kmock.resource, ns: str | None, body: Any) -> Obj:
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise error(400, "the body must be an object with metadata")
        obj = copy.deepcopy(body)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            self._seq += 1
            meta["name"] = f"{meta['generateName']}{self._seq:05d}"
        if not meta.get("name"):
            raise error(422, "metadata.name: Required value")
        if meta.get("namespace") not in (None, ns):
            raise error(400, "the namespace of the object does not match the namespace of the request")
        if ns is not None:
            meta["namespace"] = ns
        if self.read(res, ns, meta["name"]) is not None:
            raise error(409, f'{res.plural} "{meta["name"]}" already exists', name=meta["name"])
        self._seq += 1
        meta.update(uid=f"uid-{self._seq:06d}", creationTimestamp=self.now(), generation=1)
        if res.plural in KINDS:
            obj["apiVersion"], obj["kind"] = KINDS[str(res.plural)]
        if res.plural == "pods":
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        return self.store(res, obj, event="ADDED")

    def _view(self, obj: Obj, sub: str | None) -> Obj:
        if sub != "scale":
            return obj
        meta = obj["metadata"]
        selector = (obj["spec"].get("selector") or {}).get("matchLabels") or {}
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            },
            "spec": {"replicas": obj["spec"].get("replicas", 1)},
            "status": {
                "replicas": (obj.get("status") or {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(selector.items())),
            },
        }

    @staticmethod
    def _patched(current: Obj, patch: Any, content_type: str) -> Any:
        """The patched object; a resourceVersion the patch sets becomes a precondition of the write."""
        if content_type.startswith("application/json-patch+json"):
            if not isinstance(patch, list):
                raise error(400, "a JSON patch is a list of operations")
            try:
                return jsonpatch.apply_patch(current, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise error(422, f"the JSON patch does not apply: {exc}") from exc
        if not isinstance(patch, dict):
            raise error(400, "a merge patch is an object")
        return merge_patch(current, patch)

    def _update(self, res: kmock.resource, current: Obj, sub: str | None, body: Any) -> Obj:
        """PUT and PATCH: a resourceVersion in the body must be the current one (optimistic concurrency)."""
        if not isinstance(body, dict):
            raise error(400, "the body must be an object")
        meta = current["metadata"]
        name = meta["name"]
        sent = (body.get("metadata") or {}).get("resourceVersion")
        if (body.get("metadata") or {}).get("name") not in (None, name):
            raise error(400, "the name of the object does not match the name in the URL")
        if sent and sent != meta["resourceVersion"]:
            raise error(
                409,
                f'Operation cannot be fulfilled on {res.plural} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                name=name,
                kind=res.plural,
            )
        if sub == "scale":
            new = copy.deepcopy(current)
            replicas = (body.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise error(422, f"spec.replicas: Invalid value: {replicas!r}")
            new["spec"]["replicas"] = replicas
        elif sub == "status":
            new = copy.deepcopy(current)
            new["status"] = body.get("status")
        else:
            new = copy.deepcopy(body)
            for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation"):
                if key in meta:
                    new.setdefault("metadata", {})[key] = meta[key]
                else:
                    new.setdefault("metadata", {}).pop(key, None)
            if res.plural not in NO_STATUS_SUBRESOURCE and "status" in current:
                new["status"] = current["status"]
            new.setdefault("apiVersion", current.get("apiVersion"))
            new.setdefault("kind", current.get("kind"))
        if new.get("spec") != current.get("spec"):
            new["metadata"]["generation"] = meta.get("generation", 1) + 1
        return self._view(self.store(res, new, event="MODIFIED"), sub)

    def _delete(self, res: kmock.resource, ns: str | None, name: str, options: Any) -> Obj:
        obj = self.require(res, ns, name)
        if res.plural == "pods":
            grace = (options or {}).get("gracePeriodSeconds") if isinstance(options, dict) else None
            if grace is None:
                grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
            if obj["spec"].get("nodeName") and grace > 0 and obj["status"].get("phase") == "Running":
                if not terminating(obj):  # the kubelet stops it; step() plays the kubelet
                    obj["metadata"]["deletionTimestamp"] = self.now()
                    obj["metadata"]["deletionGracePeriodSeconds"] = grace
                    return self.store(res, obj, event="MODIFIED")
                return obj
            self.remove(res, obj)
            return obj
        self.remove(res, obj)
        return {"apiVersion": "v1", "kind": "Status", "status": "Success", "details": {"name": name}}

    def _evict(self, ns: str | None, name: str) -> Obj:
        """The Eviction API: delete the pod unless a PodDisruptionBudget allows no disruption now."""
        pods = resource("pods")
        pod = self.require(pods, ns, name)
        exempt = terminating(pod) or pod["status"].get("phase") in ("Pending", "Succeeded", "Failed")
        if not exempt:
            labels = pod["metadata"].get("labels") or {}
            pdbs = [
                p
                for p in self.items(resource("poddisruptionbudgets"), ns)
                if selector_matches(labels, p["spec"].get("selector"))
            ]
            if len(pdbs) > 1:
                raise error(
                    500,
                    "This pod has more than one PodDisruptionBudget, which the eviction "
                    "subresource does not support.",
                )
            if pdbs and self.disruptions_allowed(pdbs[0]) <= 0:
                raise error(
                    429,
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    causes=[{"reason": "DisruptionBudget", "message": pdbs[0]["metadata"]["name"]}],
                )
        self._delete(pods, ns, name, None)
        return {"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 201}

    def disruptions_allowed(self, pdb: Obj) -> int:
        """Healthy pods beyond what the budget wants, as the disruption controller computes it.

        The expected count is the replicas of the Deployments whose pods the budget selects (their
        scale), or else the number of selected pods, terminating ones included.
        """
        ns, spec = pdb["metadata"]["namespace"], pdb["spec"]
        selected = [
            p
            for p in self.items(resource("pods"), ns)
            if selector_matches(p["metadata"].get("labels") or {}, spec.get("selector"))
        ]
        owners = [
            d
            for d in self.items(resource("deployments"), ns)
            if selector_matches(
                d["spec"]["template"].get("metadata", {}).get("labels") or {}, spec.get("selector")
            )
        ]
        expected = sum(d["spec"].get("replicas", 1) for d in owners) if owners else len(selected)

        def count(value: int | str) -> int:
            if isinstance(value, str) and value.endswith("%"):
                return math.ceil(expected * int(value[:-1]) / 100)
            return int(value)

        if spec.get("minAvailable") is not None:
            desired = count(spec["minAvailable"])
        elif spec.get("maxUnavailable") is not None:
            desired = expected - count(spec["maxUnavailable"])
        else:
            desired = expected
        return sum(1 for p in selected if healthy(p)) - desired

    # -- the cluster's own controllers, for step() ----------------------------------------------------
    def step(self) -> None:
        """One pass of the kubelet, the ReplicaSet controller and the scheduler, in the order they act."""
        pods, nodes = resource("pods"), {n["metadata"]["name"]: n for n in self.items(resource("nodes"))}
        for pod in self.items(pods):
            node = pod["spec"].get("nodeName")
            if terminating(pod) or (node and node not in nodes):
                self.remove(pods, pod)  # grace period over, or the node is gone (pod GC)
        for deployment in self.items(resource("deployments")):
            self._reconcile_replicas(deployment)
        for pod in self.items(pods):
            if not pod["spec"].get("nodeName") and not terminating(pod):
                self._schedule(pod, nodes)
        for pod in self.items(pods):
            node = nodes.get(pod["spec"].get("nodeName") or "")
            if node is not None and pod["status"].get("phase") == "Pending" and node_ready(node):
                pod["status"].update(phase="Running", conditions=[{"type": "Ready", "status": "True"}])
                self.store(pods, pod, event="MODIFIED")
        for deployment in self.items(resource("deployments")):
            self._deployment_status(deployment)

    def owned(self, deployment: Obj) -> list[Obj]:
        rs = f"{deployment['metadata']['name']}-rs"
        return [
            p
            for p in self.items(resource("pods"), deployment["metadata"]["namespace"])
            if any(ref.get("name") == rs for ref in p["metadata"].get("ownerReferences") or [])
        ]

    def _reconcile_replicas(self, deployment: Obj) -> None:
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        active = [p for p in self.owned(deployment) if not terminating(p)]
        want = deployment["spec"].get("replicas", 1)
        for _ in range(want - len(active)):
            self._create(
                resource("pods"),
                meta["namespace"],
                {
                    "metadata": {
                        "generateName": f"{meta['name']}-rs-",
                        "labels": dict(template["metadata"].get("labels") or {}),
                        "annotations": dict(template["metadata"].get("annotations") or {}),
                        "ownerReferences": [
                            {
                                "apiVersion": "apps/v1",
                                "kind": "ReplicaSet",
                                "name": f"{meta['name']}-rs",
                                "uid": f"{meta['uid']}-rs",
                                "controller": True,
                            }
                        ],
                    },
                    "spec": copy.deepcopy(template["spec"]),
                },
            )
        # The ReplicaSet's order (pkg/controller: ActivePodsWithRanks): unscheduled, then pending, then
        # not ready, then the lowest pod-deletion-cost, then the newest.
        doomed = sorted(
            active,
            key=lambda p: (
                bool(p["spec"].get("nodeName")),
                PHASE_RANK.get(p["status"].get("phase", "Pending"), 0),
                healthy(p),
                deletion_cost(p),
                -int(p["metadata"]["uid"].rsplit("-", 1)[1]),
            ),
        )
        for pod in doomed[: max(0, len(active) - want)]:
            self._delete(resource("pods"), pod["metadata"]["namespace"], pod["metadata"]["name"], None)

    def _schedule(self, pod: Obj, nodes: Mapping[str, Obj]) -> None:
        """Bind to the feasible node with the most free GPUs (the default scheduler spreads)."""
        used: dict[str, int] = {}
        for other in self.items(resource("pods")):
            if other["spec"].get("nodeName") and other["status"].get("phase") not in ("Succeeded", "Failed"):
                used[other["spec"]["nodeName"]] = used.get(other["spec"]["nodeName"], 0) + gpu_request(other)
        best: tuple[int, str] | None = None
        for name, node in sorted(nodes.items()):
            labels = node["metadata"].get("labels") or {}
            free = int((node["status"].get("allocatable") or {}).get(GPU, 0)) - used.get(name, 0)
            feasible = (
                node_ready(node)
                and not node["spec"].get("unschedulable")
                and all(labels.get(k) == v for k, v in (pod["spec"].get("nodeSelector") or {}).items())
                and all(
                    tolerates(pod, t)
                    for t in node["spec"].get("taints") or []
                    if t.get("effect") in ("NoSchedule", "NoExecute")
                )
                and free >= gpu_request(pod)
            )
            if feasible and (best is None or free > best[0]):
                best = (free, name)
        if best is not None:
            pod["spec"]["nodeName"] = best[1]
            self.store(resource("pods"), pod, event="MODIFIED")

    def _deployment_status(self, deployment: Obj) -> None:
        active = [p for p in self.owned(deployment) if not terminating(p)]
        ready = sum(1 for p in active if healthy(p))
        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": len(active),
            "updatedReplicas": len(active),
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        if deployment.get("status") != status:
            deployment["status"] = status
            self.store(resource("deployments"), deployment, event="MODIFIED")


@dataclasses.dataclass
class Kube:
    """A running emulator, the real client pointed at it, and helpers that script the cluster.

    Every helper runs on the emulator's event loop under its lock, so a test thread never races a request.
    """

    emulator: KubeEmulator
    loop: asyncio.AbstractEventLoop
    url: str
    api_client: kubernetes.client.ApiClient

    def run(self, fn: Callable[[KubeEmulator], T]) -> T:
        async def call() -> T:
            async with self.emulator._lock:
                result = fn(self.emulator)
            await self.emulator.flush()
            return result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=30)

    # -- objects --------------------------------------------------------------------------------------
    def create(self, obj: Obj) -> Obj:
        """Create any object (e.g. the workload's rendered manifests), as `kubectl create` would."""
        plural = next((p for p, (_, kind) in KINDS.items() if kind == obj.get("kind")), None)
        if plural is None:
            raise ValueError(f"unknown kind {obj.get('kind')!r}: add it to KINDS")
        ns = obj["metadata"].get("namespace", NAMESPACE) if plural not in ("nodes", "namespaces") else None
        return self.run(lambda e: e._create(resource(plural), ns, obj))

    def get(self, plural: str, name: str, *, namespace: str | None = NAMESPACE) -> Obj | None:
        ns = None if plural in ("nodes", "namespaces") else namespace
        return self.run(lambda e: e.read(resource(plural), ns, name))

    def items(self, plural: str, *, namespace: str | None = None) -> list[Obj]:
        return self.run(lambda e: e.items(resource(plural), namespace))

    def patch(self, plural: str, name: str, patch: Obj, *, namespace: str | None = NAMESPACE) -> Obj:
        """Merge-patch an object as another actor would (status included: no subresource split here)."""
        ns = None if plural in ("nodes", "namespaces") else namespace

        def apply(e: KubeEmulator) -> Obj:
            return e.store(
                resource(plural), merge_patch(e.require(resource(plural), ns, name), patch), event="MODIFIED"
            )

        return self.run(apply)

    def delete(self, plural: str, name: str, *, namespace: str | None = NAMESPACE) -> None:
        """Remove an object at once (no grace period): a node that vanished, a pod the kubelet lost."""
        ns = None if plural in ("nodes", "namespaces") else namespace
        self.run(lambda e: e.remove(resource(plural), e.require(resource(plural), ns, name)))

    # -- a cluster ------------------------------------------------------------------------------------
    def add_node(
        self,
        name: str,
        *,
        pool: str | None = "aws-g5-spot",
        record: str | None = None,
        gpus: int = 1,
        ready: bool = True,
        unschedulable: bool = False,
        taints: Sequence[Obj] = (),
        labels: Mapping[str, str] | None = None,
    ) -> Obj:
        """A node; with a pool it carries the burst contract's labels and taint (DESIGN.md section 7).

        `record` is the controller's name for it (label `gpuburst.io/node`), by default the node's own;
        `gpus=0` leaves `nvidia.com/gpu` out of allocatable, as before the device plugin registers.
        """
        all_labels = {"kubernetes.io/hostname": name, **(labels or {})}
        all_taints = list(taints)
        if pool is not None:
            all_labels.update(
                {
                    "gpuburst.io/placement": "burst",
                    "gpuburst.io/pool": pool,
                    "gpuburst.io/node": record or name,
                }
            )
            all_taints.insert(0, BURST_TAINT)
        allocatable = {"cpu": "8", "memory": "32Gi", "pods": "110", **({GPU: str(gpus)} if gpus else {})}
        return self.create(
            {
                "kind": "Node",
                "metadata": {"name": name, "labels": all_labels},
                "spec": {"unschedulable": unschedulable, "taints": all_taints},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                    "allocatable": allocatable,
                    "capacity": allocatable,
                },
            }
        )

    def add_pod(
        self,
        name: str,
        *,
        node: str | None,
        namespace: str = NAMESPACE,
        labels: Mapping[str, str] | None = None,
        phase: str = "Running",
        owner: tuple[str, str] | None = ("ReplicaSet", "face-compare-burst-rs"),
        gpus: int = 1,
        annotations: Mapping[str, str] | None = None,
    ) -> Obj:
        """A pod bound to `node` (None: pending); `owner` is (kind, name), e.g. ("DaemonSet", "dcgm")."""
        refs = (
            [
                {
                    "apiVersion": "apps/v1",
                    "kind": owner[0],
                    "name": owner[1],
                    "uid": f"{owner[1]}-uid",
                    "controller": True,
                }
            ]
            if owner
            else []
        )
        container: Obj = {"name": "main", "image": "example/main:1"}
        if gpus:
            container["resources"] = {"limits": {GPU: str(gpus)}}
        ready = "True" if phase == "Running" else "False"
        return self.create(
            {
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": dict(labels or {}),
                    "annotations": dict(annotations or {}),
                    "ownerReferences": refs,
                },
                "spec": {"nodeName": node, "containers": [container]},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]},
            }
        )

    def add_burst_deployment(
        self, workload: str, pool: str, *, replicas: int = 0, namespace: str = NAMESPACE
    ) -> Obj:
        """`<workload>-burst-<pool>`, shaped like the workload's burst overlay (labels, selector, taint)."""
        labels = {
            "app.kubernetes.io/name": workload,
            "gpuburst.io/placement": "burst",
            "gpuburst.io/pool": pool,
        }
        return self.create(
            {
                "kind": "Deployment",
                "metadata": {"name": f"{workload}-burst-{pool}", "namespace": namespace, "labels": labels},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "nodeSelector": {"gpuburst.io/placement": "burst", "gpuburst.io/pool": pool},
                            "tolerations": [{**BURST_TAINT, "operator": "Equal"}],
                            "terminationGracePeriodSeconds": 45,
                            "containers": [
                                {
                                    "name": workload,
                                    "image": "example/face-compare:1",
                                    "resources": {"limits": {GPU: "1"}},
                                }
                            ],
                        },
                    },
                },
            }
        )

    def add_pdb(
        self,
        name: str,
        *,
        match_labels: Mapping[str, str],
        min_available: int | str | None = None,
        max_unavailable: int | str | None = None,
        namespace: str = NAMESPACE,
    ) -> Obj:
        spec: Obj = {"selector": {"matchLabels": dict(match_labels)}}
        if min_available is not None:
            spec["minAvailable"] = min_available
        if max_unavailable is not None:
            spec["maxUnavailable"] = max_unavailable
        return self.create(
            {"kind": "PodDisruptionBudget", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        )

    def step(self, times: int = 1) -> None:
        """Let the cluster's own controllers act (see `KubeEmulator.step`)."""
        for _ in range(times):
            self.run(KubeEmulator.step)

    # -- faults ---------------------------------------------------------------------------------------
    def fail(self, path: str, status: int = 500, *, method: str | None = None, times: int | None = 1) -> None:
        """Answer `times` requests (None: all) whose path and query, as sent, match the regex `path`."""
        fault = _Fault(method.upper() if method else None, re.compile(path), status, times)
        self.run(lambda e: e.faults.append(fault))

    def interfere(
        self,
        plural: str,
        name: str,
        mutate: Callable[[Obj], None],
        *,
        namespace: str | None = NAMESPACE,
        times: int | None = 1,
    ) -> None:
        """Before the next PUT or PATCH of this object, another writer changes it with `mutate`.

        The write under test then carries a stale resourceVersion and meets a real 409 Conflict.
        """
        ns = None if plural in ("nodes", "namespaces") else namespace
        other = _Interference((resource(plural), ns, name), mutate, times)
        self.run(lambda e: e.interferences.append(other))

    def version(self) -> str:
        """The latest resourceVersion: a cache that has seen it has seen every write so far."""
        return self.run(lambda e: str(e._rv))

    def expire_watches(self) -> None:
        """410 Gone for every open watch and for any resume from a version seen so far."""
        self.run(KubeEmulator.expire_watches)

    def lists(self, plural: str | None = None) -> list[str]:
        """The list requests served so far (GETs of a collection, watches excluded)."""
        return [
            r
            for r in self.requests("GET")
            if "watch=" not in r
            and (plural is None or r.split("?")[0].endswith(f"/{plural}"))
            and r.split("?")[0].rsplit("/", 1)[-1] in KINDS
        ]

    def forget_requests(self) -> None:
        """Drop kmock's request log: each request scans it, so a long end-to-end run may want this."""
        self.run(lambda e: e._requests.clear())

    def requests(self, method: str | None = None) -> list[str]:
        """`METHOD /path?query` (decoded) of every request served so far, oldest first."""
        return self.run(
            lambda e: [
                f"{r.method.value} {r.url.path}"
                + ("?" + "&".join(f"{k}={v}" for k, v in r.url.query.items()) if r.url.query else "")
                for r in list(e)
                if method is None or r.method.value == method.upper()
            ]
        )


@contextlib.contextmanager
def running(*, clock: ports.Clock | None = None) -> Iterator[Kube]:
    """Serve a `KubeEmulator` on a free loopback port from a background thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        box["stop"] = asyncio.Event()
        try:
            async with (
                KubeEmulator(clock=clock or clock_mod.SystemClock()) as emulator,
                kmock.Server(emulator) as server,
            ):
                box["emulator"], box["url"] = emulator, str(server.url).rstrip("/")
                ready.set()
                await box["stop"].wait()
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            raise

    thread = threading.Thread(
        target=loop.run_until_complete, args=(serve(),), name="kube-emulator", daemon=True
    )
    thread.start()
    if not ready.wait(10) or "error" in box:
        raise RuntimeError(f"the Kubernetes emulator did not start: {box.get('error')!r}")
    api_client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=box["url"]))
    try:
        yield Kube(box["emulator"], loop, box["url"], api_client)
    finally:
        loop.call_soon_threadsafe(box["emulator"].close_watches)
        api_client.close()  # type: ignore[no-untyped-call]  # first, or the server waits for the client's keep-alive connections
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(10)
        loop.close()


@pytest.fixture
def kube() -> Iterator[Kube]:
    """A fresh emulated cluster per test (import this fixture, or call `running()` in your own)."""
    with running() as k:
        yield k
