"""A real Redis Cluster for the tests: redis-server processes on loopback ports, formed with
CLUSTER ADDSLOTS / MEET / REPLICATE (ftqueue.embedded_cluster), ended by pid in `finally`;
and worker nodes on its `redis+cluster://` address."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from conftest import NodeProcess

import ftqueue
from ftqueue.embedded_cluster import LocalCluster
from ftqueue.keys import Keys

KEYS = Keys("ftq", hash_tag=True)


def flush(cluster: LocalCluster) -> None:
    for server in cluster.primaries:
        if server.process.poll() is None:
            client = redis.Redis.from_url(server.address)
            client.flushall()
            client.close()


def owner_client(cluster: LocalCluster, **options: Any) -> redis.Redis:
    """A plain client of the primary that now holds the namespace's slot."""
    return redis.Redis.from_url(cluster.owner_of(KEYS.stats).address, **options)


@pytest.fixture(scope="module")
def cluster3() -> Iterator[LocalCluster]:
    """3 primaries, no replicas; emptied before each test that asks for `on_cluster3`."""
    cluster = LocalCluster.start(3, 0)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster6() -> Iterator[LocalCluster]:
    """3 primaries with a replica each, for this test alone (it may kill a primary)."""
    cluster = LocalCluster.start(3, 1)
    try:
        yield cluster
    finally:
        cluster.stop()


def node_starter(address: str) -> tuple[Callable[..., NodeProcess], list[NodeProcess]]:
    nodes: list[NodeProcess] = []

    def start(num_workers: int = 2, *args: str) -> NodeProcess:
        node = NodeProcess(address, num_workers, *args)
        nodes.append(node)
        return node

    return start, nodes


@pytest.fixture
def on_cluster3(cluster3: LocalCluster) -> Iterator[tuple[LocalCluster,
                                                          Callable[..., NodeProcess]]]:
    """The 3-primary cluster, empty, a driver connected to it, and a node starter."""
    flush(cluster3)
    start, nodes = node_starter(cluster3.address)
    ftqueue.init(address=cluster3.address)
    try:
        yield cluster3, start
    finally:
        ftqueue.shutdown()
        for node in nodes:
            node.stop()
