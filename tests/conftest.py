"""Shared fixtures: a real redis-server started by the tests, worker nodes as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterator

import psutil
import pytest
import redis

import ftqueue
from ftqueue.embedded import RedisServer

HERE = os.path.dirname(os.path.abspath(__file__))
pytest_plugins = ["clusterkit"]     # the Redis Cluster fixtures


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               interval: float = 0.02) -> object:
    """Poll `predicate` until it is truthy; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def runs(path: object) -> list[str]:
    """The execution records tasks appended to `path` (one pid per run)."""
    try:
        with open(str(path)) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def mark(path: object) -> int:
    """Record one execution (from inside a task); return how many there were before it."""
    before = len(runs(path))
    with open(str(path), "a") as f:
        f.write(f"{os.getpid()}\n")
    return before


def wait_for_file(path: object, timeout: float = 120.0) -> None:
    """Inside a task: block until the test creates `path` (its release signal)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(str(path)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FTQUEUE_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update(extra)
    return env


class NodeProcess:
    """`ftqueue worker` as a real process in its own process group."""

    def __init__(self, address: str, num_workers: int = 2, *args: str,
                 env: dict[str, str] | None = None, prelude: str = "") -> None:
        """`prelude`: Python run in the node's process before it starts (to patch it)."""
        self.log = tempfile.NamedTemporaryFile(prefix="ftqueue-node-", suffix=".log", delete=False)
        start = (["-c", f"{prelude}\nimport sys\nfrom ftqueue.cli import main\n"
                        "sys.exit(main(sys.argv[1:]))"] if prelude else ["-m", "ftqueue"])
        cmd = [sys.executable, *start, "worker", "--address", address,
               "--num-workers", str(num_workers), "--exit-with-parent", str(os.getpid()), *args]
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env or child_env(),
                                        start_new_session=True)
        self.pid = self.process.pid

    def workers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []

    def wait_workers(self, n: int, timeout: float = 30) -> list[psutil.Process]:
        return wait_until(lambda: len(self.workers()) >= n and self.workers(), timeout,
                          f"{n} worker processes of node {self.pid}")  # type: ignore[return-value]

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def output(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        """End the node and every process it started, whatever state they are in."""
        group = [self.pid] + [p.pid for p in self.workers()]
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGKILL)
        for pid in group:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()
        if os.path.exists(self.log.name):
            os.unlink(self.log.name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer.start(unix_socket=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: object) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to freeze, fill or kill; thawed and ended after."""
    server = RedisServer.start(unix_socket=True, directory=os.path.join(str(tmp_path), "redis"))
    try:
        yield server
    finally:
        try:
            os.kill(server.process.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.address)
    client.flushall()
    client.close()
    yield redis_server.address


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def start_node(redis_url: str) -> Iterator[Callable[..., NodeProcess]]:
    nodes: list[NodeProcess] = []

    def start(num_workers: int = 2, *args: str, env: dict[str, str] | None = None) -> NodeProcess:
        node = NodeProcess(redis_url, num_workers, *args, env=env)
        nodes.append(node)
        return node

    try:
        yield start
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def driver(redis_url: str) -> Iterator[object]:
    ftqueue.init(address=redis_url)
    try:
        yield ftqueue
    finally:
        ftqueue.shutdown()


@pytest.fixture
def cluster(driver: object, start_node: Callable[..., NodeProcess]) -> Iterator[NodeProcess]:
    """A driver connected to a test Redis with one 2-worker node serving it."""
    node = start_node(2, "--lease-timeout", "3", "--grace-period", "5")
    yield node


def run_script(code: str, timeout: float = 120, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess:
    """Run Python code in a fresh process (its own group, killed on the way out)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    proc = subprocess.Popen([sys.executable, f.name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or child_env(),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        os.unlink(f.name)


@pytest.fixture
def start_dashboard(redis_url: str) -> Iterator[Callable[..., object]]:
    """`ftqueue dashboard` as a real process on a free loopback port; ended after the test."""
    from ftqueue.dashboard.server import DashboardProcess
    from ftqueue.embedded import free_port

    started: list[DashboardProcess] = []

    def start(*args: str, token: str | None = None) -> DashboardProcess:
        env = child_env(**({"FTQUEUE_DASHBOARD_TOKEN": token} if token else {}))
        dashboard = DashboardProcess.start(redis_url, "ftq", "127.0.0.1", free_port(), *args,
                                           env=env)
        started.append(dashboard)
        return dashboard

    try:
        yield start
    finally:
        for dashboard in started:
            dashboard.stop()
