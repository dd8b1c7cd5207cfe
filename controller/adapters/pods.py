"""The PodSource port: each workload's replicas read directly, for the surge check between ticks.

Knative's autoscaler reads its queue-proxies the same way, and for the same reason: a step shows in a
replica's own counters within a second, in Prometheus only after the next scrape and a rate window.
Replicas are found through the Kubernetes API (label selector, Running, with a pod IP), which is why the
controller must run where it can reach pod IPs (in the cluster). Each replica's `/metrics` is fetched
with httpx and parsed with prometheus_client's parser. Arrivals are the answered-requests counter plus
the in-flight gauge; their rate is taken per pod over the last `SURGE_WINDOW_S`, so a pod that starts,
restarts or goes away drops out of one rate instead of reading as a surge.
"""

from __future__ import annotations

import concurrent.futures
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx
import kubernetes.client
import pydantic
import urllib3.exceptions
from kubernetes.client import exceptions as k8s_errors
from prometheus_client import parser

from contract import metrics as contract
from controller import ports
from controller.core import model, policy
from controller.runtime import logs

log = logs.get("pods")

APP_LABEL = "app.kubernetes.io/name"
HISTORY = 8
"""Readings kept per pod: enough to reach back one surge window at any check interval."""


class PodScrape(pydantic.BaseModel):
    """How a workload's replicas are found and read."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    selector: str | None = None
    """Kubernetes label selector; default `app.kubernetes.io/name=<workload>`."""
    port: int = pydantic.Field(default=8080, ge=1, le=65535)
    path: str = pydantic.Field(default="/metrics", pattern=r"^/")


@dataclass(frozen=True, slots=True)
class _Scraped:
    arrived: float
    in_system: float


def parse(text: str) -> _Scraped:
    """Arrivals so far and requests held, from one replica's exposition. Raises ValueError when the
    contract's series are missing: a replica that does not report is not a replica with no load."""
    answered = inflight = None
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == contract.REQUESTS_TOTAL:
                answered = (answered or 0.0) + sample.value
            elif sample.name == contract.INFLIGHT_REQUESTS:
                inflight = (inflight or 0.0) + sample.value
    if inflight is None:
        raise ValueError(f"no {contract.INFLIGHT_REQUESTS} series")
    return _Scraped(arrived=(answered or 0.0) + inflight, in_system=inflight)


class PodReader:
    """The PodSource port over the Kubernetes API and the replicas' metrics endpoints."""

    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        namespace: str,
        scrapes: Mapping[str, PodScrape],
        *,
        clock: ports.Clock,
        timeout_s: float = 0.5,
        workers: int = 16,
    ) -> None:
        self.core = kubernetes.client.CoreV1Api(client)
        self.namespace = namespace
        self.scrapes = scrapes
        self.clock = clock
        self.timeout_s = timeout_s
        self.http = httpx.Client(timeout=timeout_s)
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="pod-reader")
        self.history: dict[tuple[str, str], deque[tuple[float, float]]] = {}
        """(workload, pod uid) -> (time, arrivals so far) of its latest readings."""

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()

    def read(self, workloads: Sequence[model.WorkloadSpec]) -> Mapping[str, model.PodReading]:
        out: dict[str, model.PodReading] = {}
        seen: set[tuple[str, str]] = set()
        for w in workloads:
            scrape = self.scrapes.get(w.name, PodScrape())
            now = self.clock.now()
            targets = self._targets(w.name, scrape)
            results = self.pool.map(lambda t: self._fetch(*t), targets)
            rate = 0.0
            rated = False
            in_system = 0.0
            replicas = 0
            for (uid, _url), got in zip(targets, results, strict=True):
                if got is None:
                    continue
                replicas += 1
                in_system += got.in_system
                key = (w.name, uid)
                seen.add(key)
                past = self.history.setdefault(key, deque(maxlen=HISTORY))
                before = [(t, a) for t, a in past if t <= now - policy.SURGE_WINDOW_S]
                then = before[-1] if before else (past[0] if past else None)
                past.append((now, got.arrived))
                if then is not None and now > then[0] and got.arrived >= then[1]:
                    rate += (got.arrived - then[1]) / (now - then[0])
                    rated = True
            if replicas:
                out[w.name] = model.PodReading(
                    recent_rps=rate if rated else None, in_system=in_system, replicas=replicas
                )
        for key in set(self.history) - seen:
            del self.history[key]
        return out

    def _targets(self, workload: str, scrape: PodScrape) -> list[tuple[str, str]]:
        selector = scrape.selector or f"{APP_LABEL}={workload}"
        try:
            pods = self.core.list_namespaced_pod(
                self.namespace,
                label_selector=selector,
                field_selector="status.phase=Running",
                _request_timeout=max(self.timeout_s, 2.0),
            ).items
        except (k8s_errors.ApiException, urllib3.exceptions.HTTPError) as exc:
            raise ConnectionError(f"list pods of {workload} ({selector}): {exc}") from exc
        return [
            (str(p.metadata.uid or p.metadata.name), f"http://{p.status.pod_ip}:{scrape.port}{scrape.path}")
            for p in pods
            if p.status is not None and p.status.pod_ip and p.metadata is not None
        ]

    def _fetch(self, uid: str, url: str) -> _Scraped | None:
        """One replica's reading; None when it does not answer (starting, or gone) or breaks the contract."""
        try:
            response = self.http.get(url)
            response.raise_for_status()
            return parse(response.text)
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("replica unreadable", extra={"pod": uid, "url": url, "error": str(exc)})
            return None
