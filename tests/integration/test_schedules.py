"""Schedules fired by real nodes: three nodes at once fire each tick exactly once; the CLI
adds, lists and removes them, and `ftqueue status` shows them."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import child_env, runs, wait_until

import ftqueue


@ftqueue.remote(max_retries=0)
def beat(path: str) -> None:
    with open(path, "a") as f:
        f.write(f"{ftqueue.get_runtime_context().get_task_id()}\n")


def cli(redis_url, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "ftqueue", *args, "--address", redis_url],
                          capture_output=True, text=True, timeout=60, env=child_env())
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_three_nodes_fire_each_tick_exactly_once(driver, start_node, tmp_path):
    path = str(tmp_path / "beats")
    nodes = [start_node(1, "--lease-timeout", "3") for _ in range(3)]
    for node in nodes:
        node.wait_workers(1)
    shown = ftqueue.schedule("beat", beat, path, every_s=1)
    assert shown["every_s"] == 1.0 and shown["name"] == "beat"
    wait_until(lambda: len(runs(path)) >= 5, 30, "five ticks")
    assert ftqueue.unschedule("beat") is True
    assert ftqueue.list_schedules() == []
    fired = [r["task_id"] for r in ftqueue.state.list_tasks(limit=1000)
             if r["task_id"].startswith("sched:beat:")]
    wait_until(lambda: len(runs(path)) == len(fired), 30, "every fired tick to run")
    ran = runs(path)
    assert sorted(ran) == sorted(fired) and len(set(ran)) == len(ran)   # once per tick
    ticks = sorted(int(t.rsplit(":", 1)[1]) for t in ran)
    assert all(b - a == 1000 for a, b in zip(ticks, ticks[1:])), ticks   # none skipped


def test_schedules_from_the_cli_and_in_status(driver, start_node, redis_url, tmp_path):
    path = str(tmp_path / "marks")
    start_node(1, "--lease-timeout", "3")
    out = cli(redis_url, "schedule", "add", "nightly", "--cron", "0 3 * * *",
              "conftest:mark", json.dumps([path])).stdout
    assert "next run" in out and "03:00:00 UTC" in out
    cli(redis_url, "schedule", "add", "often", "--every", "1", "conftest:mark",
        json.dumps([path]))
    wait_until(lambda: runs(path), 30, "a run of the 'often' schedule")
    listed = json.loads(cli(redis_url, "schedule", "list", "--format", "json").stdout)
    assert {s["name"]: s["when"] for s in listed} == {"nightly": "cron 0 3 * * *",
                                                     "often": "every 1 s"}
    status = cli(redis_url, "status").stdout
    assert "schedule nightly: mark cron 0 3 * * *" in status
    assert {r["name"] for r in ftqueue.list_schedules()} == {"nightly", "often"}
    cli(redis_url, "schedule", "remove", "often")
    proc = cli(redis_url, "schedule", "remove", "often", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "ftqueue: error: no schedule named often"
    for bad, message in [(["add", "x", "conftest:mark"], "--cron EXPR or --every S"),
                         (["add", "x", "--cron", "nope", "conftest:mark"], "not a cron"),
                         (["add", "x", "--every", "5", "conftest:mark", "{bad"], "not JSON")]:
        proc = cli(redis_url, "schedule", *bad, check=False)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert [s["name"] for s in ftqueue.list_schedules()] == ["nightly"]
