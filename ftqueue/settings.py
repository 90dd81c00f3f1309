"""Settings read from FTQUEUE_* environment variables; each default is in the README."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_MAX_RETRIES = 3
DEFAULT_LEASE_TIMEOUT_S = 30.0
DEFAULT_GRACE_PERIOD_S = 30.0
DEFAULT_PREFETCH = 8
DEFAULT_MEMORY_THRESHOLD = 0.95
DEFAULT_TIMEOUT_GRACE_S = 5.0
MEMORY_CHECK_INTERVAL_S = 0.25
DEFAULT_RESULT_TTL_S = 24 * 3600
DEFAULT_LINEAGE_TTL_S = 7 * 24 * 3600
DEFAULT_DRIVER_LINEAGE_BYTES = 64 * 1024 * 1024
DEFAULT_NOTIFY_TTL_S = 24 * 3600
ATTEMPT_MESSAGE_MAX_CHARS = 2000
INLINE_RESULT_MAX_BYTES = 16384


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_float(name: str, default: float) -> float:
    raw = env_str(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def env_int(name: str, default: int) -> int:
    raw = env_str(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def default_max_retries() -> int:
    """Read at every submission, as Ray reads RAY_TASK_MAX_RETRIES."""
    return env_int("FTQUEUE_TASK_MAX_RETRIES", DEFAULT_MAX_RETRIES)


@dataclass(frozen=True)
class NodeSettings:
    """What a worker node (supervisor) needs; every field is also a flag of `ftqueue worker`."""

    address: str
    namespace: str = "ftq"
    num_workers: int = 1
    queues: tuple[str, ...] = ("default",)
    lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S
    grace_period_s: float = DEFAULT_GRACE_PERIOD_S
    prefetch: int = DEFAULT_PREFETCH
    max_memory_per_worker_bytes: int = 0      # 0: no per-worker limit
    memory_threshold: float = DEFAULT_MEMORY_THRESHOLD
    timeout_grace_s: float = DEFAULT_TIMEOUT_GRACE_S
    copy_task_output: bool = True     # also write task output to the node's own stdout/stderr

    @property
    def renew_interval_s(self) -> float:
        # Several renewals per lease so one slow round trip never expires a live lease.
        return max(0.05, min(1.0, self.lease_timeout_s / 4))


def lease_timeout_from_env() -> float:
    return env_float("FTQUEUE_LEASE_TIMEOUT_S", DEFAULT_LEASE_TIMEOUT_S)


_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2,
               "MIB": 1024 ** 2, "G": 1024 ** 3, "GB": 1024 ** 3, "GIB": 1024 ** 3}


def parse_size(text: str) -> int:
    """'512M', '2GB', '1048576' -> bytes."""
    raw = text.strip().upper()
    number = raw.rstrip("KMGIB")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 512M, 2G)") from None
    if unit not in _SIZE_UNITS or value < 0:
        raise ValueError(f"not a size: {text!r} (e.g. 512M, 2G)")
    return int(value * _SIZE_UNITS[unit])


def retention_from_env() -> tuple[int, int]:
    """(result TTL, lineage TTL) in seconds; lineage is kept at least as long as results."""
    result_ttl = env_int("FTQUEUE_RESULT_TTL_S", DEFAULT_RESULT_TTL_S)
    lineage_ttl = env_int("FTQUEUE_LINEAGE_TTL_S", DEFAULT_LINEAGE_TTL_S)
    return result_ttl, max(lineage_ttl, result_ttl)
