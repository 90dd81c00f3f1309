"""The state API and the `ftqueue` command against a real cluster; task output; metrics;
the redis-cli commands documented in docs/redis-layout.md."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request

import pytest
import yaml
from conftest import child_env, run_script, wait_until

import ftqueue
import ftqueue.state
from ftqueue.embedded import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(redis_url, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "ftqueue", *args, "--address", redis_url],
                          capture_output=True, text=True, timeout=60, env=child_env())
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@ftqueue.remote(max_retries=2)
def crash_first(x):
    if ftqueue.get_runtime_context().attempt_number == 0:
        os._exit(1)
    return x


@ftqueue.remote
def ok(x):
    return x


@ftqueue.remote
def bad():
    raise KeyError("nope")


@ftqueue.remote
def chatty(n):
    for i in range(n):
        print(f"hello {i}")
    print("warning!", file=sys.stderr)
    return n


@pytest.fixture
def workload(cluster):
    retried = crash_first.remote(1)
    fine = [ok.remote(i) for i in range(3)]
    failed = bad.remote()
    ftqueue.get([retried] + fine)
    with pytest.raises(KeyError):
        ftqueue.get(failed)
    return {"retried": retried.hex(), "fine": [r.hex() for r in fine], "failed": failed.hex()}


def test_attempts_are_separate_rows_after_a_crash(workload, redis_url):
    out = cli(redis_url, "list", "tasks", "-f", f"task_id={workload['retried']}").stdout
    assert "Stats:" in out and "Total: 2" in out
    header = next(line for line in out.splitlines() if "TASK_ID" in line)
    for column in ("TASK_ID", "ATTEMPT", "NAME", "STATE", "JOB_ID", "NODE_ID", "ERROR_TYPE"):
        assert column in header          # the compact table for people
    rows = json.loads(cli(redis_url, "list", "tasks", "-f", f"task_id={workload['retried']}",
                          "--format", "json").stdout)
    assert list(rows[0]) == ["task_id", "attempt_number", "name", "state", "job_id", "actor_id",
                             "type", "func_or_class_name", "parent_task_id", "node_id",
                             "worker_id", "error_type"]   # Ray's fields
    rows = [line.split() for line in out.splitlines() if workload["retried"] in line]
    assert rows[0][:2] == ["0", workload["retried"]] and "WORKER_DIED" in rows[0]
    assert rows[1][2] == "1" and "FINISHED" in rows[1]


def test_filters_equal_not_equal_and_combined(workload, redis_url):
    rows = json.loads(cli(redis_url, "list", "tasks", "--format", "json").stdout)
    assert len(rows) == 2 + 3 + 1   # the retried task has two attempt rows
    failed = json.loads(cli(redis_url, "list", "tasks", "-f", "state=FAILED",
                            "--format", "json").stdout)
    assert {r["error_type"] for r in failed} == {"WORKER_DIED", "TASK_EXECUTION_EXCEPTION"}
    not_ok = json.loads(cli(redis_url, "list", "tasks", "-f", "name!=ok", "--format",
                            "json").stdout)
    assert {r["name"] for r in not_ok} == {"crash_first", "bad"}
    both = yaml.safe_load(cli(redis_url, "list", "tasks", "-f", "state=FAILED", "-f",
                              "name=bad", "--format", "yaml").stdout)
    assert [(r["task_id"], r["error_type"]) for r in both] == [
        (workload["failed"], "TASK_EXECUTION_EXCEPTION")]
    limited = json.loads(cli(redis_url, "list", "tasks", "--limit", "2", "--format",
                             "json").stdout)
    assert len(limited) == 2
    detail = json.loads(cli(redis_url, "list", "tasks", "--detail", "-f",
                            f"task_id={workload['failed']}", "--format", "json").stdout)
    assert "KeyError" in detail[0]["error_message"] and detail[0]["queue"] == "default"
    assert detail[0]["end_time"] >= detail[0]["start_time"]


@pytest.mark.parametrize("args, message", [
    (["list", "tasks", "-f", "colour=red"], "invalid filter key 'colour'"),
    (["list", "tasks", "-f", "state=SLEEPING"], "unknown state 'SLEEPING'"),
    (["list", "tasks", "-f", "nonsense"], "expected KEY=VALUE"),
    (["get", "task", "not/an id"], "not a task id"),
    (["get", "task", "ab" * 16], "not found"),
    (["cancel", "ab" * 16], "not found"),
])
def test_bad_input_is_one_line_exit_1(redis_url, args, message):
    proc = cli(redis_url, *args, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_unreachable_address_and_usage_errors():
    proc = subprocess.run([sys.executable, "-m", "ftqueue", "list", "tasks", "--address",
                           "redis://127.0.0.1:1"], capture_output=True, text=True, env=child_env())
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "cannot reach Redis" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ftqueue", "list", "things"],
                          capture_output=True, text=True, env=child_env())
    assert proc.returncode == 2


def test_get_summary_nodes_workers_status(workload, redis_url, cluster):
    attempts = yaml.safe_load(cli(redis_url, "get", "task", workload["retried"]).stdout)
    assert [a["state"] for a in attempts] == ["FAILED", "FINISHED"]
    summary = json.loads(cli(redis_url, "summary", "tasks", "--format", "json").stdout)
    assert summary["ok"] == {"FINISHED": 3} and summary["bad"] == {"FAILED": 1}
    assert "Tasks Summary" in cli(redis_url, "summary", "tasks").stdout
    nodes = json.loads(cli(redis_url, "list", "nodes", "--format", "json").stdout)
    assert [n["state"] for n in nodes] == ["ALIVE"] and nodes[0]["pid"] == cluster.pid
    workers = json.loads(cli(redis_url, "list", "workers", "--format", "json").stdout)
    alive = [w for w in workers if w["state"] == "ALIVE"]
    assert len(alive) == 2 and {w["pid"] for w in alive} == {p.pid for p in cluster.workers()}
    dead = [w for w in workers if w["state"] == "DEAD"]
    assert dead and "SIGKILL" not in dead[0]["exit"] and "exit code 1" in dead[0]["exit"]
    wait_until(lambda: sum(w["tasks_run"] for w in ftqueue.state.list_workers()) >= 5, 10,
               "the workers' task counts to be published")
    status = json.loads(cli(redis_url, "status", "--format", "json").stdout)
    assert status["nodes_alive"] == 1 and status["workers_alive"] == 2
    assert status["queues"] == {"default": 0}
    assert status["recent_retries"] == {"WORKER_DIED": 1}
    assert status["recent_failures"] == {"TASK_EXECUTION_EXCEPTION": 1}
    assert "nodes alive: 1" in cli(redis_url, "status").stdout


def test_cancel_from_the_shell(cluster, redis_url):
    @ftqueue.remote
    def long():
        import time
        time.sleep(60)

    ref = long.remote()
    wait_until(lambda: ftqueue.state.get_task(ref.hex())[-1]["state"] == "RUNNING", 30,
               "the task to run")
    assert f"{ref.hex()} requested" in cli(redis_url, "cancel", ref.hex()).stdout
    with pytest.raises(ftqueue.exceptions.TaskCancelledError):
        ftqueue.get(ref, timeout=30)


def test_task_output_reaches_logs_and_the_driver_console(redis_url, start_node):
    start_node(1)
    result = run_script(f"""
import sys, ftqueue
ftqueue.init(address={redis_url!r})

@ftqueue.remote
def chatty(n):
    for i in range(n):
        print(f"hello {{i}}")
    print("warning!", file=sys.stderr)
    return n

ref = chatty.remote(3)
assert ftqueue.get(ref) == 3
import time; time.sleep(1.0)
print("ID", ref.hex())
ftqueue.shutdown()
""")
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.split("ID ")[1].strip()
    assert re.search(r"^\(chatty pid=\d+, host=\S+\) hello 2$", result.stdout, re.M)
    assert re.search(r"^\(chatty pid=\d+, host=\S+\) warning!$", result.stderr, re.M)
    logs = cli(redis_url, "logs", task_id).stdout
    assert logs.splitlines() == ["hello 0", "hello 1", "hello 2", "warning!"]
    assert cli(redis_url, "logs", task_id, "--attempt", "3", check=False).returncode == 1


def test_log_to_driver_false_keeps_the_console_quiet(redis_url, start_node):
    start_node(1)
    result = run_script(f"""
import ftqueue
ftqueue.init(address={redis_url!r}, log_to_driver=False)

@ftqueue.remote
def chatty():
    print("should not be echoed")

ftqueue.get(chatty.remote())
import time; time.sleep(1.0)
""")
    assert result.returncode == 0, result.stderr
    assert "should not be echoed" not in result.stdout + result.stderr


def test_output_is_bounded(driver, start_node, rclient):
    env = child_env(FTQUEUE_LOG_MAX_BYTES="1000")
    start_node(1, env=env)

    @ftqueue.remote
    def flood():
        for _ in range(2000):
            print("x" * 50)

    ref = flood.remote()
    ftqueue.get(ref, timeout=30)
    stored = rclient.get(f"ftq:log:{ref.hex()}:0")
    assert 1000 <= len(stored) < 1200 and stored.endswith("truncated at FTQUEUE_LOG_MAX_BYTES]\n")


def test_metrics_scrape_after_a_workload(driver, start_node):
    port = free_port()
    start_node(2, "--metrics-port", str(port))
    ftqueue.get([ok.remote(i) for i in range(5)])
    with pytest.raises(KeyError):
        ftqueue.get(bad.remote())
    ftqueue.get(crash_first.remote(0))
    ok.options(delay_s=3600).remote(0)

    def scrape():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        except OSError:
            return None

    text = wait_until(scrape, 30, "the metrics endpoint").decode()
    assert 'ftqueue_tasks_total{error_type="",state="FINISHED"} 6.0' in text
    assert 'ftqueue_tasks_total{error_type="TASK_EXECUTION_EXCEPTION",state="FAILED"} 1.0' in text
    assert 'ftqueue_retries_total{cause="WORKER_DIED"} 1.0' in text
    assert 'ftqueue_queue_depth{queue="default"} 0.0' in text
    assert 'ftqueue_delayed_tasks{queue="default"} 1.0' in text
    assert "ftqueue_running_tasks 0.0" in text and "ftqueue_leases_expired_total" in text

    def durations_observed():   # the node hears of a task's end just after its commit
        found = re.search(r"^ftqueue_task_duration_seconds_count (\S+)$", scrape().decode(), re.M)
        return found and float(found.group(1)) >= 7

    wait_until(durations_observed, 10, "7 task durations in the histogram")


def test_documented_redis_cli_commands_answer(workload, redis_server, cluster):
    """Every `redis-cli …` line of docs/redis-layout.md, run with the real redis-cli."""
    from ftqueue.embedded import find_redis_server

    redis_cli = os.path.join(os.path.dirname(find_redis_server()), "redis-cli")
    with open(os.path.join(ROOT, "docs", "redis-layout.md")) as f:
        commands = [line.split("#")[0].strip() for line in f if line.startswith("redis-cli ")]
    assert len(commands) >= 8
    socket_path = redis_server.address[len("unix://"):]
    answers = {}
    for command in commands:
        command = command.replace("<task_id>", workload["retried"]).split("|")[0].strip()
        args = [a for a in shlex.split(command)[1:] if a not in ("-u", "$FTQUEUE_ADDRESS")]
        proc = subprocess.run([redis_cli, "-s", socket_path, *args], capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 0 and "ERR" not in proc.stdout, (command, proc.stdout)
        answers[" ".join(args[:2])] = proc.stdout
    assert answers["LLEN ftq:queue:default"].strip() == "0"
    assert "WORKER_DIED" in answers[f"LRANGE ftq:attempts:{workload['retried']}"]
    assert "FINISHED" in answers[f"HGETALL ftq:task:{workload['retried']}"]
    assert "retries:WORKER_DIED" in answers["HGETALL ftq:stats"]
    assert "ftq:task:" in answers["--scan --pattern"]
