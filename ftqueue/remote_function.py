"""Remote functions: `@ftqueue.remote`, `.options()`, and `remote_function("pkg.mod:func")`."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any, Callable, Protocol

from . import payload
from .generators import ObjectRefGenerator
from .settings import default_max_retries
from .spec import STREAMING, ObjectRef, ResolvedOptions, item_id, validate_options

IMPORT_PREFIX = "import:"


class Runtime(Protocol):
    """What a remote function needs from the connected client (`api` binds it)."""

    client_id: str

    def export_function(self, blob: bytes, digest: str) -> str: ...

    def submit(self, fn_ref: str, func_name: str, options: ResolvedOptions,
               args: Sequence[Any], kwargs: dict[str, Any]) -> ObjectRef: ...


_runtime: Callable[[], Runtime] | None = None


def bind_runtime(provider: Callable[[], Runtime] | None) -> None:
    """Set the function that returns this process's client (connecting it on first use).
    Injected by `api`, so this module needs nothing above it."""
    global _runtime
    _runtime = provider


class RemoteFunction:
    """A function that runs on the workers: call `.remote(...)` to submit it."""

    def __init__(self, function: Callable[..., Any] | None, options: dict[str, Any],
                 import_path: str | None = None) -> None:
        self._function = function
        self._import_path = import_path
        self._options = validate_options(options)
        if function is not None:
            self._name = getattr(function, "__name__", "function")
            self.__doc__ = function.__doc__
            self.__wrapped__ = function
        else:
            assert import_path is not None
            self._name = import_path.rpartition(":")[2]
        self._exported: tuple[str, str] | None = None  # (client id, function digest)
        self._signature = _signature_of(function)
        self._positional = _plain_positional(self._signature)
        self._resolved: tuple[dict[str, Any], int, ResolvedOptions] | None = None
        self._generator = function is not None and (
            inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Remote functions cannot be called directly. Instead of running "
                        f"'{self._name}()', try '{self._name}.remote()'.")

    def __reduce__(self) -> Any:
        return (RemoteFunction, (self._function, self._options, self._import_path))

    def options(self, **options: Any) -> _BoundOptions:
        return _BoundOptions(self, {**self._options, **validate_options(options)})

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """An ObjectRef; a list of num_returns refs; or, for a generator function, an
        ObjectRefGenerator."""
        return self._submit(self._options, args, kwargs)

    def stored_ref(self, store_function: Callable[[bytes, str], None]) -> str:
        """The function reference a task record carries; a pickled function is stored
        (once, by digest) through `store_function(blob, digest)` first."""
        if self._import_path is not None:
            return IMPORT_PREFIX + self._import_path
        blob, digest = payload.pack_function(self._function, self._name)
        store_function(blob, digest)
        return digest

    @property
    def name(self) -> str:
        return self._name

    def _resolve(self, options: dict[str, Any]) -> ResolvedOptions:
        """ResolvedOptions.resolve, kept while the options and the env default hold."""
        default = default_max_retries()
        cached = self._resolved
        if cached is not None and cached[0] is options and cached[1] == default:
            return cached[2]
        resolved = ResolvedOptions.resolve(options)
        self._resolved = (options, default, resolved)
        return resolved

    def _fn_ref(self, client: Runtime) -> str:
        if self._import_path is not None:
            return IMPORT_PREFIX + self._import_path
        if self._exported is None or self._exported[0] != client.client_id:
            blob, digest = payload.pack_function(self._function, self._name)
            self._exported = (client.client_id, client.export_function(blob, digest))
        return self._exported[1]

    def _submit(self, options: dict[str, Any], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        if self._signature is not None and not (
                self._positional is not None and not kwargs
                and self._positional[0] <= len(args) <= self._positional[1]):
            try:    # as Ray: a call that cannot bind fails here, with nothing submitted
                self._signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{self._name}.remote(): {e}") from None
        if _runtime is None:
            raise RuntimeError("ftqueue is not set up: import ftqueue (its api binds the "
                               "runtime)")
        resolved = self._resolve(options)
        if self._generator and resolved.num_returns == 1:
            resolved = dataclasses.replace(resolved, num_returns=STREAMING)
        client = _runtime()
        ref = client.submit(self._fn_ref(client), self._name, resolved, args, kwargs)
        if resolved.num_returns == STREAMING:
            return ObjectRefGenerator(ref)
        if isinstance(resolved.num_returns, int) and resolved.num_returns > 1:
            return [ObjectRef(item_id(ref._id, i)) for i in range(resolved.num_returns)]
        return ref


def definition(fn: Any) -> tuple[RemoteFunction, dict[str, Any]]:
    """(the remote function, its options) of a remote function, an `.options()` of one, or
    a "package.module:function" import path."""
    if isinstance(fn, str):
        fn = remote_function(fn)
    if isinstance(fn, RemoteFunction):
        return fn, dict(fn._options)
    if isinstance(fn, _BoundOptions):
        return fn._function, dict(fn._options)
    raise TypeError(f"expected a remote function or 'package.module:function', got {fn!r}")


class _BoundOptions:
    def __init__(self, function: RemoteFunction, options: dict[str, Any]) -> None:
        self._function = function
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._function._submit(self._options, args, kwargs)

    def options(self, **options: Any) -> _BoundOptions:
        return _BoundOptions(self._function, {**self._options, **validate_options(options)})


def _plain_positional(signature: inspect.Signature | None) -> tuple[int, int] | None:
    """(fewest, most) positional arguments a call without keywords may pass, when that alone
    decides whether it binds (no keyword-only parameter without a default): a cheap check
    for the usual `.remote(a, b)`."""
    if signature is None:
        return None
    fewest, most = 0, 0
    for p in signature.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            most += 1
            if p.default is p.empty:
                fewest = most
        elif p.kind is p.VAR_POSITIONAL:
            most = 1 << 30
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            return None
    return fewest, most


def _signature_of(function: Callable[..., Any] | None) -> inspect.Signature | None:
    if function is None:
        return None
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):    # some builtins and C functions have none
        return None


def remote_function(import_path: str, **options: Any) -> RemoteFunction:
    """A handle on a function only the workers can import, named "package.module:function"."""
    module, sep, attr = import_path.partition(":")
    if not sep or not module or not attr or any(c in import_path for c in " \n\r\t"):
        raise ValueError(f"expected 'package.module:function', got {import_path!r}")
    return RemoteFunction(None, options, import_path=import_path)
