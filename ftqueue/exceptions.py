"""ftqueue's exception tree (Ray's names are exported as aliases).

    FtqueueError (RayError)
    ├── TaskError (RayTaskError)            the task raised; also an instance of the cause's class
    │   └── TaskTimeoutError                the task ran past its timeout_s (also a TimeoutError)
    ├── WorkerCrashedError                  the worker process died and retries are spent
    │   ├── NodeDiedError                   the whole node was lost (lease expired)
    │   └── OutOfMemoryError                the memory watchdog killed the worker
    ├── TaskCancelledError                  the task was cancelled
    ├── TaskUnschedulableError              no live node may run it (hard node affinity)
    ├── GetTimeoutError                     get(timeout=) ran out (also a TimeoutError)
    ├── ObjectLostError                     a stored value is gone and has no lineage
    │   └── ObjectReconstructionFailedError a lost result could not be rebuilt
    ├── SerializationError                  a value could not be pickled (also a TypeError)
    ├── PayloadVerificationError            a payload's signature did not verify (not unpickled)
    ├── PayloadTooLargeError                over FTQUEUE_MAX_PAYLOAD_BYTES (also a ValueError)
    ├── UnserializableException             stands in for a task's exception that did not (un)pickle
    └── FtqueueConnectionError              Redis could not be reached (also a ConnectionError)
"""

from __future__ import annotations

from typing import Any

DEP_FAILED_LINE = "  At least one of the input arguments for this task could not be computed:"


class FtqueueError(Exception):
    """Root of every error ftqueue raises."""


class TaskError(FtqueueError):
    """The task raised an exception; `cause` is the original exception."""

    def __init__(
        self,
        function_name: str,
        traceback_str: str,
        cause: BaseException | None = None,
        pid: int | None = None,
        ip: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.ip = ip
        super().__init__(cause if cause is not None else traceback_str)

    @property
    def header(self) -> str:
        return f"ftqueue::{self.function_name}() (pid={self.pid}, ip={self.ip})"

    def __str__(self) -> str:
        lines = []
        for line in self.traceback_str.rstrip("\n").split("\n"):
            if line == "Traceback (most recent call last):":
                continue
            lines.append(line)
        return self.header + "\n" + "\n".join(lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cause!r})"

    def __reduce__(self) -> Any:
        return (_rebuild_task_error, (self._base_class(), self.function_name, self.traceback_str,
                                      self.cause, self.pid, self.ip, self._is_dual()))

    def _base_class(self) -> type:
        for klass in type(self).__mro__:
            if issubclass(klass, TaskError) and not getattr(klass, "_ftqueue_dual", False):
                return klass
        return TaskError

    def _is_dual(self) -> bool:
        return bool(getattr(type(self), "_ftqueue_dual", False))

    def as_instanceof_cause(self) -> TaskError:
        """This error as an instance of both its own class and the cause's class."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or isinstance(self, cause_cls) or issubclass(cause_cls, TaskError):
            return self
        base = self._base_class()
        try:
            dual = _dual_class(base, cause_cls)
            err = dual.__new__(dual)
        except TypeError:  # e.g. an instance lay-out conflict: keep the plain error
            return self
        err.__dict__.update(self.__dict__)
        err.args = (self.cause,)
        return err


_DUAL_CLASSES: dict[tuple[type, type], type] = {}


def _dual_class(base: type[TaskError], cause_cls: type) -> type[TaskError]:
    key = (base, cause_cls)
    if key not in _DUAL_CLASSES:
        name = f"{base.__name__}({cause_cls.__name__})"

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # instances are built by hand
            pass

        _DUAL_CLASSES[key] = type(name, (base, cause_cls), {
            "__init__": __init__, "__module__": __name__, "_ftqueue_dual": True,
            "__str__": base.__str__, "__repr__": base.__repr__, "__reduce__": base.__reduce__,
        })
    return _DUAL_CLASSES[key]


def _rebuild_task_error(base: type[TaskError], function_name: str, traceback_str: str,
                        cause: BaseException | None, pid: int | None, ip: str | None,
                        dual: bool) -> TaskError:
    err = base(function_name, traceback_str, cause, pid, ip)
    return err.as_instanceof_cause() if dual else err


class TaskTimeoutError(TaskError, TimeoutError):
    """The task was still running after its `timeout_s`."""


class WorkerCrashedError(FtqueueError):
    """The worker process running the task died, and its retries are spent."""


class NodeDiedError(WorkerCrashedError):
    """The node running the task was lost (its lease expired), and its retries are spent."""


class OutOfMemoryError(WorkerCrashedError):
    """The node's memory watchdog killed the worker, and its retries are spent."""


class TaskCancelledError(FtqueueError):
    """The task was cancelled."""

    def __init__(self, task_id: str | None = None, message: str | None = None) -> None:
        self.task_id = task_id
        super().__init__(message or f"Task {task_id} was cancelled")


class TaskUnschedulableError(FtqueueError):
    """The task must run on a node that is gone or cannot fit it (NodeAffinity, soft=False)."""


class GetTimeoutError(FtqueueError, TimeoutError):
    """`get` ran out of time before the results were ready."""


class ObjectLostError(FtqueueError):
    """A stored object is gone and cannot be rebuilt."""


class ObjectReconstructionFailedError(ObjectLostError):
    """A lost task result could not be rebuilt by re-running its task."""


class SerializationError(FtqueueError, TypeError):
    """A value could not be pickled or unpickled."""


class UnserializableException(FtqueueError):
    """Stands in for a task's exception that could not be pickled or unpickled."""

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> Any:
        return (UnserializableException, (self.type_name, self.message, self.traceback_text))


class FtqueueConnectionError(FtqueueError, ConnectionError):
    """Redis could not be reached."""


class CredentialsRefusedError(FtqueueConnectionError):
    """Redis answered but refused the username or password: waiting does not help."""


class InvalidAddressError(FtqueueConnectionError):
    """The Redis address cannot be read: waiting does not help."""


class PayloadVerificationError(FtqueueError):
    """A payload's signature did not verify; it was not unpickled."""


class PayloadTooLargeError(FtqueueError, ValueError):
    """A pickled argument or result is over FTQUEUE_MAX_PAYLOAD_BYTES."""


# Ray's names, so `import ftqueue as ray` code keeps its except clauses.
RayError = FtqueueError
RayTaskError = TaskError
RaySystemError = FtqueueError
