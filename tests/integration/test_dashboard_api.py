"""The dashboard's JSON API and pages over HTTP, against a real Redis, real worker nodes and
a real `ftqueue dashboard` process: what each endpoint answers, paging by cursor, the task
page's attempts/output/traceback/links, errors for bad input, the token and the cancel
action. (The same pages in a real browser: test_dashboard_browser.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest
from conftest import child_env, mark, run_script, runs, wait_for_file, wait_until

import ftqueue

pytest.importorskip("starlette", reason="the dashboard extra is not installed")

TOKEN = "s3cret-token-for-tests"


def fetch(url, *, method="GET", headers=None, body=None):
    """(status, parsed JSON or text, headers) without raising on 4xx/5xx."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as r:
            status, raw, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), e.headers
    text = raw.decode()
    if hdrs.get("content-type", "").startswith("application/json"):
        return status, json.loads(text), hdrs
    return status, text, hdrs


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def newest_first(rows):
    """Task ids in the order of the listing index: creation time, then id, descending."""
    order = sorted({(r["creation_time"], r["task_id"]) for r in rows}, reverse=True)
    return [task_id for _, task_id in order]


@ftqueue.remote
def echo(x):
    print(f"echo says {x}")
    return x


@ftqueue.remote(max_retries=0)
def boom():
    raise ValueError("boom from the dashboard test")


@ftqueue.remote(max_retries=1)
def crash_once(path):
    if mark(path) == 0:
        os._exit(1)
    return "second time"


@ftqueue.remote
def parent_of_one():
    return ftqueue.get(echo.remote("child"))


@ftqueue.remote
def add(a, b):
    return a + b


@ftqueue.remote
def hold(path):
    mark(path + ".started")
    wait_for_file(path)
    return "released"


def test_api_answers_every_view(cluster, start_dashboard, tmp_path):
    dash = start_dashboard()
    refs = [echo.remote(i) for i in range(3)]
    failed = boom.remote()
    retried = crash_once.remote(str(tmp_path / "runs"))
    assert ftqueue.get(refs) == [0, 1, 2]
    assert ftqueue.get(retried) == "second time"
    with pytest.raises(ValueError):
        ftqueue.get(failed)

    status, health, _ = fetch(dash.url + "/healthz")
    assert (status, health) == (200, {"ok": True})

    # The crashed worker's replacement registers with the node's next heartbeat.
    summary = wait_until(lambda: (lambda s: s["workers_alive"] == 2 and s)(
        fetch(dash.url + "/api/summary")[1]), 30, "two live workers again")
    assert summary["nodes_alive"] == 1 and summary["workers_dead"] == 1
    assert summary["tasks_stored"] == 5
    minute = summary["throughput"]
    assert len(minute["finished"]) == 60
    # The per-minute counters the scripts keep: 4 finished, 1 failed, 1 retried (the crash).
    assert sum(minute["finished"]) == 4 and sum(minute["failed"]) == 1
    assert sum(minute["retried"]) == 1

    status, nodes, _ = fetch(dash.url + "/api/nodes")
    assert status == 200 and nodes["nodes"][0]["pid"] == cluster.pid
    pids = {p.pid for p in cluster.workers()}
    alive = [w for w in nodes["workers"] if w["state"] == "ALIVE"]
    assert {w["pid"] for w in alive} <= pids and alive
    assert all(w["rss_bytes"] > 0 and w["uptime_s"] is not None for w in alive)

    status, tasks, _ = fetch(dash.url + "/api/tasks")
    assert status == 200
    ids = list(dict.fromkeys(r["task_id"] for r in tasks["rows"]))
    # Newest first (tasks submitted in one burst share a creation time, then ids order
    # them); the retried task has two rows, one per attempt.
    assert sorted(ids) == sorted(r.hex() for r in (*refs, failed, retried))
    assert ids == newest_first(tasks["rows"])
    assert [r["attempt_number"] for r in tasks["rows"] if r["task_id"] == retried.hex()] == [0, 1]

    status, only_failed, _ = fetch(dash.url + "/api/tasks?filter=state=FAILED")
    assert {(r["task_id"], r["error_type"]) for r in only_failed["rows"]} == {
        (failed.hex(), "TASK_EXECUTION_EXCEPTION"), (retried.hex(), "WORKER_DIED")}
    assert only_failed["indexed"] is True

    status, by_name, _ = fetch(dash.url + "/api/tasks?filter=name=echo&filter=state!=FAILED")
    assert sorted(r["task_id"] for r in by_name["rows"]) == sorted(r.hex() for r in refs)
    assert by_name["indexed"] is False and by_name["scanned"] == 5

    status, form_style, _ = fetch(dash.url + "/api/tasks?name=boom&state=failed")
    assert [r["task_id"] for r in form_style["rows"]] == [failed.hex()]


def test_task_detail_has_attempts_output_traceback_and_links(cluster, start_dashboard,
                                                            tmp_path):
    dash = start_dashboard()
    retried = crash_once.remote(str(tmp_path / "runs"))
    parent = parent_of_one.remote()
    first = echo.remote(1)
    dependent = add.remote(first, 2)
    failed = boom.remote()
    assert ftqueue.get([retried, parent, dependent]) == ["second time", "child", 3]
    with pytest.raises(ValueError):
        ftqueue.get(failed)

    _, detail, _ = fetch(dash.url + f"/api/tasks/{failed.hex()}")
    assert detail["state"] == "FAILED" and detail["error_type"] == "TASK_EXECUTION_EXCEPTION"
    assert "Traceback" in detail["traceback"]
    assert "ValueError: boom from the dashboard test" in detail["traceback"]
    assert "raise ValueError" in detail["traceback"]

    _, detail, _ = fetch(dash.url + f"/api/tasks/{retried.hex()}")
    assert [(a["attempt_number"], a["state"], a["error_type"]) for a in detail["attempts"]] == [
        (0, "FAILED", "WORKER_DIED"), (1, "FINISHED", "")]
    assert all(a["node_id"] and a["start_time"] for a in detail["attempts"])
    assert detail["retries_used"] == 1 and detail["traceback"] == ""

    _, detail, _ = fetch(dash.url + f"/api/tasks/{first.hex()}")
    assert detail["attempts"][-1]["output"] == "echo says 1\n"

    _, detail, _ = fetch(dash.url + f"/api/tasks/{parent.hex()}")
    assert len(detail["children"]) == 1
    child = detail["children"][0]
    _, child_detail, _ = fetch(dash.url + f"/api/tasks/{child}")
    assert child_detail["parent_task_id"] == parent.hex()

    _, detail, _ = fetch(dash.url + f"/api/tasks/{dependent.hex()}")
    assert detail["dependencies"] == [first.hex()]

    # The task page renders the same, with links between them.
    status, html, _ = fetch(dash.url + f"/tasks/{child}")
    assert status == 200 and f'href="/tasks/{parent.hex()}"' in html
    status, html, _ = fetch(dash.url + f"/tasks/{failed.hex()}")
    assert status == 200 and "ValueError: boom from the dashboard test" in html


def test_pages_by_cursor_stay_stable_while_tasks_arrive(cluster, start_dashboard):
    dash = start_dashboard()
    refs = [echo.remote(i) for i in range(12)]
    ftqueue.get(refs)
    seen, rows, cursor, pages = [], [], "", 0
    while True:
        query = urllib.parse.urlencode({"limit": 5, **({"cursor": cursor} if cursor else {})})
        status, page, _ = fetch(dash.url + f"/api/tasks?{query}")
        assert status == 200
        seen += [r["task_id"] for r in page["rows"]]
        rows += page["rows"]
        pages += 1
        if pages == 1:      # a task that arrives now must not shift the next pages
            ftqueue.get(echo.remote("late"))
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(r.hex() for r in refs) and pages == 3
    assert seen == newest_first(rows)

    status, html, _ = fetch(dash.url + "/tasks?limit=5")
    assert status == 200 and 'id="next-page"' in html


def test_queues_show_depth_age_and_who_serves_them(cluster, start_dashboard):
    dash = start_dashboard()
    waiting = echo.options(queue="nobody-serves-this").remote(1)
    _, queues, _ = fetch(dash.url + "/api/queues")
    row = {q["queue"]: q for q in queues["queues"]}["nobody-serves-this"]
    assert row["depth"] == 1 and row["nodes_serving"] == 0
    assert row["oldest_task_id"] == waiting.hex() and row["oldest_age_s"] >= 0
    _, summary, _ = fetch(dash.url + "/api/summary")
    assert summary["unserved_queues"] == ["nobody-serves-this"]
    ftqueue.cancel(waiting)


@pytest.mark.parametrize("path, status, message", [
    ("/api/tasks?filter=colour=red", 400, "invalid filter key 'colour'"),
    ("/api/tasks?filter=state=SLEEPING", 400, "unknown state 'SLEEPING'"),
    ("/api/tasks?filter=nonsense", 400, "expected KEY=VALUE"),
    ("/api/tasks?limit=many", 400, "invalid limit"),
    ("/api/tasks?cursor=xyz", 400, "invalid cursor"),
    ("/api/tasks/0123456789abcdef", 404, "task 0123456789abcdef not found"),
    ("/api/tasks/bad%20id", 400, "not a task id"),
    ("/api/nothing", 404, "no page at /api/nothing"),
    ("/tasks/0123456789abcdef", 404, "task 0123456789abcdef not found"),
    ("/tasks?state=SLEEPING", 400, "unknown state"),
    ("/nowhere", 404, "no page at /nowhere"),
])
def test_bad_input_gets_a_clear_error_not_a_traceback(redis_url, start_dashboard, path,
                                                      status, message):
    dash = start_dashboard()
    got, body, _ = fetch(dash.url + path)
    assert got == status
    text = body["error"] if isinstance(body, dict) else body
    assert message.replace("'", "&#39;") in text or message in text
    assert "Traceback" not in str(body)


def test_a_token_guards_reads_and_actions_need_allow_actions(cluster, start_dashboard,
                                                             tmp_path):
    read_only = start_dashboard(token=TOKEN)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert fetch(read_only.url + "/api/summary")[0] == 401
    assert fetch(read_only.url + "/api/summary",
                 headers={"Authorization": "Bearer wrong"})[0] == 401
    assert fetch(read_only.url + "/api/summary", headers=bearer)[0] == 200
    assert fetch(read_only.url + "/healthz")[0] == 200
    status, _, headers = fetch(read_only.url + "/tasks")
    assert status == 303 and headers["location"] == "/login?next=/tasks"

    release = str(tmp_path / "release")
    running = hold.remote(release)
    wait_until(lambda: runs(release + ".started"), 30, "the task to start")
    status, body, _ = fetch(read_only.url + f"/api/tasks/{running.hex()}/cancel",
                            method="POST", headers=bearer)
    assert status == 403 and "--allow-actions" in body["error"]

    acting = start_dashboard("--allow-actions", token=TOKEN)
    status, body, _ = fetch(acting.url + f"/api/tasks/{running.hex()}/cancel", method="POST")
    assert status == 401       # no token at all: not even a read
    # A session cookie without the CSRF field a page of ours carries is refused.
    status, _, headers = fetch(acting.url + "/login", method="POST",
                               body=f"token={TOKEN}".encode())
    assert status == 303
    cookie = headers["set-cookie"].split(";")[0]
    status, body, _ = fetch(acting.url + f"/tasks/{running.hex()}/cancel", method="POST",
                            headers={"Cookie": cookie}, body=b"force=1")
    assert status == 403 and "CSRF" in body
    assert ftqueue.state.get_task(running.hex())[-1]["state"] == "RUNNING"

    status, body, _ = fetch(acting.url + f"/api/tasks/{running.hex()}/cancel?force=1",
                            method="POST", headers=bearer)
    assert status == 200 and body["outcomes"][0]["outcome"] == "requested"
    with pytest.raises(ftqueue.exceptions.TaskCancelledError):
        ftqueue.get(running, timeout=30)
    row = ftqueue.state.get_task(running.hex())[-1]
    assert (row["state"], row["error_type"]) == ("FAILED", "TASK_CANCELLED")


def test_allow_actions_without_a_token_refuses_to_start(redis_url):
    proc = subprocess.run([sys.executable, "-m", "ftqueue", "dashboard", "--address", redis_url,
                           "--allow-actions", "--port", "0"], capture_output=True, text=True,
                          timeout=60, env=child_env())
    assert proc.returncode == 1
    assert "--allow-actions needs FTQUEUE_DASHBOARD_TOKEN" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_init_include_dashboard_starts_one_and_prints_its_url():
    from ftqueue.embedded import free_port

    port = free_port()
    code = f"""
import json, urllib.request
import ftqueue
info = ftqueue.init(num_workers=1, include_dashboard=True, dashboard_port={port})
with urllib.request.urlopen(info.dashboard_url + "/api/summary", timeout=10) as r:
    summary = json.load(r)
print("URL", info.dashboard_url, summary["nodes_alive"])
ftqueue.shutdown()
"""
    proc = run_script(code, timeout=120)
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.split()[1]
    assert url == f"http://127.0.0.1:{port}" and proc.stdout.split()[2] == "1"
    assert f"ftqueue dashboard: {url}" in proc.stderr


def test_ftqueue_start_serves_a_dashboard_and_prints_its_url():
    from ftqueue.embedded import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ftqueue", "start", "--num-workers", "1",
                             "--dashboard-port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=child_env(),
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        lines = []
        while not any(line.startswith("dashboard: ") for line in lines):
            line = proc.stdout.readline()
            assert line, f"ftqueue start ended early: {lines}"
            lines.append(line)
        url = f"http://127.0.0.1:{port}"
        assert f"dashboard: {url}\n" in lines
        status, summary, _ = fetch(url + "/api/summary")
        assert status == 200
        # The node may register a moment after the dashboard prints its address.
        wait_until(lambda: fetch(url + "/api/summary")[1]["nodes_alive"] == 1, 30,
                   "the node on the dashboard")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_a_cursor_whose_task_left_the_index_goes_on_where_it_was(driver, rclient,
                                                                 start_dashboard):
    dash = start_dashboard()
    refs = [echo.remote(i) for i in range(7)]     # no node: they wait, in one burst or two
    refs[-1].hex()
    _, first, _ = fetch(dash.url + "/api/tasks?limit=3")
    cursor = first["next_cursor"]
    rclient.zrem("ftq:index:tasks", cursor.split(":", 1)[1])   # as a trim past the TTL does
    _, rest, _ = fetch(dash.url + "/api/tasks?" + urllib.parse.urlencode(
        {"limit": 10, "cursor": cursor}))
    shown = [r["task_id"] for r in first["rows"] + rest["rows"]]
    assert len(shown) == 7 and sorted(shown) == sorted(r.hex() for r in refs)
    assert rest["next_cursor"] == ""


def test_a_redis_that_went_away_is_a_clear_503(own_redis):
    from ftqueue.dashboard.server import DashboardProcess
    from ftqueue.embedded import free_port

    dash = DashboardProcess.start(own_redis.address, "ftq", "127.0.0.1", free_port(),
                                  env=child_env())
    try:
        assert fetch(dash.url + "/api/summary")[0] == 200
        own_redis.kill()
        status, body, _ = fetch(dash.url + "/api/summary")
        assert status == 503 and body["error"].startswith("cannot read Redis")
        status, html, _ = fetch(dash.url + "/tasks")
        assert status == 503 and "cannot read Redis" in html and "Traceback" not in html
    finally:
        dash.stop()


def test_a_loopback_dashboard_answers_only_loopback_names_and_cannot_be_framed(
        redis_url, start_dashboard):
    dash = start_dashboard()
    port = dash.url.rsplit(":", 1)[1]
    status, _, headers = fetch(dash.url + "/api/summary")
    assert status == 200
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert fetch(dash.url + "/", headers={"Host": f"localhost:{port}"})[0] == 200
    # A page of another site that rebinds its name to 127.0.0.1 sends its own Host.
    status, body, _ = fetch(dash.url + "/api/summary",
                            headers={"Host": f"attacker.example:{port}"})
    assert status == 400 and "nodes_alive" not in str(body)


def test_a_refresh_reads_only_the_newest_worker_records(cluster, redis_url, rclient,
                                                        monkeypatch, tmp_path):
    from ftqueue.dashboard import data
    from ftqueue.state import StateReader
    from ftqueue.store import Store, connect

    cluster.wait_workers(2)
    ftqueue.get(crash_once.remote(str(tmp_path / "runs")))   # a replacement: 3 records
    reader = StateReader(Store(connect(redis_url)))
    wait_until(lambda: reader.count_workers() == 3, 30, "three worker records")
    newest_id = rclient.zrevrange("ftq:workers", 0, 0)[0]
    assert [w["worker_id"] for w in reader.list_workers(newest=1)] == [newest_id]
    monkeypatch.setattr(data, "WORKERS_SHOWN", 2)
    shown = data.nodes(reader)
    assert shown["workers_shown"] == 2 and shown["workers_recorded"] == 3
    assert shown["workers"][0]["worker_id"] == newest_id      # newest first


@ftqueue.remote(max_retries=0)
def fails_first(path):
    if mark(path) == 0:
        raise ValueError("first run fails")
    return "second run"


def test_requeue_and_purge_through_the_api_and_the_pages(cluster, start_dashboard, tmp_path):
    acting = start_dashboard("--allow-actions", token=TOKEN)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    ref = fails_first.remote(str(tmp_path / "runs"))
    with pytest.raises(ValueError):
        ftqueue.get(ref, timeout=30)
    url = acting.url + f"/api/tasks/{ref.hex()}/requeue"
    assert fetch(url, method="POST")[0] == 401
    read_only = start_dashboard(token=TOKEN)
    assert fetch(read_only.url + f"/api/tasks/{ref.hex()}/requeue", method="POST",
                 headers=bearer)[0] == 403
    status, body, _ = fetch(url, method="POST", headers=bearer)
    assert status == 200 and body["outcome"] == "requeued", body
    assert ftqueue.get(ref, timeout=30) == "second run"
    status, body, _ = fetch(url, method="POST", headers=bearer)
    assert status == 409 and "not FAILED" in body["error"]
    assert fetch(acting.url + "/api/tasks/no-such-task/requeue", method="POST",
                 headers=bearer)[0] == 404

    # Purge, from the queues page's form (logged in, with the page's CSRF token).
    later = [echo.options(queue="parked").remote(i) for i in range(3)]
    ftqueue.flush_submissions(10)
    status, _, headers = fetch(acting.url + "/login", method="POST",
                               body=f"token={TOKEN}".encode())
    cookie = headers["set-cookie"].split(";")[0]
    status, page, _ = fetch(acting.url + "/queues", headers={"Cookie": cookie})
    assert status == 200 and 'id="purge-parked"' in page
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert fetch(acting.url + "/queues/parked/purge", method="POST",
                 headers={"Cookie": cookie}, body=b"csrf=wrong")[0] == 403
    status, _, headers = fetch(acting.url + "/queues/parked/purge", method="POST",
                               headers={"Cookie": cookie}, body=f"csrf={csrf}".encode())
    assert status == 303 and headers["location"] == "/queues"
    for r in later:
        with pytest.raises(ftqueue.exceptions.TaskCancelledError):
            ftqueue.get(r, timeout=30)
    assert fetch(acting.url + "/api/queues/nowhere/purge", method="POST",
                 headers=bearer)[0] == 404


def test_overview_shows_schedules_and_tasks_no_node_fits(cluster, start_dashboard):
    dash = start_dashboard()
    ftqueue.schedule("nightly", echo, "x", cron="0 3 * * *")
    big = echo.options(num_gpus=4).remote("gpu")
    ftqueue.flush_submissions(10)
    summary = wait_until(lambda: (s := fetch(dash.url + "/api/summary")[1])["infeasible"]
                         and s, 30, "the infeasible demand")
    demand, = summary["infeasible"]
    assert (demand["shape"], demand["tasks"], demand["missing_text"]) == \
        ("CPU=1,GPU=4", 1, "GPU=4")
    assert [s["name"] for s in summary["schedules"]] == ["nightly"]
    schedules = fetch(dash.url + "/api/schedules")[1]["schedules"]
    assert schedules[0]["when"] == "cron 0 3 * * *"
    status, page, _ = fetch(dash.url + "/")
    assert "Waiting for a node that fits" in page and "CPU=1,GPU=4" in page
    nodes = fetch(dash.url + "/api/nodes")[1]["nodes"]
    assert nodes[0]["offers"].startswith("CPU=2") and "free" in nodes[0]
    ftqueue.cancel(big)
    ftqueue.unschedule("nightly")
