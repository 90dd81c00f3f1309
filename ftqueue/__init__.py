"""ftqueue: Ray's task fault tolerance on a plain Redis queue."""

from . import exceptions, state
from .api import (
    ClusterInfo,
    cancel,
    flush_submissions,
    get,
    get_runtime_context,
    init,
    is_initialized,
    list_schedules,
    purge,
    put,
    remote,
    requeue,
    schedule,
    shutdown,
    unschedule,
    wait,
)
from .remote_function import RemoteFunction, remote_function
from .spec import ObjectRef

__version__ = "0.1.0"

__all__ = [
    "ClusterInfo",
    "ObjectRef",
    "RemoteFunction",
    "cancel",
    "exceptions",
    "flush_submissions",
    "get",
    "get_runtime_context",
    "init",
    "is_initialized",
    "list_schedules",
    "purge",
    "put",
    "remote",
    "remote_function",
    "requeue",
    "schedule",
    "shutdown",
    "state",
    "unschedule",
    "wait",
]
