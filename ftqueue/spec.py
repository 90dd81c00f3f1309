"""Task states, error types, options and the ObjectRef: the vocabulary shared by every module."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import threading
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Callable, NamedTuple

from . import resources
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
    TASK_UNSCHEDULABLE_ERROR = "TASK_UNSCHEDULABLE_ERROR"


class Outcome(NamedTuple):
    """How one attempt ended, as a worker (or a supervisor, for a timeout kill) commits it."""

    task_id: str
    fence: str
    kind: str            # 'ok' | 'err' | 'cancelled'
    blob: bytes          # sealed result or error record
    retryable: bool      # an 'err' that retry_exceptions allows (the budget is Lua's)
    message: str         # `Type: message`, kept in the task record for people


TASK_OPTIONS = frozenset({"max_retries", "retry_exceptions", "max_calls", "name", "queue",
                          "timeout_s", "num_cpus", "num_gpus", "memory", "resources",
                          "scheduling_strategy", "runtime_env", "num_returns",
                          "retry_delay_s", "retry_backoff", "retry_max_delay_s",
                          "delay_s", "eta", "task_id", "limit_key", "max_concurrency",
                          "max_rate"})
RUNTIME_ENV_KEYS = frozenset({"env_vars"})
STREAMING = "streaming"

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
_HEX = frozenset("0123456789abcdef")


_TASK_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")   # TASK_ID_MAX_CHARS


def is_task_id(text: object) -> bool:
    """A task or object id: 1-128 characters of [A-Za-z0-9._:-] (generated ones are hex)."""
    return isinstance(text, str) and _TASK_ID_RE.fullmatch(text) is not None


def check_task_id(value: object) -> str:
    """A `task_id=` option for an idempotent submit, or ValueError."""
    if not is_task_id(value):
        raise ValueError(f"task_id must be 1-{TASK_ID_MAX_CHARS} characters of "
                         f"[A-Za-z0-9._:-], got {value!r}")
    assert isinstance(value, str)
    if is_put_id(value):
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
                    c.isspace() or not c.isprintable() or c in "*?[]{}@" for c in value):
                raise ValueError(f"{key} must be a non-empty string without whitespace, '@' "
                                 f"or glob characters, got {value!r}")
    _validate_ray_options(options)
    return dict(options)


def _validate_ray_options(options: dict[str, Any]) -> None:
    """Ray's resource, placement, environment and return options."""
    if options.get("num_cpus") is not None:
        resources.check_amount("num_cpus", options["num_cpus"])
    if options.get("num_gpus") is not None:
        resources.check_amount("num_gpus", options["num_gpus"], whole_above_one=True)
    if options.get("memory") is not None:
        value = options["memory"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"memory must be a number of bytes >= 0, got {value!r}")
    if options.get("resources") is not None:
        resources.check_custom(options["resources"])
    if options.get("scheduling_strategy") is not None:
        check_strategy(options["scheduling_strategy"])
    if options.get("runtime_env") is not None:
        check_runtime_env(options["runtime_env"])
    if "num_returns" in options and options["num_returns"] is not None:
        value = options["num_returns"]
        if value != STREAMING and (not isinstance(value, int) or isinstance(value, bool)
                                   or value < 1):
            raise ValueError(f"num_returns must be an integer >= 1 or 'streaming', "
                             f"got {value!r}")


class NodeAffinitySchedulingStrategy:
    """Run on the node `node_id`; with `soft=True`, anywhere if that node is dead or unknown
    (as `ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy`)."""

    def __init__(self, node_id: str, soft: bool, *, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False) -> None:
        if not isinstance(node_id, str) or not node_id or any(
                c.isspace() or c in "*?[]{}@" for c in node_id):
            raise ValueError(f"NodeAffinitySchedulingStrategy needs a node id, got {node_id!r}")
        self.node_id = node_id
        self.soft = bool(soft)

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeAffinitySchedulingStrategy) and \
            (other.node_id, other.soft) == (self.node_id, self.soft)

    def __hash__(self) -> int:
        return hash((self.node_id, self.soft))


def check_strategy(value: Any) -> None:
    if isinstance(value, NodeAffinitySchedulingStrategy) or value in ("DEFAULT", "SPREAD"):
        return
    raise ValueError("scheduling_strategy must be 'DEFAULT', 'SPREAD' or a "
                     f"NodeAffinitySchedulingStrategy, got {value!r}")


def check_runtime_env(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"runtime_env must be a dict, got {value!r}")
    unknown = sorted(set(value) - RUNTIME_ENV_KEYS)
    if unknown:
        raise ValueError(f"runtime_env key {unknown[0]!r} is not supported by ftqueue (only "
                         "'env_vars'): build it into the worker image instead")
    env_vars = value.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, str)
            for k, v in env_vars.items()):
        raise ValueError("runtime_env['env_vars'] must be a dict of str to str, got "
                         f"{env_vars!r}")


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
    demand: tuple[tuple[str, int], ...] = (("CPU", resources.UNIT),)   # resource units
    strategy: str = "DEFAULT"          # DEFAULT | SPREAD | node:<id> | soft:<id>
    env_vars: tuple[tuple[str, str], ...] = ()
    num_returns: int | str = 1

    shape: str = "CPU=1"              # the demand's canonical text (resources.shape_of)

    @classmethod
    def resolve(cls, options: dict[str, Any]) -> ResolvedOptions:
        max_retries = options.get("max_retries")
        if max_retries is None:
            max_retries = default_max_retries()
        retry = options.get("retry_exceptions", False)
        num_cpus = options.get("num_cpus")
        num_gpus = options.get("num_gpus") or 0
        demand = resources.demand(1 if num_cpus is None else num_cpus, num_gpus,
                                  options.get("memory") or 0, options.get("resources") or {})
        max_calls = options.get("max_calls")
        if max_calls is None and num_gpus:
            max_calls = 1   # as Ray: a GPU task's process ends after it, freeing GPU memory
        strategy = options.get("scheduling_strategy") or "DEFAULT"
        if isinstance(strategy, NodeAffinitySchedulingStrategy):
            strategy = ("soft:" if strategy.soft else "node:") + strategy.node_id
        env = (options.get("runtime_env") or {}).get("env_vars") or {}
        return cls(
            max_retries=max_retries,
            retry_exceptions=retry if isinstance(retry, bool) else tuple(retry),
            max_calls=max_calls or 0,
            name=options.get("name"),
            queue=options.get("queue") or "default",
            timeout_s=options.get("timeout_s"),
            demand=tuple(sorted(demand.items())),
            shape=resources.shape_of(demand),
            strategy=strategy,
            env_vars=tuple(sorted(env.items())),
            num_returns=options.get("num_returns") or 1,
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
_future_of: Callable[[ObjectRef], concurrent.futures.Future[Any]] | None = None


class _RandomPool:
    """Random bytes from the OS, read in blocks: one system call per ID_POOL ids instead of
    one per id (it cost a submit 13 µs here). A forked child starts a pool of its own, so
    parent and child never hand out the same bytes."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._block = b""
        self._pos = 0
        self._lock = threading.Lock()     # a child never inherits it held

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._pos + n > len(self._block):
                self._block, self._pos = os.urandom(n * ID_POOL), 0
            start = self._pos
            self._pos += n
            return self._block[start:self._pos]


ID_POOL = 512
_random = _RandomPool()


def new_id() -> str:
    """A task id: 32 hex digits (128 random bits)."""
    return _random.take(16).hex()


def new_put_id() -> str:
    """An object from `put`: 40 hex digits, so a lost one is known to have no lineage."""
    return _random.take(20).hex()


PUT_ID_LENGTH = 40


def is_put_id(object_id: str) -> bool:
    """An object from `put` (40 hex digits): it has no task, so no lineage."""
    return len(object_id) == PUT_ID_LENGTH and set(object_id) <= _HEX


ITEM_SEP = "#"   # never in a task id: "<task_id>#<i>" is the i-th value a task returns


def item_id(task_id: str, index: int) -> str:
    """The object id of a task's index-th return value (num_returns, or a generator's yield)."""
    return f"{task_id}{ITEM_SEP}{index}"


def split_object_id(object_id: str) -> tuple[str, int | None]:
    """(the task that makes it, which of its return values) — (id, None) for the task's own
    single result or a put object."""
    base, sep, index = object_id.partition(ITEM_SEP)
    return (base, int(index)) if sep else (base, None)


def _valid_object_id(object_id: object) -> bool:
    if not isinstance(object_id, str) or not object_id:
        return False
    base, sep, index = object_id.partition(ITEM_SEP)
    if sep and not (index.isdigit() and index.isascii() and str(int(index)) == index):
        return False
    return is_task_id(base)


class ObjectRef:
    """A plain id for a task's result or a put value, usable from any connected process."""

    __slots__ = ("_id",)

    def __init__(self, object_id: str) -> None:
        if not _valid_object_id(object_id):
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
        return split_object_id(self._id)[0]

    def future(self) -> concurrent.futures.Future[Any]:
        """A `concurrent.futures.Future` completed with this ref's value (or error)."""
        if _future_of is None:
            raise RuntimeError("ftqueue is not set up: import ftqueue (its api binds futures)")
        return _future_of(self)

    def __await__(self) -> Generator[Any, None, Any]:
        # One listener serves every awaited ref: no thread per await.
        return asyncio.wrap_future(self.future()).__await__()

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
