"""Opening Redis connections; redis errors become ftqueue errors here."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..exceptions import FtqueueConnectionError

SOCKET_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0


def connect(address: str, *, check: bool = True) -> redis.Redis:
    """A client for `address` (redis://, rediss://, unix://) with redis-py's own command
    retries off: every ftqueue step is retried by ftqueue itself, only where that is safe."""
    try:
        client = redis.Redis.from_url(
            address,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            health_check_interval=10,
        )
    except ValueError as e:
        raise FtqueueConnectionError(f"invalid Redis address {address!r}: {e}") from None
    if check:
        try:
            client.ping()
        except redis.AuthenticationError as e:
            raise FtqueueConnectionError(f"Redis at {address} refused the credentials: {e}") from None
        except redis.RedisError as e:
            raise FtqueueConnectionError(f"cannot reach Redis at {address}: {e}") from None
    return client


def is_connection_error(e: BaseException) -> bool:
    return isinstance(e, (redis.ConnectionError, redis.TimeoutError, FtqueueConnectionError))
