"""The Prometheus client against production-style setups: a real Prometheus serving HTTPS with basic auth
and client certificates through its own `--web.config.file`, and a recording server for bearer tokens,
extra headers and error answers that are not Prometheus' JSON."""

from __future__ import annotations

import http.server
import json
import logging
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import bcrypt
import httpx
import pydantic
import pytest
import yaml

from controller.adapters import prometheus
from controller.core import model
from controller.ports import clock as clock_mod
from tests.support import prom

FACE = model.WorkloadSpec("face", gpu_rps=25, service_time_s=0.06, slo_s=0.5, private_gpus=2)
USER, PASSWORD = "gpuburst", "s3cret-for-the-test"


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _pki(d: Path) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=ca", cwd=d
    )
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "1", *ext, cwd=d,
        )  # fmt: skip
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


@dataclass
class Secured:
    url: str
    pki: Pki
    password_file: Path
    wrong_password_file: Path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """Prometheus on HTTPS requiring basic auth and a client certificate, scraping one target."""
    d = tmp_path_factory.mktemp("secured")
    pki = _pki(d)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = {
        "tls_server_config": {
            "cert_file": str(pki.server_cert),
            "key_file": str(pki.server_key),
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": str(pki.ca),
        },
        "basic_auth_users": {USER: hashed},
    }
    (d / "web.yml").write_text(yaml.safe_dump(web))
    target = prom.MetricsTarget(placement="private", pool="private")
    target.set_traffic(tier="normal", rps=5.0)
    target.queue_depth = 3
    target.start()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "face", "static_configs": [{"targets": [target.address]}]}],
    }
    (d / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = prom.free_port()
    log = (d / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            prom.PROMETHEUS_BIN,
            f"--config.file={d / 'prometheus.yml'}",
            f"--web.config.file={d / 'web.yml'}",
            f"--storage.tsdb.path={d / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    (d / "password").write_text(PASSWORD + "\n")
    (d / "wrong").write_text("guess\n")
    url = f"https://127.0.0.1:{port}"
    tls = httpx.create_ssl_context(verify=str(pki.ca))
    tls.load_cert_chain(pki.client_cert, pki.client_key)
    try:
        with httpx.Client(base_url=url, verify=tls, auth=(USER, PASSWORD), timeout=2.0) as http:

            def samples() -> bool:
                try:
                    body = http.get("/api/v1/query", params={"query": 'count_over_time(up{job="face"}[1m])'})
                except httpx.TransportError:
                    return False
                result = body.json()["data"]["result"] if body.status_code == 200 else []
                return bool(result) and float(result[0]["value"][1]) >= 6

            prom.wait_until(samples, timeout=30, what="the secured prometheus to hold 6 scrapes")
        yield Secured(url, pki, d / "password", d / "wrong")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        target.stop()


def _source(secured: Secured, **overrides: Any) -> prometheus.PrometheusSource:
    fields: dict[str, Any] = {
        "url": secured.url,
        "timeout_s": 2.0,
        "retries": 0,
        "max_age_s": 10.0,
        "basic_auth": {"username": USER, "password_file": str(secured.password_file)},
        "tls": {
            "ca_file": str(secured.pki.ca),
            "cert_file": str(secured.pki.client_cert),
            "key_file": str(secured.pki.client_key),
        },
        "workloads": {"face": {"selector": 'job="face"', "window": "4s"}},
    }
    fields.update(overrides)
    return prometheus.PrometheusSource(prometheus.PrometheusConfig.model_validate(fields))


def _now() -> float:
    return clock_mod.SystemClock().now()


def test_reads_metrics_over_tls_with_basic_auth_and_a_client_certificate(secured: Secured) -> None:
    m = _source(secured).read([FACE], at=_now())["face"]
    assert m.known, m.problems
    assert m.rate_rps == pytest.approx(5.0, rel=0.05)
    assert m.queue_depth == 3.0
    health = _source(secured).health()
    assert health.ready and health.version and health.version.startswith("2.")


def test_a_wrong_password_is_the_servers_401(secured: Secured) -> None:
    auth = {"username": USER, "password_file": str(secured.wrong_password_file)}
    m = _source(secured, basic_auth=auth).read([FACE], at=_now())["face"]
    assert not m.known
    assert m.problems[0].startswith("up query failed: HTTP 401: Unauthorized"), m.problems


def test_a_server_certificate_from_an_unknown_ca_is_refused(secured: Secured) -> None:
    tls = {"cert_file": str(secured.pki.client_cert), "key_file": str(secured.pki.client_key)}
    m = _source(secured, tls=tls).read([FACE], at=_now())["face"]
    assert not m.known
    assert "unreachable" in m.problems[0] and "CERTIFICATE_VERIFY_FAILED" in m.problems[0]


def test_skipping_verification_works_and_warns(secured: Secured, caplog: pytest.LogCaptureFixture) -> None:
    tls = {
        "cert_file": str(secured.pki.client_cert),
        "key_file": str(secured.pki.client_key),
        "insecure_skip_verify": True,
    }
    with caplog.at_level(logging.WARNING, logger="gpuburst.prometheus"):
        m = _source(secured, tls=tls).read([FACE], at=_now())["face"]
    assert m.known, m.problems
    assert any("insecure_skip_verify" in r.getMessage() for r in caplog.records)


def test_without_a_client_certificate_the_handshake_fails(secured: Secured) -> None:
    m = _source(secured, tls={"ca_file": str(secured.pki.ca)}).read([FACE], at=_now())["face"]
    assert not m.known and "unreachable" in m.problems[0]


# -- bearer token, headers and error answers, on a server that records what it got -----------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []
    answer: ClassVar[tuple[int, str, bytes]] = (200, "application/json", b"")

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        status, content_type, body = type(self).answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Handler", (_Recorder,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler
    finally:
        server.shutdown()
        server.server_close()


def _vector(value: float) -> bytes:
    data = {"resultType": "vector", "result": [{"metric": {}, "value": [0, str(value)]}]}
    return json.dumps({"status": "success", "data": data}).encode()


def test_bearer_token_is_read_at_each_request_and_headers_are_sent(
    recorder: tuple[str, type[_Recorder]], tmp_path: Path
) -> None:
    url, handler = recorder
    handler.answer = (200, "application/json", _vector(1.0))
    token = tmp_path / "token"
    token.write_text("first\n")
    config = prometheus.PrometheusConfig(
        url=url, bearer_token_file=token, headers={"X-Scope-OrgID": "team-gpu"}, retries=0
    )
    source = prometheus.PrometheusSource(config)
    source.read([FACE], at=100.0)
    token.write_text("rotated\n")
    source.read([FACE], at=101.0)
    auths = [h["Authorization"] for h in handler.seen]
    assert {h["X-Scope-OrgID"] for h in handler.seen} == {"team-gpu"}
    assert auths[0] == "Bearer first" and auths[-1] == "Bearer rotated"


def test_an_error_answer_that_is_not_json_is_reported_by_status_and_text(
    recorder: tuple[str, type[_Recorder]],
) -> None:
    url, handler = recorder
    handler.answer = (502, "text/plain", b"upstream connect error\n")
    m = prometheus.PrometheusSource(prometheus.PrometheusConfig(url=url, retries=0)).read([FACE], at=1.0)[
        "face"
    ]
    assert m.problems[0].startswith("up query failed: HTTP 502: upstream connect error")


def test_a_json_error_answer_is_reported_by_its_error_field(recorder: tuple[str, type[_Recorder]]) -> None:
    url, handler = recorder
    body = {
        "status": "error",
        "errorType": "execution",
        "error": "query processing would load too many samples",
    }
    handler.answer = (422, "application/json", json.dumps(body).encode())
    m = prometheus.PrometheusSource(prometheus.PrometheusConfig(url=url, retries=0)).read([FACE], at=1.0)[
        "face"
    ]
    assert m.problems[0].startswith("up query failed: HTTP 422: query processing would load too many samples")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bearer_token_file": "/nonexistent/token"}, "bearer_token_file"),
        ({"tls": {"cert_file": "/etc/hostname"}}, "cert_file and key_file go together"),
        (
            {
                "bearer_token_file": "/etc/hostname",
                "basic_auth": {"username": "u", "password_file": "/etc/hostname"},
            },
            "choose one of",
        ),
        ({"basic_auth": {"username": "u"}}, "password_file"),
    ],
)
def test_bad_auth_config_names_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        prometheus.PrometheusConfig.model_validate(fields)


def test_sigv4_signs_every_request_for_the_region_and_service(
    recorder: tuple[str, type[_Recorder]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("botocore", reason="the aws extra is not installed")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session")
    url, handler = recorder
    handler.answer = (200, "application/json", _vector(1.0))
    config = prometheus.PrometheusConfig(url=url, sigv4={"region": "eu-west-1"}, retries=0)
    prometheus.PrometheusSource(config).read([FACE], at=100.0)
    assert handler.seen
    for headers in handler.seen:
        assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
        assert "/eu-west-1/aps/aws4_request" in headers["Authorization"]
        assert headers["X-Amz-Security-Token"] == "session" and headers["X-Amz-Date"]
