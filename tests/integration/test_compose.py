"""docker-compose.yml, proven without a Docker engine: its structure is checked, and the
worker service's own command and environment run as two local "containers" against a
test Redis; one is SIGKILLed, the other SIGTERMed, and every task still finishes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml
from conftest import child_env, wait_until

import ftqueue
import ftqueue.state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def compose():
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        return yaml.safe_load(f)


def test_compose_file_structure(compose):
    services = compose["services"]
    assert set(services) >= {"redis", "worker", "driver"}
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--appendfsync") + 1] == "everysec"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert "redis-data" in compose["volumes"]
    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "workers/Dockerfile"
    assert os.path.exists(os.path.join(ROOT, worker["build"]["context"],
                                       worker["build"]["dockerfile"]))
    assert worker["command"][:2] == ["ftqueue", "worker"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["healthcheck"]["test"] == ["CMD", "ftqueue", "health"]
    assert "test" in services["redis"]["healthcheck"]
    grace = float(worker["environment"]["FTQUEUE_GRACE_PERIOD_S"])
    stop = worker["stop_grace_period"]
    assert stop.endswith("s") and float(stop[:-1]) > grace
    assert worker["environment"]["FTQUEUE_ADDRESS"].startswith("redis://redis:")
    assert services["driver"]["profiles"] == ["demo"]
    assert services["driver"]["depends_on"]["worker"]["condition"] == "service_healthy"
    for name, service in services.items():
        for key in service:
            assert key in {"image", "build", "command", "environment", "volumes", "ports",
                           "healthcheck", "depends_on", "init", "stop_grace_period", "restart",
                           "profiles"}, (name, key)
    assert os.access(os.path.join(ROOT, "workers", "entrypoint.sh"), os.X_OK)
    with open(os.path.join(ROOT, "workers", "Dockerfile")) as f:
        dockerfile = f.read()
    assert "USER ftqueue" in dockerfile and "ENTRYPOINT" in dockerfile


class Container:
    """The worker service's command and environment, as a local process group."""

    def __init__(self, service: dict, redis_url: str, **overrides: str) -> None:
        self.health = tempfile.mktemp(prefix="ftqueue-health-", suffix=".json")
        env = child_env(**{k: str(v) for k, v in service["environment"].items()})
        env.update(FTQUEUE_ADDRESS=redis_url, FTQUEUE_HEALTH_FILE=self.health, **overrides)
        command = list(service["command"])
        if command[0] == "ftqueue" and not shutil.which("ftqueue"):
            command = [sys.executable, "-m", "ftqueue"] + command[1:]
        entrypoint = os.path.join(ROOT, "workers", "entrypoint.sh")
        self.process = subprocess.Popen([entrypoint, *command], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        self.env = env

    def healthy(self) -> bool:
        cmd = [sys.executable, "-m", "ftqueue", "health", "--file", self.health]
        return subprocess.run(cmd, env=self.env, capture_output=True).returncode == 0

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        if os.path.exists(self.health):
            os.unlink(self.health)


@ftqueue.remote
def where(seconds):
    time.sleep(seconds)
    return ftqueue.get_runtime_context().node_id


def test_worker_service_as_two_local_containers(compose, redis_url, driver, tmp_path):
    service = compose["services"]["worker"]
    fast = {"FTQUEUE_LEASE_TIMEOUT_S": "2", "FTQUEUE_GRACE_PERIOD_S": "1"}
    a = Container(service, redis_url, **fast)
    b = Container(service, redis_url, **fast)
    try:
        wait_until(a.healthy, 30, "container a to report healthy")
        wait_until(b.healthy, 30, "container b to report healthy")
        nodes = {n["node_id"]: n["pid"] for n in ftqueue.state.list_nodes()}
        by_pid = {pid: node for node, pid in nodes.items()}
        node_a = by_pid[int(json.load(open(a.health))["pid"])]

        # SIGKILL a "container" while it runs tasks: they finish on the other one.
        refs = [where.options(max_retries=1).remote(1.0) for _ in range(8)]
        wait_until(lambda: any(r["node_id"] == node_a and r["state"] == "RUNNING"
                               for r in ftqueue.state.list_tasks()), 30, "tasks running on a")
        os.killpg(a.process.pid, signal.SIGKILL)
        finished_on = ftqueue.get(refs, timeout=60)
        assert len(finished_on) == 8 and set(finished_on) - {node_a}
        assert not a.healthy()

        # SIGTERM (docker compose stop) with retries=0: the running task is handed back
        # without using a retry, and finishes on a fresh container.
        ref = where.options(max_retries=0).remote(5.0)
        wait_until(lambda: ftqueue.state.get_task(ref.hex())[-1]["state"] == "RUNNING", 30,
                   "the task to run on b")
        os.killpg(b.process.pid, signal.SIGTERM)
        assert b.process.wait(30) == 0
        c = Container(service, redis_url, **fast)
        try:
            assert ftqueue.get(ref, timeout=60)
            rows = ftqueue.state.get_task(ref.hex())
            assert [r["state"] for r in rows] == ["FAILED", "FINISHED"]
            assert "retry not charged" in rows[0]["error_message"]
        finally:
            c.stop()
    finally:
        a.stop()
        b.stop()
