"""A TCP proxy between the soak's roles and Redis, for the network's faults.

Every chief and worker reaches Redis through it; the soak's own reads and the faults'
Redis commands go straight to Redis. ``drop(length_s)`` closes every connection it
carries and refuses new ones (accepted, then closed at once, as a broken route looks
to a client) for ``length_s``; ``delay(extra_s, length_s)`` holds every chunk it
forwards, either way, ``extra_s`` for ``length_s``. It follows Redis to a new port, as
the soak restarts it on the same one anyway (``target`` is asked per connection).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable

CHUNK = 65536


class Proxy:
    def __init__(self, target: Callable[[], int]) -> None:
        self.target = target  # the port of Redis on 127.0.0.1, asked per connection
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.lock = threading.Lock()
        self.links: set[socket.socket] = set()  # both ends of every open connection
        self.refuse_until = 0.0  # monotonic: new connections are closed at once until then
        self.delay_s, self.delay_until = 0.0, 0.0
        self.closed = threading.Event()
        self.carried = 0  # connections carried, for the report

    def start(self) -> Proxy:
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()
        return self

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        self._cut()

    def url(self, direct: str) -> str:
        """``direct`` (a redis:// URL of 127.0.0.1) with the proxy's port in its place."""
        host, _, rest = direct.rpartition("127.0.0.1:")
        port, slash, db = rest.partition("/")
        return f"{host}127.0.0.1:{self.port}{slash}{db}"

    # --- faults --------------------------------------------------------------------------

    def drop(self, length_s: float) -> int:
        """Cut every carried connection; refuse new ones for ``length_s``. Returns how
        many connections were cut."""
        with self.lock:
            self.refuse_until = time.monotonic() + length_s
        return self._cut()

    def delay(self, extra_s: float, length_s: float) -> None:
        with self.lock:
            self.delay_s, self.delay_until = extra_s, time.monotonic() + length_s

    def heal(self) -> None:
        with self.lock:
            self.refuse_until = self.delay_until = 0.0

    # --- the pumps -----------------------------------------------------------------------

    def _cut(self) -> int:
        with self.lock:
            links, self.links = self.links, set()
        for sock in links:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        return len(links) // 2

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.refuse_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target()), timeout=2)
            except OSError:  # Redis down: the client sees its connection closed
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.links.update((client, upstream))
                self.carried += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Carry bytes both ways until either end closes (or a drop closes both)."""
        peer = {a: b, b: a}
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for sock in ready:
                    data = sock.recv(CHUNK)
                    if not data:
                        return
                    with self.lock:
                        hold = self.delay_s if time.monotonic() < self.delay_until else 0.0
                    if hold:
                        time.sleep(hold)
                    peer[sock].sendall(data)
        except (OSError, ValueError):  # closed under us by a drop
            return
        finally:
            with self.lock:
                self.links.discard(a)
                self.links.discard(b)
            for sock in (a, b):
                sock.close()
