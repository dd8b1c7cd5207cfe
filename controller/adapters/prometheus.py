"""Workload metrics from Prometheus: the `MetricSource` port over its HTTP API (httpx).

Owns the PromQL that reads the workload metric contract (docs/architecture.md, contracts) and the rules
that turn a doubtful answer into "unknown" instead of a number. Per workload, every query is an instant query
evaluated at the tick time:

- demand: `rate` (required) and `tier_rate` (per tier, optional: a workload may serve no vip traffic);
- `queue` depth (required);
- `latency`: a quantile from the request-duration histogram (optional: NaN while no request arrives);
- `ready` replicas by placement (optional);
- `freshness`: the newest sample time of the workload's series, and `up` of its scrape targets.

Required values read None with a problem when their query returns no series or a NaN/Inf (so a
workload whose request counter has no series yet, before its first request, reads unknown, not 0). The
whole workload reads unknown (every value None, with a problem naming the query) when a query fails,
when every scrape target is down, when no series matches at all, or when the newest sample is older
than `max_age_s`. A problem makes the view unsynced, so the controller holds rather than acting on a
guess. Optional values that are missing or NaN are None without a problem.

The client speaks to Prometheus as production setups expose it: a bearer token read from a file at
each request (so a rotated token is picked up), basic auth, TLS with a private CA and a client
certificate, extra headers (Mimir/Cortex `X-Scope-OrgID`), and AWS SigV4 for Amazon Managed Prometheus
(the `aws` extra). A failed query is reported from the HTTP answer itself: its status and the `error`
field of Prometheus' JSON body.
"""

from __future__ import annotations

import logging
import math
import re
import ssl
import string
import urllib.parse
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
import pydantic

from contract import metrics as contract
from controller.core import model
from controller.runtime import errors

log = logging.getLogger("gpuburst.prometheus")

PLACEHOLDERS: Final = frozenset({"selector", "window", "quantile"})
"""`$name` placeholders a query template may use (string.Template syntax; PromQL never uses `$`)."""

DEFAULT_QUERIES: Final[Mapping[str, str]] = {
    "rate": f"sum(rate({contract.REQUESTS_TOTAL}{{$selector}}[$window]))",
    "tier_rate": f"sum by ({contract.TIER}) (rate({contract.REQUESTS_TOTAL}{{$selector}}[$window]))",
    "queue": f"sum({contract.QUEUE_DEPTH}{{$selector}})",
    "latency": (
        "histogram_quantile($quantile, sum by (le) "
        f"(rate({contract.REQUEST_DURATION_SECONDS}_bucket{{$selector}}[$window])))"
    ),
    "ready": f"sum by ({contract.PLACEMENT}) ({contract.READY}{{$selector}})",
    # The ready gauge is exported by every replica from its start, so its newest sample says how current
    # the workload's data is. Without this check Prometheus answers with the last value for up to 5 min
    # (its lookback) when scraping or ingestion stops without writing staleness markers.
    "freshness": f"max(timestamp({contract.READY}{{$selector}}))",
    # Selects by target labels (job, instance, relabelled pod labels); a selector on metric labels
    # such as `placement` matches no `up` series, and the check is skipped.
    "up": "up{$selector}",
}

REQUIRED_PLACEHOLDERS: Final[Mapping[str, frozenset[str]]] = {
    "rate": frozenset({"selector", "window"}),
    "tier_rate": frozenset({"selector", "window"}),
    "queue": frozenset({"selector"}),
    "latency": frozenset({"selector", "window", "quantile"}),
    "ready": frozenset({"selector"}),
    "freshness": frozenset({"selector"}),
    "up": frozenset({"selector"}),
}

_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_MATCHER = rf'\s*{_NAME}\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*'
_SELECTOR = re.compile(rf"^{_MATCHER}(?:,{_MATCHER})*,?\s*$")
_DURATION = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")


class WorkloadQueries(pydantic.BaseModel):
    """How one workload is found in Prometheus and which PromQL reads it.

    Templates use `$selector` (the label matchers inside `{...}`), `$window` (a PromQL duration) and
    `$quantile`; each must keep the placeholders its default has, so an override still reads this
    workload over the configured window.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    selector: str = pydantic.Field(description='label matchers, e.g. job="face-compare"')
    window: str = pydantic.Field(default="1m", description="rate window; at least 4 scrape intervals")
    quantile: float = pydantic.Field(default=0.99, gt=0.0, lt=1.0)
    rate: str = DEFAULT_QUERIES["rate"]
    tier_rate: str = DEFAULT_QUERIES["tier_rate"]
    queue: str = DEFAULT_QUERIES["queue"]
    latency: str = DEFAULT_QUERIES["latency"]
    ready: str = DEFAULT_QUERIES["ready"]
    freshness: str = DEFAULT_QUERIES["freshness"]
    up: str = DEFAULT_QUERIES["up"]

    @pydantic.field_validator("selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        if not _SELECTOR.match(value):
            raise ValueError(
                f'{value!r} is not a list of PromQL label matchers (name="value", name=~"regex", ...)'
            )
        return value.strip()

    @pydantic.field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError(f"{value!r} is not a PromQL duration such as 30s, 1m or 1m30s")
        return value

    @pydantic.field_validator(*DEFAULT_QUERIES)
    @classmethod
    def _template(cls, value: str, info: pydantic.ValidationInfo) -> str:
        template = string.Template(value)
        if not template.is_valid():
            raise ValueError(
                f"{value!r}: a `$` that starts no placeholder (use $selector, $window, $quantile)"
            )
        used = set(template.get_identifiers())
        if unknown := used - PLACEHOLDERS:
            raise ValueError(f"{value!r}: unknown placeholder ${', $'.join(sorted(unknown))}")
        assert info.field_name is not None
        if missing := REQUIRED_PLACEHOLDERS[info.field_name] - used:
            raise ValueError(f"{value!r}: lacks ${', $'.join(sorted(missing))}")
        return value

    def render(self) -> dict[str, str]:
        """Query name -> PromQL for this workload."""
        values = {"selector": self.selector, "window": self.window, "quantile": f"{self.quantile:g}"}
        return {name: string.Template(getattr(self, name)).substitute(values) for name in DEFAULT_QUERIES}


class BasicAuth(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    username: str = pydantic.Field(min_length=1)
    password_file: pydantic.FilePath = pydantic.Field(description="file holding the password")


class TLS(pydantic.BaseModel):
    """How the server is verified and, for mutual TLS, which certificate the controller shows."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    ca_file: pydantic.FilePath | None = pydantic.Field(default=None, description="CA bundle (PEM)")
    cert_file: pydantic.FilePath | None = pydantic.Field(default=None, description="client certificate")
    key_file: pydantic.FilePath | None = pydantic.Field(default=None, description="client certificate's key")
    insecure_skip_verify: bool = pydantic.Field(
        default=False, description="accept any server certificate (logged as a warning)"
    )

    @pydantic.model_validator(mode="after")
    def _pair(self) -> TLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file is not None and self.key_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class SigV4(pydantic.BaseModel):
    """AWS Signature V4 (Amazon Managed Prometheus); credentials come from the usual AWS chain."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    region: str = pydantic.Field(min_length=1)
    service: str = "aps"
    profile: str | None = None


class PrometheusConfig(pydantic.BaseModel):
    """Where Prometheus is, how to authenticate to it, and how each workload is read from it."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    url: str = "http://127.0.0.1:9090"
    timeout_s: float = pydantic.Field(
        default=5.0, gt=0.0, description="per query; a tick runs 7 per workload"
    )
    retries: int = pydantic.Field(
        default=1, ge=0, le=5, description="immediate retries of a refused connection"
    )
    max_age_s: float = pydantic.Field(
        default=45.0, gt=0.0, description="newest sample older than this: unknown (about 3 scrape intervals)"
    )
    bearer_token_file: pydantic.FilePath | None = pydantic.Field(
        default=None, description="sent as `Authorization: Bearer`; read again at every request"
    )
    basic_auth: BasicAuth | None = None
    sigv4: SigV4 | None = None
    tls: TLS = pydantic.Field(default_factory=TLS)
    headers: dict[str, str] = pydantic.Field(
        default_factory=dict, description="sent with every request, e.g. X-Scope-OrgID for Mimir"
    )
    workloads: dict[str, WorkloadQueries] = pydantic.Field(default_factory=dict)
    """Per workload name; a workload not listed is selected by `job="<name>"` with default queries."""

    @pydantic.field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parsed = urllib.parse.urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL such as http://prometheus:9090")
        # Paths are appended to the URL as given ("/api/v1/query"), so a prefix such as /prometheus works.
        return value.rstrip("/")

    @pydantic.model_validator(mode="after")
    def _one_auth(self) -> PrometheusConfig:
        chosen = [n for n in ("bearer_token_file", "basic_auth", "sigv4") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one of bearer_token_file, basic_auth, sigv4 (got {', '.join(chosen)})")
        return self

    def queries(self, workload: str) -> WorkloadQueries:
        found = self.workloads.get(workload)
        return found if found is not None else WorkloadQueries(selector=f'job="{workload}"')

    def auth(self) -> httpx.Auth | None:
        if self.bearer_token_file is not None:
            return _BearerFile(str(self.bearer_token_file))
        if self.basic_auth is not None:
            password = self.basic_auth.password_file.read_text().strip()
            return httpx.BasicAuth(self.basic_auth.username, password)
        if self.sigv4 is not None:
            return _SigV4Auth(self.sigv4)
        return None

    def client(self) -> httpx.Client:
        """An HTTP client with this config's auth, TLS and headers; retries only refused connections."""
        if self.tls.insecure_skip_verify:
            log.warning(
                "prometheus TLS certificate not verified (insecure_skip_verify)", extra={"url": self.url}
            )
        verify = self.tls.context() if self.url.startswith("https:") else True
        return httpx.Client(
            base_url=self.url,
            auth=self.auth(),
            headers=self.headers,
            timeout=self.timeout_s,
            transport=httpx.HTTPTransport(verify=verify, retries=self.retries),
        )


class _BearerFile(httpx.Auth):
    """`Authorization: Bearer <file contents>`, the file read at each request as Prometheus itself does."""

    def __init__(self, path: str) -> None:
        self.path = path

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        with open(self.path) as f:
            request.headers["Authorization"] = f"Bearer {f.read().strip()}"
        yield request


class _SigV4Auth(httpx.Auth):
    """AWS SigV4 signing by botocore (the `aws` extra), credentials from the default chain."""

    def __init__(self, config: SigV4) -> None:
        try:
            from botocore import auth as aws_auth
            from botocore import awsrequest, session
        except ImportError as exc:
            raise errors.UserError("prometheus.sigv4 needs botocore: pip install 'gpuburst[aws]'") from exc
        self._credentials = session.Session(profile=config.profile).get_credentials()
        if self._credentials is None:
            raise errors.UserError(
                "prometheus.sigv4: no AWS credentials found (environment, profile or role)"
            )
        self._sign = aws_auth.SigV4Auth
        self._request = awsrequest.AWSRequest
        self.config = config

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        aws = self._request(
            method=request.method,
            url=str(request.url),
            data=request.content,
            headers={"host": request.url.netloc.decode()},
        )
        self._sign(
            self._credentials.get_frozen_credentials(), self.config.service, self.config.region
        ).add_auth(aws)
        request.headers.update(dict(aws.headers))
        yield request


@dataclass(frozen=True, slots=True)
class Health:
    """Whether Prometheus answers queries, for the controller's readiness."""

    reachable: bool
    ready: bool
    version: str | None = None
    error: str = ""


class _QueryError(Exception):
    """One query could not be answered; the message names the query."""


class _UnreachableError(_QueryError):
    """Prometheus did not answer at all: the remaining queries of this read would fail the same way."""


class PrometheusSource:
    """The MetricSource port on a real Prometheus (see the module docstring for what reads unknown)."""

    def __init__(self, config: PrometheusConfig) -> None:
        self.config = config
        # No back-off and no retry on an HTTP status: a tick must not stall, and the next tick asks again.
        self._http = config.client()
        self.sample_age_s: dict[str, float | None] = {}
        """Per workload: the age of its newest sample at the last read (None: unknown), for telemetry."""

    def close(self) -> None:
        self._http.close()

    # -- the port -----------------------------------------------------------------------------------
    def read(
        self, workloads: Sequence[model.WorkloadSpec], *, at: float
    ) -> Mapping[str, model.WorkloadMetrics]:
        out: dict[str, model.WorkloadMetrics] = {}
        unreachable: str | None = None
        for spec in workloads:
            if unreachable is not None:
                # Prometheus did not answer: asking again per workload would only multiply the timeouts.
                out[spec.name] = _unknown(unreachable)
                self.sample_age_s[spec.name] = None
                continue
            try:
                out[spec.name] = self._read_one(spec.name, at)
            except _UnreachableError as exc:
                unreachable = str(exc)
                out[spec.name] = _unknown(unreachable)
                self.sample_age_s[spec.name] = None
            except _QueryError as exc:
                out[spec.name] = _unknown(str(exc))
                self.sample_age_s[spec.name] = None
            if not out[spec.name].known:
                log.warning(
                    "metrics unknown",
                    extra={"workload": spec.name, "at": at, "problems": list(out[spec.name].problems)},
                )
        return out

    def _read_one(self, workload: str, at: float) -> model.WorkloadMetrics:
        q = self.config.queries(workload).render()
        self.sample_age_s[workload] = None

        up = self._query("up", q["up"], at=at)
        if up and all(v == 0 for _, v in up):
            return _unknown(f"target down: up == 0 for all {len(up)} targets [{q['up']}]")
        if down := [labels.get("instance", "?") for labels, v in up if v == 0]:
            # Their series go stale and drop out of the sums, so demand may read low for a window.
            log.warning("scrape targets down", extra={"workload": workload, "instances": down})

        newest = self._scalar("freshness", q["freshness"], at=at)
        if isinstance(newest, str):
            return _unknown(newest)
        age = max(0.0, at - newest)
        self.sample_age_s[workload] = age
        if age > self.config.max_age_s:
            return _unknown(f"stale: last sample {age:.0f} s old (max {self.config.max_age_s:g} s)")

        problems: list[str] = []
        rate = self._scalar("rate", q["rate"], at=at)
        queue = self._scalar("queue", q["queue"], at=at)
        for value in (rate, queue):
            if isinstance(value, str):
                problems.append(value)
        latency = self._scalar("latency", q["latency"], at=at)
        tiers = {
            labels.get(contract.TIER, ""): v
            for labels, v in self._query("tier_rate", q["tier_rate"], at=at)
            if math.isfinite(v)
        }
        ready = {
            labels.get(contract.PLACEMENT, ""): round(v)
            for labels, v in self._query("ready", q["ready"], at=at)
            if math.isfinite(v)
        }
        return model.WorkloadMetrics(
            rate_rps=None if isinstance(rate, str) else rate,
            queue_depth=None if isinstance(queue, str) else queue,
            # An optional value that is missing or NaN is simply not known: no traffic, no quantile.
            latency_p99_s=None if isinstance(latency, str) else latency,
            tier_rps=tiers,
            ready_replicas=ready,
            window_s=duration_s(self.config.queries(workload).window),
            problems=tuple(problems),
        )

    # -- queries ------------------------------------------------------------------------------------
    def _scalar(self, name: str, promql: str, *, at: float) -> float | str:
        """The one finite value of a query, or the problem (a str) that makes it unknown."""
        samples = self._query(name, promql, at=at)
        if not samples:
            return f"{name}: no series [{promql}]"
        if len(samples) > 1:
            return f"{name}: {len(samples)} series where one was expected (aggregate them) [{promql}]"
        value = samples[0][1]
        if not math.isfinite(value):
            return f"{name}: {value} [{promql}]"
        return value

    def _query(self, name: str, promql: str, *, at: float) -> list[tuple[dict[str, str], float]]:
        """(labels, value) per series of an instant query evaluated at `at`."""
        try:
            response = self._http.get("/api/v1/query", params={"query": promql, "time": at})
        except httpx.TransportError as exc:
            raise _UnreachableError(
                f"{name} query failed: prometheus at {self.config.url} unreachable: {_short(exc)} [{promql}]"
            ) from exc
        if response.status_code != 200:
            raise _QueryError(f"{name} query failed: {_http_error(response)} [{promql}]")
        try:
            return _samples(response.json()["data"]["result"])
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise _QueryError(f"{name} query: unexpected answer {_short(response.text)} [{promql}]") from exc

    # -- readiness ----------------------------------------------------------------------------------
    def health(self) -> Health:
        """Is Prometheus up and done replaying its WAL (`/-/ready`), and which version it runs."""
        try:
            ready = self._http.get("/-/ready")
            info = self._http.get("/api/v1/status/buildinfo")
            version = info.json()["data"]["version"] if info.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            return Health(reachable=False, ready=False, error=_short(exc))
        error = "" if ready.status_code == 200 else _http_error(ready)
        return Health(reachable=True, ready=ready.status_code == 200, version=version, error=error)


def _samples(result: Any) -> list[tuple[dict[str, str], float]]:
    """Series of an instant query's `result`: a vector (list of {metric, value}) or a scalar [t, "v"]."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        # A scalar answer (a template such as `scalar(...)`): one unlabelled value.
        return [({}, float(result[1]))]
    return [(dict(series["metric"]), float(series["value"][1])) for series in result]


def _http_error(response: httpx.Response) -> str:
    """`HTTP 400: <Prometheus' error>` from the answer's JSON body, else its first bytes of text."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = response.text.strip() or response.reason_phrase
    return f"HTTP {response.status_code}: {_short(error)}"


def _unknown(problem: str) -> model.WorkloadMetrics:
    return model.WorkloadMetrics(rate_rps=None, queue_depth=None, problems=(problem,))


def _short(thing: object, limit: int = 300) -> str:
    text = str(thing)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def duration_s(text: str) -> float:
    """Seconds in a PromQL duration such as `1m30s`."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text))
