"""What a running task can learn about itself (`ftqueue.get_runtime_context()`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskContext:
    task_id: str
    attempt_number: int
    job_id: str
    node_id: str
    worker_id: str
    func_name: str


_current: TaskContext | None = None


def current_task() -> TaskContext | None:
    return _current


def set_current_task(ctx: TaskContext | None) -> None:
    global _current
    _current = ctx


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
