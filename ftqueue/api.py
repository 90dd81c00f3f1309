"""The Ray-style surface: init, shutdown, remote, get, wait, put, cancel."""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import remote_function as _remote_function
from . import spec, state
from .client import Client
from .context import RuntimeContext, current_task
from .embedded import EmbeddedCluster
from .remote_function import RemoteFunction
from .settings import Settings
from .spec import ObjectRef

# Ray's init arguments that mean nothing for ftqueue are accepted and ignored, so ported
# scripts run; anything else is a mistake.
_IGNORED_RAY_INIT_ARGS = frozenset({
    "num_gpus", "resources", "object_store_memory", "local_mode", "include_dashboard",
    "dashboard_host", "dashboard_port", "logging_level", "logging_format",
    "runtime_env", "configure_logging", "_temp_dir", "_system_config", "storage",
})


@dataclass(frozen=True)
class ClusterInfo:
    """What `init()` returns: where this process is connected."""

    address: str
    namespace: str
    job_id: str
    embedded: bool
    dashboard_url: str | None = None     # with init(include_dashboard=True), as Ray's

    def __getitem__(self, key: str) -> Any:  # Ray returns a dict-like context
        return getattr(self, key)


_lock = threading.RLock()
_client: Client | None = None
_cluster: EmbeddedCluster | None = None
_info: ClusterInfo | None = None
_atexit_registered = False


def init(address: str | None = None, *, num_workers: int | None = None,
         namespace: str | None = None, ignore_reinit_error: bool = False,
         log_to_driver: bool = True, **kw: Any) -> ClusterInfo:
    """Connect to a cluster at `address`, or start an embedded one when there is none."""
    global _client, _cluster, _info, _atexit_registered
    num_cpus = kw.pop("num_cpus", None)
    include_dashboard = bool(kw.pop("include_dashboard", False))
    dashboard_port = kw.pop("dashboard_port", None)
    unknown = sorted(set(kw) - _IGNORED_RAY_INIT_ARGS)
    if unknown:
        raise TypeError(f"init() got an unexpected keyword argument {unknown[0]!r}")
    with _lock:
        if _client is not None:
            if ignore_reinit_error:
                assert _info is not None
                return _info
            raise RuntimeError("Maybe you called ftqueue.init twice by accident? This error "
                               "can be suppressed by passing in 'ignore_reinit_error=True' or "
                               "by calling 'ftqueue.shutdown()' prior to 'ftqueue.init()'.")
        env = Settings.from_env()
        address = address or env.address
        if address == "auto":
            raise ValueError("address='auto' needs FTQUEUE_ADDRESS to be set")
        namespace = namespace or env.namespace
        assert namespace is not None
        cluster = None
        if address is None:
            workers = num_workers or num_cpus or os.cpu_count() or 1
            cluster = EmbeddedCluster.start(int(workers), namespace, include_dashboard,
                                            dashboard_port)
            address = cluster.address
            if cluster.dashboard_url:
                print(f"ftqueue dashboard: {cluster.dashboard_url}", file=sys.stderr,
                      flush=True)
        try:
            client = Client(address, namespace, log_to_driver=log_to_driver)
        except BaseException:
            if cluster is not None:
                cluster.stop()
            raise
        _client, _cluster = client, cluster
        _info = ClusterInfo(address, namespace, client.job_id, cluster is not None,
                            cluster.dashboard_url if cluster is not None else None)
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        return _info


def shutdown() -> None:
    """Disconnect; stop the embedded cluster if this process started one."""
    global _client, _cluster, _info
    with _lock:
        client, cluster = _client, _cluster
        _client = _cluster = _info = None
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.stop()


def is_initialized() -> bool:
    return _client is not None or _forked_from is not None


def _ensure_client() -> Client:
    global _client, _info, _forked_from
    client = _client
    if client is None and _forked_from is not None:
        with _lock:   # a forked child (gunicorn, multiprocessing): a connection of its own
            if _client is None and _forked_from is not None:
                address, namespace, job_id = _forked_from
                _client = Client(address, namespace, job_id=job_id)
                _info = ClusterInfo(address, namespace, job_id, False)
                _forked_from = None
        client = _client
    if client is None:
        init(ignore_reinit_error=True)
        client = _client
        assert client is not None
    return client


_forked_from: tuple[str, str, str] | None = None


def _after_fork_in_child() -> None:
    """The parent's client has no threads here (its flusher would never send what this
    process submits) and its embedded cluster belongs to the parent: start afresh."""
    global _client, _cluster, _info, _forked_from, _lock
    _lock = threading.RLock()
    if _client is not None:
        _forked_from = (_client.address, _client.namespace, _client.job_id)
    _client = _cluster = _info = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _attach_worker_client(address: str, namespace: str,
                          on_block: Callable[[bool], None]) -> None:
    """Worker processes are already part of a cluster: nested calls use it."""
    global _client, _info
    client = Client(address, namespace, job_id="worker")
    client.on_block = on_block
    _client = client
    _info = ClusterInfo(address, namespace, client.job_id, False)


def remote(*args: Any, **options: Any) -> Any:
    """`@remote` or `@remote(max_retries=..., ...)`: make a remote function."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("The @ftqueue.remote decorator must be applied either with no "
                        "arguments and no parentheses, or with keyword options only.")
    RemoteFunction(lambda: None, options)  # validate now: unknown options raise ValueError

    def decorator(function: Callable[..., Any]) -> RemoteFunction:
        return _make_remote(function, options)

    return decorator


def _make_remote(function: Any, options: dict[str, Any]) -> RemoteFunction:
    if isinstance(function, type):
        raise TypeError("ftqueue runs tasks, not actors: @ftqueue.remote takes a function")
    return RemoteFunction(function, options)


def get(refs: Any, *, timeout: float | None = None) -> Any:
    return _ensure_client().get(refs, timeout=timeout)


def wait(refs: Any, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    return _ensure_client().wait(refs, num_returns=num_returns, timeout=timeout)


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel a task: queued, it never runs; running, it gets KeyboardInterrupt (force: its
    worker process is killed). `get` then raises TaskCancelledError. Finished: no-op."""
    _ensure_client().cancel(ref, force=force, recursive=recursive)


def put(value: Any) -> ObjectRef:
    return _ensure_client().put(value)


def get_runtime_context() -> RuntimeContext:
    client = _client
    return RuntimeContext(client.job_id if client else None, current_task())


def flush_submissions(timeout: float | None = None) -> bool:
    """Make sure every `.remote()` so far has reached Redis (get/wait do this themselves);
    False if `timeout` (seconds) ran out first."""
    client = _client
    if client is None or not client.has_unflushed():
        return True
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    return client.flush(deadline)


def _flush_before_hex() -> None:
    flush_submissions()


spec._before_hex = _flush_before_hex
_remote_function.bind_runtime(_ensure_client)
state.bind_store(lambda: _ensure_client().store)
