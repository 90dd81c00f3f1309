"""`ftqueue status --watch`: a live terminal view that redraws until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from conftest import child_env

import ftqueue


@ftqueue.remote
def nothing():
    return None


def read_until(proc, text):
    """Lines of the watch's output up to the first that contains `text`."""
    seen = []
    while True:
        line = proc.stdout.readline()
        assert line, f"the watch ended before showing {text!r}: {seen[-10:]}"
        seen.append(line)
        if text in line:
            return seen


def test_status_watch_redraws_as_the_cluster_changes(driver, redis_url):
    nothing.options(queue="watched").remote().hex()     # hex(): the task is in Redis
    proc = subprocess.Popen([sys.executable, "-m", "ftqueue", "status", "--watch", "--interval",
                             "0.2", "--address", redis_url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(),
                            start_new_session=True)
    try:
        first = read_until(proc, "queued: watched=1")
        assert any("\x1b[H\x1b[2J" in line for line in first), "no screen redraw"
        assert any("Ctrl-C to stop" in line for line in first)
        nothing.options(queue="watched").remote().hex()
        read_until(proc, "queued: watched=2")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        assert "Traceback" not in proc.stderr.read()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
