"""The dashboard's access rules, as pure functions: token, session cookie, CSRF field,
and the warning for a dashboard bound beyond this machine."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed")

from ftqueue.dashboard.auth import SESSION_COOKIE, SESSION_MAX_AGE_S, Access  # noqa: E402
from ftqueue.dashboard.server import exposure_warning  # noqa: E402

TOKEN = "unit-token"


def test_without_a_token_reads_are_open_and_nothing_may_act():
    access = Access(None, allow_actions=True)
    assert access.may_read({}, {})
    assert not access.actions
    assert "FTQUEUE_DASHBOARD_TOKEN" in access.action_refusal({}, {}, None)


def test_with_a_token_reads_need_the_bearer_or_a_session():
    access = Access(TOKEN, allow_actions=False)
    assert not access.may_read({}, {})
    assert not access.may_read({"authorization": "Bearer nope"}, {})
    assert not access.may_read({"authorization": f"Basic {TOKEN}"}, {})
    assert access.may_read({"authorization": f"Bearer {TOKEN}"}, {})
    assert access.may_read({}, {SESSION_COOKIE: access.new_session()})


def test_sessions_expire_and_die_with_a_new_token():
    access = Access(TOKEN, allow_actions=True)
    cookie = access.new_session(now_s=1_000_000)
    assert access.session_valid(cookie, now_s=1_000_000 + SESSION_MAX_AGE_S)
    assert not access.session_valid(cookie, now_s=1_000_001 + SESSION_MAX_AGE_S)
    assert not access.session_valid(cookie, now_s=999_999)          # issued in the future
    assert not Access("another-token", True).session_valid(cookie, now_s=1_000_000)
    issued, _, mac = cookie.partition(".")
    assert not access.session_valid(f"{int(issued) + 1}.{mac}", now_s=1_000_000)
    assert not access.session_valid("garbage", now_s=1_000_000)


def test_actions_need_allow_actions_the_token_and_the_csrf_field():
    off = Access(TOKEN, allow_actions=False)
    assert "--allow-actions" in off.action_refusal(
        {"authorization": f"Bearer {TOKEN}"}, {}, None)
    on = Access(TOKEN, allow_actions=True)
    assert on.action_refusal({"authorization": f"Bearer {TOKEN}"}, {}, None) == ""
    assert "log in" in on.action_refusal({}, {}, "x")
    cookie = on.new_session()
    cookies = {SESSION_COOKIE: cookie}
    assert "CSRF" in on.action_refusal({}, cookies, None)
    assert "CSRF" in on.action_refusal({}, cookies, on.csrf_for(on.new_session(now_s=5)))
    assert on.action_refusal({}, cookies, on.csrf_for(cookie)) == ""


@pytest.mark.parametrize("host, token, expected", [
    ("127.0.0.1", None, ""),
    ("localhost", TOKEN, ""),
    ("0.0.0.0", None, "WARNING"),
    ("10.1.2.3", TOKEN, "plain HTTP"),
])
def test_a_dashboard_bound_beyond_this_machine_says_what_is_exposed(host, token, expected):
    warning = exposure_warning(host, token, allow_actions=False)
    assert (expected in warning) if expected else warning == ""
