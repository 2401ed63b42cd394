"""A loopback TCP proxy that delays every chunk by a fixed time in each direction.

On this machine PostgreSQL and the Upstash emulator answer in microseconds, so a benchmark
cannot tell one round trip from three. In production a Lambda in Neon's region pays about a
millisecond each way; putting this proxy between the functions and each server makes a round
trip weigh that again. Chunks keep their order and their own due time (arrival + delay), so a
pipelined burst is delayed once, not once per chunk, as on a real link. It counts the
connections it accepts (`connections`): how many connects reached the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Self


class DelayProxy:
    """`with DelayProxy(host, port, delay_ms) as proxy:` listens on 127.0.0.1:`proxy.port`."""

    def __init__(self, host: str, port: int, delay_ms: float) -> None:
        self.upstream = (host, port)
        self.delay_s = delay_ms / 1000
        self.port = 0
        self.connections = 0  # accepted so far (the event loop's thread writes it)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> Self:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _close(self) -> None:
        """Stop listening and end the connections: a pump left waiting (a chunk still delayed)
        would die pending with the loop."""
        if self._server is not None:
            self._server.close()
        pumps = asyncio.all_tasks() - {asyncio.current_task()}
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._connect, "127.0.0.1", 0)

    async def _connect(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._pump(client_r, server_w), self._pump(server_r, client_w))

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy `source` to `sink`, each chunk released `delay_s` after it arrived."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def release() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                sink.write(data)
                await sink.drain()
            sink.close()

        releaser = asyncio.create_task(release())
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                queue.put_nowait((loop.time() + self.delay_s, data))
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(OSError):
            await releaser
