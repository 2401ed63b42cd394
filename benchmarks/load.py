"""`python -m benchmarks.load`: N concurrent HTTP clients, for a fixed time (throughput).

Reads `{url, tokens, body, seconds, warmup}` as JSON on stdin; each client (an asyncio task
with its own keep-alive connection and its own user's token) posts the same keyword search back
to back. Prints one JSON line: requests completed in the measured window, statuses, latencies.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx


async def client(
    url: str, token: str, body: str, stop_at: float, measure_from: float, out: dict[str, Any]
) -> None:
    headers = {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "user-agent": "keyflash-bench-load/1.0",
    }
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=1)) as http:
        while (now := time.perf_counter()) < stop_at:
            try:
                response = await http.post(url, content=body, headers=headers)
                status = str(response.status_code)
            except httpx.HTTPError as error:
                status = type(error).__name__
            finished = time.perf_counter()
            if now >= measure_from:
                out["statuses"][status] = out["statuses"].get(status, 0) + 1
                out["latencies"].append((finished - now) * 1000)


async def main() -> None:
    params = json.loads(sys.stdin.read())
    out: dict[str, Any] = {"statuses": {}, "latencies": []}
    started = time.perf_counter()
    measure_from = started + params["warmup"]
    stop_at = measure_from + params["seconds"]
    await asyncio.gather(
        *(
            client(params["url"], token, params["body"], stop_at, measure_from, out)
            for token in params["tokens"]
        )
    )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
