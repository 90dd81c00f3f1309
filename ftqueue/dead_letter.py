"""Requeue and purge: the dead-letter workflow (`ftqueue list tasks -f state=FAILED` →
`ftqueue requeue --failed -f error_type=…`), shared by the Python API and the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .state import StateReader
from .store import Store

PURGE_BATCH = 1000
REQUEUED = "requeued"


def requeue(store: Store, task_ids: Iterable[str]) -> dict[str, str]:
    """Run these FAILED tasks again; per id 'requeued', or why not ('missing',
    'no_lineage', 'corrupt', or the state of a task that has not failed)."""
    return {task_id: store.requeue(task_id) for task_id in dict.fromkeys(task_ids)}


def failed_task_ids(reader: StateReader, filters: Sequence[tuple[str, str, Any]],
                    limit: int) -> list[str]:
    """Tasks whose latest attempt FAILED and matches `filters` (an earlier failed attempt of a
    task that then ran again does not count), newest first."""
    rows = reader.list_tasks([("state", "=", "FAILED"), *filters], limit=limit)
    matched = {(r["task_id"], r["attempt_number"]) for r in rows}
    ids = list(dict.fromkeys(r["task_id"] for r in rows))
    latest: dict[str, int] = {}
    for row in reader.task_rows(ids):
        latest[row["task_id"]] = max(latest.get(row["task_id"], -1), row["attempt_number"])
    return [i for i in ids if (i, latest.get(i)) in matched]


def refusal(task_id: str, answer: str) -> str:
    """Why a task was not requeued, for a person."""
    if answer == "missing":
        return f"task {task_id} not found"
    if answer == "no_lineage":
        return f"task {task_id}: its arguments expired (FTQUEUE_LINEAGE_TTL_S)"
    if answer == "corrupt":
        return f"task {task_id}: its record is corrupt"
    return f"task {task_id} is {answer}, not FAILED"


def purge(store: Store, queue: str) -> int:
    """Cancel every queued and DELAYED task of `queue` (each recorded FAILED /
    TASK_CANCELLED); how many were cancelled."""
    total, budget = 0, None
    while True:
        cancelled, left = store.purge_batch(queue, PURGE_BATCH)
        total += cancelled
        # What was there when the purge began; tasks submitted meanwhile may stay.
        budget = left if budget is None else budget - PURGE_BATCH
        if not left or budget <= 0:
            return total
