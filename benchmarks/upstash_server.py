"""The Upstash REST emulator in its own process, quiet (no access log), for benchmark runs.

`python -m benchmarks.upstash_server PORT TOKEN [REDIS_URL]`: like `python -m
devkit.upstash_emulator`, but without uvicorn's per-request access log, so what the emulator
costs per call is what a remote Upstash costs the function: one HTTP round trip. It runs in its
own process so it never competes with the code being measured for the GIL.
"""

from __future__ import annotations

import socket
import sys

import uvicorn

from devkit.upstash_emulator import RedisBackend, create_app


def main(argv: list[str]) -> None:
    port, token = int(argv[0]), argv[1]
    redis_url = argv[2] if len(argv) > 2 and argv[2] else None
    backend = RedisBackend.connect(redis_url) if redis_url else RedisBackend.in_process()
    # IPPROTO_TCP explicitly: asyncio then sets TCP_NODELAY on accepted connections (see
    # devkit.upstash_emulator), else each reply can wait ~40 ms on a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(
        create_app(backend, token), log_level="warning", access_log=False, lifespan="off"
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        backend.close()


if __name__ == "__main__":
    main(sys.argv[1:])
