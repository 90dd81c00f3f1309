"""The functions a worker runs: by digest (pickled once by a driver, signed) or by import
path (`remote_function("pkg.mod:f")`), cached per process.

`FTQUEUE_IMPORT_ALLOW` (comma-separated module prefixes, e.g. `myapp.tasks,reports`) limits
which modules an import path may name: defence in depth beside signed payloads, so a
record rewritten in Redis cannot make a worker import `os` or `builtins`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from . import payload
from .exceptions import FtqueueError, PayloadVerificationError
from .remote_function import IMPORT_PREFIX, RemoteFunction
from .store import Store, retry_across_outage


def import_allowed(module_name: str, allow: tuple[str, ...]) -> bool:
    """`allow` empty: anything; else the module is one of the prefixes or below one."""
    if not allow:
        return True
    return any(module_name == p or module_name.startswith(p + ".") for p in allow)


class FunctionCache:
    """Functions by digest or by import path."""

    def __init__(self, store: Store, import_allow: tuple[str, ...] = ()) -> None:
        self.store = store
        self.import_allow = import_allow
        self._cache: dict[str, Callable[..., Any]] = {}

    def get(self, fn_ref: str) -> Callable[..., Any]:
        fn = self._cache.get(fn_ref)
        if fn is None:
            fn = self._load(fn_ref)
            self._cache[fn_ref] = fn
        return fn

    def _load(self, fn_ref: str) -> Callable[..., Any]:
        obj: Any
        if fn_ref.startswith(IMPORT_PREFIX):
            obj = self._import(fn_ref[len(IMPORT_PREFIX):])
        else:
            # A read, safe to repeat: a lost reply or a blip must not fail the task.
            blob = retry_across_outage(lambda: self.store.load_function(fn_ref))
            if blob is None:
                raise FtqueueError(f"function {fn_ref} is not stored in Redis")
            obj = payload.unpack_function(blob, fn_ref)
        if isinstance(obj, RemoteFunction):
            if obj._function is not None:
                obj = obj._function
            else:
                obj = self.get(IMPORT_PREFIX + str(obj._import_path))
        if not callable(obj):
            raise TypeError(f"{fn_ref} is not callable")
        function: Callable[..., Any] = obj
        return function

    def _import(self, path: str) -> Any:
        module_name, _, attr = path.partition(":")
        if not import_allowed(module_name, self.import_allow):
            raise PayloadVerificationError(
                f"import path {path!r} refused: module {module_name!r} is not under "
                f"FTQUEUE_IMPORT_ALLOW={','.join(self.import_allow)}")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as e:
            raise ImportError(f"could not import {path!r} on the worker: "
                              f"{type(e).__name__}: {e}") from e
        return obj
