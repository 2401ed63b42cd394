"""5. Throughput: keyword searches per second, 20 concurrent clients over HTTP.

`functions.keywords.app` served by uvicorn (one process, `benchmarks.serve`) on a free port;
`benchmarks.load` runs 20 clients (each its own user and keep-alive connection) posting the same
keyword search back to back, so after the first call every search is a cache hit: the steady
state of one rate-limit EVAL, one cache GET and two statements per request. Run twice, side by
side: with the Lambda pool (`DB_POOL_SIZE=1`, every request queues for the one connection) and
with a pool of 10. The rate limit is raised so that it never refuses.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any

from benchmarks import scenarios
from benchmarks.core import ROOT, Context
from benchmarks.stats import summary
from devkit._host import free_port

CLIENTS = 20


def run(ctx: Context) -> dict[str, Any]:
    seconds, warmup = ctx.pick(15.0, 1.5), ctx.pick(3.0, 0.5)
    tokens = scenarios.Tokens(ctx.stack.private_pem)
    body = json.dumps({"keywords": scenarios.HIT_KEYWORDS, "matchType": "phrase"})
    runs: dict[str, Any] = {}
    for pool in ctx.pick(("1", "10"), ("1",)):
        ctx.log(f"  throughput: {CLIENTS} clients, DB_POOL_SIZE={pool}, {seconds:g} s")
        env = ctx.stack.app_env(RATE_LIMIT_REQUESTS_PER_HOUR="1000000000", DB_POOL_SIZE=pool)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serve", "functions.keywords", str(port)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for_port(port, server)
            params = {
                "url": f"http://127.0.0.1:{port}/api/keywords",
                "tokens": [tokens(f"user_bench_load_{i:02d}") for i in range(CLIENTS)],
                "body": body,
                "seconds": seconds,
                "warmup": warmup,
            }
            completed = subprocess.run(
                [sys.executable, "-m", "benchmarks.load"],
                input=json.dumps(params),
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=seconds + warmup + 120,
                check=False,
            )
            lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
            if not lines:
                runs[f"pool {pool}"] = {"error": completed.stderr[-1500:]}
                continue
            out = json.loads(lines[-1])
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        total = sum(out["statuses"].values())
        ok = out["statuses"].get("200", 0)
        runs[f"pool {pool}"] = {
            "db_pool_size": int(pool),
            "requests": total,
            "ok": ok,
            "statuses": out["statuses"],
            "searches_per_s": round(ok / seconds, 1),
            "latency_ms": summary(out["latencies"]),
        }
    return {"clients": CLIENTS, "duration_s": seconds, "cache": "hit", "runs": runs, "targets": []}


def _wait_for_port(port: int, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"uvicorn exited: {server.stderr.read() if server.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("uvicorn did not start within 30 s")
