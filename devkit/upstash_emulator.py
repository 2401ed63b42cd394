"""An Upstash-REST-compatible HTTP server in front of Redis, for local runs and tests (dev only).

Production talks to Upstash over HTTP through the `upstash-redis` SDK; this speaks the same
protocol (https://upstash.com/docs/redis/features/restapi), so code and tests run unchanged
without an Upstash account:

- `POST /` takes one command as a JSON array (`["SET", "k", "v", "EX", 60]`);
  `POST /pipeline` an array of commands, run in order, not atomically;
  `POST /multi-exec` the same, run atomically (MULTI/EXEC on one connection, no rollback).
  `GET /set/k/v` is a command in the URL path; a POST body is its last argument and the query
  adds more (`POST /set/k?EX=100` with the value as the body). PUT is POST.
- `Authorization: Bearer <token>` or `?_token=<token>`, checked before anything else: a missing
  or wrong token gets 401 `{"error": "WRONGPASS invalid or missing auth token"}` on any path.
- Replies are `{"result": …}`, or `{"error": "ERR …"}` with status 400 (pipelines: one such object
  per command, status 200). With `Upstash-Encoding: base64` every string in a result is base64
  encoded except the bare "OK" reply, which the SDK's decoder passes through; numbers, nulls and
  errors are never encoded. `Upstash-Response-Format: resp2` is refused (400): not implemented.
- Upstash's limits for every plan, at the strictest plan's value: a request body over 10 MB
  is 400 `ERR max request size exceeded`, a key over 32 KB is `ERR max key size exceeded. Limit:
  32000 bytes, Actual: N bytes` (see `MAX_REQUEST_BYTES`, `MAX_KEY_BYTES`).
- A JSON string that is no Unicode text (a lone UTF-16 surrogate, `"\\ud800"`) or a body that
  is not UTF-8 is a 400, as any body that is not JSON: Upstash documents no other answer.

The Redis behind it is a real server (`redis://…`, the faithful choice) or an in-process fakeredis
with Lua (nothing to install). Known gaps against Upstash are listed in `UpstashEmulator`'s
docstring and in docs/local-stack.md.

Run it alone with `python -m devkit.upstash_emulator --port 8079 [--redis-url URL] [--token T]`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Self
from urllib.parse import parse_qsl, unquote_to_bytes

import redis
import uvicorn
from redis.client import Pipeline
from redis.exceptions import ResponseError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from devkit._host import Service

__all__ = ["RedisBackend", "UpstashEmulator", "create_app"]

logger = logging.getLogger("devkit.upstash_emulator")

Command = list[bytes]

# Commands that would leave state on a pooled connection (or take it over): Upstash has no
# connection to keep them on either. MULTI/EXEC belong to /multi-exec.
_CONNECTION_COMMANDS = frozenset(
    {
        "AUTH", "HELLO", "SELECT", "RESET", "QUIT", "MONITOR", "SYNC", "PSYNC",
        "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH",
        "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE",
    }
)  # fmt: skip

# Script flags Upstash accepts and Redis rejects ("Unexpected flag in script shebang"):
# upstash-ratelimit's scripts start with `#!lua flags=allow-key-locking`.
_UPSTASH_ONLY_FLAGS = frozenset({b"allow-key-locking"})
# Upstash's size limits. Where a plan raises one, the strictest plan's value: a request of
# 10 MB on Free, Pay as you go (ours) and the two smallest Fixed plans, 20-100 MB above them
# (https://upstash.com/docs/redis/overall/billing, .../troubleshooting/max_request_size_exceeded);
# a key of 32 KB on every plan (.../troubleshooting/max_key_size_exceeded). Upstash does not say
# whether a KB is 1000 or 1024 bytes: the smaller reading, so nothing passes here that Upstash
# could refuse. Not enforced: the max record size (100 MB on those plans), which only many
# writes to one key can reach, and would need the key's size read after every write.
MAX_REQUEST_BYTES = 10_000_000
MAX_KEY_BYTES = 32_000
# Commands whose keys follow a count at argument 2 (the command table cannot name them).
_COUNTED_KEYS = frozenset({b"eval", b"evalsha", b"eval_ro", b"evalsha_ro", b"fcall", b"fcall_ro"})
# redis-py's prefix on the queueing error behind an EXECABORT.
_PIPELINE_NOTE = re.compile(r"Command # (\d+) \(.*?\) of pipeline caused error: ")
_VERSION = re.compile(rb"^redis_version:(\d+)", re.MULTILINE)


class RedisBackend:
    """The Redis the emulator forwards to, returning raw RESP replies (bytes, ints, lists).

    redis-py's reply parsing is switched off (SET must come back "OK", not True), Lua scripts
    are adapted to what the server accepts, keeping the SHA1 of the script the client sent, and
    a command naming a key over `MAX_KEY_BYTES` fails as on Upstash, before it reaches Redis. Its
    keys are found by the server's COMMAND table (first, last, step): exact on a real Redis;
    fakeredis' table names only the first key of variadic commands (MGET, DEL, MSET…).
    """

    def __init__(self, client: redis.Redis, *, shebang: bool | None = None) -> None:
        """`shebang`: whether the server runs `#!lua` scripts (None: ask it, Redis >= 7)."""
        client.response_callbacks.clear()
        self._client = client
        self._shebang = shebang
        self._sha_aliases: dict[bytes, bytes] = {}  # SHA1 as sent -> SHA1 as loaded
        self._key_positions: dict[bytes, tuple[int, int, int]] | None = None

    @classmethod
    def connect(
        cls, url: str, *, max_connections: int = 8, client_name: str = "upstash-emulator"
    ) -> Self:
        """A real Redis at `url` (redis://, rediss://, unix://) through a small blocking pool.

        Requests beyond `max_connections` wait for a free connection rather than open more;
        `client_name` marks ours in CLIENT LIST.
        """
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=30,
            socket_connect_timeout=5,
            client_name=client_name,
            protocol=2,
        )
        return cls(redis.Redis(connection_pool=pool))

    @classmethod
    def in_process(cls) -> Self:
        """A private fakeredis server with Lua scripting (needs `fakeredis[lua]`)."""
        import fakeredis  # dev extra, and only this backend needs it

        # RESP2, as a real server speaks to redis-py by default: fakeredis otherwise answers in
        # RESP3 shapes (HGETALL as a dict, scores as floats) that Upstash never sends.
        server = fakeredis.FakeServer()
        return cls(fakeredis.FakeRedis(server=server, protocol=2), shebang=False)

    def execute(self, command: Command) -> Any:
        """Run one command; a Redis error reply raises `redis.ResponseError`."""
        refused = self._oversized_key(command)
        if refused is not None:
            raise refused
        return self._finish(command, _send(self._client, self._adapt(command)))

    def pipeline(self, commands: Sequence[Command], *, atomic: bool) -> list[Any]:
        """Run commands in one round trip; failed ones come back as `ResponseError` values.

        Atomic: MULTI/EXEC, where a command Redis refuses to queue, or one with a key over the
        limit, aborts the whole transaction (raised as a `ResponseError` starting with EXECABORT).
        """
        refused = [self._oversized_key(command) for command in commands]
        for number, error in enumerate(refused, 1):
            if atomic and error is not None:
                raise ResponseError(
                    "EXECABORT Transaction discarded because of previous errors "
                    f"(command {number}: {error})"
                )
        runnable = [
            command for command, error in zip(commands, refused, strict=True) if error is None
        ]
        replies = iter(self._run(runnable, atomic=atomic))
        return [next(replies) if error is None else error for error in refused]

    def _run(self, commands: Sequence[Command], *, atomic: bool) -> list[Any]:
        adapted = [self._adapt(command) for command in commands]
        with self._client.pipeline(transaction=atomic) as pipe:
            for command in adapted:
                _send(pipe, command)
            try:
                replies = pipe.execute(raise_on_error=False)
            except ResponseError as error:
                if not atomic:
                    raise
                raise ResponseError(
                    "EXECABORT Transaction discarded because of previous errors "
                    f"({error_message(error)})"
                ) from None
        return [self._finish(c, r) for c, r in zip(commands, replies, strict=True)]

    def close(self) -> None:
        """Close every connection (redis-py leaves a pool it did not create open)."""
        self._client.close()
        self._client.connection_pool.disconnect()

    def _oversized_key(self, command: Command) -> ResponseError | None:
        """Upstash's refusal of a key over MAX_KEY_BYTES, in its documented words."""
        for key in self._keys(command):
            if len(key) > MAX_KEY_BYTES:
                return ResponseError(
                    f"ERR max key size exceeded. Limit: {MAX_KEY_BYTES} bytes, "
                    f"Actual: {len(key)} bytes"
                )
        return None

    def _keys(self, command: Command) -> Command:
        """The arguments of `command` that are keys."""
        name = command[0].lower()
        if name in _COUNTED_KEYS:
            try:
                return command[3 : 3 + int(command[2])]
            except (IndexError, ValueError):
                return []  # Redis will refuse the command itself
        if self._key_positions is None:  # a race only loads it twice
            table = _send(self._client, [b"COMMAND"])
            self._key_positions = {
                entry[0].lower(): (int(entry[3]), int(entry[4]), int(entry[5])) for entry in table
            }
        first, last, step = self._key_positions.get(name, (0, 0, 0))
        if first < 1 or step < 1:
            return []
        return command[first : (len(command) + last + 1 if last < 0 else last + 1) : step]

    def _adapt(self, command: Command) -> Command:
        name = command[0].upper()
        if name in (b"EVAL", b"EVAL_RO") and len(command) > 1:
            return [command[0], self._script(command[1]), *command[2:]]
        if name == b"SCRIPT" and len(command) > 2 and command[1].upper() == b"LOAD":
            return [*command[:2], self._script(command[2]), *command[3:]]
        if name in (b"EVALSHA", b"EVALSHA_RO") and len(command) > 1:
            return [command[0], self._sha_aliases.get(command[1].lower(), command[1]), *command[2:]]
        if name == b"SCRIPT" and len(command) > 2 and command[1].upper() == b"EXISTS":
            return [*command[:2], *(self._sha_aliases.get(s.lower(), s) for s in command[2:])]
        return command

    def _finish(self, command: Command, reply: Any) -> Any:
        """SCRIPT LOAD answers the SHA1 of the script as sent, as Upstash would."""
        is_load = command[0].upper() == b"SCRIPT" and len(command) > 2
        if is_load and command[1].upper() == b"LOAD" and isinstance(reply, bytes):
            return hashlib.sha1(command[2]).hexdigest().encode()
        return reply

    def _script(self, script: bytes) -> bytes:
        """Drop what the server would refuse from a `#!lua` line, and remember both SHA1s."""
        if not script.startswith(b"#!"):
            return script
        first, newline, body = script.partition(b"\n")
        if self._supports_shebang():
            words = []
            for word in first.split(b" "):
                if word.startswith(b"flags="):
                    flags = [f for f in word[6:].split(b",") if f not in _UPSTASH_ONLY_FLAGS]
                    word = b"flags=" + b",".join(flags) if flags else b""
                if word:
                    words.append(word)
            adapted = b" ".join(words) + newline + body
        else:
            adapted = newline + body  # keep the line numbers of error messages
        if adapted != script:
            sent, loaded = hashlib.sha1(script).hexdigest(), hashlib.sha1(adapted).hexdigest()
            self._sha_aliases[sent.encode()] = loaded.encode()
        return adapted

    def _supports_shebang(self) -> bool:
        if self._shebang is None:
            info = _send(self._client, [b"INFO", b"server"])
            found = _VERSION.search(info if isinstance(info, bytes) else b"")
            self._shebang = found is not None and int(found.group(1)) >= 7
        return self._shebang


def _send(target: redis.Redis | Pipeline, command: Command) -> Any:
    run: Callable[..., Any] = target.execute_command  # untyped in redis-py
    return run(*command)


def error_message(error: ResponseError) -> str:
    """The error as Redis sent it: redis-py strips a mapped code ("ERR", "NOSCRIPT") off."""
    text = str(error)
    note = _PIPELINE_NOTE.match(text)
    if note:
        text = text[note.end() :]
    code = getattr(error, "status_code", None)  # recent redis-py keeps it; older ones don't
    if code and not text.startswith(f"{code} "):
        text = f"{code} {text}"
    return f"command {note.group(1)}: {text}" if note else text


def _jsonable(reply: Any, encode: bool) -> Any:
    """A raw reply as Upstash sends it: strings UTF-8 (or base64 when `encode`), recursively."""
    if isinstance(reply, ResponseError):
        reply = error_message(reply)
    if isinstance(reply, str):
        reply = reply.encode()
    if isinstance(reply, bytes):
        if encode and reply != b"OK":
            return base64.b64encode(reply).decode("ascii")
        return reply.decode("utf-8", errors="replace")
    if isinstance(reply, list | tuple):
        return [_jsonable(item, encode) for item in reply]
    if reply is None or isinstance(reply, int | float):
        return reply
    return _jsonable(str(reply), encode)


class _RequestError(Exception):
    """A request we answer with `{"error": message}` and `status`, never a traceback."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _command(value: Any) -> Command:
    """A command sent as a JSON array, its strings UTF-8 encoded."""
    if not isinstance(value, list) or not value:
        raise _RequestError(400, 'ERR a command is a non-empty JSON array, e.g. ["GET", "k"]')
    args: Command = []
    for item in value:
        if isinstance(item, str):
            args.append(_utf8(item))
        elif isinstance(item, int | float) and not isinstance(item, bool):
            args.append(str(item).encode())
        else:
            raise _RequestError(
                400, f"ERR command arguments must be strings or numbers, got {json.dumps(item)}"
            )
    return _allowed(args)


def _utf8(text: str) -> bytes:
    """JSON lets a string escape a lone UTF-16 surrogate (`"\\ud800"`), which no UTF-8 carries."""
    try:
        return text.encode()
    except UnicodeEncodeError as error:
        lone = json.dumps(error.object[error.start])
        message = f"ERR invalid text in a command argument: lone surrogate {lone}"
        raise _RequestError(400, message) from None


def _allowed(args: Command) -> Command:
    """`args`, unless its command needs a connection of its own, which REST has not."""
    name = args[0].decode(errors="replace").upper()
    if name in _CONNECTION_COMMANDS:
        hint = " (use /multi-exec)" if name in {"MULTI", "EXEC", "DISCARD", "WATCH"} else ""
        raise _RequestError(400, f"ERR Command is not available over REST: '{name}'{hint}")
    return args


async def _body(request: Request) -> bytes:
    """The body, refused past Upstash's max request size. The rest is read and dropped, so the
    client gets this answer rather than a connection reset while it still sends."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_REQUEST_BYTES:
            chunks.append(chunk)
    if size > MAX_REQUEST_BYTES:
        raise _RequestError(400, "ERR max request size exceeded")
    return b"".join(chunks)


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await _body(request))
    except ValueError:  # UnicodeDecodeError too: bytes that are not UTF-8
        raise _RequestError(400, "ERR the request body is not valid JSON") from None


async def _path_command(request: Request) -> Command:
    """`/COMMAND/arg1/…/argN`, each segment percent-decoded (binary-safe), then the body when
    there is one, then each query parameter but `_token` as `NAME VALUE` (or `NAME` alone)."""
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    args = [unquote_to_bytes(segment) for segment in raw_path.split(b"/")[1:]]
    body = await _body(request)
    if body:
        args.append(body)
    for name, value in parse_qsl(request.scope["query_string"], keep_blank_values=True):
        if name != b"_token":
            args += [name, value] if value else [name]
    return _allowed(args)


def _wants_base64(request: Request) -> bool:
    """`Upstash-Encoding: base64`; an `Upstash-Response-Format` other than json is refused."""
    response_format = request.headers.get("upstash-response-format", "json").lower()
    if response_format == "resp2":
        raise _RequestError(400, "ERR Upstash-Response-Format resp2 is not implemented here")
    if response_format != "json":
        raise _RequestError(400, f"ERR invalid Upstash-Response-Format {response_format!r}")
    return request.headers.get("upstash-encoding", "").lower() == "base64"


_UNAUTHORIZED = {"error": "WRONGPASS invalid or missing auth token"}  # Upstash's own text


class _RequireToken:
    """Upstash checks the token before the path or the method: a 401 reveals nothing else."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._bearer = f"Bearer {token}".encode()
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorized(Request(scope)):
            await JSONResponse(_UNAUTHORIZED, status_code=401)(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "").encode()
        query = request.query_params.get("_token", "").encode()
        return hmac.compare_digest(header, self._bearer) or hmac.compare_digest(query, self._token)


def create_app(backend: RedisBackend, token: str) -> Starlette:
    """The ASGI app: Upstash's endpoints over `backend`, guarded by `token`."""

    async def run(command: Command, encode: bool) -> Response:
        try:
            reply = await run_in_threadpool(backend.execute, command)
        except ResponseError as error:
            return JSONResponse({"error": error_message(error)}, status_code=400)
        return JSONResponse({"result": _jsonable(reply, encode)})

    async def single(request: Request) -> Response:
        encode = _wants_base64(request)
        return await run(_command(await _json_body(request)), encode)

    async def in_path(request: Request) -> Response:
        encode = _wants_base64(request)
        return await run(await _path_command(request), encode)

    async def batch(request: Request) -> Response:
        encode = _wants_base64(request)
        body = await _json_body(request)
        if not isinstance(body, list) or not body:
            raise _RequestError(400, "ERR a pipeline is a non-empty JSON array of commands")
        commands = [_command(item) for item in body]
        atomic = request.url.path == "/multi-exec"
        try:
            replies = await run_in_threadpool(backend.pipeline, commands, atomic=atomic)
        except ResponseError as error:
            return JSONResponse({"error": error_message(error)}, status_code=400)
        return JSONResponse(
            [
                {"error": error_message(reply)}
                if isinstance(reply, ResponseError)
                else {"result": _jsonable(reply, encode)}
                for reply in replies
            ]
        )

    async def request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _RequestError)
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # 405: every path is a command
        return JSONResponse(
            {"error": f"ERR {exc.detail}: {request.method} {request.url.path}"}, exc.status_code
        )

    async def redis_down(request: Request, exc: Exception) -> Response:
        logger.warning("Redis backend unreachable: %s", exc)
        return JSONResponse({"error": f"ERR the emulator cannot reach Redis: {exc}"}, 500)

    async def crash(request: Request, exc: Exception) -> Response:
        logger.error("unexpected error on %s", request.url.path, exc_info=exc)
        return JSONResponse({"error": "ERR internal error in the emulator (see its log)"}, 500)

    methods = ["GET", "POST", "PUT"]  # and HEAD with GET: what Upstash allows
    return Starlette(
        routes=[
            Route("/", single, methods=methods),
            Route("/pipeline", batch, methods=methods),
            Route("/multi-exec", batch, methods=methods),
            Route("/{command:path}", in_path, methods=methods),
        ],
        middleware=[Middleware(_RequireToken, token=token)],
        exception_handlers={
            _RequestError: request_error,
            HTTPException: http_error,
            redis.ConnectionError: redis_down,
            redis.TimeoutError: redis_down,
            Exception: crash,
        },
    )


# How long the emulator keeps an idle connection open: longer than any client keeps one (httpx's
# pool, the SDK's, 5 s). uvicorn's own default is that same 5 s, so a call sent just as the
# server closed the connection failed ("Server disconnected") and counted as an Upstash outage.
KEEP_ALIVE_S = 75


class UpstashEmulator(Service):
    """The emulator served by uvicorn on a background thread: `with UpstashEmulator() as up:`.

    `backend_url` names a real Redis (keys are shared with whoever else uses it; nothing is
    flushed); without it each emulator gets its own in-process fakeredis. `token` defaults to a
    random one. Point the SDK at it with `upstash_redis.Redis(url=up.url, token=up.token)`.

    Known differences from Upstash (docs/local-stack.md lists them all): no `/subscribe`,
    `/monitor`, RESP2 responses, read-only or ACL tokens, or `Upstash-Sync-Token`;
    connection-scoped commands (SELECT, WATCH, SUBSCRIBE…) are refused; Upstash's own command
    dialect (e.g. UNLINK with no keys, ZRANGE LIMIT without BYSCORE) follows Redis; error texts of
    refused requests are ours where Upstash documents none.
    """

    def __init__(
        self,
        backend_url: str | None = None,
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout: float = 10.0,
    ) -> None:
        self.backend_url = backend_url
        self._token = token or secrets.token_urlsafe(24)
        self._host = host
        self._port = port
        self._startup_timeout = startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._backend: RedisBackend | None = None

    @property
    def url(self) -> str:
        """The REST URL (UPSTASH_REDIS_REST_URL), e.g. http://127.0.0.1:41234."""
        if self._server is None:
            raise RuntimeError("the Upstash emulator is not running: call start() first")
        return f"http://{self._host}:{self._port}"

    @property
    def token(self) -> str:
        """The bearer token (UPSTASH_REDIS_REST_TOKEN)."""
        return self._token

    def start(self) -> None:
        """Bind the port, serve in a daemon thread, and return once requests are accepted."""
        if self._server is not None:
            return
        if self.backend_url:
            backend = RedisBackend.connect(self.backend_url)
        else:
            backend = RedisBackend.in_process()
        # Binding here, not in uvicorn, tells us the port before serving. IPPROTO_TCP must be
        # explicit: asyncio sets TCP_NODELAY only on sockets that say so, and without it every
        # request waits ~40 ms on delayed ACKs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            backend.close()
            raise
        self._port = sock.getsockname()[1]
        try:
            backend.execute([b"PING"])
        except redis.RedisError as error:
            sock.close()
            backend.close()
            raise RuntimeError(f"the Upstash emulator cannot reach its Redis: {error}") from error
        config = uvicorn.Config(
            create_app(backend, self._token),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="upstash-emulator", daemon=True
        )
        self._server, self._thread, self._backend = server, thread, backend
        thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(
                    f"the Upstash emulator did not start on {self._host}:{self._port} within "
                    f"{self._startup_timeout:g}s (see the log above)"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop serving, wait for the thread, close the Redis connections."""
        server, thread, backend = self._server, self._thread, self._backend
        self._server = self._thread = self._backend = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=5)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout=5)
        if backend is not None:
            backend.close()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m devkit.upstash_emulator`: serve in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m devkit.upstash_emulator", description=main.__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8079)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="a real Redis to forward to (default: $REDIS_URL, else an in-process fakeredis)",
    )
    parser.add_argument("--token", help="the bearer token to require (default: a random one)")
    args = parser.parse_args(argv)
    token = args.token or secrets.token_urlsafe(24)
    backend = RedisBackend.connect(args.redis_url) if args.redis_url else RedisBackend.in_process()
    print(
        f"UPSTASH_REDIS_REST_URL=http://{args.host}:{args.port}\n"
        f"UPSTASH_REDIS_REST_TOKEN={token}\n"
        f"backend: {'Redis at --redis-url' if args.redis_url else 'in-process fakeredis'}",
        flush=True,
    )
    try:
        uvicorn.run(
            create_app(backend, token),
            host=args.host,
            port=args.port,
            log_level="info",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    finally:
        backend.close()


if __name__ == "__main__":
    main()
