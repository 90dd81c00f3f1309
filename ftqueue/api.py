"""The Ray-style surface: init, shutdown, remote, get, wait, put, cancel."""

from __future__ import annotations

import atexit
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import generators, resources, spec, state
from . import remote_function as _remote_function
from .client import Client
from .context import RuntimeContext, current_task
from .embedded import EmbeddedCluster
from .remote_function import RemoteFunction
from .settings import Settings
from .spec import ObjectRef
from .store import retry_across_outage

# Ray's init arguments that mean nothing for ftqueue are accepted and ignored, so ported
# scripts run; anything else is a mistake.
_IGNORED_RAY_INIT_ARGS = frozenset({
    "object_store_memory", "local_mode", "include_dashboard",
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
# In a worker process: (address, namespace, on_block) for the client made at first use.
_worker_session: tuple[str, str, Callable[[bool], None]] | None = None
WORKER_JOB_ID = "worker"
_cluster: EmbeddedCluster | None = None
_info: ClusterInfo | None = None
_atexit_registered = False


def init(address: str | None = None, *, num_workers: int | None = None,
         namespace: str | None = None, ignore_reinit_error: bool = False,
         log_to_driver: bool = True, **kw: Any) -> ClusterInfo:
    """Connect to a cluster at `address`, or start an embedded one when there is none."""
    global _client, _cluster, _info, _atexit_registered
    num_cpus = kw.pop("num_cpus", None)
    num_gpus = kw.pop("num_gpus", None)
    custom = kw.pop("resources", None)
    include_dashboard = bool(kw.pop("include_dashboard", False))
    dashboard_port = kw.pop("dashboard_port", None)
    unknown = sorted(set(kw) - _IGNORED_RAY_INIT_ARGS)
    if unknown:
        raise TypeError(f"init() got an unexpected keyword argument {unknown[0]!r}")
    with _lock:
        if _client is not None or _worker_session is not None:
            # A task's process is part of its worker's cluster already (its client is made
            # at the first nested call): as a second init, never a cluster of its own.
            if ignore_reinit_error:
                return _current_info()
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
            # As Ray's init(num_cpus=, num_gpus=, resources=): what the local node offers.
            workers = num_workers or (math.ceil(num_cpus) if num_cpus else None) \
                or os.cpu_count() or 1
            flags = []
            if num_cpus is not None:
                flags += ["--num-cpus", str(resources.check_amount("num_cpus", num_cpus))]
            if num_gpus is not None:
                flags += ["--num-gpus", str(int(resources.check_amount("num_gpus", num_gpus)))]
            if custom:
                flags += ["--resources", json.dumps(resources.check_custom(custom))]
            cluster = EmbeddedCluster.start(int(workers), namespace, flags, include_dashboard,
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
        _shutdown_at_exit()
        _exit_on_sigterm()
        return _info


def _sigterm_exits(signum: int, frame: Any) -> None:
    sys.exit(signum)


def _exit_on_sigterm() -> None:
    """As Ray's driver: SIGTERM (`docker stop`, systemd, Kubernetes), whose default action
    skips atexit, exits through SystemExit instead, so shutdown sends what is queued. Only
    from the main thread, and never over a handler of the program's own."""
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_exits)


def _shutdown_at_exit() -> None:
    """Have `shutdown()` (which sends what is still queued) run when this process ends: at
    interpreter exit, and in a child forked by multiprocessing, which ends with os._exit
    after running its own finalizers, never atexit."""
    global _atexit_registered, _finalized_in_child
    if not _atexit_registered:
        atexit.register(shutdown)
        _atexit_registered = True
    if _forked and not _finalized_in_child:
        from multiprocessing import util
        util.Finalize(None, shutdown, exitpriority=100)
        _finalized_in_child = True


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


def _current_info() -> ClusterInfo:
    global _info
    if _info is None and _worker_session is not None:   # after shutdown() in a task
        _info = ClusterInfo(_worker_session[0], _worker_session[1], WORKER_JOB_ID, False)
    assert _info is not None
    return _info


def is_initialized() -> bool:
    return _client is not None or _forked_from is not None or _worker_session is not None


def _ensure_client(timeout: float | None = None) -> Client:
    """The process's client, made on first use. `timeout`: the caller's own bound (get,
    wait), which waiting out an outage for a worker's first client must not outlive."""
    global _client, _info, _forked_from
    client = _client
    if client is None and _forked_from is not None:
        with _lock:   # a forked child (gunicorn, multiprocessing): a connection of its own
            if _client is None and _forked_from is not None:
                address, namespace, job_id = _forked_from
                _client = Client(address, namespace, job_id=job_id)
                _info = ClusterInfo(address, namespace, job_id, False)
                _forked_from = None
                _shutdown_at_exit()
        client = _client
    if client is None and _worker_session is not None:
        with _lock:
            if _client is None:
                address, namespace, on_block = _worker_session
                # Made at a task's first nested call, perhaps while Redis restarts or fails
                # over: waited out as every other step of a worker is, never the task's error.
                deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
                made = retry_across_outage(
                    lambda: Client(address, namespace, job_id=WORKER_JOB_ID),
                    deadline=deadline)
                made.on_block = on_block
                _client = made
        client = _client
    if client is None:
        init(ignore_reinit_error=True)
        client = _client
        assert client is not None
    return client


_forked_from: tuple[str, str, str] | None = None
_forked = False               # this process is a fork of one that imported ftqueue
_finalized_in_child = False   # shutdown is among its multiprocessing finalizers


def _after_fork_in_child() -> None:
    """The parent's client has no threads here (its flusher would never send what this
    process submits) and its embedded cluster belongs to the parent: start afresh."""
    global _client, _cluster, _info, _forked_from, _lock, _worker_session, _forked
    global _finalized_in_child
    _lock = threading.RLock()
    _forked, _finalized_in_child = True, False   # multiprocessing clears its finalizers
    if signal.getsignal(signal.SIGTERM) is _sigterm_exits:
        try:    # a child's SIGTERM is its parent's to decide (multiprocessing's terminate)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:   # not the main thread of the main interpreter
            pass
    if _client is not None:
        _forked_from = (_client.address, _client.namespace, _client.job_id)
    elif _worker_session is not None:
        _forked_from = (_worker_session[0], _worker_session[1], WORKER_JOB_ID)
    # A child forked by a task is not its worker: its client must not tell the supervisor
    # that the worker blocks, nor lend the task's CPUs (the worker's on_block).
    _worker_session = None
    _client = _cluster = _info = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _attach_worker_client(address: str, namespace: str,
                          on_block: Callable[[bool], None]) -> None:
    """Worker processes are already part of a cluster: nested calls use it. Their client is
    made at the first call that needs one: a worker whose tasks never submit or get costs
    Redis nothing for it (no listener polling a notification list)."""
    global _worker_session, _info
    _worker_session = (address, namespace, on_block)
    _info = ClusterInfo(address, namespace, WORKER_JOB_ID, False)


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
    return _ensure_client(timeout).get(refs, timeout=timeout)


def wait(refs: Any, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    return _ensure_client(timeout).wait(refs, num_returns=num_returns, timeout=timeout)


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel a task: queued, it never runs; running, it gets KeyboardInterrupt (force: its
    worker process is killed). `get` then raises TaskCancelledError. Finished: no-op."""
    _ensure_client().cancel(ref, force=force, recursive=recursive)


def requeue(ref: ObjectRef | str) -> None:
    """Run a FAILED task again: same task id, a fresh retry budget, attempt numbers
    continuing; refs to it then see the new outcome. ValueError if it has not failed."""
    _ensure_client().requeue(ref)


def purge(queue: str) -> int:
    """Cancel every queued and DELAYED task of `queue` (each ends FAILED / TASK_CANCELLED);
    returns how many."""
    return _ensure_client().purge(queue)


def schedule(name: str, fn: Any, *args: Any, cron: str | None = None,
             every_s: float | None = None, queue: str | None = None, catchup: str = "latest",
             **kwargs: Any) -> dict[str, Any]:
    """Run `fn(*args, **kwargs)` on every tick of `cron` (UTC) or every `every_s` seconds,
    once per tick for the whole cluster, fired by the live nodes; the same name replaces it.
    `fn` is a remote function (or its `.options()`) or "package.module:function"."""
    return _ensure_client().schedule(name, fn, args, kwargs, cron, every_s, queue, catchup)


def unschedule(name: str) -> bool:
    """Remove a schedule; False if there was none of that name."""
    return _ensure_client().unschedule(name)


def list_schedules() -> list[dict[str, Any]]:
    """Every schedule: name, func, queue, cron or every_s, catchup, next_run, last_run."""
    return _ensure_client().list_schedules()


def put(value: Any) -> ObjectRef:
    return _ensure_client().put(value)


def get_runtime_context() -> RuntimeContext:
    client = _client
    if client is None and _worker_session is not None:
        return RuntimeContext(WORKER_JOB_ID, current_task())
    return RuntimeContext(client.job_id if client else None, current_task())


def nodes() -> list[dict[str, Any]]:
    """As `ray.nodes()`: one dict per node, alive and recently dead."""
    return [{"NodeID": n["node_id"], "Alive": n["state"] == "ALIVE",
             "NodeManagerHostname": n["host"], "NodeManagerAddress": n["host"],
             "Resources": n["resources_total"], "Queues": n["queues"].split(","),
             "NumWorkers": n["num_workers"], "GPUIDs": n["gpu_ids"]}
            for n in state.list_nodes()]


def cluster_resources() -> dict[str, float]:
    """The resources of the live nodes, summed (as `ray.cluster_resources()`)."""
    return state.cluster_resources()


def available_resources() -> dict[str, float]:
    """What the live nodes have free now, summed (as `ray.available_resources()`)."""
    return state.available_resources()


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
spec._future_of = lambda ref: _ensure_client().future(ref)
generators.bind_client(_ensure_client)
_remote_function.bind_runtime(_ensure_client)
state.bind_store(lambda: _ensure_client().store)
