"""What differs on a Redis Cluster: a namespace lives in one hash slot (keys.py tags its
prefix), so the commands that name no key and must reach the namespace's data (SCRIPT LOAD,
WAIT after a script, TIME, PING) go to the primary that owns that slot."""

from __future__ import annotations

from typing import Union

import redis
from redis.cluster import ClusterNode

# A plain, Sentinel or TLS client, or redis-py's cluster client; both speak the same
# keyed commands, pipelines and pub/sub.
Client = Union[redis.Redis, redis.RedisCluster]


def is_cluster(client: Client) -> bool:
    return isinstance(client, redis.RedisCluster)


def slot_node(client: redis.RedisCluster, key: str) -> ClusterNode:
    """The primary owning `key`'s slot, as the client last learned it (a stale answer fails
    with a lost connection or MOVED, and the client then reloads the map)."""
    node: ClusterNode = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
    return node


def slot_client(client: redis.RedisCluster, key: str) -> redis.Redis:
    """The plain client of the primary owning `key`'s slot (for a command that must share
    one connection with a script: WAIT)."""
    node_client: redis.Redis = client.get_redis_connection(slot_node(client, key))
    return node_client


def reload_slots(client: redis.RedisCluster) -> None:
    """Learn the map of the slots again (after a MOVED or a lost node that the cluster
    client did not see itself). Best effort: mid-failover the nodes may not agree yet, and
    the caller's retry comes back here."""
    try:
        client.nodes_manager.initialize()
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        pass


def connection_pools(client: Client) -> list[redis.ConnectionPool]:
    """Every connection pool the client holds (one per node on a cluster)."""
    if not isinstance(client, redis.RedisCluster):
        return [client.connection_pool]
    return [node.redis_connection.connection_pool for node in client.get_nodes()  # type: ignore[no-untyped-call]
            if node.redis_connection is not None]
