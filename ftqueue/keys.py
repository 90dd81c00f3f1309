"""The only place Redis key names are built. See docs/redis-layout.md.

Every key is `<namespace>:<segment>` (one per namespace: `ftq:leases`) or
`<namespace>:<segment>:<id>` (one per task, queue, node...: `ftq:task:<task_id>`). The two
tables below are the layout; the methods of `Keys` read them, and the Lua scripts get
their keys from here too: the ones a script can name in advance arrive in `KEYS` (built by
these methods), the ones it finds at run time are built by `k_<name>(id)` functions that
ftqueue/store/scripts.py generates from `PER_ID`. tests/unit/test_keys_contract.py checks
that no other key name exists.

On a Redis Cluster the prefix is the namespace as a hash tag (`{ftq}:task:<task_id>`), so
every key of a namespace lives in one hash slot and each script, which may only touch keys
of one slot, can reach any of them (docs/design.md, "Redis Cluster").
"""

from __future__ import annotations

DEFAULT_NAMESPACE = "ftq"

# Keys of which a namespace has one: method name -> segment after "<namespace>:".
SINGLE: dict[str, str] = {
    "queues": "queues",
    "leases": "leases",
    "nodes": "nodes",
    "workers": "workers",
    "task_index": "index:tasks",
    "failed_index": "index:failed",
    "node_index": "index:nodes",
    "stats": "stats",
    "epoch": "epoch",
    "job_counter": "job_counter",
    "clock": "clock",
    "corrupt": "corrupt",
    "spread": "spread",
    "limit_keys": "limit_keys",
    "schedules": "schedules",
    "partitions": "partitions",
    "outbox": "outbox",
    "mirrors": "mirrors",
}

# Keys of which there is one per id: method name -> segment; the key is
# "<namespace>:<segment>:<id>".
PER_ID: dict[str, str] = {
    "task": "task",
    "args": "args",
    "result": "result",
    "attempts": "attempts",
    "children": "children",
    "dependents": "dependents",
    "waiters": "waiters",
    "queue": "queue",
    "bell": "bell",
    "delayed": "delayed",
    "schedule": "schedule",
    "limit_running": "limit:running",
    "limit_waiting": "limit:waiting",
    "limit_starts": "limit:starts",
    "limit_started": "limit:started",
    "function": "fn",
    "done": "done",
    "node": "node",
    "node_tasks": "node_tasks",
    "worker": "worker",
    "cancel": "cancel",
    "log_channel": "logs",
    "stats_minute": "stats:minute",
    "quarantine": "quarantine",
    "node_free": "node_free",
    "shapes": "shapes",
    "pins": "pins",
}

DEFAULT_SHAPE = "CPU=1"


def queue_slot(queue: str, shape: str = DEFAULT_SHAPE, pin: str = "") -> str:
    """The list a ready task waits in, named after its queue: one per resource shape
    (`default@GPU=1`; the default shape `CPU=1` keeps the bare name) and, for a task pinned
    to a node (node affinity, SPREAD), one per node (`default@node=<id>`). Queue names have
    no '@'. lib.lua's `queue_slot` builds the same names."""
    name = queue
    if pin:
        name += f"@node={pin}"
    if shape and shape != DEFAULT_SHAPE:
        name += f"@{shape}"
    return name

# `log` is the one key with two ids: "<namespace>:log:<task_id>:<attempt>".
LOG_SEGMENT = "log"


class Keys:
    """Key names for one namespace (the prefix of every key); with `hash_tag` (a Redis
    Cluster) the prefix is `{<namespace>}`, one hash slot for the whole namespace."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, *, hash_tag: bool = False,
                 tag: str | None = None) -> None:
        """`tag`: one partition of a partitioned namespace (partitions.py), whose prefix is
        that hash tag, `{<namespace>.<k>}`, on a Redis Cluster and on a single Redis alike."""
        if not namespace or any(c in namespace for c in " \n\r\t*?[]{}"):
            raise ValueError(f"invalid namespace {namespace!r}")
        if tag is not None:
            self.prefix = f"{{{tag}}}"
        else:
            self.prefix = f"{{{namespace}}}" if hash_tag else namespace

    def _single(self, name: str) -> str:
        return f"{self.prefix}:{SINGLE[name]}"

    def _per_id(self, name: str, ident: str | int) -> str:
        return f"{self.prefix}:{PER_ID[name]}:{ident}"

    def kind(self, key: str) -> str | None:
        """The name of the method that builds `key` in this namespace, or None if none does
        (a key of the same namespace with the other prefix, tagged or not, is not one)."""
        head, sep, rest = key.partition(":")
        if head != self.prefix or not sep:
            return None
        for name, segment in SINGLE.items():
            if rest == segment:
                return name
        # Longest segment first: "stats:minute:<m>" is not a "stats" key.
        for name, segment in sorted(PER_ID.items(), key=lambda item: -len(item[1])):
            if rest.startswith(segment + ":") and len(rest) > len(segment) + 1:
                return name
        if rest.startswith(LOG_SEGMENT + ":") and rest.count(":") >= 2:
            return "log"
        return None

    # -- one per id ---------------------------------------------------------------------------

    def task(self, task_id: str) -> str:
        return self._per_id("task", task_id)

    def args(self, task_id: str) -> str:
        return self._per_id("args", task_id)

    def result(self, object_id: str) -> str:
        return self._per_id("result", object_id)

    def attempts(self, task_id: str) -> str:
        return self._per_id("attempts", task_id)

    def children(self, task_id: str) -> str:
        return self._per_id("children", task_id)

    def dependents(self, task_id: str) -> str:
        """Tasks waiting for this one's result (released when it ends)."""
        return self._per_id("dependents", task_id)

    def waiters(self, task_id: str) -> str:
        """Notification lists of other processes waiting for this task in `get`."""
        return self._per_id("waiters", task_id)

    def queue(self, name: str) -> str:
        return self._per_id("queue", name)

    def bell(self, name: str) -> str:
        return self._per_id("bell", name)

    def delayed(self, name: str) -> str:
        """A queue's DELAYED tasks: task id -> due time (Redis ms)."""
        return self._per_id("delayed", name)

    def schedule(self, name: str) -> str:
        """A schedule: its timing, function, sealed arguments and next tick."""
        return self._per_id("schedule", name)

    def limit_running(self, limit_key: str) -> str:
        """Tasks holding one of the limit key's max_concurrency slots."""
        return self._per_id("limit_running", limit_key)

    def limit_waiting(self, limit_key: str) -> str:
        """Tasks held back by the limit key's max_concurrency, until a slot frees."""
        return self._per_id("limit_waiting", limit_key)

    def limit_starts(self, limit_key: str) -> str:
        """The limit key's latest reserved start times (ms), for max_rate."""
        return self._per_id("limit_starts", limit_key)

    def limit_started(self, limit_key: str) -> str:
        """The limit key's latest actual start times (ms), for max_rate."""
        return self._per_id("limit_started", limit_key)

    def function(self, digest: str) -> str:
        return self._per_id("function", digest)

    def done(self, client_id: str) -> str:
        return self._per_id("done", client_id)

    def node(self, node_id: str) -> str:
        return self._per_id("node", node_id)

    def node_tasks(self, node_id: str) -> str:
        return self._per_id("node_tasks", node_id)

    def worker(self, worker_id: str) -> str:
        return self._per_id("worker", worker_id)

    def cancel(self, node_id: str) -> str:
        return self._per_id("cancel", node_id)

    def log_channel(self, job_id: str) -> str:
        return self._per_id("log_channel", job_id)

    def stats_minute(self, minute: int) -> str:
        return self._per_id("stats_minute", minute)

    def quarantine(self, key: str) -> str:
        """Where a script moves a list or set that held something else (docs/redis-layout.md)."""
        return self._per_id("quarantine", key)

    def node_free(self, node_id: str) -> str:
        """A node's free resources (units of 1/10000; memory in bytes; `gpu:<i>` per GPU)."""
        return self._per_id("node_free", node_id)

    def shapes(self, queue: str) -> str:
        """The resource shapes other than the default that tasks of a queue were sent with."""
        return self._per_id("shapes", queue)

    def pins(self, node_id: str) -> str:
        """The queue slots holding tasks pinned to a node (moved or failed when it dies)."""
        return self._per_id("pins", node_id)

    def log(self, task_id: str, attempt: int) -> str:
        return f"{self.prefix}:{LOG_SEGMENT}:{task_id}:{attempt}"

    # -- one per namespace --------------------------------------------------------------------

    @property
    def queues(self) -> str:
        return self._single("queues")

    @property
    def leases(self) -> str:
        return self._single("leases")

    @property
    def nodes(self) -> str:
        return self._single("nodes")

    @property
    def workers(self) -> str:
        return self._single("workers")

    @property
    def task_index(self) -> str:
        return self._single("task_index")

    @property
    def failed_index(self) -> str:
        return self._single("failed_index")

    @property
    def node_index(self) -> str:
        return self._single("node_index")

    @property
    def stats(self) -> str:
        return self._single("stats")

    @property
    def epoch(self) -> str:
        return self._single("epoch")

    @property
    def job_counter(self) -> str:
        return self._single("job_counter")

    @property
    def clock(self) -> str:
        """The served clock: time during which Redis served its clients (docs/design.md)."""
        return self._single("clock")

    @property
    def spread(self) -> str:
        """Round-robin counter placing SPREAD tasks on the live nodes in turn."""
        return self._single("spread")

    @property
    def schedules(self) -> str:
        """Schedule name -> its next tick (epoch ms), for the nodes that fire them."""
        return self._single("schedules")

    @property
    def limit_keys(self) -> str:
        """Every limit key that held a task back (for `ftqueue status` and purge)."""
        return self._single("limit_keys")

    @property
    def partitions(self) -> str:
        """How many partitions the namespace has (only at the namespace's own prefix)."""
        return self._single("partitions")

    @property
    def outbox(self) -> str:
        """Ends of tasks that other partitions wait for, to be applied there (partitions.py)."""
        return self._single("outbox")

    @property
    def mirrors(self) -> str:
        """Pending mirrors of tasks in other partitions -> when last linked (partitions.py)."""
        return self._single("mirrors")

    @property
    def corrupt(self) -> str:
        """Keys found holding the wrong type, with what was done about each."""
        return self._single("corrupt")
