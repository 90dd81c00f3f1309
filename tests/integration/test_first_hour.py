"""What a newcomer meets in the first hour: Ctrl-C of a busy node, `ftqueue start --host`,
the documented shell lines run as written, dead nodes' workers, cut listings, tracebacks
and results from the CLI, human formats, unserved queues. CLI output is checked as text;
signals are sent to real processes."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import redis
import yaml
from conftest import NodeProcess, child_env, wait_for_file, wait_until

import ftqueue
import ftqueue.state
from ftqueue.embedded import RedisServer, find_redis_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(address, *args, check=True, env=None):
    proc = subprocess.run([sys.executable, "-m", "ftqueue", *args, "--address", address],
                          capture_output=True, text=True, timeout=60, env=env or child_env())
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc



@ftqueue.remote(max_retries=0)
def block(started, flag):
    open(started, "w").close()
    wait_for_file(flag)
    return "done"


@ftqueue.remote
def ok(x):
    return x


@ftqueue.remote(max_retries=0)
def bad():
    raise KeyError("nope")


@ftqueue.remote(max_retries=0)
def silent():
    return None


# -- 1. Ctrl-C of a busy node ------------------------------------------------------------------

def test_ctrl_c_says_what_it_waits_for_and_a_second_one_stops_now(driver, start_node, rclient,
                                                                  tmp_path):
    node = start_node(1, "--grace-period", "60")
    started, flag = tmp_path / "started", tmp_path / "flag"
    ref = block.remote(str(started), str(flag))
    wait_until(started.exists, 30, "the task to start")
    node.signal_group(signal.SIGINT)        # what a terminal sends the foreground group
    wait_until(lambda: "stopping: waiting up to 60 s for 1 running task(s); Ctrl-C again to "
               "stop now" in node.output(), 10, "the stopping line")
    assert node.process.poll() is None      # still waiting for its task
    t0 = time.monotonic()
    node.signal_group(signal.SIGINT)
    node.process.wait(10)
    assert time.monotonic() - t0 < 10
    assert "stopping now" in node.output()
    rows = ftqueue.state.get_task(ref.hex())
    assert rows[-1]["state"] == "PENDING_NODE_ASSIGNMENT"       # back in the queue
    assert "retry not charged" in rows[0]["error_message"]
    assert rclient.hget(f"ftq:task:{ref.hex()}", "retries") == "0"


def test_node_whose_redis_is_gone_exits_promptly_on_ctrl_c(tmp_path):
    server = RedisServer.start(unix_socket=True)
    node = NodeProcess(server.address, 1)
    try:
        node.wait_workers(1)
        wait_until(lambda: "serving queues" in node.output(), 30, "the node to start")
        server.stop()
        t0 = time.monotonic()
        node.signal_group(signal.SIGINT)
        node.process.wait(15)
        assert time.monotonic() - t0 < 8, node.output()
    finally:
        node.stop()
        server.stop()


# -- 2. ftqueue start --host -------------------------------------------------------------------

def test_start_with_host_prints_an_address_for_other_hosts_and_warns():
    proc = subprocess.Popen([sys.executable, "-m", "ftqueue", "start", "--host", "0.0.0.0",
                             "--num-workers", "1"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(), start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        local = lines[2].split("=", 1)[1].strip()
        assert lines[3].startswith("from other hosts")
        remote = lines[4].split("=", 1)[1].strip()
        assert remote.startswith("redis://") and "127.0.0.1" not in remote
        assert remote.rsplit(":", 1)[1] == local.rsplit(":", 1)[1]
        warning = proc.stderr.readline()
        assert "without a password" in warning
        assert redis.Redis.from_url(local).ping()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- 3. the documented shell lines run as written ----------------------------------------------

def shell_lines(path: str, prefixes: tuple[str, ...]) -> list[str]:
    with open(os.path.join(ROOT, path)) as f:
        return [line.split(" #")[0].strip() for line in f
                if line.startswith(prefixes) and "docker" not in line]


def test_documented_redis_cli_and_ftqueue_lines_run_as_written(tmp_path):
    """redis-cli lines of docs/redis-layout.md and the README, and the README's `ftqueue`
    inspection lines, through a shell, with FTQUEUE_ADDRESS as `ftqueue start` prints it."""
    server = RedisServer.start(unix_socket=False)
    node = NodeProcess(server.address, 1)
    ftqueue.init(address=server.address)
    try:
        failed = bad.remote()
        with pytest.raises(KeyError):
            ftqueue.get(failed, timeout=60)
        task_id = failed.hex()
        env = child_env(FTQUEUE_ADDRESS=server.address)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
        lines = (shell_lines("docs/redis-layout.md", ("redis-cli ",))
                 + shell_lines("README.md", ("redis-cli ", "ftqueue list", "ftqueue get",
                                             "ftqueue summary", "ftqueue status",
                                             "ftqueue logs")))
        assert len(lines) >= 12
        for line in lines:
            command = (line.replace("<task_id>", task_id).replace("TASK_ID", task_id)
                       .replace("[--attempt N]", "").replace("[--force]", ""))
            if command.startswith("ftqueue"):
                command = f"{shlex.quote(sys.executable)} -m {command}"
            proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                  timeout=60, env=env)
            assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, \
                (line, proc.stdout, proc.stderr)
            assert not proc.stdout.startswith("ERR") and "Invalid URI" not in proc.stderr, line
    finally:
        ftqueue.shutdown()
        node.stop()
        server.stop()


def test_the_package_ships_a_redis_cli():
    assert os.access(os.path.join(os.path.dirname(find_redis_server()), "redis-cli"), os.X_OK)


# -- 4. workers of a dead node, workers after Redis restarts empty -----------------------------

def test_sigkilled_nodes_workers_are_dead_when_its_lease_expires(driver, start_node, redis_url):
    node = start_node(2, "--lease-timeout", "2")
    assert ftqueue.get(ok.remote(1), timeout=30) == 1
    wait_until(lambda: sum(w["state"] == "ALIVE" for w in ftqueue.state.list_workers()) == 2,
               10, "two live workers")
    node.signal_group(signal.SIGKILL)
    wait_until(lambda: all(w["state"] == "DEAD" for w in ftqueue.state.list_workers()), 10,
               "the dead node's workers shown dead")
    assert all(n["state"] == "DEAD" for n in ftqueue.state.list_nodes())
    status = yaml.safe_load(cli(redis_url, "status", "--format", "yaml").stdout)
    assert status["workers_alive"] == 0 and status["nodes_alive"] == 0


def test_workers_are_listed_again_after_redis_restarts_empty(driver, start_node, redis_url,
                                                             rclient):
    start_node(2, "--lease-timeout", "3")
    wait_until(lambda: len(ftqueue.state.list_workers()) == 2, 30, "two workers listed")
    rclient.flushall()
    wait_until(lambda: sum(w["state"] == "ALIVE" for w in ftqueue.state.list_workers()) == 2,
               30, "the workers to register again")


# -- 5, 6, 8. listings, tracebacks, results, human formats -------------------------------------

def test_cut_listing_says_so_and_the_table_is_compact(driver, start_node, redis_url):
    start_node(2)
    assert ftqueue.get([ok.remote(i) for i in range(5)], timeout=60) == list(range(5))
    out = cli(redis_url, "list", "tasks", "--limit", "2").stdout
    assert "showing 2 rows of 5 tasks (use --limit)" in out
    header = next(line for line in out.splitlines() if "TASK_ID" in line)
    assert "ACTOR_ID" not in header and "FUNC_OR_CLASS_NAME" not in header
    assert header.split() == ["TASK_ID", "ATTEMPT", "NAME", "STATE", "ERROR_TYPE", "NODE_ID",
                              "JOB_ID"]
    full = cli(redis_url, "list", "tasks").stdout
    assert "showing" not in full
    rows = yaml.safe_load(cli(redis_url, "list", "tasks", "--format", "yaml").stdout)
    assert "actor_id" in rows[0] and "func_or_class_name" in rows[0]   # Ray's fields kept


def test_get_task_shows_the_traceback_and_iso_times_get_result_and_empty_logs(
        driver, start_node, redis_url):
    start_node(1)
    failed, fine, quiet = bad.remote(), ok.remote({"a": 1}), silent.remote()
    with pytest.raises(KeyError):
        ftqueue.get(failed, timeout=60)
    ftqueue.get([fine, quiet], timeout=60)
    shown = yaml.safe_load(cli(redis_url, "get", "task", failed.hex()).stdout)
    assert "Traceback" in shown[-1]["traceback"] and "KeyError: 'nope'" in shown[-1]["traceback"]
    assert "ftqueue/" not in shown[-1]["traceback"]       # the task's own frames only
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$", shown[-1]["start_time"])
    assert shown[-1]["duration_s"] >= 0
    assert cli(redis_url, "get", "result", fine.hex()).stdout.strip() == "{'a': 1}"
    err = cli(redis_url, "get", "result", failed.hex(), check=False)
    assert err.returncode == 1 and "KeyError" in err.stderr and not err.stdout
    logs = cli(redis_url, "logs", quiet.hex())
    assert logs.stdout == "" and "printed nothing" in logs.stderr


# -- 7. a signing mismatch names its cause -----------------------------------------------------

def test_signing_mismatch_names_the_workers_refusal(redis_url, monkeypatch):
    monkeypatch.setenv("FTQUEUE_SECRET", "driver-only-secret")
    ftqueue.init(address=redis_url)
    env = child_env()
    env.pop("FTQUEUE_SECRET")
    node = NodeProcess(redis_url, 1, env=env)            # no secret on the worker
    try:
        with pytest.raises(Exception) as info:
            ftqueue.get(ok.remote(1), timeout=60)
        text = str(info.value)
        assert "failed on its worker" in text and "no FTQUEUE_SECRET is configured" in text
    finally:
        ftqueue.shutdown()
        node.stop()


# -- 10. a queue nobody serves -----------------------------------------------------------------

def test_status_names_queues_with_work_and_no_consumer(driver, start_node, redis_url):
    start_node(1)
    ok.options(queue="nobody").remote(1)
    ftqueue.flush_submissions()
    out = cli(redis_url, "status").stdout
    assert "no live node serves nobody" in out
    assert yaml.safe_load(cli(redis_url, "status", "--format", "yaml").stdout)[
        "unserved_queues"] == ["nobody"]


def test_a_waiting_driver_warns_once_of_a_queue_nobody_serves(redis_url, start_node):
    start_node(1)
    code = f"""
import ftqueue
ftqueue.init(address={redis_url!r})

@ftqueue.remote
def f():
    return 1

try:
    ftqueue.get(f.options(queue="nobody").remote(), timeout=8)
except ftqueue.exceptions.GetTimeoutError:
    print("timed out")
"""
    from conftest import run_script

    proc = run_script(code, timeout=60)
    assert "timed out" in proc.stdout
    assert proc.stderr.count("which no live node serves") == 1, proc.stderr
