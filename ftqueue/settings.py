"""Every setting, in one place: the FTQUEUE_* environment variables, their defaults, and
the node flags built from them. Read once per process (`Settings.from_env()`) and passed
down; the README's table lists each (a test checks that it does, and that no other module
reads FTQUEUE_* variables).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping

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
DEAD_NODE_TTL_S = 24 * 3600         # a dead node's record stays this long, for listings
DEAD_WORKER_TTL_S = 3600            # and a dead worker's
ATTEMPT_MESSAGE_MAX_CHARS = 2000
INLINE_RESULT_MAX_BYTES = 16384


DEFAULT_STARTUP_WAIT_S = 30.0
DEFAULT_MAX_PAYLOAD_BYTES = 100 * 1024 * 1024
DEFAULT_LOG_MAX_BYTES = 64 * 1024
PARTITIONS_MAX = 1024
DEFAULT_NAMESPACE = "ftq"
DURABILITIES = ("async", "replicated")
# How long a replicated write waits for a replica's acknowledgement (WAIT) before the step
# counts as not done: well under the 10 s socket timeout, above a replica's usual lag.
DEFAULT_REPLICA_TIMEOUT_S = 2.0
DEFAULT_DASHBOARD_PORT = 8265   # Ray's


def _number(var: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{var} must be {what}, got {raw!r}") from None


def env_int(name: str, default: int) -> int:
    """One integer variable, read now (for the few read at each use; see below)."""
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(_number(name, raw, int))


def max_payload_bytes() -> int:
    """Read at each use (a hot path: one variable, not the whole table)."""
    return env_int("FTQUEUE_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES)


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
    result_ttl_s: int = DEFAULT_RESULT_TTL_S
    lineage_ttl_s: int = DEFAULT_LINEAGE_TTL_S
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    import_allow: tuple[str, ...] = ()
    # What the node offers (resources.py units: 1/10000, memory in bytes), and its GPU ids.
    resources: tuple[tuple[str, int], ...] = ()
    gpu_ids: tuple[str, ...] = ()

    @property
    def renew_interval_s(self) -> float:
        # Several renewals per lease so one slow round trip never expires a live lease.
        return max(0.05, min(1.0, self.lease_timeout_s / 4))


def visible_gpu_ids() -> tuple[str, ...]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES lists them (none if unset)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return tuple(g.strip() for g in raw.split(",") if g.strip() and g.strip() != "-1")


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


def _split(raw: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (raw or "").split(",") if p.strip())


@dataclass(frozen=True)
class Settings:
    """The process-wide settings (a node's own are `NodeSettings`, built from these and
    its flags). Field -> variable in `ENV`."""

    address: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    task_max_retries: int = DEFAULT_MAX_RETRIES
    lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S
    grace_period_s: float = DEFAULT_GRACE_PERIOD_S
    num_workers: int = 0                     # 0: the CPU count
    startup_wait_s: float = DEFAULT_STARTUP_WAIT_S
    queues: tuple[str, ...] = ("default",)
    prefetch: int = DEFAULT_PREFETCH
    result_ttl_s: int = DEFAULT_RESULT_TTL_S
    lineage_ttl_s: int = DEFAULT_LINEAGE_TTL_S
    driver_lineage_bytes: int = DEFAULT_DRIVER_LINEAGE_BYTES
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    max_memory_per_worker: int = 0
    memory_threshold: float = DEFAULT_MEMORY_THRESHOLD
    timeout_grace_s: float = DEFAULT_TIMEOUT_GRACE_S
    metrics_port: int = 0                    # 0: off
    health_file: str | None = None
    import_allow: tuple[str, ...] = ()
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None         # client certificate, for mutual TLS
    tls_key_file: str | None = None
    redis_server: str | None = None
    durability: str = "async"                # or "replicated": WAIT 1 after each write step
    replica_timeout_s: float = DEFAULT_REPLICA_TIMEOUT_S
    dashboard_token: str | None = None       # the dashboard's login and bearer token
    partitions: int = 0                      # 0: as the namespace has them (1 for a new one)

    @property
    def replicated(self) -> bool:
        return self.durability == "replicated"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(ENV[f.name])
            if raw in (None, ""):
                continue
            values[f.name] = _parse(f.name, ENV[f.name], raw)
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.lineage_ttl_s < settings.result_ttl_s:   # lineage outlives results
            settings = _replace(settings, lineage_ttl_s=settings.result_ttl_s)
        return settings

    @property
    def workers(self) -> int:
        return self.num_workers or os.cpu_count() or 1


ENV: dict[str, str] = {
    "address": "FTQUEUE_ADDRESS", "namespace": "FTQUEUE_NAMESPACE",
    "task_max_retries": "FTQUEUE_TASK_MAX_RETRIES", "lease_timeout_s": "FTQUEUE_LEASE_TIMEOUT_S",
    "grace_period_s": "FTQUEUE_GRACE_PERIOD_S", "num_workers": "FTQUEUE_NUM_WORKERS",
    "startup_wait_s": "FTQUEUE_STARTUP_WAIT_S", "queues": "FTQUEUE_QUEUES",
    "prefetch": "FTQUEUE_PREFETCH", "result_ttl_s": "FTQUEUE_RESULT_TTL_S",
    "lineage_ttl_s": "FTQUEUE_LINEAGE_TTL_S",
    "driver_lineage_bytes": "FTQUEUE_DRIVER_LINEAGE_BYTES",
    "max_payload_bytes": "FTQUEUE_MAX_PAYLOAD_BYTES", "log_max_bytes": "FTQUEUE_LOG_MAX_BYTES",
    "max_memory_per_worker": "FTQUEUE_MAX_MEMORY_PER_WORKER",
    "memory_threshold": "FTQUEUE_MEMORY_THRESHOLD", "timeout_grace_s": "FTQUEUE_TIMEOUT_GRACE_S",
    "metrics_port": "FTQUEUE_METRICS_PORT", "health_file": "FTQUEUE_HEALTH_FILE",
    "import_allow": "FTQUEUE_IMPORT_ALLOW", "tls_ca_file": "FTQUEUE_TLS_CA_FILE",
    "tls_cert_file": "FTQUEUE_TLS_CERT_FILE", "tls_key_file": "FTQUEUE_TLS_KEY_FILE",
    "redis_server": "FTQUEUE_REDIS_SERVER",
    "durability": "FTQUEUE_DURABILITY", "replica_timeout_s": "FTQUEUE_REPLICA_TIMEOUT_S",
    "dashboard_token": "FTQUEUE_DASHBOARD_TOKEN", "partitions": "FTQUEUE_PARTITIONS",
}
# Read where they are used, at each use, on purpose: keys can be rotated without restarts.
SECRET_ENV = ("FTQUEUE_SECRET", "FTQUEUE_SECRET_FILE", "FTQUEUE_OLD_SECRETS",
              "FTQUEUE_OLD_SECRETS_FILE")


def _parse(name: str, var: str, raw: str) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if name in ("queues", "import_allow"):
        return _split(raw)
    if name == "max_memory_per_worker":
        return parse_size(raw)
    if name == "durability":
        if raw not in DURABILITIES:
            raise ValueError(f"{var} must be one of {', '.join(DURABILITIES)}, got {raw!r}")
        return raw
    if name == "partitions":
        count = int(_number(var, raw, int))
        if not 0 <= count <= PARTITIONS_MAX:
            raise ValueError(f"{var} must be 1..{PARTITIONS_MAX} (0: as the namespace has "
                             f"them), got {raw!r}")
        return count
    if kind in ("int", "float"):
        return _number(var, raw, int if kind == "int" else float)
    return raw


def _replace(settings: Settings, **changes: object) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


def secrets_from_env() -> tuple[str | None, str | None, str | None, str | None]:
    """(secret, secret file, old secrets, old secrets file), read now."""
    values = [os.environ.get(name) or None for name in SECRET_ENV]
    return values[0], values[1], values[2], values[3]
