"""`python -m benchmarks.serve MODULE PORT`: one function's ASGI `app` under uvicorn (throughput).

One process, no access log, TCP_NODELAY on accepted connections (see benchmarks.upstash_server).
"""

from __future__ import annotations

import importlib
import socket
import sys

import uvicorn


def main(argv: list[str]) -> None:
    module, port = argv[0], int(argv[1])
    app = importlib.import_module(module).app
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
