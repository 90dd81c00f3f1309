"""ftqueue: Ray's task fault tolerance on a plain Redis queue."""

from . import exceptions, state, util
from .api import (
    ClusterInfo,
    available_resources,
    cancel,
    cluster_resources,
    flush_submissions,
    get,
    get_runtime_context,
    init,
    is_initialized,
    list_schedules,
    nodes,
    purge,
    put,
    remote,
    requeue,
    schedule,
    shutdown,
    unschedule,
    wait,
)
from .context import get_gpu_ids
from .generators import ObjectRefGenerator
from .remote_function import RemoteFunction, remote_function
from .spec import ObjectRef

__version__ = "0.1.0"

__all__ = [
    "ClusterInfo",
    "available_resources",
    "cluster_resources",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "cancel",
    "exceptions",
    "flush_submissions",
    "get",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "nodes",
    "list_schedules",
    "purge",
    "put",
    "remote",
    "remote_function",
    "requeue",
    "schedule",
    "shutdown",
    "state",
    "util",
    "unschedule",
    "wait",
]
