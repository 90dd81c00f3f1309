"""Task states, error types, options and the ObjectRef: the vocabulary shared by every module."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Callable, NamedTuple

from .settings import default_max_retries


class TaskState(str, Enum):
    DELAYED = "DELAYED"     # waiting for delay_s / eta / a retry delay; holds no worker
    PENDING_ARGS_AVAIL = "PENDING_ARGS_AVAIL"
    PENDING_NODE_ASSIGNMENT = "PENDING_NODE_ASSIGNMENT"
    SUBMITTED_TO_WORKER = "SUBMITTED_TO_WORKER"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"


TERMINAL_STATES = frozenset({TaskState.FINISHED.value, TaskState.FAILED.value})


class ErrorType(str, Enum):
    TASK_EXECUTION_EXCEPTION = "TASK_EXECUTION_EXCEPTION"
    WORKER_DIED = "WORKER_DIED"
    NODE_DIED = "NODE_DIED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    TASK_CANCELLED = "TASK_CANCELLED"
    OBJECT_LOST = "OBJECT_LOST"


class Outcome(NamedTuple):
    """How one attempt ended, as a worker (or a supervisor, for a timeout kill) commits it."""

    task_id: str
    fence: str
    kind: str            # 'ok' | 'err' | 'cancelled'
    blob: bytes          # sealed result or error record
    retryable: bool      # an 'err' that retry_exceptions allows (the budget is Lua's)
    message: str         # `Type: message`, kept in the task record for people


TASK_OPTIONS = frozenset({"max_retries", "retry_exceptions", "max_calls", "name", "queue",
                          "timeout_s", "retry_delay_s", "retry_backoff", "retry_max_delay_s",
                          "delay_s", "eta", "task_id", "limit_key", "max_concurrency",
                          "max_rate"})

RATE_PERIODS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000}


def parse_rate(text: object) -> tuple[int, int]:
    """`max_rate` ("10/s", "100/m", "5/h") as (starts, period in ms), or ValueError."""
    count, _, unit = str(text).partition("/") if isinstance(text, str) else ("", "", "")
    if not count.isdigit() or int(count) < 1 or unit not in RATE_PERIODS_MS:
        raise ValueError(f"max_rate must look like '10/s', '100/m' or '5/h', got {text!r}")
    return int(count), RATE_PERIODS_MS[unit]


def _check_limit_options(options: dict[str, Any]) -> None:
    concurrency, rate = options.get("max_concurrency"), options.get("max_rate")
    if concurrency is not None and (not isinstance(concurrency, int)
                                    or isinstance(concurrency, bool) or concurrency < 1):
        raise ValueError(f"max_concurrency must be an integer >= 1, got {concurrency!r}")
    if rate is not None:
        parse_rate(rate)
    key = options.get("limit_key")
    if key is None and (concurrency is not None or rate is not None):
        raise ValueError("max_concurrency and max_rate need a limit_key (the tasks sharing "
                         "it share the limit)")
    if key is not None and concurrency is None and rate is None:
        raise ValueError("limit_key needs max_concurrency or max_rate")

TASK_ID_MAX_CHARS = 128
_TASK_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
_HEX = frozenset("0123456789abcdef")


def is_task_id(text: object) -> bool:
    """A task or object id: 1-128 characters of [A-Za-z0-9._:-] (generated ones are hex)."""
    return (isinstance(text, str) and 0 < len(text) <= TASK_ID_MAX_CHARS
            and all(c in _TASK_ID_CHARS for c in text))


def check_task_id(value: object) -> str:
    """A `task_id=` option for an idempotent submit, or ValueError."""
    if not is_task_id(value):
        raise ValueError(f"task_id must be 1-{TASK_ID_MAX_CHARS} characters of "
                         f"[A-Za-z0-9._:-], got {value!r}")
    assert isinstance(value, str)
    if len(value) == PUT_ID_LENGTH and set(value) <= _HEX:
        raise ValueError(f"task_id {value!r}: 40 hex digits are the ids of put objects")
    return value

DEFAULT_RETRY_BACKOFF = 2.0
DEFAULT_RETRY_MAX_DELAY_S = 300.0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def eta_epoch_s(value: Any) -> float:
    """`eta` as epoch seconds: a datetime (naive means local time, as datetime.timestamp()
    says) or a number of epoch seconds."""
    if isinstance(value, datetime):
        return value.timestamp()
    if _is_number(value) and value >= 0:
        return float(value)
    raise ValueError(f"eta must be a datetime or epoch seconds, got {value!r}")


def _check_time_options(options: dict[str, Any]) -> None:
    for key in ("retry_delay_s", "retry_max_delay_s", "delay_s"):
        value = options.get(key)
        if value is not None and not (_is_number(value) and value >= 0):
            raise ValueError(f"{key} must be a number of seconds >= 0, got {value!r}")
    backoff = options.get("retry_backoff")
    if backoff is not None and not (_is_number(backoff) and backoff >= 1):
        raise ValueError(f"retry_backoff must be a number >= 1, got {backoff!r}")
    if options.get("eta") is not None:
        if options.get("delay_s") is not None:
            raise ValueError("give delay_s or eta, not both")
        eta_epoch_s(options["eta"])


def validate_options(options: dict[str, Any]) -> dict[str, Any]:
    """Check task options the way Ray does; unknown names raise ValueError."""
    unknown = sorted(set(options) - TASK_OPTIONS)
    if unknown:
        raise ValueError(f"Invalid option keyword {unknown[0]!r} for remote functions. "
                         f"Valid ones are {sorted(TASK_OPTIONS)}.")
    if "max_retries" in options:
        value = options["max_retries"]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < -1):
            raise ValueError(f"max_retries must be an integer >= -1 or None, got {value!r}")
    if "retry_exceptions" in options:
        value = options["retry_exceptions"]
        if not isinstance(value, bool):
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(c, type) and issubclass(c, BaseException) for c in value):
                raise ValueError("retry_exceptions must be either a boolean or a list of "
                                 f"exceptions, got {value!r}")
    if "max_calls" in options:
        value = options["max_calls"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"max_calls must be an integer >= 0, got {value!r}")
    if options.get("timeout_s") is not None:
        value = options["timeout_s"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {value!r}")
    _check_time_options(options)
    _check_limit_options(options)
    if options.get("task_id") is not None:
        check_task_id(options["task_id"])
    for key in ("name", "queue", "limit_key"):
        if key in options and options[key] is not None:
            value = options[key]
            if not isinstance(value, str) or not value or any(
                    c.isspace() or not c.isprintable() or c in "*?[]{}" for c in value):
                raise ValueError(f"{key} must be a non-empty string without whitespace or "
                                 f"glob characters, got {value!r}")
    return dict(options)


@dataclass(frozen=True)
class ResolvedOptions:
    max_retries: int
    retry_exceptions: bool | tuple[type, ...]
    max_calls: int
    name: str | None
    queue: str
    timeout_s: float | None = None
    retry_delay_s: float = 0.0
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_max_delay_s: float = DEFAULT_RETRY_MAX_DELAY_S
    delay_s: float | None = None
    eta_s: float | None = None       # epoch seconds
    task_id: str | None = None       # idempotent submit: this id, not a new one
    limit_key: str | None = None
    max_concurrency: int | None = None
    max_rate: str | None = None

    @classmethod
    def resolve(cls, options: dict[str, Any]) -> ResolvedOptions:
        max_retries = options.get("max_retries")
        if max_retries is None:
            max_retries = default_max_retries()
        retry = options.get("retry_exceptions", False)
        return cls(
            max_retries=max_retries,
            retry_exceptions=retry if isinstance(retry, bool) else tuple(retry),
            max_calls=options.get("max_calls") or 0,
            name=options.get("name"),
            queue=options.get("queue") or "default",
            timeout_s=options.get("timeout_s"),
            retry_delay_s=float(options.get("retry_delay_s") or 0.0),
            retry_backoff=float(options.get("retry_backoff") or DEFAULT_RETRY_BACKOFF),
            retry_max_delay_s=float(DEFAULT_RETRY_MAX_DELAY_S
                                    if options.get("retry_max_delay_s") is None
                                    else options["retry_max_delay_s"]),
            delay_s=options.get("delay_s"),
            eta_s=None if options.get("eta") is None else eta_epoch_s(options["eta"]),
            task_id=options.get("task_id"),
            limit_key=options.get("limit_key"),
            max_concurrency=options.get("max_concurrency"),
            max_rate=options.get("max_rate"),
        )


_before_hex: Callable[[], None] | None = None


def new_id() -> str:
    """A task id: 32 hex digits."""
    return uuid.uuid4().hex


def new_put_id() -> str:
    """An object from `put`: 40 hex digits, so a lost one is known to have no lineage."""
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


PUT_ID_LENGTH = 40


class ObjectRef:
    """A plain id for a task's result or a put value, usable from any connected process."""

    __slots__ = ("_id",)

    def __init__(self, object_id: str) -> None:
        if not is_task_id(object_id):
            raise ValueError(f"not an ObjectRef id: {object_id!r}")
        self._id = object_id

    def hex(self) -> str:
        # The id may be handed to another process: make sure the task has reached Redis.
        if _before_hex is not None:
            _before_hex()
        return self._id

    @classmethod
    def from_hex(cls, hex_id: str) -> ObjectRef:
        return cls(hex_id)

    def task_id(self) -> str:
        return self._id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id})"

    def __reduce__(self) -> Any:
        return (ObjectRef, (self._id,))


class ArgRef:
    """Marks a top-level argument that the worker replaces by the ref's value before the call."""

    __slots__ = ("object_id",)

    def __init__(self, object_id: str) -> None:
        self.object_id = object_id

    def __reduce__(self) -> Any:
        return (ArgRef, (self.object_id,))
