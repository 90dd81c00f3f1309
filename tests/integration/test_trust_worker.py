"""Trust the core, on the node's side: a finished task is never run again by accident, every
death with a task in flight is charged, a full or busy or corrupt Redis is ridden out, a
broken console harms nothing, and nothing read from Redis decides what runs unless signed.
Real redis-server, real worker processes; executions are counted, not only results."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import psutil
import pytest
import redis
from conftest import NodeProcess, child_env, mark, runs, wait_for_file, wait_until

import ftqueue
import ftqueue.state
from ftqueue.embedded import RedisServer
from ftqueue.exceptions import TaskError, WorkerCrashedError


@ftqueue.remote(max_retries=3)
def quick(path, value):
    mark(path)
    return value


@ftqueue.remote(max_retries=3)
def die_when_told(path, flag):
    mark(path)
    wait_for_file(flag)
    os._exit(1)


@ftqueue.remote(max_retries=1)
def exit_75(path):
    mark(path)
    os._exit(75)


@ftqueue.remote(max_retries=0)
def big_result(path, flag, n):
    mark(path)
    wait_for_file(flag)
    return b"x" * n


@ftqueue.remote(max_retries=0)
def say(path, text):
    mark(path)
    print(text)
    print(text, file=sys.stderr)
    return os.getpid()


@ftqueue.remote(max_retries=0)
def close_stdout(path):
    mark(path)
    os.close(1)
    return os.getpid()


@ftqueue.remote(max_retries=0)
def slow(path, flag):
    mark(path)
    wait_for_file(flag)
    return "done"


# -- 1. a finished result is committed before the next task starts; a later death never
#       re-runs it ------------------------------------------------------------------------------

def test_finished_task_is_committed_before_the_next_starts_and_survives_its_death(
        driver, start_node, tmp_path):
    a_runs, b_runs, fill = tmp_path / "a", tmp_path / "b", tmp_path / "fill"
    flag = tmp_path / "kill-b"
    # 16 queued tasks: the one worker claims two at once (min(prefetch, depth / 8)): [A, B].
    a = quick.remote(a_runs, "A")
    b = die_when_told.options(max_retries=0).remote(b_runs, str(flag))
    fillers = [quick.remote(fill, i) for i in range(14)]
    ftqueue.flush_submissions()
    node = start_node(1, "--lease-timeout", "3")
    try:
        # A's result arrives while B (prefetched with it) still runs.
        assert ftqueue.get(a, timeout=20) == "A"
        wait_until(lambda: runs(b_runs), 10, "B to start on the same worker")
    finally:
        flag.write_text("go")
    with pytest.raises(WorkerCrashedError):
        ftqueue.get(b, timeout=30)
    assert ftqueue.get(fillers, timeout=30) == list(range(14))
    assert len(runs(a_runs)) == 1, "A ran again after its worker died"
    rows = ftqueue.state.get_task(a.hex())
    assert [r["state"] for r in rows] == ["FINISHED"]
    node.stop()


# -- 2. exit status 75 inside a task is a crash, charged ----------------------------------------

def test_exit_75_inside_a_task_uses_the_retry_budget(cluster, tmp_path):
    path = tmp_path / "runs"
    ref = exit_75.remote(path)
    with pytest.raises(WorkerCrashedError):
        ftqueue.get(ref, timeout=60)
    assert len(runs(path)) == 2          # max_retries=1: the first run and one retry
    rows = ftqueue.state.get_task(ref.hex())
    assert [r["error_type"] for r in rows] == ["WORKER_DIED", "WORKER_DIED"]


# -- 3. a full Redis (maxmemory, noeviction): outcomes are held, nothing re-runs ----------------



def test_full_redis_holds_outcomes_and_runs_nothing_twice(own_redis, tmp_path):
    address = own_redis.address
    admin = redis.Redis.from_url(address)
    ftqueue.init(address=address)
    node = NodeProcess(address, 2, "--lease-timeout", "5")
    path, flag = tmp_path / "runs", tmp_path / "go"
    try:
        node.wait_workers(2)
        pids = {p.pid for p in node.workers()}
        refs = [big_result.remote(path, str(flag), 200_000) for _ in range(6)]
        wait_until(lambda: len(runs(path)) == 2, 30, "two tasks running")
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)       # every write is refused from now on
        flag.write_text("go")
        wait_until(lambda: "Redis refuses writes" in node.output(), 30,
                   "the worker to say it holds its outcomes")
        admin.config_set("maxmemory", 0)
        assert all(len(v) == 200_000 for v in ftqueue.get(refs, timeout=60))
        assert len(runs(path)) == 6, "a task ran twice"
        assert pids <= {p.pid for p in node.workers()}, "a worker crashed"
        assert "accepts writes again" in node.output()
    finally:
        admin.config_set("maxmemory", 0)
        ftqueue.shutdown()
        node.stop()
        admin.close()


# -- 8. BUSY (a long script elsewhere) and corrupt records do not stop a node ---------------------

def test_busy_redis_is_waited_out(own_redis, tmp_path):
    address = own_redis.address
    admin = redis.Redis.from_url(address)
    admin.config_set("lua-time-limit", 100)     # answer BUSY after 100 ms of a script
    ftqueue.init(address=address)
    node = NodeProcess(address, 2, "--lease-timeout", "5")
    path, flag = tmp_path / "runs", tmp_path / "go"
    try:
        ref = slow.remote(path, str(flag))
        wait_until(lambda: runs(path), 30, "the task to start")
        spin = ("local t = redis.call('TIME') local stop = t[1] + 3 "
                "while tonumber(redis.call('TIME')[1]) < stop do end return 1")
        busy = subprocess.Popen([sys.executable, "-c",
                                 f"import redis; redis.Redis.from_url({address!r})"
                                 f".eval({spin!r}, 0)"], env=child_env())
        try:
            flag.write_text("go")
            busy.wait(30)
        finally:
            busy.kill()
            busy.wait()
        assert ftqueue.get(ref, timeout=30) == "done"
        assert node.process.poll() is None, "the node exited"
        assert len(runs(path)) == 1
        assert ftqueue.get(quick.remote(path, 7), timeout=30) == 7
    finally:
        ftqueue.shutdown()
        node.stop()
        admin.close()


def test_corrupt_records_are_isolated_and_the_node_keeps_serving(
        driver, start_node, rclient, tmp_path):
    # A string where a task hash belongs, for an id that holds a lease; a string where a
    # queue list and a bell belong.
    rclient.set("ftq:task:" + "ab" * 16, "garbage")
    rclient.zadd("ftq:leases", {"ab" * 16: 0})
    rclient.set("ftq:queue:bad", "garbage")
    rclient.set("ftq:bell:bad", "garbage")
    node = start_node(2, "--lease-timeout", "3", "--queues", "bad,default")
    path = tmp_path / "runs"
    refs = [quick.remote(path, i) for i in range(10)]
    assert ftqueue.get(refs, timeout=60) == list(range(10))
    assert node.process.poll() is None
    wait_until(lambda: node.process.poll() is None and rclient.hget("ftq:stats", "corrupt"),
               30, "the corrupt records to be counted")


# -- 9. a broken console harms nothing ----------------------------------------------------

def test_closed_console_fails_no_task_and_keeps_the_node(driver, redis_url, tmp_path):
    cmd = [sys.executable, "-m", "ftqueue", "worker", "--address", redis_url, "--num-workers",
           "2", "--lease-timeout", "3", "--exit-with-parent", str(os.getpid())]
    node = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
    path = tmp_path / "runs"
    try:
        assert node.stdout is not None
        node.stdout.readline()      # the node is up and printing
        node.stdout.close()         # whoever read its console went away
        refs = [say.remote(path, "x" * 1000) for _ in range(20)]
        assert len(ftqueue.get(refs, timeout=60)) == 20
        # a worker death makes the node log a line: it must survive writing it
        ref = exit_75.options(max_retries=0).remote(path)
        with pytest.raises(WorkerCrashedError):
            ftqueue.get(ref, timeout=30)
        assert ftqueue.get(say.remote(path, "still here"), timeout=30)
        assert node.poll() is None, "the node died of its closed console"
    finally:
        try:
            os.killpg(node.pid, 9)
        except ProcessLookupError:
            pass
        node.wait()


def test_task_closing_stdout_does_not_fail_later_tasks_and_its_worker_is_recycled(
        driver, start_node, tmp_path):
    node = start_node(1, "--lease-timeout", "3")
    path = tmp_path / "runs"
    pid = ftqueue.get(close_stdout.remote(path), timeout=30)
    for i in range(3):
        assert ftqueue.get(say.remote(path, f"line {i}"), timeout=30) != pid
    assert node.process.poll() is None


# -- 10. the signed envelope binds what runs -------------------------------------------

SECRET_ENV = {"FTQUEUE_SECRET": "s3cret-for-tests"}


def test_rewritten_function_field_is_refused_before_import(redis_url, rclient, tmp_path,
                                                           monkeypatch):
    monkeypatch.setenv("FTQUEUE_SECRET", SECRET_ENV["FTQUEUE_SECRET"])
    marker = tmp_path / "imported"
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "evil_mod.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\ndef run(*a):\n    return 'pwned'\n")
    ftqueue.init(address=redis_url)
    node = None
    try:
        ref = quick.options(queue="later").remote(tmp_path / "runs", 1)
        task_key = "ftq:task:" + ref.hex()
        wait_until(lambda: rclient.hget(task_key, "state"), 10, "the task in Redis")
        rclient.hset(task_key, "fn", "import:evil_mod:run")
        env = child_env(**SECRET_ENV)
        env["PYTHONPATH"] = str(module_dir) + os.pathsep + env["PYTHONPATH"]
        node = NodeProcess(redis_url, 1, "--queues", "later", env=env)
        with pytest.raises(TaskError) as info:
            ftqueue.get(ref, timeout=30)
        assert "differ from what the submitter signed" in str(info.value)
        assert not marker.exists(), "the rewritten import path was imported"
        assert not runs(tmp_path / "runs")
        assert int(rclient.hget("ftq:stats", "payload_rejected") or 0) >= 1
    finally:
        ftqueue.shutdown()
        if node is not None:
            node.stop()


def test_import_allow_refuses_other_modules(redis_url, tmp_path):
    marker = tmp_path / "imported"
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "other_mod.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\ndef run():\n    return 1\n")
    env = child_env(FTQUEUE_IMPORT_ALLOW="myapp.tasks,json")
    env["PYTHONPATH"] = str(module_dir) + os.pathsep + env["PYTHONPATH"]
    ftqueue.init(address=redis_url)
    node = NodeProcess(redis_url, 1, env=env)
    try:
        with pytest.raises(TaskError) as info:
            ftqueue.get(ftqueue.remote_function("other_mod:run").remote(), timeout=30)
        assert "FTQUEUE_IMPORT_ALLOW" in str(info.value)
        assert not marker.exists()
        allowed = ftqueue.remote_function("json:dumps").remote([1])
        assert ftqueue.get(allowed, timeout=30) == "[1]"
    finally:
        ftqueue.shutdown()
        node.stop()


# -- 11. no password on a command line or in a readable file -------------------------------------

def test_password_is_not_on_worker_command_lines_nor_in_the_health_file(tmp_path):
    password = "pw-" + os.urandom(6).hex()
    server = RedisServer.start(unix_socket=False)
    redis.Redis.from_url(server.address).config_set("requirepass", password)
    address = server.address.replace("redis://", f"redis://:{password}@")
    health = tmp_path / "health.json"
    env = child_env(FTQUEUE_ADDRESS=address)
    cmd = [sys.executable, "-m", "ftqueue", "worker", "--num-workers", "2",
           "--health-file", str(health), "--exit-with-parent", str(os.getpid())]
    node = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        wait_until(lambda: len(psutil.Process(node.pid).children()) >= 2 and health.exists(),
                   30, "the node's workers and health file")
        for proc in [psutil.Process(node.pid)] + psutil.Process(node.pid).children():
            assert password not in " ".join(proc.cmdline())
        assert stat.S_IMODE(os.stat(health).st_mode) == 0o600
        assert password not in health.read_text()
        info = json.loads(health.read_text())
        assert info["node_id"]
        ok = subprocess.run([sys.executable, "-m", "ftqueue", "health", "--file", str(health)],
                            env=env, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        try:
            os.killpg(node.pid, 9)
        except ProcessLookupError:
            pass
        node.wait()
        server.stop()


def test_stopping_a_node_waits_for_outcomes_a_full_redis_does_not_take_yet(own_redis,
                                                                           tmp_path):
    import signal

    address = own_redis.address
    admin = redis.Redis.from_url(address)
    ftqueue.init(address=address)
    node = NodeProcess(address, 1, "--lease-timeout", "5", "--grace-period", "1")
    path, flag = tmp_path / "runs", tmp_path / "go"
    try:
        ref = big_result.remote(path, str(flag), 1000)
        wait_until(lambda: runs(path), 30, "the task to start")
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        flag.write_text("go")
        wait_until(lambda: "Redis refuses writes" in node.output(), 30, "the outcome held")
        node.signal_group(signal.SIGTERM)
        wait_until(lambda: "hold finished outcomes" in node.output(), 30,
                   "the node to wait for the held outcome past its grace period")
        assert node.process.poll() is None
        admin.config_set("maxmemory", 0)
        node.process.wait(30)                    # committed, then the node is done
        assert len(ftqueue.get(ref, timeout=30)) == 1000
        assert len(runs(path)) == 1
    finally:
        admin.config_set("maxmemory", 0)
        ftqueue.shutdown()
        node.stop()
        admin.close()
