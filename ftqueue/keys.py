"""The only place Redis key names are built. See docs/redis-layout.md."""

from __future__ import annotations

DEFAULT_NAMESPACE = "ftq"


class Keys:
    """Key names for one namespace (the prefix of every key)."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not namespace or any(c in namespace for c in " \n\r\t*?[]{}"):
            raise ValueError(f"invalid namespace {namespace!r}")
        self.prefix = namespace

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    def args(self, task_id: str) -> str:
        return f"{self.prefix}:args:{task_id}"

    def result(self, object_id: str) -> str:
        return f"{self.prefix}:result:{object_id}"

    def attempts(self, task_id: str) -> str:
        return f"{self.prefix}:attempts:{task_id}"

    def queue(self, name: str) -> str:
        return f"{self.prefix}:queue:{name}"

    def bell(self, name: str) -> str:
        return f"{self.prefix}:bell:{name}"

    def function(self, digest: str) -> str:
        return f"{self.prefix}:fn:{digest}"

    def done(self, client_id: str) -> str:
        return f"{self.prefix}:done:{client_id}"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    def node_tasks(self, node_id: str) -> str:
        return f"{self.prefix}:node_tasks:{node_id}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def cancel(self, node_id: str) -> str:
        return f"{self.prefix}:cancel:{node_id}"

    def children(self, task_id: str) -> str:
        return f"{self.prefix}:children:{task_id}"

    def log(self, task_id: str, attempt: int) -> str:
        return f"{self.prefix}:log:{task_id}:{attempt}"

    def log_channel(self, job_id: str) -> str:
        return f"{self.prefix}:logs:{job_id}"

    @property
    def queues(self) -> str:
        return f"{self.prefix}:queues"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def task_index(self) -> str:
        return f"{self.prefix}:index:tasks"

    @property
    def failed_index(self) -> str:
        return f"{self.prefix}:index:failed"

    @property
    def node_index(self) -> str:
        return f"{self.prefix}:index:nodes"

    def stats_minute(self, minute: int) -> str:
        return f"{self.prefix}:stats:minute:{minute}"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def job_counter(self) -> str:
        return f"{self.prefix}:job_counter"
