"""Address forms and the HA settings: Sentinel and Cluster addresses parse (and fail) in one line,
passwords never show, durability is validated."""

from __future__ import annotations

import pytest
import redis

from ftqueue.exceptions import FtqueueConnectionError
from ftqueue.settings import Settings
from ftqueue.store import connect, is_transient, is_unreachable, redact
from ftqueue.store.connection import parse_cluster_address, parse_sentinel_address


def test_a_sentinel_address_names_sentinels_service_db_and_passwords():
    parsed = parse_sentinel_address(
        "redis+sentinel://:pw@10.0.0.1:26380,[::1],h3/mymaster/2?sentinel_password=sp")
    assert parsed.sentinels == (("10.0.0.1", 26380), ("::1", 26379), ("h3", 26379))
    assert (parsed.service, parsed.db, parsed.password, parsed.sentinel_password) == \
        ("mymaster", 2, "pw", "sp")
    assert parse_sentinel_address("redis+sentinel://h:1/s").password is None


@pytest.mark.parametrize("address", [
    "redis+sentinel://h:1", "redis+sentinel://h:1/s/x", "redis+sentinel://h:port/s",
    "redis+sentinel://:1/s", "redis+sentinel://h:1/s?timeout=3"])
def test_a_bad_sentinel_address_is_one_line(address: str):
    with pytest.raises(FtqueueConnectionError) as info:
        connect(address, check=False)
    assert str(info.value).startswith("invalid Redis address redis+sentinel://")
    assert "\n" not in str(info.value)


def test_redact_hides_every_password_of_a_sentinel_address():
    shown = redact("redis+sentinel://:pw@h1:1,h2:2/svc/0?sentinel_password=sp")
    assert shown == "redis+sentinel://***@h1:1,h2:2/svc/0?sentinel_password=***"
    with pytest.raises(FtqueueConnectionError) as info:
        connect("redis+sentinel://:pw@h1:1/?sentinel_password=sp", check=False)
    assert "pw" not in str(info.value).replace("password", "") and "sp" not in str(info.value)


def test_durability_is_async_unless_replicated():
    assert not Settings.from_env({}).replicated
    env = Settings.from_env({"FTQUEUE_DURABILITY": "replicated",
                             "FTQUEUE_REPLICA_TIMEOUT_S": "0.5"})
    assert env.replicated and env.replica_timeout_s == 0.5
    with pytest.raises(ValueError, match="FTQUEUE_DURABILITY"):
        Settings.from_env({"FTQUEUE_DURABILITY": "sync"})


def test_a_cluster_address_names_its_startup_nodes_and_password():
    parsed = parse_cluster_address("redis+cluster://u:pw@10.0.0.1:7001,[::1]:7002,h3")
    assert parsed.nodes == (("10.0.0.1", 7001), ("::1", 7002), ("h3", 6379))
    assert (parsed.username, parsed.password) == ("u", "pw")
    assert parse_cluster_address("redis+cluster://h:1/").password is None


@pytest.mark.parametrize(("address", "says"), [
    ("redis+cluster://", "a cluster node without a host"),
    ("redis+cluster://h:1,:2", "a cluster node without a host"),
    ("redis+cluster://h:port", "not a port"),
    ("redis+cluster://h:70000", "not a port"),
    ("redis+cluster://:pw@h:1/2", "only database 0"),
    ("redis+cluster://:pw@h:1?ssl=true&password=x", "unknown option(s): password, ssl")])
def test_a_bad_cluster_address_is_one_line_without_its_password(address: str, says: str):
    with pytest.raises(FtqueueConnectionError) as info:
        connect(address, check=False)
    message = str(info.value)
    assert message.startswith("invalid Redis address redis+cluster://") and says in message
    assert "\n" not in message and "pw" not in message.replace("password", "")


def test_an_unreachable_cluster_is_one_line():
    with pytest.raises(FtqueueConnectionError) as info:
        connect("redis+cluster://:s3cret@127.0.0.1:1")
    message = str(info.value)
    assert message.startswith("cannot reach Redis at redis+cluster://***@127.0.0.1:1: ")
    assert "\n" not in message and "s3cret" not in message


def test_cluster_errors_of_a_failover_are_transient_and_a_cross_slot_one_is_not():
    e = redis.exceptions
    for transient in (e.ClusterDownError("CLUSTERDOWN The cluster is down"),
                      e.MasterDownError("MASTERDOWN"), e.TryAgainError("TRYAGAIN"),
                      e.ResponseError("UNBLOCKED force unblock from blocking operation, "
                                      "instance state changed (master -> replica?)"),
                      e.MovedError("3999 127.0.0.1:6381"), e.AskError("3999 127.0.0.1:6381"),
                      e.SlotNotCoveredError('Slot "3" is not covered by the cluster.'),
                      e.RedisClusterException("startup_nodes could not agree on a valid "
                                              "slots cache: a vs b on slot: 3"),
                      e.RedisClusterException("All slots are not covered after query all "
                                              "startup_nodes. 10 of 16384 covered...")):
        assert is_transient(transient), transient
        assert not is_unreachable(transient), transient
    down = e.RedisClusterException("Redis Cluster cannot be connected. Please provide at least "
                                   "one reachable node: Connection refused")
    assert is_unreachable(down) and is_transient(down)
    for bug in (e.RedisClusterException("EVALSHA - all keys must map to the same key slot"),
                e.ClusterCrossSlotError("CROSSSLOT Keys in request don't hash to the same "
                                        "slot")):
        assert not is_transient(bug), bug
