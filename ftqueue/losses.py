"""Workers that ended, on their way to Redis: what each loss costs its task is decided
when it happens (policy.py); telling Redis is retried until Redis takes it, oldest first,
so a Redis outage never blocks the supervisor's loop."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from .settings import DEAD_WORKER_TTL_S
from .spec import Outcome
from .store import Store


@dataclass
class Loss:
    """A worker that ended, to be reported to Redis."""

    worker_id: str
    in_flight: str               # the task its death costs, or ''
    error_type: str
    charged: bool
    message: str
    exit_text: str
    held: set[str]               # leases still ours to renew until Redis is told
    timeout_outcome: Outcome | None = None


def report_losses(store: Store, node_id: str, losses: list[Loss]) -> None:
    """Tell Redis about ended workers, oldest first; stops at the first failure (the rest
    wait for the next turn, their leases still renewed by the node)."""
    while losses:
        loss = losses[0]
        if loss.timeout_outcome is not None:
            store.commit([loss.timeout_outcome])
            loss.timeout_outcome = None
        store.worker_lost(node_id, loss.worker_id, loss.in_flight, loss.error_type,
                          loss.message, loss.charged)
        pipe = store.redis.pipeline(transaction=False)
        pipe.hset(store.parts[0].worker(loss.worker_id), mapping={
            "state": "DEAD", "exit": loss.exit_text, "current_task": "",
            "end_ms": store.clock_ms()})
        pipe.expire(store.parts[0].worker(loss.worker_id), DEAD_WORKER_TTL_S)
        pipe.execute()
        losses.pop(0)


def describe_exit(returncode: int, pid: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"worker process {pid} died: killed by signal {name}"
    return f"worker process {pid} died: exit code {returncode}"
