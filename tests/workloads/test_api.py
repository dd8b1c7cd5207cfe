"""The HTTP API over real HTTP (uvicorn on a loopback port) with real inference on the reference model."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from workloads.face_compare import metrics
from workloads.face_compare.engine import Engine

Server = Any  # conftest.RunningServer


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] and body["error"]["message"], body
    return dict(body["error"])


# Real inference ------------------------------------------------------------------------------------


def test_the_same_image_embeds_to_the_same_unit_vector(
    server: Server, make_face: Callable[..., bytes]
) -> None:
    image = b64(make_face(11))
    first = server.client.post("/v1/embed", json={"images": [image]})
    second = server.client.post("/v1/embed", json={"images": [image]})
    assert first.status_code == second.status_code == 200
    assert first.json()["dim"] == 512 and first.json()["model"] == "reference.onnx"
    (a,), (b,) = first.json()["embeddings"], second.json()["embeddings"]
    assert a == b
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)


def test_verify_of_an_image_with_itself_scores_one(server: Server, make_face: Callable[..., bytes]) -> None:
    image = b64(make_face(12))
    response = server.client.post("/v1/verify", json={"image_a": image, "image_b": image})
    assert response.status_code == 200
    body = response.json()
    assert body["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert body["match"] is True and body["threshold"] == 0.35


def test_verify_of_different_images_scores_lower_and_honours_the_threshold(
    server: Server, make_face: Callable[..., bytes]
) -> None:
    payload = {"image_a": b64(make_face(13)), "image_b": b64(make_face(14))}
    body = server.client.post("/v1/verify", json=payload).json()
    assert body["similarity"] < 0.7 and body["match"] is False
    lenient = server.client.post("/v1/verify", json={**payload, "threshold": -1.0}).json()
    assert lenient["match"] is True and lenient["similarity"] == pytest.approx(body["similarity"], abs=1e-6)


def test_a_multi_image_request_equals_one_request_per_image(
    server: Server, make_face: Callable[..., bytes]
) -> None:
    images = [b64(make_face(20 + i)) for i in range(5)]
    together = server.client.post("/v1/embed", json={"images": images}).json()["embeddings"]
    alone = [server.client.post("/v1/embed", json={"images": [i]}).json()["embeddings"][0] for i in images]
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_concurrent_requests_are_batched_and_get_exactly_their_own_results(
    server: Server, engine: Engine, make_face: Callable[..., bytes]
) -> None:
    images = [b64(make_face(40 + i)) for i in range(12)]
    reference = [
        server.client.post("/v1/embed", json={"images": [i]}).json()["embeddings"][0] for i in images
    ]
    batches_before = server.service.batcher.batches_run
    start = threading.Barrier(len(images))

    def one(image: str) -> list[float]:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            start.wait()
            response = client.post("/v1/embed", json={"images": [image]})
            assert response.status_code == 200
            return list(response.json()["embeddings"][0])

    with ThreadPoolExecutor(len(images)) as pool:
        concurrent = list(pool.map(one, images))
    np.testing.assert_allclose(concurrent, reference, atol=1e-5)
    # Twelve requests in fewer runs: at least some were batched together.
    assert server.service.batcher.batches_run - batches_before < len(images)


def test_identify_finds_the_enrolled_subject_first(server: Server, make_face: Callable[..., bytes]) -> None:
    for i in range(5):
        response = server.client.put(f"/v1/gallery/person-{i}", json={"image": b64(make_face(60 + i))})
        assert response.status_code == 201 and response.json()["created"] is True
    response = server.client.post("/v1/identify", json={"image": b64(make_face(62)), "top_k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["gallery_size"] >= 5
    assert body["matches"][0]["subject_id"] == "person-2"
    assert body["matches"][0]["similarity"] == pytest.approx(1.0, abs=1e-5) and body["matches"][0]["match"]
    assert len(body["matches"]) == 3 and not body["matches"][1]["match"]
    similarities = [m["similarity"] for m in body["matches"]]
    assert similarities == sorted(similarities, reverse=True)


def test_gallery_enrol_replace_list_delete(server: Server, make_face: Callable[..., bytes]) -> None:
    client = server.client
    assert client.put("/v1/gallery/alice", json={"image": b64(make_face(70))}).status_code == 201
    replaced = client.put("/v1/gallery/alice", json={"image": b64(make_face(71))})
    assert replaced.status_code == 200 and replaced.json()["created"] is False
    listing = client.get("/v1/gallery", params={"limit": 10_000}).json()
    assert "alice" in listing["subject_ids"] and listing["size"] == len(listing["subject_ids"])
    found = client.post("/v1/identify", json={"image": b64(make_face(71)), "top_k": 1}).json()["matches"]
    assert found[0]["subject_id"] == "alice"
    assert client.delete("/v1/gallery/alice").status_code == 204
    gone = client.delete("/v1/gallery/alice")
    assert gone.status_code == 404 and error(gone)["code"] == "subject_not_found"
    assert "alice" not in client.get("/v1/gallery", params={"limit": 10_000}).json()["subject_ids"]


# Bad input: a clear 4xx, and the batcher keeps serving -----------------------------------------


def _bad_cases(
    make_face: Callable[..., bytes], zero_png: bytes, png_20000: bytes
) -> list[tuple[str, dict[str, Any], int, str, str | None]]:
    good = b64(make_face(80))
    jpeg = make_face(81)
    return [
        ("not base64", {"images": [good, "%%% not base64 %%%"]}, 422, "invalid_image", "images[1]"),
        ("not an image", {"images": [b64(b"hello, world" * 10)]}, 422, "invalid_image", "images[0]"),
        ("truncated jpeg", {"images": [b64(jpeg[: len(jpeg) // 2])]}, 422, "invalid_image", "images[0]"),
        ("0x0 image", {"images": [b64(zero_png)]}, 422, "invalid_image", "images[0]"),
        ("20000x20000", {"images": [good, b64(png_20000)]}, 422, "invalid_image", "images[1]"),
        ("too many images", {"images": [good] * 9}, 422, "too_many_images", "images"),
        ("no images", {"images": []}, 422, "invalid_request", "images"),
        ("image not a string", {"images": [123]}, 422, "invalid_request", "images[0]"),
        ("unknown field", {"images": [good], "imagez": []}, 422, "invalid_request", "imagez"),
    ]


def test_bad_input_gets_a_clear_error_naming_the_image(
    server: Server, make_face: Callable[..., bytes], zero_png: bytes, png_20000: bytes
) -> None:
    for name, payload, status, code, loc in _bad_cases(make_face, zero_png, png_20000):
        response = server.client.post("/v1/embed", json=payload)
        assert response.status_code == status, (name, response.text)
        body = error(response)
        assert body["code"] == code, (name, body)
        if loc is not None:
            assert loc in [d["loc"] for d in body["details"]] or loc in body["message"], (name, body)
    # Every refusal above left the batcher serving.
    ok = server.client.post("/v1/embed", json={"images": [b64(make_face(82))]})
    assert ok.status_code == 200 and server.service.batcher.running


def test_every_bad_image_of_a_request_is_listed(server: Server) -> None:
    response = server.client.post(
        "/v1/verify", json={"image_a": "@@@", "image_b": b64(b"not an image at all")}
    )
    body = error(response)
    assert response.status_code == 422
    assert [(d["loc"], d["code"]) for d in body["details"]] == [
        ("image_a", "invalid_base64"),
        ("image_b", "not_an_image"),
    ]


def test_wrong_tier_is_a_400(server: Server, make_face: Callable[..., bytes]) -> None:
    response = server.client.post(
        "/v1/embed", json={"images": [b64(make_face(83))]}, headers={"X-Tier": "platinum"}
    )
    assert response.status_code == 400
    body = error(response)
    assert body["code"] == "invalid_tier" and "vip, normal, free" in body["message"]
    assert "platinum" in body["message"]
    for tier in ("vip", "normal", "free", "VIP"):
        ok = server.client.post("/v1/embed", json={"images": [b64(make_face(83))]}, headers={"X-Tier": tier})
        assert ok.status_code == 200, tier


def test_an_oversized_body_is_a_413_without_reading_it_all(server: Server) -> None:
    big = {"images": ["A" * (1024 * 1024 + 1)]}
    response = server.client.post("/v1/embed", json=big)
    assert response.status_code == 413 and error(response)["code"] == "body_too_large"

    def chunks() -> Any:  # no Content-Length: the limit still holds while streaming
        for _ in range(40):
            yield b"x" * 65536

    streamed = server.client.post("/v1/embed", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_malformed_json_and_bad_fields_are_422(server: Server, make_face: Callable[..., bytes]) -> None:
    response = server.client.post(
        "/v1/embed", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and error(response)["code"] == "invalid_request"
    image = b64(make_face(84))
    too_many = server.client.post("/v1/identify", json={"image": image, "top_k": 1000})
    assert too_many.status_code == 422 and "top_k" in error(too_many)["message"]
    threshold = server.client.post("/v1/verify", json={"image_a": image, "image_b": image, "threshold": 2})
    assert threshold.status_code == 422 and "threshold" in error(threshold)["message"]
    bad_id = server.client.put("/v1/gallery/has%20space", json={"image": image})
    assert bad_id.status_code == 422 and "subject_id" in error(bad_id)["message"]
    unknown = server.client.get("/v1/nothing")
    assert unknown.status_code == 404 and error(unknown)["code"] == "not_found"


# Lifecycle as HTTP shows it (the signal and drain tests are in test_lifecycle.py) ------------------


def test_while_starting_liveness_is_ok_readiness_and_api_are_503(
    engine: Engine,
    make_face: Callable[..., bytes],
    settings_for: Callable[..., Any],
    start_server: Callable[..., Any],
) -> None:
    loading = threading.Event()

    def slow_load() -> Engine:
        assert loading.wait(60)
        return engine

    with start_server(settings_for(), slow_load, wait_ready=False) as starting:
        try:
            assert starting.client.get("/healthz").status_code == 200
            ready = starting.client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["state"] == "starting"
            refused = starting.client.post("/v1/embed", json={"images": [b64(make_face(1))]})
            assert refused.status_code == 503 and error(refused)["code"] == "not_ready"
            assert "starting" in error(refused)["message"] and refused.headers["retry-after"] == "1"
            text = starting.client.get("/metrics").text
            assert 'facecompare_ready{placement="burst",pool="test-pool"} 0.0' in text
        finally:
            loading.set()
        deadline = threading.Event()
        while starting.client.get("/readyz").status_code != 200:
            assert not deadline.wait(0.02) and starting.service.state in ("starting", "ready")
        assert starting.client.post("/v1/embed", json={"images": [b64(make_face(1))]}).status_code == 200


# Health and metrics --------------------------------------------------------------------------------


def test_health_and_readiness_report_the_engine(server: Server) -> None:
    assert server.client.get("/healthz").json()["status"] == "ok"
    ready = server.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["detail"]["provider"] == "CPUExecutionProvider"


def test_metrics_follow_the_contract_exactly(server: Server, make_face: Callable[..., bytes]) -> None:
    server.client.post("/v1/embed", json={"images": [b64(make_face(90))]}, headers={"X-Tier": "vip"})
    server.client.post("/v1/embed", json={"images": ["nope"]}, headers={"X-Tier": "free"})
    server.client.post("/v1/embed", json={"images": ["nope"]}, headers={"X-Tier": "gold"})
    text = server.client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # The parser strips the counter's _total suffix from the family name.
    assert set(families) == {name.removesuffix("_total") for name in metrics.ALL_METRICS}
    for family in families.values():
        for sample in family.samples:
            assert sample.labels["placement"] == "burst" and sample.labels["pool"] == "test-pool", sample
    requests = {
        (s.labels["endpoint"], s.labels["tier"], s.labels["code"]): s.value
        for s in families["facecompare_requests"].samples
        if s.name == metrics.REQUESTS_TOTAL
    }
    assert requests[("embed", "vip", "200")] >= 1
    assert requests[("embed", "free", "422")] >= 1
    assert requests[("embed", "invalid", "400")] >= 1
    assert families["facecompare_request_duration_seconds"].type == "histogram"
    assert families["facecompare_batch_size"].type == "histogram"
    assert families["facecompare_inference_seconds"].type == "histogram"
    labels = {tuple(sorted(s.labels)) for s in families["facecompare_request_duration_seconds"].samples}
    assert ("endpoint", "le", "placement", "pool", "tier") in labels
    ready = [s.value for s in families["facecompare_ready"].samples]
    assert ready == [1.0]


# A full queue answers 503 at once ----------------------------------------------------------------


def test_a_full_queue_answers_503_with_retry_after_and_every_accepted_request_is_answered(
    engine: Engine,
    make_face: Callable[..., bytes],
    settings_for: Callable[..., Any],
    start_server: Callable[..., Any],
) -> None:
    gate, entered = threading.Event(), threading.Event()

    class HeldEngine:
        """The real engine behind a gate, so that the queue can be filled deterministically."""

        def __init__(self) -> None:
            self.info = engine.info

        def embed(self, batch: np.ndarray) -> np.ndarray:
            entered.set()
            assert gate.wait(60)
            return engine.embed(batch)

    settings = settings_for(
        max_batch_size=1, max_queue_size=3, max_images_per_request=1, max_queue_delay_us=0, warmup_batches=0
    )
    gate.set()  # not during start-up
    with start_server(settings, HeldEngine) as held:
        gate.clear()
        images = [b64(make_face(100 + i)) for i in range(4)]
        pool = ThreadPoolExecutor(4)
        try:
            busy = pool.submit(held.client.post, "/v1/embed", json={"images": [images[0]]})
            assert entered.wait(30)
            queued = [pool.submit(held.client.post, "/v1/embed", json={"images": [i]}) for i in images[1:]]
            deadline = threading.Event()
            while held.service.batcher.depth < 3 and not deadline.wait(0.01):
                pass
            full = held.client.post("/v1/embed", json={"images": [images[0]]}, timeout=10)
            assert full.status_code == 503
            assert full.headers["retry-after"] == "1" and error(full)["code"] == "queue_full"
            gate.set()
            answers = [busy.result(60), *(f.result(60) for f in queued)]
        finally:
            gate.set()
            pool.shutdown()
        assert [a.status_code for a in answers] == [200, 200, 200, 200]
        solo = [held.client.post("/v1/embed", json={"images": [i]}).json()["embeddings"][0] for i in images]
        np.testing.assert_allclose([a.json()["embeddings"][0] for a in answers], solo, atol=1e-5)


def test_an_idle_replica_exports_zero_requests_not_nothing() -> None:
    """Before any request, each route and tier reads 0: absent would read as unknown, and hold."""
    from workloads.face_compare import batcher

    idle = metrics.WorkloadMetrics(placement="burst", pool="p")
    families = {f.name: f for f in text_string_to_metric_families(idle.exposition().decode())}
    requests = {
        (s.labels["endpoint"], s.labels["tier"]): s.value
        for s in families["facecompare_requests"].samples
        if s.name == metrics.REQUESTS_TOTAL
    }
    assert set(metrics.SERVED_TIERS) == set(batcher.TIERS)
    assert requests == {(e, t): 0.0 for e in metrics.SERVED_ENDPOINTS for t in batcher.TIERS}
    duration = families["facecompare_request_duration_seconds"].samples
    counts = [s for s in duration if s.name.endswith("_count")]
    assert counts and all(s.value == 0 for s in counts)
    assert [s.value for s in families["facecompare_queue_depth"].samples] == [0.0]
