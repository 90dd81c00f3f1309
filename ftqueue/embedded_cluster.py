"""A local Redis Cluster of redis-server child processes on loopback ports, for the tests
and the `--cluster` modes of scripts/chaos.py and scripts/bench.py.

Built with plain commands (CLUSTER ADDSLOTS, MEET, REPLICATE) so that it works with the
bundled Redis 6.2 and without a `redis-cli` on PATH.
"""

from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from .embedded import RedisServer
from .exceptions import FtqueueError

SLOTS = 16384
NODE_TIMEOUT_MS = 1000
FORM_TIMEOUT_S = 30.0
# A node's bus listens on its port + 10000 (Redis 6.2 has no cluster-port setting), so ports
# come from a range whose bus ports stay below Linux's ephemeral ones (32768 and up), where
# a client socket could take one between our check and the server's start.
PORT_RANGE = (12000, 22000)
BUS_OFFSET = 10000


def cluster_port() -> int:
    """A free loopback port whose bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + BUS_OFFSET))
            return port
        except OSError:
            continue
    raise FtqueueError("no free port pair for a cluster node")


@dataclass
class LocalCluster:
    """`primaries` primaries with `replicas` replicas each, as started (a failover swaps
    roles: `owner_of` asks the live cluster); `stop()` ends every server."""

    primaries: list[RedisServer]
    replicas: list[RedisServer] = field(default_factory=list)

    @classmethod
    def start(cls, primaries: int = 3, replicas: int = 0, *, binary: str | None = None,
              node_timeout_ms: int = NODE_TIMEOUT_MS) -> LocalCluster:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs a primary, and replicas >= 0")
        cluster = cls([])
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(node_timeout_ms)]
        try:
            for i in range(primaries * (1 + replicas)):
                server = RedisServer.start(port=cluster_port(), unix_socket=False,
                                           binary=binary, extra=extra)
                (cluster.primaries if i < primaries else cluster.replicas).append(server)
            cluster._form(replicas)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def servers(self) -> list[RedisServer]:
        return self.primaries + self.replicas

    @property
    def address(self) -> str:
        """A `redis+cluster://` address listing every node as a startup node."""
        return "redis+cluster://" + ",".join(host_port(s) for s in self.servers)

    def client(self, server: RedisServer, **options: Any) -> Any:
        import redis

        return redis.Redis.from_url(server.address, **options)

    def _form(self, replicas: int) -> None:
        clients = [self.client(s, decode_responses=True) for s in self.servers]
        try:
            share = SLOTS // len(self.primaries)
            for i, c in enumerate(clients[:len(self.primaries)]):
                end = SLOTS if i == len(self.primaries) - 1 else (i + 1) * share
                c.execute_command("CLUSTER ADDSLOTS", *range(i * share, end))
            first_host, first_port = host_port(self.servers[0]).rsplit(":", 1)
            for c in clients[1:]:
                c.execute_command("CLUSTER MEET", first_host, first_port)
            self._wait(lambda: all(len(known(c)) == len(clients) for c in clients),
                       "every node to know every other")
            ids = [c.execute_command("CLUSTER MYID") for c in clients[:len(self.primaries)]]
            for i, c in enumerate(clients[len(self.primaries):]):
                c.execute_command("CLUSTER REPLICATE", ids[i // replicas])
            self._wait(lambda: all(c.cluster("INFO")["cluster_state"] == "ok"
                                   for c in clients), "cluster_state:ok on every node")
            for r in self.replicas:
                rc = self.client(r, decode_responses=True)
                self._wait(lambda rc=rc: rc.info("replication").get("master_link_status")
                           == "up", "every replica to sync")
                rc.close()
        finally:
            for c in clients:
                c.close()

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + FORM_TIMEOUT_S
        while not ready():
            if time.monotonic() > deadline:
                raise FtqueueError(f"the local cluster did not form: waited for {what}")
            time.sleep(0.05)

    def owner_of(self, key: str) -> RedisServer:
        """The server that is now the primary of `key`'s slot."""
        for server in self.servers:
            if server.process.poll() is not None:
                continue
            c = self.client(server, socket_timeout=2)
            try:
                slot = int(c.execute_command("CLUSTER KEYSLOT", key))
                for start, end, primary, *_ in c.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        host, port = primary[0], int(primary[1])
                        host = host.decode() if isinstance(host, bytes) else host
                        # A lone node does not know its own address: it answers ''.
                        host = host or host_port(server).rsplit(":", 1)[0]
                        for s in self.servers:
                            if host_port(s) == f"{host}:{port}":
                                return s
            finally:
                c.close()
        raise FtqueueError(f"no live node knows the primary of {key!r}")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def known(client: Any) -> list[str]:
    """The nodes `client`'s server has completed a handshake with (itself included)."""
    nodes = client.execute_command("CLUSTER NODES")   # redis-py parses it: address -> info
    return [address for address, info in nodes.items()
            if "handshake" not in info["flags"] and "noaddr" not in info["flags"]]


def host_port(server: RedisServer) -> str:
    return server.address[len("redis://"):]
