"""A fault-injecting TCP proxy in front of a real redis-server (scenario T7, ambiguous replies).

Every ftqueue process is given the proxy's `redis://127.0.0.1:<port>` as its address. Each
chunk a client sends is forwarded whole, each chunk the server writes back is forwarded
whole, except when a seeded draw (or a rule) picks a fault:

* `response` (a): the server's reply chunk is dropped and the client's connection closed;
  the server side is half-closed and drained to its end first, so every byte the client
  sent reached Redis and ran (the reply is what is lost, never the request).
* `request` (b): a chunk the client sent is dropped and both connections closed: the
  request never reached Redis.
* `delay_reset` (c): the reply is held for a while, then the client's connection is reset
  (RST) without it; the request has run.

redis-py's client waits for each reply before it sends again (a pipeline is one chunk), so
the last chunk sent on a connection is the request a reply answers. `rule(request, reply)`
can pick a fault for one exchange deterministically (return the mode's name, or None): it
is asked with reply None before a request is forwarded (only 'request' counts then), and
with the reply once it comes. `fault_rates` draw faults at random with a seeded RNG.
`script_sha(name)` names an ftqueue script's EVALSHA, to aim a rule at one step. Usable from
tests and scripts:

    with FaultProxy(server.address, seed=1, fault_rates={"response": 0.01}) as proxy:
        ftqueue.init(address=proxy.address)
"""

from __future__ import annotations

import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from typing import Callable, Optional
from urllib.parse import urlsplit

MODES = ("response", "request", "delay_reset")
Rule = Callable[[bytes, Optional[bytes]], Optional[str]]


def script_sha(name: str) -> bytes:
    """The SHA1 an ftqueue script (ftqueue/store/lua/<name>.lua) is called by, as it
    appears in an EVALSHA request."""
    import hashlib

    from ftqueue.store.store import _SCRIPTS

    return hashlib.sha1(_SCRIPTS[name].source.encode()).hexdigest().encode()


def _connect_upstream(address: str) -> socket.socket:
    parts = urlsplit(address)
    if parts.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(parts.path)
        return sock
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a dropped connection looks to its peer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultProxy:
    def __init__(self, upstream: str, *, seed: int = 0,
                 fault_rates: dict[str, float] | None = None,
                 delay_s: tuple[float, float] = (0.05, 0.5),
                 rule: Rule | None = None) -> None:
        unknown = set(fault_rates or {}) - set(MODES)
        if unknown:
            raise ValueError(f"unknown fault mode(s): {sorted(unknown)}")
        self.upstream = upstream
        self.rates = dict(fault_rates or {})
        self.delay_s = delay_s
        self.rule = rule
        self.enabled = True          # False: forward everything (a workload's warm-up, drain)
        self.counts: Counter[str] = Counter()   # faults injected by mode; 'replies' forwarded
        self.log: list[tuple[str, bytes]] = []  # (mode, request) per fault injected
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self.address = f"redis://127.0.0.1:{self.port}"
        self._stopped = threading.Event()
        self._socks: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            try:
                sock.close()
            except OSError:
                pass
        self._thread.join(5)

    def faults(self) -> int:
        return sum(self.counts[m] for m in MODES)

    # -- internals ---------------------------------------------------------------------------

    def _draw(self, modes: tuple[str, ...]) -> str | None:
        if not self.enabled:
            return None
        with self._lock:
            x = self._rng.random()
            for mode in modes:
                rate = self.rates.get(mode, 0.0)
                if x < rate:
                    return mode
                x -= rate
        return None

    def _note(self, mode: str, request: bytes) -> None:
        with self._lock:
            self.counts[mode] += 1
            self.log.append((mode, request[:200]))

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = _connect_upstream(self.upstream)
            except OSError:
                _reset(client)
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._socks |= {client, server}
            threading.Thread(target=self._pump, args=(client, server), daemon=True,
                             name="proxy-conn").start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        last_request = b""
        fault: str | None = None
        try:
            while not self._stopped.is_set():
                readable, _, _ = select.select([client, server], [], [], 0.5)
                if client in readable:
                    data = client.recv(1 << 16)
                    if not data:
                        break
                    fault = self._draw(("request",))
                    if self.rule and self.rule(data, None) == "request":
                        fault = "request"
                    if fault:
                        self._note(fault, data)
                        break
                    server.sendall(data)
                    last_request = data
                if server in readable:
                    data = server.recv(1 << 16)
                    if not data:
                        break
                    fault = self.rule(last_request, data) if self.rule else None
                    if fault is None:
                        fault = self._draw(("response", "delay_reset"))
                    if fault:
                        self._note(fault, last_request)
                        break
                    client.sendall(data)
                    with self._lock:
                        self.counts["replies"] += 1
        except OSError:
            pass
        finally:
            self._close(client, server, fault)

    def _close(self, client: socket.socket, server: socket.socket, fault: str | None) -> None:
        if fault == "delay_reset":
            time.sleep(self._rng.uniform(*self.delay_s))
        if fault in ("response", "delay_reset"):
            # The client loses its reply; Redis gets an end of stream after all it was sent,
            # so everything forwarded runs before the server closes its side.
            if fault == "delay_reset":
                _reset(client)
            else:
                client.close()
            try:
                server.shutdown(socket.SHUT_WR)
                server.settimeout(5)
                while server.recv(1 << 16):
                    pass
            except OSError:
                pass
            server.close()
        else:
            client.close()
            server.close()
        with self._lock:
            self._socks -= {client, server}
