"""High availability with real servers: a primary, a replica and three sentinels started
here; drivers, nodes and the CLI on a `redis+sentinel://` address follow a failover (the
primary SIGKILLed under load, or switched over by the sentinels) and lose nothing; with
`FTQUEUE_DURABILITY=replicated` a write no replica confirms is not acknowledged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Iterator

import pytest
import redis
from conftest import NodeProcess, child_env, run_script, wait_until

from ftqueue.embedded import RedisServer
from ftqueue.store import Store, connect

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVICE = "ftqtest"


class Sentinels:
    def __init__(self) -> None:
        self.servers: list[RedisServer] = []
        self.primary = self._start([])
        host, port = self.primary.address[len("redis://"):].split(":")
        self.replica = self._start(["--replicaof", host, port])
        for _ in range(3):
            self.servers.append(RedisServer.start_sentinel((host, int(port)), SERVICE))
        self.address = "redis+sentinel://" + ",".join(
            s.address[len("redis://"):] for s in self.servers[2:]) + f"/{SERVICE}"
        replica = redis.Redis.from_url(self.replica.address)
        wait_until(lambda: replica.info("replication")["master_link_status"] == "up", 20,
                   "the replica to sync")
        replica.close()

    def _start(self, extra: list[str]) -> RedisServer:
        server = RedisServer.start(unix_socket=False, extra=extra)
        self.servers.append(server)
        return server

    def sentinel(self) -> redis.Redis:
        return redis.Redis.from_url(self.servers[2].address, decode_responses=True)

    def master(self) -> tuple[str, int]:
        host, port = self.sentinel().execute_command("SENTINEL", "get-master-addr-by-name",
                                                     SERVICE)
        return host, int(port)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def sentinels() -> Iterator[Sentinels]:
    deployment = Sentinels()
    try:
        yield deployment
    finally:
        deployment.stop()


def test_failover_script_quick_loses_nothing_acknowledged():
    """The primary is SIGKILLed mid-run under 2 drivers and 2 nodes: every result is checked
    by its driver; with `replicated` the promoted replica lacked nothing acknowledged."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "failover.py"),
                             "--durability", "both", "--quick", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, out + err
    figures = json.loads(out.strip().splitlines()[-1])
    for mode in ("async", "replicated"):
        r = figures[mode]
        assert r["submitted"] == r["tasks"] == 300, r
        # Drivers that live resubmit what Redis forgot: nothing is lost in either mode.
        assert r["lost"] == 0 and r["acknowledged_lost"] == 0, r
        assert r["failover_s"] <= 10, r
    r = figures["replicated"]
    assert r["acknowledged_vanished"] == 0 and r["commits_lost"] == 0, r
    assert r["duplicate_executions_other"] == 0, r
    assert r["duplicate_executions"] <= r["running_at_kill"], r


def test_driver_node_and_cli_follow_a_switchover(sentinels: Sentinels):
    """A sentinel-driven failover demotes the old primary (it answers READONLY): every
    process moves to the new one and every result arrives."""
    node = NodeProcess(sentinels.address, 2, "--lease-timeout", "5")
    try:
        code = f"""
import ftqueue, time
ftqueue.init(address={sentinels.address!r})

@ftqueue.remote(max_retries=-1)
def square(i):
    time.sleep(0.01)
    return i * i

first = [square.remote(i) for i in range(100)]
assert ftqueue.get(first, timeout=60) == [i * i for i in range(100)]
print("switch", flush=True)
import sys
sys.stdin.readline()
second = [square.remote(i) for i in range(100, 300)]
assert ftqueue.get(first + second, timeout=120) == [i * i for i in range(300)]
print("all", flush=True)
"""
        driver = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=child_env(), start_new_session=True)
        try:
            assert driver.stdout is not None and driver.stdin is not None
            assert driver.stdout.readline().strip() == "switch", driver.stderr
            before = sentinels.master()
            sentinels.sentinel().execute_command("SENTINEL", "FAILOVER", SERVICE)
            driver.stdin.write("\n")
            driver.stdin.flush()
            wait_until(lambda: sentinels.master() != before, 30, "the switchover")
            out, err = driver.communicate(timeout=150)
            assert driver.returncode == 0 and out.strip().endswith("all"), out + err
        finally:
            try:
                os.killpg(driver.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            driver.wait()
        status = subprocess.run([sys.executable, "-m", "ftqueue", "status", "--address",
                                 sentinels.address], capture_output=True, text=True,
                                env=child_env(), timeout=60)
        assert status.returncode == 0 and "nodes alive: 1" in status.stdout, status
    finally:
        node.stop()


def test_a_bad_sentinel_address_is_one_line_without_its_passwords():
    for address, says in [
            ("redis+sentinel://:s3cret@127.0.0.1:1/svc?sentinel_password=t0p", "cannot reach"),
            ("redis+sentinel://:s3cret@127.0.0.1:1", "invalid Redis address")]:
        proc = subprocess.run([sys.executable, "-m", "ftqueue", "status", "--address", address],
                              capture_output=True, text=True, env=child_env(), timeout=60)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1, lines
        assert says in lines[0] and "127.0.0.1:1" in lines[0], lines
        assert "s3cret" not in lines[0] and "t0p" not in lines[0], lines


def test_replicated_submission_without_a_replica_is_an_error(redis_url: str):
    """No replica to confirm it: `get` raises an FtqueueError that says the task may
    exist (the next test shows the acknowledged case)."""
    code = f"""
import ftqueue
from ftqueue.exceptions import FtqueueError
ftqueue.init(address={redis_url!r})

@ftqueue.remote
def f():
    return 1

try:
    ftqueue.get(f.remote(), timeout=30)
except FtqueueError as e:
    print("refused:", e)
"""
    env = child_env(FTQUEUE_DURABILITY="replicated", FTQUEUE_REPLICA_TIMEOUT_S="0.2")
    result = run_script(code, timeout=60, env=env)
    assert "refused:" in result.stdout and "not acknowledged" in result.stdout, result
    assert "may exist" in result.stdout and "replica" in result.stdout, result


def test_replicated_writes_wait_for_the_replica(sentinels: Sentinels,
                                                monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FTQUEUE_DURABILITY", "replicated")
    store = Store(connect(sentinels.address))
    assert store.replica_timeout_ms == 2000
    store.submit([("t1", "default", b"x", (), {"func": "f"})])
    # WAIT returned 1: the replica holds the task before submit() returned.
    replica = redis.Redis.from_url(sentinels.replica.address)
    assert replica.exists(store.keys.task("t1"))
    replica.close()
    store.redis.close()
