"""A task as this process submits it: the one place its record fields and its signed
argument blob are built."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import partitions, payload, resources
from ..context import current_task
from ..keys import DEFAULT_SHAPE
from ..policy import timeout_is_retryable
from ..spec import ObjectRef, ResolvedOptions, is_put_id, new_id, parse_rate

StoreTask = tuple[str, str, bytes, list[str], dict[str, str]]   # what Store.submit takes


@dataclass(frozen=True)
class Submission:
    """One task ready for Redis; kept by the lineage cache to be given again if Redis loses it."""

    task_id: str
    queue: str
    args_blob: bytes
    deps: tuple[str, ...]
    fields: Mapping[str, str]
    function: str | None = None   # digest of the pickled function it runs; None: by import path

    def as_store_task(self) -> StoreTask:
        return (self.task_id, self.queue, self.args_blob, list(self.deps), dict(self.fields))


@dataclass(frozen=True)
class Origin:
    """What the submitting process stamps on every task it submits."""

    job_id: str
    notify_key: str
    result_ttl_s: int
    lineage_ttl_s: int
    partitions: int          # of the namespace: a task is placed beside what it needs


def time_fields(options: ResolvedOptions) -> dict[str, str]:
    """Retry delays (kept on the record for the Lua that decides retries) and the start time:
    `delay_ms` counts from the submit on Redis's clock, `eta_ms` is epoch time (submit.lua
    turns either into `due_ms`)."""
    fields: dict[str, str] = {}
    if options.retry_delay_s > 0:
        fields.update(retry_delay_ms=str(int(options.retry_delay_s * 1000)),
                      retry_backoff=repr(float(options.retry_backoff)),
                      retry_max_delay_ms=str(int(options.retry_max_delay_s * 1000)))
    if options.delay_s:
        fields["delay_ms"] = str(int(options.delay_s * 1000))
    elif options.eta_s is not None:
        fields["eta_ms"] = str(int(options.eta_s * 1000))
    return fields


def limit_fields(options: ResolvedOptions) -> dict[str, str]:
    """The limits the claim script enforces for this task's limit_key."""
    if not options.limit_key:
        return {}
    fields = {"limit_key": options.limit_key}
    if options.max_concurrency:
        fields["max_concurrency"] = str(options.max_concurrency)
    if options.max_rate:
        count, period_ms = parse_rate(options.max_rate)
        fields.update(max_rate=options.max_rate, rate_n=str(count), rate_ms=str(period_ms))
    return fields


@functools.lru_cache(maxsize=1024)
def _printable(name: str) -> str:
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in name)


# Partitioned (docs/design.md, "Partitions"), every task that asks for more than a share of
# one CPU lives in this partition, where the nodes count their GPUs, memory and custom
# resources: no task of another partition ever reserves them.
RESOURCE_PARTITION = 0


def _check_partitioned(options: ResolvedOptions) -> None:
    """What a partitioned namespace cannot do (docs/design.md, "Partitions")."""
    if options.shape == DEFAULT_SHAPE:
        if options.task_id and options.limit_key:
            raise ValueError(
                "on a partitioned namespace (FTQUEUE_PARTITIONS > 1) a task with its own id "
                "(task_id=, or a schedule's) cannot have a limit_key: a limited task is "
                "placed beside its limit key")
        return
    if resources.parse_shape(options.shape).get("CPU", 0) > resources.UNIT:
        raise ValueError(
            f"a task that needs more than one CPU ({options.shape}) cannot run on a "
            "partitioned namespace (FTQUEUE_PARTITIONS > 1): each worker runs one task, and "
            "a node counts its CPUs by its workers there")
    if options.task_id or options.limit_key:
        raise ValueError(
            f"on a partitioned namespace (FTQUEUE_PARTITIONS > 1) a task that asks for "
            f"resources ({options.shape}) cannot have its own id (task_id=, or a schedule's) "
            "or a limit_key: it is placed where the nodes count those resources")


def _new_task_id(count: int, parent: Any, options: ResolvedOptions, args: Sequence[Any],
                 kwargs: dict[str, Any]) -> str:
    """A new id; partitioned, in the partition of what the task needs beside it in one
    script (docs/design.md, "Partitions"), first found of: the resources it asks for, its
    limit key (admission), its parent (recursive cancel; a child elsewhere is adopted), its
    first dependency that is a task (a `put` object decides nothing)."""
    if count <= 1:
        return new_id()
    if options.shape != DEFAULT_SHAPE:
        return partitions.draw_id(RESOURCE_PARTITION, count)
    anchor = ""
    if options.limit_key:
        anchor = options.limit_key
    elif parent is not None:
        anchor = parent.task_id
    else:
        for value in (*args, *kwargs.values()):
            if isinstance(value, ObjectRef) and not is_put_id(value.task_id()):
                anchor = value.task_id()
                break
    if not anchor:
        return new_id()
    return partitions.draw_id(partitions.partition_of(anchor, count), count)


def build_submission(fn_ref: str, func_name: str, options: ResolvedOptions,
                     args: Sequence[Any], kwargs: dict[str, Any], origin: Origin,
                     function: str | None) -> Submission:
    """The task's record fields, then its arguments pickled and sealed for it."""
    func_name = _printable(func_name)
    parent = current_task()
    if origin.partitions > 1:
        _check_partitioned(options)
    task_id = options.task_id or _new_task_id(origin.partitions, parent, options, args, kwargs)
    fields = {
        "name": options.name or func_name, "func": func_name, "fn": fn_ref,
        "job_id": parent.job_id if parent else origin.job_id,
        "parent_task_id": parent.task_id if parent else "",
        "max_retries": str(options.max_retries), "notify": origin.notify_key,
        "result_ttl_s": str(origin.result_ttl_s), "lineage_ttl_s": str(origin.lineage_ttl_s),
    }
    if options.max_calls:
        fields["max_calls"] = str(options.max_calls)
    if options.shape != DEFAULT_SHAPE:
        fields["shape"] = options.shape
    if options.strategy != "DEFAULT":
        fields["strategy"] = options.strategy
    fields.update(time_fields(options))
    fields.update(limit_fields(options))
    # Decided here, where the allowlist's classes live, so a supervisor that has to kill a
    # task past its timeout knows whether that may be retried.
    retry_timeout = bool(options.timeout_s) and timeout_is_retryable(options.retry_exceptions)
    if options.timeout_s:
        fields["timeout_s"] = repr(float(options.timeout_s))
        if retry_timeout:
            fields["retry_timeout"] = "1"
    # What decides which code runs and how is sealed with the arguments (DESIGN invariant
    # 10): the worker compares it with the record before it imports or unpickles anything.
    bound = payload.execution_fields(fn_ref, options.max_calls, options.timeout_s,
                                     retry_timeout, options.max_retries)
    blob, deps = payload.pack_args(args, kwargs, options.retry_exceptions, func_name, task_id,
                                   bound, num_returns=options.num_returns,
                                   env_vars=dict(options.env_vars))
    return Submission(task_id, options.queue, blob, tuple(deps), fields, function)

