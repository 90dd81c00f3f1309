"""As `ray.util.state`: `from ftqueue.util.state import list_tasks` (the same functions as
`ftqueue.state`)."""

from ..state import (
    get_task,
    list_infeasible,
    list_nodes,
    list_tasks,
    list_workers,
    queue_depths,
    summarize_tasks,
)

__all__ = ["get_task", "list_infeasible", "list_nodes", "list_tasks", "list_workers",
           "queue_depths", "summarize_tasks"]
