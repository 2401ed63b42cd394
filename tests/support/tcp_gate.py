"""A TCP proxy in front of PostgreSQL (or PgBouncer) that a test shuts and opens like a gate.

While shut, nothing already accepted is forwarded either way, and a new connection is accepted
(the kernel's handshake, as on a hung compute) and held, unanswered: a database that stopped
answering. Opening forwards everything held. Unlike a SIGSTOPped server, it tells a test that
a connect attempt has reached it (`connect_held`), and the attempt cannot end on the server's
side before the test opens the gate: ordering is known, not guessed from timings. It counts the
connections it accepts (`connections`): how many connect attempts reached the database.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from devkit._host import LOOPBACK, Service

CHUNK = 65536


class TcpGate(Service):
    """Forwards `LOOPBACK:port` to `LOOPBACK:upstream_port`; open until `shut()`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.connect_held = threading.Event()  # a connection arrived while shut
        self.connections = 0  # accepted so far, open or shut
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server((LOOPBACK, 0))
        self._accepting = threading.Thread(target=self._accept, name="tcp-gate", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        self._accepting.start()

    def stop(self) -> None:
        self._listener.close()
        self._open.set()  # releases every held pump, which then fails on its closed socket
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def shut(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def reset(self) -> None:
        """Abort every connection accepted so far, both ends at once (a dropped NAT entry, a
        restarted load balancer); connections accepted later go through as before."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):  # a pump may have closed it already
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD)  # wakes its pump, which closes it: an RST
            sock.close()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            self._track(client)
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if not self._open.is_set():
            self.connect_held.set()
        self._open.wait()
        try:
            upstream = self._track(socket.create_connection((LOOPBACK, self.upstream_port)))
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                self._open.wait()
                target.sendall(data)
        except OSError:
            pass
        finally:
            source.close()
            target.close()
