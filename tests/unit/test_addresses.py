"""Address forms and the HA settings: Sentinel addresses parse (and fail) in one line,
passwords never show, durability is validated."""

from __future__ import annotations

import pytest

from ftqueue.exceptions import FtqueueConnectionError
from ftqueue.settings import Settings
from ftqueue.store import connect, redact
from ftqueue.store.connection import parse_sentinel_address


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
