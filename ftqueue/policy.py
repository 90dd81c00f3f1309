"""What each way an attempt can end costs: the one table behind retries and respawns.

Pure functions, no I/O. The supervisor classifies a worker's exit (`classify_exit`) and
asks what that loss costs (`loss_cost`) and whether to start a replacement
(`decide_restart`); the worker asks whether an exception may be retried
(`exception_is_retryable`). The Lua scripts receive the answer (`charge`, `retryable`) and
apply the retry budget atomically: `budget_left` there, `retry_allowed` here for tests.

    ending            error type      charged  counts as a crash
    CRASHED           WORKER_DIED     yes      yes   died on its own with a task in flight
    OOM_KILLED        OUT_OF_MEMORY   yes      no    the memory watchdog killed it mid-task
    CANCEL_KILLED     (TASK_CANCELLED: the cancel request recorded on the task wins)
    TIMEOUT_KILLED    (the timeout outcome is committed first; nothing left in flight)
    STOPPED           WORKER_DIED     no       no    node shutdown's grace ran out mid-task
    RECYCLED          -               -        no    left between tasks on purpose
    IDLE_DEATH        -               -        yes   died between tasks

"A task in flight" means its body was started and its outcome is not yet committed: a
death after the body returned but before Redis has the outcome is charged too, so a
finished task is never handed back as "not started" (DESIGN invariant 8). The exit code
does not matter once a task is in flight (a task calling `os._exit(75)` is a crash).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .exceptions import TaskTimeoutError
from .spec import ErrorType

EXIT_RECYCLE = 75          # a worker leaving between tasks on purpose (max_calls, memory)
CRASH_WINDOW_S = 10.0
CRASH_LOOP_LIMIT = 10
CRASH_LOOP_DELAY_S = 1.0


class KillReason(str, Enum):
    """Why the supervisor killed a worker itself."""

    NONE = ""
    CANCEL = "cancel"          # force cancel
    TIMEOUT = "timeout"        # ignored its timeout interrupt
    OOM = "oom"                # memory watchdog, while a task ran
    RECYCLE = "recycle"        # memory watchdog, between tasks
    STOP = "stop"              # node stopping, grace period over


class Ending(str, Enum):
    CRASHED = "crashed"
    OOM_KILLED = "oom_killed"
    CANCEL_KILLED = "cancel_killed"
    TIMEOUT_KILLED = "timeout_killed"
    STOPPED = "stopped"
    RECYCLED = "recycled"
    IDLE_DEATH = "idle_death"


@dataclass(frozen=True)
class LossCost:
    """What the loss of a worker costs the task it had in flight (if any)."""

    error_type: str
    charged: bool
    is_crash: bool


_COSTS = {
    Ending.CRASHED: LossCost(ErrorType.WORKER_DIED.value, True, True),
    Ending.OOM_KILLED: LossCost(ErrorType.OUT_OF_MEMORY.value, True, False),
    Ending.CANCEL_KILLED: LossCost(ErrorType.WORKER_DIED.value, False, False),
    Ending.TIMEOUT_KILLED: LossCost(ErrorType.WORKER_DIED.value, False, False),
    Ending.STOPPED: LossCost(ErrorType.WORKER_DIED.value, False, False),
    Ending.RECYCLED: LossCost(ErrorType.WORKER_DIED.value, False, False),
    Ending.IDLE_DEATH: LossCost(ErrorType.WORKER_DIED.value, False, True),
}


def classify_exit(returncode: int, *, task_in_flight: bool, kill_reason: KillReason,
                  asked_to_stop: bool) -> Ending:
    """How a worker ended. `asked_to_stop`: the supervisor sent it SIGTERM (node stopping,
    spare temporary worker) — an exit 0 then is on purpose."""
    if kill_reason is KillReason.CANCEL:
        return Ending.CANCEL_KILLED
    if kill_reason is KillReason.TIMEOUT:
        return Ending.TIMEOUT_KILLED
    if kill_reason in (KillReason.OOM, KillReason.RECYCLE):
        return Ending.OOM_KILLED if task_in_flight else Ending.RECYCLED
    if kill_reason is KillReason.STOP:
        return Ending.STOPPED if task_in_flight else Ending.RECYCLED
    if task_in_flight:
        return Ending.CRASHED
    if returncode == EXIT_RECYCLE or (returncode == 0 and asked_to_stop):
        return Ending.RECYCLED
    return Ending.IDLE_DEATH


def loss_cost(ending: Ending) -> LossCost:
    return _COSTS[ending]


class Restart(str, Enum):
    RESPAWN = "respawn"          # replace it now
    RESPAWN_LATER = "later"      # crash loop: replace it after a pause
    NONE = "none"                # it was asked to leave, or the node is stopping


def decide_restart(ending: Ending, *, node_stopping: bool, asked_to_stop: bool,
                   temporary: bool, recent_crashes: int) -> Restart:
    """Whether to replace a worker that ended (recent_crashes includes this one)."""
    if node_stopping or asked_to_stop or temporary:
        return Restart.NONE
    if loss_cost(ending).is_crash and recent_crashes >= CRASH_LOOP_LIMIT:
        return Restart.RESPAWN_LATER
    return Restart.RESPAWN


def exception_is_retryable(exc: BaseException, retry_exceptions: bool | tuple[type, ...]) -> bool:
    """Ray's `retry_exceptions`: True, False, or an allowlist of exception classes."""
    if isinstance(retry_exceptions, bool):
        return retry_exceptions
    return isinstance(exc, tuple(retry_exceptions))


def timeout_is_retryable(retry_exceptions: bool | tuple[type, ...]) -> bool:
    """Whether a task killed past its timeout_s may be retried: decided at submit time,
    where the allowlist's classes live, so the supervisor needs no unpickling."""
    if isinstance(retry_exceptions, bool):
        return retry_exceptions
    return any(issubclass(TaskTimeoutError, c) for c in retry_exceptions)


def retry_allowed(max_retries: int, retries_so_far: int) -> bool:
    """The budget rule the Lua side applies (`budget_left` in lib.lua): -1 is infinite."""
    return max_retries == -1 or retries_so_far < max_retries
