"""The dashboard in a real headless Chromium (Debian's `chromium` + `chromium-driver`, which
.ci/run installs), driven by Selenium: every page loads, a task row links to the task page
and its traceback, a count changes live after a submit, and the cancel button works with
the token and is refused without it.

`UPDATE_SCREENSHOTS=1 python -m pytest tests/integration/test_dashboard_browser.py` also
writes the README's screenshots to docs/img/ (otherwise they go to the test's tmp dir).
"""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import mark, runs, wait_for_file, wait_until

import ftqueue

pytest.importorskip("starlette", reason="the dashboard extra is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no browser: install Debian's chromium and chromium-driver "
                "(apt-get install -y chromium chromium-driver)", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "browser-test-token"


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
        process = getattr(service, "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def screenshot(browser, tmp_path, name):
    directory = os.path.join(ROOT, "docs", "img") if os.environ.get("UPDATE_SCREENSHOTS") \
        else str(tmp_path)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    assert browser.save_screenshot(path), f"no screenshot written to {path}"
    assert os.path.getsize(path) > 10_000


def fresh(action):
    """Run `action` on elements found anew: the live refresh replaces table bodies every
    second, so an element found a moment ago may be gone (stale) by the time it is used."""
    def attempt():
        try:
            return (action(),)
        except StaleElementReferenceException:
            return None
    return wait_until(attempt, 10, "a page element that stays put")[0]


def text_of(browser, element_id):
    def read():
        elements = browser.find_elements(By.ID, element_id)
        return elements[0].text if elements else ""
    return fresh(read)


@ftqueue.remote
def square(x):
    print(f"squaring {x}")
    return x * x


@ftqueue.remote(max_retries=1, retry_exceptions=True)
def explode(x):
    print(f"about to divide {x} by nothing")
    raise ZeroDivisionError(f"cannot divide {x} by nothing")


@ftqueue.remote
def hold(path):
    mark(path + ".started")
    wait_for_file(path)
    return "released"


def test_every_page_loads_and_a_task_row_leads_to_its_traceback(cluster, start_dashboard,
                                                                browser, tmp_path):
    dash = start_dashboard()
    ftqueue.get([square.remote(i) for i in range(5)])
    failed = explode.remote(7)
    with pytest.raises(ZeroDivisionError):
        ftqueue.get(failed)

    for path, heading, marker in (
            ("/", "Overview", "throughput"),
            ("/tasks", "Tasks", "rows"),
            ("/nodes", "Nodes and workers", "workers"),
            ("/queues", "Queues", "queues"),
            ("/schedules", "Schedules", "schedules")):
        browser.get(dash.url + path)
        assert browser.find_element(By.TAG_NAME, "h1").text == heading
        assert browser.find_elements(By.ID, marker), f"{path} has no #{marker}"
        assert "Error" not in browser.title
    browser.get(dash.url + "/nodes")
    workers = text_of(browser, "workers")
    assert str(cluster.workers()[0].pid) in workers and "MiB" in workers

    browser.get(dash.url + "/tasks?state=FAILED")
    fresh(lambda: browser.find_element(
        By.CSS_SELECTOR, f'#rows a[href="/tasks/{failed.hex()}"]').click())
    wait_until(lambda: browser.current_url.endswith(f"/tasks/{failed.hex()}"), 10,
               "the task page")
    assert text_of(browser, "task-state") == "FAILED"
    traceback = text_of(browser, "traceback")
    assert "Traceback (most recent call last)" in traceback
    assert "ZeroDivisionError: cannot divide 7 by nothing" in traceback
    assert not browser.find_elements(By.ID, "cancel"), "a read-only dashboard offers cancel"
    attempts = text_of(browser, "attempts")
    assert attempts.count("TASK_EXECUTION_EXCEPTION") == 2     # retried once, then failed
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline rect.attempt-bar")) == 2
    screenshot(browser, tmp_path, "dashboard-task.png")


def test_a_count_changes_live_after_a_submit(cluster, start_dashboard, browser, tmp_path):
    dash = start_dashboard()
    ftqueue.get([square.remote(i) for i in range(20)])
    with pytest.raises(ZeroDivisionError):
        ftqueue.get(explode.remote(1))
    browser.get(dash.url + "/")
    assert text_of(browser, "tasks-stored") == "21"
    browser.execute_script("window.notReloaded = true;")
    ftqueue.get(square.remote(100))
    wait_until(lambda: text_of(browser, "tasks-stored") == "22", 10,
               "the overview's task count to change without a reload")
    wait_until(lambda: text_of(browser, "finished-last-hour") == "21", 10,
               "the chart's counts to take in the new task")
    assert browser.execute_script("return window.notReloaded === true;")
    assert browser.find_elements(By.CSS_SELECTOR, "#throughput polyline.series-finished")
    screenshot(browser, tmp_path, "dashboard-overview.png")


def test_cancel_with_the_button_needs_the_token(cluster, start_dashboard, browser,
                                                tmp_path):
    dash = start_dashboard("--allow-actions", token=TOKEN)
    release = str(tmp_path / "release")
    running = hold.remote(release)
    wait_until(lambda: runs(release + ".started"), 30, "the task to start")
    task_url = f"{dash.url}/tasks/{running.hex()}"

    # Without the token: sent to the login page, and a wrong token is refused.
    browser.get(task_url)
    wait_until(lambda: "/login" in browser.current_url, 10, "the login page")
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "login").click()
    wait_until(lambda: text_of(browser, "error-message") == "wrong token", 10,
               "the refusal of a wrong token")
    # A form posted from a page that holds no session is refused too.
    status = browser.execute_script(
        "return fetch(arguments[0], {method: 'POST', body: 'force=1', redirect: 'manual',"
        " headers: {'Content-Type': 'application/x-www-form-urlencoded'}})"
        ".then(r => r.type === 'opaqueredirect' ? 'redirected' : r.status);",
        task_url + "/cancel")
    assert status == "redirected"
    assert ftqueue.state.get_task(running.hex())[-1]["state"] == "RUNNING"

    browser.find_element(By.ID, "token").clear()
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait_until(lambda: browser.current_url == task_url, 10, "the task page after login")
    assert text_of(browser, "task-state") == "RUNNING"
    browser.find_element(By.ID, "cancel").click()
    wait_until(lambda: text_of(browser, "task-state") == "FAILED", 15,
               "the page to show the task FAILED")
    assert text_of(browser, "task-error-type") == "TASK_CANCELLED"
    with pytest.raises(ftqueue.exceptions.TaskCancelledError):
        ftqueue.get(running, timeout=30)
    assert not browser.find_element(By.ID, "cancel").is_displayed()
