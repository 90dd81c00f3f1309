"""What travels through Redis as bytes: task arguments, results and errors.

A result blob is one kind byte followed by a pickle: b"V" a value, b"E" an error record.
An error record is a dict of plain types, so it always unpickles; the original exception
rides inside it as its own pickle, so one that fails to (un)pickle still reaches the caller
as its type name, message and traceback text.

Every blob is sealed by `signing` (an HMAC over kind, owner id and bytes when a secret is
configured) and checked before anything in it is unpickled; its size is capped by
FTQUEUE_MAX_PAYLOAD_BYTES.
"""

from __future__ import annotations

import functools
import json
import pickle
import traceback
from typing import Any, NamedTuple, Sequence

from . import serialization
from .exceptions import (
    DEP_FAILED_LINE,
    FtqueueError,
    NodeDiedError,
    ObjectLostError,
    ObjectReconstructionFailedError,
    OutOfMemoryError,
    PayloadTooLargeError,
    PayloadVerificationError,
    SerializationError,
    TaskCancelledError,
    TaskError,
    TaskUnschedulableError,
    UnserializableException,
    WorkerCrashedError,
)
from .settings import max_payload_bytes
from .signing import signer
from .spec import ArgRef, ErrorType, ObjectRef, is_put_id, split_object_id

CORRUPT_RECORD = "CORRUPT_RECORD"   # store.outcomes' error type for a record of the wrong type
VALUE = b"V"
ERROR = b"E"





def _limit(data: bytes, what: str) -> bytes:
    limit = max_payload_bytes()
    if len(data) > limit:
        raise PayloadTooLargeError(f"the {what} is {len(data)} bytes pickled, over "
                                   f"FTQUEUE_MAX_PAYLOAD_BYTES={limit}")
    return data


ARGS_MAGIC = b"FTQA1"


def execution_fields(fn_ref: str, max_calls: int, timeout_s: float | None,
                     retry_timeout: bool, max_retries: int) -> dict[str, str]:
    """What decides which code runs and how: bound into the signed argument envelope by the
    submitter and compared by the worker with what the task record says (DESIGN
    invariant 10), so rewriting the record in Redis cannot change it."""
    return {"fn": fn_ref, "max_calls": str(int(max_calls or 0)),
            "timeout_s": repr(float(timeout_s)) if timeout_s else "",
            "retry_timeout": "1" if retry_timeout else "0", "max_retries": str(int(max_retries))}


class CallArgs(NamedTuple):
    """What a worker unpickles from a task's signed argument envelope."""

    args: list[Any]
    kwargs: dict[str, Any]
    retry_exceptions: bool | tuple[type, ...]
    num_returns: int | str = 1              # or 'streaming' (a generator)
    env_vars: dict[str, str] = {}


def pack_args(args: Sequence[Any], kwargs: dict[str, Any],
              retry_exceptions: bool | tuple[type, ...], what: str,
              task_id: str, bound: dict[str, str] | None = None, *,
              num_returns: int | str = 1,
              env_vars: dict[str, str] | None = None) -> tuple[bytes, list[str]]:
    """Pickle a call's arguments behind a header of its execution fields (`bound`), sealed
    together; top-level ObjectRefs become dependencies (of the task that makes them)."""
    deps: list[str] = []

    def mark(value: Any) -> Any:
        if isinstance(value, ObjectRef):
            deps.append(split_object_id(value._id)[0])
            return ArgRef(value._id)
        return value

    marked = ([mark(a) for a in args], {k: mark(v) for k, v in kwargs.items()})
    call: tuple[Any, ...] = (marked[0], marked[1], retry_exceptions)
    if num_returns != 1 or env_vars:      # most tasks: the three, as before
        call += ({"num_returns": num_returns, "env_vars": dict(env_vars or {})},)
    blob = serialization.dumps(call, what=f"arguments for a task {what}")
    header = _header(tuple(sorted((bound or {}).items())))
    data = ARGS_MAGIC + len(header).to_bytes(4, "big") + header + blob
    return signer().seal("args", task_id, _limit(data, f"arguments of {what}")), \
        list(dict.fromkeys(deps))


@functools.lru_cache(maxsize=256)
def _header(bound: tuple[tuple[str, str], ...]) -> bytes:
    """The envelope's header, the same for every call of a function with the same options."""
    return json.dumps(dict(bound), sort_keys=True).encode()


def reseal_args(blob: bytes, from_id: str, to_id: str) -> bytes:
    """An argument envelope sealed for `from_id` (a schedule), verified and sealed again for
    `to_id` (one tick's task); nothing is unpickled."""
    return signer().seal("args", to_id, signer().open("args", from_id, blob))


def open_args(blob: bytes, task_id: str) -> tuple[dict[str, str], bytes]:
    """Verify an argument envelope (nothing unpickled): (its execution fields, the pickle)."""
    data = signer().open("args", task_id, blob)
    if data[:len(ARGS_MAGIC)] != ARGS_MAGIC:
        return {}, data      # written before execution fields were bound
    start = len(ARGS_MAGIC) + 4
    size = int.from_bytes(data[len(ARGS_MAGIC):start], "big")
    try:
        bound = json.loads(data[start:start + size])
    except ValueError:
        raise PayloadVerificationError(f"the arguments of {task_id} have an unreadable "
                                       "header") from None
    return {str(k): str(v) for k, v in bound.items()}, data[start + size:]


def check_execution_fields(task_id: str, bound: dict[str, str],
                           recorded: dict[str, str]) -> None:
    """Refuse a task whose record says something else than its signed envelope."""
    if not signer().enabled and not bound:
        return
    changed = sorted(k for k in set(bound) | set(recorded) if bound.get(k) != recorded.get(k))
    if changed:
        raise PayloadVerificationError(
            f"task {task_id} refused: its record's {', '.join(changed)} differ from what the "
            "submitter signed (the record was changed in Redis)")


def loads_args(data: bytes) -> CallArgs:
    loaded = serialization.loads(data, what="task arguments")
    args, kwargs, retry_exceptions = loaded[:3]
    extras = loaded[3] if len(loaded) > 3 else {}
    return CallArgs(args, kwargs, retry_exceptions, extras.get("num_returns", 1),
                    extras.get("env_vars", {}))



def pack_value(value: Any, object_id: str) -> bytes:
    data = VALUE + serialization.dumps(value, what="task's return value")
    return signer().seal("result", object_id, _limit(data, "return value"))


def pack_function(fn: Any, name: str) -> tuple[bytes, str]:
    """(sealed blob, digest): stored once under its digest, verified against it."""
    data = _limit(serialization.dumps_function(fn, what=f"function {name}"), f"function {name}")
    digest = serialization.digest(data)
    return signer().seal("function", digest, data), digest


def unpack_function(blob: bytes, digest: str) -> Any:
    return serialization.loads_function(signer().open("function", digest, blob))


def format_traceback(exc: BaseException, skip_frames: int = 0) -> str:
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def pack_error(function_name: str, exc: BaseException, traceback_text: str, pid: int, ip: str,
               object_id: str, kind: str = "TaskError") -> bytes:
    try:
        cause_blob: bytes | None = serialization.dumps(exc)
    except SerializationError:
        cause_blob = None
    record = {
        "kind": kind, "function_name": function_name, "traceback": traceback_text,
        "pid": pid, "ip": ip, "type_name": _qualified_name(type(exc)),
        "message": _safe_str(exc), "cause": cause_blob,
    }
    return _seal_error(record, object_id)


def _seal_error(record: dict[str, Any], object_id: str) -> bytes:
    if record["cause"] is not None and len(record["cause"]) > max_payload_bytes() // 2:
        record["cause"] = None    # an exception carrying huge data travels as text only
    data = ERROR + pickle.dumps(record, protocol=serialization.PROTOCOL)
    return signer().seal("result", object_id, data)


def _qualified_name(cls: type) -> str:
    module = getattr(cls, "__module__", "")
    if module in ("builtins", "__main__", ""):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a user's __str__ may raise anything
        return f"<{type(exc).__name__}: str() failed>"


def error_summary(exc: BaseException) -> str:
    """`Type: message`, kept in the task record for people reading it with redis-cli."""
    return f"{type(exc).__name__}: {_safe_str(exc)}"


def unpack_error(data: bytes) -> TaskError:
    from .exceptions import TaskTimeoutError

    record = pickle.loads(data[1:])
    cause: BaseException | None
    try:
        cause = serialization.loads(record["cause"]) if record["cause"] is not None else None
    except SerializationError:
        cause = None
    if cause is None:
        cause = UnserializableException(record["type_name"], record["message"], record["traceback"])
    kinds = {"TaskError": TaskError, "TaskTimeoutError": TaskTimeoutError}
    klass = kinds.get(record.get("kind"), TaskError)
    err = klass(record["function_name"], record["traceback"], cause, record["pid"], record["ip"])
    return err.as_instanceof_cause()


def error_text(object_id: str, blob: bytes) -> str:
    """The traceback and `Type: message` of a stored error, or '' for a value."""
    try:
        data = signer().open("result", object_id, blob)
    except PayloadVerificationError as e:
        return f"(the error is not shown: {e})"
    if data[:1] != ERROR:
        return ""
    try:
        record = pickle.loads(data[1:])
    except Exception as e:  # noqa: BLE001 - a malformed record is reported, not raised
        return f"(unreadable error record: {e})"
    text = str(record.get("traceback", ""))
    return text if text.strip() else f"{record.get('type_name')}: {record.get('message')}"


def dependency_error(function_name: str, dep_error: BaseException, pid: int, ip: str,
                     object_id: str) -> bytes:
    """The error of a task that did not run because an argument failed (Ray's wording)."""
    shown = dep_error._base_class() if isinstance(dep_error, TaskError) else type(dep_error)
    text = DEP_FAILED_LINE + "\n" + f"{_qualified_name(shown)}: {dep_error}"
    root = dep_error.cause if isinstance(dep_error, TaskError) and dep_error.cause else dep_error
    try:
        cause_blob: bytes | None = serialization.dumps(root)
    except SerializationError:
        cause_blob = None
    record = {"kind": "TaskError", "function_name": function_name, "traceback": text, "pid": pid,
              "ip": ip, "type_name": _qualified_name(type(root)), "message": _safe_str(root),
              "cause": cause_blob}
    return _seal_error(record, object_id)


_SYSTEM_ERRORS = {
    ErrorType.WORKER_DIED.value: WorkerCrashedError,
    ErrorType.NODE_DIED.value: NodeDiedError,
    ErrorType.OUT_OF_MEMORY.value: OutOfMemoryError,
    ErrorType.TASK_UNSCHEDULABLE_ERROR.value: TaskUnschedulableError,
}


def outcome_to_result(object_id: str, record: dict[str, str],
                      blob: bytes | None) -> tuple[bool, Any]:
    """(True, value) or (False, exception) for a final task record and its result blob."""
    if not record:  # a put object, or a task whose record expired
        if blob is None:
            if is_put_id(object_id):
                return False, ObjectLostError(f"Object {object_id} is lost (it was put, so it "
                                              "has no lineage to rebuild it from)")
            return False, ObjectReconstructionFailedError(
                f"Failed to retrieve object {object_id}: no result and no task record "
                "[LINEAGE_EVICTED: its task record expired, or the id is unknown]")
        return _decode(blob, object_id)
    error_type = record.get("error_type", "")
    if record["state"] == "FINISHED":
        if blob is None:
            return False, ObjectLostError(f"The result of task {object_id} is lost")
        return _decode(blob, object_id)
    if error_type in _SYSTEM_ERRORS:
        return False, _SYSTEM_ERRORS[error_type](
            f"Task {object_id} ({record.get('func', '')}) failed: "
            f"{record.get('error_message', '')}")
    if error_type == ErrorType.TASK_CANCELLED.value:
        return False, TaskCancelledError(object_id)
    if error_type == CORRUPT_RECORD:
        return False, FtqueueError(f"Task {object_id} cannot be read: "
                                   f"{record.get('error_message', '')}")
    if blob is None:
        return False, ObjectLostError(f"The error of task {object_id} is lost: "
                                      f"{record.get('error_message', '')}")
    # The error of a task that had several return values is its own (sealed for its id).
    ok, value = _decode(blob, split_object_id(object_id)[0])
    if is_unverifiable(value) and record.get("error_message"):
        # The stored error cannot be read here, but the task record says in plain text why
        # the task failed (e.g. its worker refused the function): that is the cause to show.
        here = "set here" if signer().enabled else "not set here"
        return False, PayloadVerificationError(
            f"task {object_id} failed on its worker: {record['error_message']} (and its "
            f"stored error cannot be verified here: FTQUEUE_SECRET is {here}, and differs "
            "from or is missing on the worker)")
    return ok, value


def is_unverifiable(error: Any) -> bool:
    """This process refused a stored blob (not: the task failed with a verification error,
    which arrives as a TaskError that is also a PayloadVerificationError)."""
    return isinstance(error, PayloadVerificationError) and not isinstance(error, TaskError)


def _decode(blob: bytes, object_id: str) -> tuple[bool, Any]:
    try:
        data = signer().open("result", object_id, blob)
    except PayloadVerificationError as e:
        return False, e
    if data[:1] == VALUE:
        try:
            return True, serialization.loads(data[1:], what="task's return value")
        except SerializationError as e:
            return False, e
    if data[:1] == ERROR:
        try:
            return False, unpack_error(data)
        except Exception as e:  # noqa: BLE001 - a malformed error record
            return False, SerializationError(f"unreadable error record: {e}")
    return False, SerializationError("unrecognised result payload")
