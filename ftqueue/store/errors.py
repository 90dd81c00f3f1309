"""The one place that decides what a Redis error means for ftqueue.

*Transient*: the server is unreachable, or reachable but not serving for now (`BUSY` with a
long script, `LOADING` after a restart, `READONLY`/`MASTERDOWN` around a failover, and
`UNBLOCKED`, a blocking pop ended as its primary became a replica; `TRYAGAIN`; on a Redis
Cluster also `CLUSTERDOWN`, a `MOVED`/`ASK` redirect redis-py did not follow, or a map of
the slots it could not load while nodes fail over), or no replica confirmed a replicated
write in time. A step that is idempotent or fenced is waited out and run again.
*Full*: `OOM` under `maxmemory` with `noeviction`. A write that must not be lost (an
outcome) is held and retried; a new submission is refused with a clear error.
*Corrupt*: `WRONGTYPE`, a key holding something ftqueue did not write there. The record is
isolated and skipped; the node serves everything else.
Anything else is a bug or a misconfiguration (no permission, bad credentials): raised.
"""

from __future__ import annotations

import re

import redis

from ..exceptions import (
    CredentialsRefusedError,
    FtqueueConnectionError,
    FtqueueError,
    InvalidAddressError,
)


class ReplicaWaitTimeout(FtqueueError):
    """With FTQUEUE_DURABILITY=replicated: the write was made on the primary, but no replica
    confirmed it (WAIT) in time. Transient: a fenced or idempotent step is run again; a
    submission is refused (its task may exist all the same)."""

_TRANSIENT_CODES = ("BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN",
                    "NOREPLICAS", "UNBLOCKED")


_CODE = re.compile(r"(?:^|[\s:-])(" + "|".join(_TRANSIENT_CODES + ("OOM", "WRONGTYPE"))
                   + r")\b")


# redis-py's cluster client reports a map of the slots it could not (re)load as a bare
# RedisClusterException, by these words: nodes unreachable, or disagreeing mid-failover.
_CLUSTER_UNREACHABLE = "Redis Cluster cannot be connected"
_CLUSTER_RESHAPING = ("startup_nodes could not agree", "All slots are not covered")


def _cluster_says(e: BaseException, *phrases: str) -> bool:
    return type(e) is redis.exceptions.RedisClusterException and str(e).startswith(phrases)


def _code(e: BaseException) -> str:
    """The error code Redis put first in its reply (`BUSY`, `OOM`, ...), or ''."""
    if not isinstance(e, redis.ResponseError):
        return ""
    # Errors raised inside a script arrive wrapped ("Error running script (call to f_…):
    # @user_script:12: -OOM command not allowed…"), or with the code first in newer servers.
    match = _CODE.search(str(e)[:300])
    return match.group(1) if match else ""


def is_unreachable(e: BaseException) -> bool:
    """The connection failed or timed out (credentials refused are not this)."""
    if isinstance(e, (redis.AuthenticationError, redis.exceptions.AuthorizationError,
                      CredentialsRefusedError, InvalidAddressError)):
        return False
    return isinstance(e, (redis.ConnectionError, redis.TimeoutError, FtqueueConnectionError)) \
        or (_cluster_says(e, _CLUSTER_UNREACHABLE)
            and not isinstance(e.__cause__, redis.AuthenticationError))


def is_transient(e: BaseException) -> bool:
    """Wait and run the (idempotent or fenced) step again."""
    if is_unreachable(e) or isinstance(e, ReplicaWaitTimeout):
        return True
    return isinstance(e, (redis.exceptions.ReadOnlyError, redis.exceptions.TryAgainError,
                          redis.exceptions.BusyLoadingError, redis.exceptions.ClusterDownError,
                          redis.exceptions.AskError, redis.exceptions.SlotNotCoveredError)) \
        or _code(e) in _TRANSIENT_CODES or _cluster_says(e, *_CLUSTER_RESHAPING)


def is_full(e: BaseException) -> bool:
    """Redis refused a write: `OOM` at maxmemory with the noeviction policy."""
    return isinstance(e, redis.exceptions.OutOfMemoryError) or _code(e) == "OOM"


def is_corrupt(e: BaseException) -> bool:
    """A key of the wrong type: something other than ftqueue wrote it."""
    return _code(e) == "WRONGTYPE"


def describe(e: BaseException) -> str:
    """One line naming the Redis error, for messages and logs."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
