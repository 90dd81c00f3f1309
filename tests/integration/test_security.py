"""Signed payloads (tampering, replay, rotation, canaries), ACL users from docs/security.md,
and wrong credentials."""

from __future__ import annotations

import os
import pickle

import pytest
import redis
from conftest import NodeProcess, child_env, wait_until

import ftqueue
import ftqueue.state
from ftqueue.exceptions import FtqueueConnectionError, PayloadVerificationError
from ftqueue.signing import MAGIC

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Canary:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@ftqueue.remote
def echo(x):
    return x


@pytest.fixture
def signed(redis_url, monkeypatch):
    """A driver and a node sharing a secret."""
    monkeypatch.setenv("FTQUEUE_SECRET", "s3cret-key")
    node = NodeProcess(redis_url, 1, env=child_env(FTQUEUE_SECRET="s3cret-key"))
    ftqueue.init(address=redis_url)
    try:
        yield node
    finally:
        ftqueue.shutdown()
        node.stop()


def test_signed_workload_runs_and_blobs_are_sealed(signed, rclient, redis_url):
    ref = echo.remote({"a": 1})
    assert ftqueue.get(ref) == {"a": 1}
    raw = redis.Redis.from_url(redis_url)
    assert raw.get(f"ftq:result:{ref.hex()}").startswith(MAGIC)
    assert raw.get(f"ftq:args:{ref.hex()}").startswith(MAGIC)
    assert "WARNING" not in signed.output()


def test_tampered_arguments_are_never_unpickled(signed, redis_url, tmp_path):
    canary = tmp_path / "args-canary"
    raw = redis.Redis.from_url(redis_url)
    signed.stop()                                  # nobody claims while we tamper
    ref = echo.remote(1)
    ftqueue.flush_submissions()
    raw.set(f"ftq:args:{ref.hex()}", pickle.dumps(Canary(str(canary))))
    node = NodeProcess(redis_url, 1, env=child_env(FTQUEUE_SECRET="s3cret-key"))
    try:
        with pytest.raises(PayloadVerificationError):
            ftqueue.get(ref, timeout=30)
        assert not canary.exists()
        assert ftqueue.get(echo.remote(2), timeout=30) == 2     # the worker serves on
        assert int(raw.hget("ftq:stats", "payload_rejected")) >= 1
    finally:
        node.stop()


def test_tampered_result_is_never_unpickled_by_the_driver(signed, redis_url, tmp_path):
    canary = tmp_path / "result-canary"
    ref = echo.remote(1)
    ftqueue.get(ref)
    raw = redis.Redis.from_url(redis_url)
    flipped = bytearray(raw.get(f"ftq:result:{ref.hex()}"))
    flipped[-1] ^= 1
    raw.set(f"ftq:result:{ref.hex()}", bytes(flipped))
    with pytest.raises(PayloadVerificationError):
        ftqueue.get(ref)
    raw.set(f"ftq:result:{ref.hex()}", b"V" + pickle.dumps(Canary(str(canary))))
    with pytest.raises(PayloadVerificationError):
        ftqueue.get(ref)
    assert not canary.exists()


def test_replayed_payload_from_another_task_is_refused(signed, redis_url):
    a, b = echo.remote("a"), echo.remote("b")
    assert ftqueue.get([a, b]) == ["a", "b"]
    raw = redis.Redis.from_url(redis_url)
    raw.set(f"ftq:result:{b.hex()}", raw.get(f"ftq:result:{a.hex()}"))
    with pytest.raises(PayloadVerificationError, match="failed signature verification"):
        ftqueue.get(b)


def test_key_rotation_accepts_listed_old_keys_only(redis_url, monkeypatch):
    # Mid-rotation: the driver still signs with the old key, the worker with the new one;
    # each accepts the other's.
    monkeypatch.setenv("FTQUEUE_SECRET", "old-key")
    monkeypatch.setenv("FTQUEUE_OLD_SECRETS", "new-key")
    node = NodeProcess(redis_url, 1, env=child_env(FTQUEUE_SECRET="new-key",
                                                  FTQUEUE_OLD_SECRETS="old-key"))
    ftqueue.init(address=redis_url)
    try:
        assert ftqueue.get(echo.remote(5), timeout=30) == 5
        monkeypatch.setenv("FTQUEUE_SECRET", "unknown-key")
        monkeypatch.delenv("FTQUEUE_OLD_SECRETS")
        with pytest.raises(PayloadVerificationError):   # worker refuses, driver refuses
            ftqueue.get(echo.remote(6), timeout=30)
    finally:
        ftqueue.shutdown()
        node.stop()


def test_unsigned_worker_refuses_signed_tasks_clearly(redis_url, monkeypatch):
    node = NodeProcess(redis_url, 1)
    monkeypatch.setenv("FTQUEUE_SECRET", "k")
    ftqueue.init(address=redis_url)
    try:
        with pytest.raises(PayloadVerificationError):
            ftqueue.get(echo.remote(1), timeout=30)
        wait_until(lambda: "WARNING: no FTQUEUE_SECRET set" in node.output(), 10,
                   "the unsigned node's warning")
        assert node.output().count("WARNING") == 1
    finally:
        ftqueue.shutdown()
        node.stop()


def acl_lines():
    with open(os.path.join(ROOT, "docs", "security.md")) as f:
        return [line.split() for line in f if line.startswith("ACL SETUSER")]


def test_documented_acl_users_run_a_workload(redis_server, redis_url, rclient):
    path = redis_server.address[len("unix://"):]
    try:
        for line in acl_lines():
            rclient.execute_command(*line)
        worker_url = f"unix://{path}?username=ftq-worker&password=WORKER_PASSWORD"
        driver_url = f"unix://{path}?username=ftq-driver&password=DRIVER_PASSWORD"
        node = NodeProcess(worker_url, 2)
        ftqueue.init(address=driver_url)
        try:
            refs = [echo.remote(i) for i in range(20)]
            assert ftqueue.get(refs, timeout=60) == list(range(20))
            with pytest.raises(KeyError):
                ftqueue.get(ftqueue.remote(lambda: {}["missing"]).remote(), timeout=30)
            assert len(ftqueue.state.list_tasks(limit=100)) == 21
        finally:
            ftqueue.shutdown()
            node.stop()
        worker = redis.Redis.from_url(worker_url)
        for forbidden in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("EVAL", "return 1", "0"),
                          ("DEBUG", "SLEEP", "0"), ("SET", "not-ftq", "1"), ("KEYS", "*")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                worker.execute_command(*forbidden)
        inspector = redis.Redis.from_url(
            f"unix://{path}?username=ftq-inspector&password=INSPECTOR_PASSWORD")
        assert inspector.zcard("ftq:index:tasks") == 21
        with pytest.raises(redis.exceptions.NoPermissionError):
            inspector.set("ftq:x", 1)
    finally:
        for user in ("ftq-worker", "ftq-driver", "ftq-inspector"):
            rclient.execute_command("ACL", "DELUSER", user)


def test_wrong_password_is_one_clear_error(redis_server, rclient):
    path = redis_server.address[len("unix://"):]
    rclient.execute_command(*acl_lines()[1])
    try:
        with pytest.raises(FtqueueConnectionError) as info:
            ftqueue.init(address=f"unix://{path}?username=ftq-driver&password=wrong")
        assert "refused the credentials" in str(info.value) or "cannot reach" in str(info.value)
        assert "wrong" not in str(info.value)
        assert not ftqueue.is_initialized()
    finally:
        rclient.execute_command("ACL", "DELUSER", "ftq-driver")


def test_refused_credentials_are_not_waited_out(redis_server, rclient):
    """A worker's first nested call waits out an outage (retry_across_outage); a password
    changed under it is no outage: one clear error at once, not a retry forever."""
    from ftqueue.store import connect, retry_across_outage

    path = redis_server.address[len("unix://"):]
    rclient.execute_command(*acl_lines()[1])
    calls = []

    def step():
        calls.append(1)
        return connect(f"unix://{path}?username=ftq-driver&password=changed")

    try:
        with pytest.raises(FtqueueConnectionError, match="refused the credentials"):
            retry_across_outage(step, give_up=lambda: len(calls) >= 5)
        assert len(calls) == 1
    finally:
        rclient.execute_command("ACL", "DELUSER", "ftq-driver")


def test_redis_password_never_printed_by_the_cli(redis_server, rclient):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ftqueue", "list", "tasks", "--address",
                           "redis://user:hunter2@127.0.0.1:1/0"], capture_output=True,
                          text=True, env=child_env())
    assert proc.returncode == 1 and "hunter2" not in proc.stderr and "***" in proc.stderr
