"""Who may read and act on the dashboard (docs/security.md).

With no token set, pages and the API are open (bind to 127.0.0.1) and there are no actions.
With `FTQUEUE_DASHBOARD_TOKEN` set, every page and API call needs it: as a bearer header,
or once through the login form, which sets a session cookie signed with the token. Actions
also need `--allow-actions`; a form posted with the cookie must carry the CSRF field derived
from that cookie, which a page of another site can neither read nor compute.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Mapping

SESSION_COOKIE = "ftqueue_session"
SESSION_MAX_AGE_S = 12 * 3600


def _sign(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Access:
    token: str | None
    allow_actions: bool

    @property
    def locked(self) -> bool:
        """Reads need the token too."""
        return bool(self.token)

    @property
    def actions(self) -> bool:
        return self.allow_actions and bool(self.token)

    def token_matches(self, candidate: str) -> bool:
        return bool(self.token) and hmac.compare_digest(candidate.encode(),
                                                        str(self.token).encode())

    def new_session(self, now_s: float | None = None) -> str:
        assert self.token
        issued = str(int(now_s if now_s is not None else time.time()))
        return f"{issued}.{_sign(self.token, 'session:' + issued)}"

    def session_valid(self, cookie: str | None, now_s: float | None = None) -> bool:
        if not self.token or not cookie:
            return False
        issued, _, mac = cookie.partition(".")
        if not issued.isdigit() or not hmac.compare_digest(
                mac, _sign(self.token, "session:" + issued)):
            return False
        age = (now_s if now_s is not None else time.time()) - int(issued)
        return 0 <= age <= SESSION_MAX_AGE_S

    def csrf_for(self, cookie: str) -> str:
        assert self.token
        return _sign(self.token, "csrf:" + cookie)

    def bearer(self, headers: Mapping[str, str]) -> bool:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def may_read(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        return not self.locked or self.bearer(headers) or \
            self.session_valid(cookies.get(SESSION_COOKIE))

    def action_refusal(self, headers: Mapping[str, str], cookies: Mapping[str, str],
                       csrf: str | None) -> str:
        """Why this request may not act ('' when it may). A bearer header needs no CSRF
        field: a browser never adds one on its own."""
        if not self.allow_actions:
            return "actions are off: start the dashboard with --allow-actions"
        if not self.token:
            return "actions need FTQUEUE_DASHBOARD_TOKEN to be set"
        if self.bearer(headers):
            return ""
        cookie = cookies.get(SESSION_COOKIE)
        if not self.session_valid(cookie):
            return "log in with the dashboard token first"
        assert cookie is not None
        if not csrf or not hmac.compare_digest(csrf, self.csrf_for(cookie)):
            return "missing or wrong CSRF field: reload the page and try again"
        return ""
