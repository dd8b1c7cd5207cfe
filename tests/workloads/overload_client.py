"""The open-loop load of `test_overload.py`, run in a process of its own: `python overload_client.py URL
IMAGE_FILE RPS DURATION_S` prints the outcome as JSON.

Apart from the server, the client's hundreds of concurrent requests do not take the server's interpreter
lock (the server runs in the test's process): on a busy two-core host they would starve its event loop,
and requests would wait before admission could see them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx


async def load(url: str, image: str, rps: float, duration_s: float) -> dict[str, Any]:
    count = int(rps * duration_s)
    body = {"images": [image]}
    latencies: list[float] = []
    refused, lost, late = 0, 0, 0.0
    retry_after: set[str] = set()
    codes: set[str] = set()
    other: list[int] = []
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(at: float) -> None:
            nonlocal refused, lost, late
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            sent = time.perf_counter()
            late = max(late, sent - at)
            try:
                response = await client.post("/v1/embed", json=body)
            except httpx.TransportError:
                lost += 1
                return
            if response.status_code == 200:
                latencies.append(time.perf_counter() - sent)
            elif response.status_code == 503:
                refused += 1
                retry_after.add(response.headers.get("retry-after", "missing"))
                codes.add(response.json()["error"]["code"])
            else:
                other.append(response.status_code)

        # Admission judges a wait by the service rate measured on past batches and admits everything
        # before the first one: a few requests measure it, as any earlier traffic would have.
        for _ in range(3):
            assert (await client.post("/v1/embed", json=body)).status_code == 200
        start = time.perf_counter() + 0.2
        await asyncio.gather(*(one(start + i / rps) for i in range(count)))
    return {
        "offered": count,
        "ok_latencies": latencies,
        "refused": refused,
        "retry_after": sorted(retry_after),
        "codes": sorted(codes),
        "other": other,
        "transport_errors": lost,
        "late_s": late,
    }


if __name__ == "__main__":
    url, image_file, rps, duration_s = sys.argv[1:5]
    image = Path(image_file).read_text()
    print(json.dumps(asyncio.run(load(url, image, float(rps), float(duration_s)))))
