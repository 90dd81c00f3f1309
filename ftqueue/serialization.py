"""The only module that knows pickle. Storage speaks bytes; errors become SerializationError."""

from __future__ import annotations

import hashlib
import pickle
import types
from typing import Any

import cloudpickle

from .exceptions import SerializationError

PROTOCOL = 5


def dumps(obj: Any, what: str = "value") -> bytes:
    try:
        data: bytes = cloudpickle.dumps(obj, protocol=PROTOCOL)
        return data
    except BaseException as e:  # pickling can raise anything, RecursionError included
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise SerializationError(f"Could not serialize the {what}: {type(e).__name__}: {e}") from e


def loads(data: bytes, what: str = "value") -> Any:
    try:
        return pickle.loads(data)
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise SerializationError(
            f"Could not deserialize the {what}: {type(e).__name__}: {e}") from e


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def versions() -> str:
    import platform

    return f"Python {platform.python_version()}, cloudpickle {cloudpickle.__version__}"


def dumps_function(fn: Any, what: str) -> bytes:
    """Pickle a function with the file it came from (cloudpickle stores code by value as
    "<dynamic-code>", and tracebacks should name the user's file as Ray's do) inside a plain
    envelope naming the versions that pickled it, readable by any Python 3."""
    code = getattr(fn, "__code__", None)
    inner = dumps((fn, code.co_filename if code is not None else None), what=what)
    return pickle.dumps({"versions": versions(), "code": inner}, protocol=4)


def loads_function(blob: bytes) -> Any:
    envelope = loads(blob, what="function")
    try:
        fn, filename = pickle.loads(envelope["code"])
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise SerializationError(
            f"Could not load the function: it was pickled by {envelope['versions']}, and this "
            f"worker runs {versions()}: {type(e).__name__}: {e}") from e
    code = getattr(fn, "__code__", None)
    if filename and code is not None and code.co_filename == "<dynamic-code>":
        try:
            fn.__code__ = _refile(code, filename)
        except (TypeError, ValueError):
            pass
    return fn


def _refile(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_refile(c, filename) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)
