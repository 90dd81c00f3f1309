"""Serving the dashboard (`ftqueue dashboard`), and running one beside `ftqueue start` as a
child process in its own process group, ended with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Callable

from ..exceptions import FtqueueError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT_S = 20.0
INSTALL_HINT = "the dashboard needs its extra: pip install 'ftqueue[dashboard]'"


def available() -> bool:
    """Whether the optional web stack is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None
               for m in ("starlette", "uvicorn", "jinja2"))


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    return f"http://{shown}:{port}"


def exposure_warning(host: str, token: str | None, allow_actions: bool) -> str:
    """'' when the setup is safe as it is; else what is exposed, for the log."""
    if host in LOOPBACK:
        return ""
    if not token:
        return (f"WARNING: the dashboard listens on {host} without FTQUEUE_DASHBOARD_TOKEN: "
                "anyone who reaches its port can read every task, its arguments' errors, "
                "tracebacks and output (see docs/security.md)")
    return (f"note: the dashboard listens on {host} over plain HTTP: put it behind TLS (a "
            "reverse proxy) so the token does not cross the network in clear")


def serve(address: str, namespace: str, host: str, port: int, allow_actions: bool,
          token: str | None, log: Callable[[str], None], announce: bool = True) -> int:
    """Serve until stopped. `announce`: log the URL (its parent prints it otherwise)."""
    if not available():
        raise FtqueueError(INSTALL_HINT)
    import uvicorn

    from ..state import StateReader
    from ..store import Store, connect
    from .app import create_app
    from .auth import Access

    if allow_actions and not token:
        raise FtqueueError("--allow-actions needs FTQUEUE_DASHBOARD_TOKEN: actions are "
                           "only for whoever holds it")
    warning = exposure_warning(host, token, allow_actions)
    if warning:
        log(warning)
    reader = StateReader(Store(connect(address), namespace))
    hosts = ["127.0.0.1", "localhost", "::1", "[::1]"] if host in LOOPBACK else ["*"]
    app = create_app(reader, Access(token, allow_actions), hosts)
    if announce:
        mode = "actions allowed with the token" if allow_actions else "read-only"
        log(f"dashboard at {url_of(host, port)} ({mode})")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", port))
            return True
        except OSError:
            return False


class DashboardProcess:
    """`ftqueue dashboard` as a child of `ftqueue start` (or of a test)."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url

    @classmethod
    def start(cls, address: str, namespace: str, host: str = "127.0.0.1",
              port: int | None = None, *extra: str,
              env: dict[str, str] | None = None) -> DashboardProcess:
        from ..embedded import free_port

        if port is None:
            from ..settings import DEFAULT_DASHBOARD_PORT

            port = DEFAULT_DASHBOARD_PORT if port_free(host, DEFAULT_DASHBOARD_PORT) \
                else free_port()
        cmd = [sys.executable, "-m", "ftqueue", "dashboard", "--address", address,
               "--namespace", namespace, "--host", host, "--port", str(port),
               "--exit-with-parent", str(os.getpid()), *extra]
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True,
                                   env=env)
        dashboard = cls(process, url_of(host, port))
        try:
            dashboard.wait_ready()
        except BaseException:
            dashboard.stop()
            raise
        return dashboard

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FtqueueError(f"the dashboard exited at start ({self.process.returncode})")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise FtqueueError(f"the dashboard did not answer at {self.url} "
                           f"within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(5)
                return
            except subprocess.TimeoutExpired:
                continue
