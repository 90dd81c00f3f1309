"""Opening Redis connections; redis errors become ftqueue errors here."""

from __future__ import annotations

import time
from typing import Any, Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..exceptions import FtqueueConnectionError
from ..settings import Settings
from .errors import is_transient

SOCKET_TIMEOUT_S = 10.0   # above the 1 s BLPOP waits; bounds a call to a frozen Redis
CONNECT_TIMEOUT_S = 5.0


def connect(address: str, *, check: bool = True,
            socket_timeout: float = SOCKET_TIMEOUT_S) -> redis.Redis:
    """A client for `address` (redis://, rediss://, unix://) with redis-py's own command
    retries off: every ftqueue step is retried by ftqueue itself, only where that is safe.
    `socket_timeout` bounds one call to a frozen Redis."""
    tls: dict[str, str] = {}
    ca_file = Settings.from_env().tls_ca_file
    if address.startswith("rediss://") and ca_file:
        tls["ssl_ca_certs"] = ca_file
    try:
        client = redis.Redis.from_url(
            address,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(CONNECT_TIMEOUT_S, socket_timeout),
            health_check_interval=10,
            **tls,
        )
    except ValueError as e:
        raise FtqueueConnectionError(f"invalid Redis address {address!r}: {e}") from None
    if check:
        try:
            client.ping()
        except redis.AuthenticationError as e:
            raise FtqueueConnectionError(
                f"Redis at {redact(address)} refused the credentials: {e}") from None
        except redis.RedisError as e:
            raise FtqueueConnectionError(f"cannot reach Redis at {redact(address)}: {e}") \
                from None
    return client


RECONNECT_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def backoff(attempt: int) -> float:
    return RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]


def retry_across_outage(step: Callable[[], Any], give_up: Callable[[], bool] = lambda: False,
                        deadline: float | None = None) -> Any:
    """Run a step that is safe to repeat, retrying with backoff while Redis is unreachable
    or not serving (see errors.is_transient). Past `deadline` (time.monotonic()) or when
    `give_up()` says so, the last error is raised."""
    failures = 0
    while True:
        try:
            return step()
        except Exception as e:
            if not is_transient(e) or give_up():
                raise
            pause = backoff(failures)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                pause = min(pause, left)
            time.sleep(pause)
            failures += 1


# The old name, kept while callers move over: "wait and retry" now covers every transient
# error, not only a lost connection.
is_connection_error = is_transient


def redact(address: str) -> str:
    """The address without its password (in the user part or the query), for messages."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    try:
        parts = urlsplit(address)
    except ValueError:
        return "<unparsable address>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urlencode([(k, "***" if k == "password" else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
