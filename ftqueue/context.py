"""What a running task can learn about itself (`ftqueue.get_runtime_context()`).

The current task is a `contextvars.ContextVar`, so each asyncio task or copied context sees
its own. A thread that a task starts begins with an empty context (before Python 3.14): it
sees the task its process is running, so that a task's helper threads submit nested tasks
as its children, as they did when this was a module global.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskContext:
    task_id: str
    attempt_number: int
    job_id: str
    node_id: str
    worker_id: str
    func_name: str
    gpu_ids: tuple[str, ...] = ()


_current: ContextVar[TaskContext | None] = ContextVar("ftqueue_current_task")
_process_task: TaskContext | None = None   # for contexts that never set one (new threads)


def current_task() -> TaskContext | None:
    """The task running in this context, or None in a driver."""
    return _current.get(_process_task)


def set_current_task(ctx: TaskContext | None) -> None:
    """Called by the worker around each task (None when it ends)."""
    global _process_task
    _current.set(ctx)
    _process_task = ctx


class RuntimeContext:
    """Ray's RuntimeContext subset: ids of the current job, task, node and worker."""

    def __init__(self, job_id: str | None, task: TaskContext | None) -> None:
        self._job_id = job_id
        self._task = task

    @property
    def task_id(self) -> str | None:
        return self._task.task_id if self._task else None

    @property
    def attempt_number(self) -> int:
        return self._task.attempt_number if self._task else 0

    @property
    def job_id(self) -> str | None:
        return self._task.job_id if self._task else self._job_id

    @property
    def node_id(self) -> str | None:
        return self._task.node_id if self._task else None

    @property
    def worker_id(self) -> str | None:
        return self._task.worker_id if self._task else None

    def get_task_id(self) -> str | None:
        return self.task_id

    def get_job_id(self) -> str | None:
        return self.job_id

    def get_node_id(self) -> str | None:
        return self.node_id

    def get_worker_id(self) -> str | None:
        return self.worker_id

    def get_task_attempt_number(self) -> int:
        return self.attempt_number

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        return {"GPU": list(self._task.gpu_ids) if self._task else []}


def get_gpu_ids() -> list[int | str]:
    """Inside a task, the GPU ids it holds (its CUDA_VISIBLE_DEVICES); [] elsewhere."""
    task = current_task()
    if task is None:
        return []
    return [int(g) if g.isdigit() else g for g in task.gpu_ids]
