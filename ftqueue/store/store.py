"""Typed wrappers around the Lua scripts in lua/: one atomic step per task transition.

Every script call also reports the keys it isolated as corrupt (a key of the wrong type: see
lua/lib.lua); each is reported once, cluster-wide, to the process whose call found it. The
store logs it (logger "ftqueue.store") and keeps it in `last_corrupt` for that thread; the
list of all of them is `corrupt_records()`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import redis

from .. import partitions
from ..exceptions import FtqueueError
from ..keys import DEFAULT_SHAPE, Keys, queue_slot
from ..settings import DEFAULT_LINEAGE_TTL_S, Settings
from ..spec import item_id, split_object_id
from . import crossing
from .cluster import Client, is_cluster, reload_slots, slot_client, slot_node
from .errors import ReplicaWaitTimeout, is_corrupt
from .scripts import BELL_MAX, load_scripts

log = logging.getLogger("ftqueue.store")

# Listing indexes are trimmed past the lineage TTL: the records they point at are gone.
DEFAULT_INDEX_TTL_MS = DEFAULT_LINEAGE_TTL_S * 1000
DEFAULT_SWEEP_LIMIT = 100


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


REDIS_CLOCK = None   # scripts read Redis's own TIME

_SCRIPTS = load_scripts()
# With replicated durability these steps are acknowledged only once a replica has them: a
# submission (a `.remote()` that returned), a claim (before its task runs) and a commit
# (before the worker moves on). Renewals, sweeps and the rest are repeated anyway.
# So are the steps that cross partitions (crossing.py): each is applied, then dropped from
# where it was written.
REPLICATED_SCRIPTS = frozenset({"submit", "claim", "commit", "link", "mirror", "adopt"})


@dataclass(frozen=True)
class Claimed:
    """One task as a worker receives it from a claim."""

    task_id: str
    fence: str
    fn: str
    func_name: str
    attempt: int
    job_id: str
    max_calls: int
    args_blob: bytes
    timeout_s: float | None = None
    retry_timeout: bool = False
    max_retries: int = 0
    gpu_ids: tuple[str, ...] = ()      # the GPUs it holds on this node


def as_text(value: Any) -> str:
    """A reply from redis-py (bytes: ftqueue's clients do not decode) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


_s = as_text


def _b(value: Any) -> bytes:
    """redis-py's replies are bytes here (no decode_responses); typed loosely upstream."""
    return value if isinstance(value, bytes) else str(value).encode()


# What `submit` takes per task: (task_id, queue, args_blob, dep_ids, fields).
StoreTask = tuple[str, str, bytes, Sequence[str], dict[str, str]]


class CancelRequest(NamedTuple):
    """A cancel asked of a task this node runs: its request number orders the requests of
    one task, so each is delivered once (by the relay list or the heartbeat)."""

    task_id: str
    forced: bool
    number: int


def _cancel_request(text: str) -> CancelRequest:
    """From `<task id> <interrupt|force> [<number>]`."""
    task_id, _, rest = text.partition(" ")
    mode, _, number = rest.partition(" ")
    return CancelRequest(task_id, mode == "force", int(number) if number.isdigit() else 0)


def _pairs(flat: Sequence[Any]) -> list[tuple[str, str]]:
    return [(_s(flat[i]), _s(flat[i + 1])) for i in range(0, len(flat), 2)]


def _claimed(row: Sequence[Any]) -> Claimed:
    return Claimed(_s(row[0]), _s(row[1]), _s(row[2]), _s(row[3]), int(row[4]), _s(row[5]),
                   int(row[6] or 0), bytes(row[7]), float(row[8]) if row[8] else None,
                   row[9] == b"1", int(row[10] or 0),
                   tuple(_s(row[11]).split(",")) if len(row) > 11 and row[11] else ())


# The error_type a task shows when its own record cannot be read (a key of the wrong type).
CORRUPT_RECORD = "CORRUPT_RECORD"
_OUTCOME_FIELDS = ("state", "error_type", "error_message", "func", "node_id", "worker_id")


class PartitionsMismatch(FtqueueError):
    """FTQUEUE_PARTITIONS disagrees with the partitions the namespace was created with."""


def _reply_or_raise(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


class Store:
    """Every read and write ftqueue makes to Redis goes through here."""

    def __init__(self, client: Client, namespace: str = "ftq",
                 clock_ms: Callable[[], int] | None = REDIS_CLOCK, *,
                 replica_timeout_s: float | None = None, partitions: int | None = None) -> None:
        """`replica_timeout_s`: wait that long for one replica after each replicated step
        (None: as FTQUEUE_DURABILITY and FTQUEUE_REPLICA_TIMEOUT_S say; 0: never).
        `partitions`: how many the namespace must have (None: as FTQUEUE_PARTITIONS says;
        0: as many as it has); read from Redis at the first call that needs them."""
        if replica_timeout_s is None or partitions is None:
            settings = Settings.from_env()
            if replica_timeout_s is None:
                replica_timeout_s = settings.replica_timeout_s if settings.replicated else 0.0
            if partitions is None:
                partitions = settings.partitions
        self.replica_timeout_ms = int(replica_timeout_s * 1000)
        self.redis = client
        self.cluster = is_cluster(client)
        self.namespace = namespace
        self.keys = Keys(namespace, hash_tag=self.cluster)
        self._wanted_partitions = partitions
        self._parts: list[Keys] | None = None
        self._claim_from = 0
        self._found_nothing = False     # the last partitioned claim found nothing anywhere
        self._script_clock = clock_ms
        self.clock_ms = clock_ms or wall_clock_ms   # for reads that show ages
        self._sha: dict[str, str] = {}
        self._local = threading.local()

    # -- partitions (ftqueue/partitions.py) ---------------------------------------------------

    @property
    def parts(self) -> list[Keys]:
        """The keys of each partition; one partition: the namespace's own keys."""
        if self._parts is None:
            self._parts = self._resolve_partitions()
        return self._parts

    @property
    def partition_count(self) -> int:
        return len(self.parts)

    def _resolve_partitions(self) -> list[Keys]:
        wanted = self._wanted_partitions
        stored = self.redis.get(self.keys.partitions)
        if stored is None:
            if (wanted or 1) > 1 and self.redis.exists(self.keys.epoch):
                raise PartitionsMismatch(
                    f"namespace {self.namespace!r} is in use with one partition, but "
                    f"FTQUEUE_PARTITIONS={wanted}: a namespace keeps the partitions it was "
                    "created with (unset FTQUEUE_PARTITIONS, or use another namespace)")
            self.redis.set(self.keys.partitions, wanted or 1, nx=True)
            stored = self.redis.get(self.keys.partitions)
        count = int(_s(stored or b"1"))
        if wanted and wanted != count:
            raise PartitionsMismatch(
                f"namespace {self.namespace!r} has {count} partition(s), but "
                f"FTQUEUE_PARTITIONS={wanted}: a namespace keeps the partitions it was created "
                "with (unset FTQUEUE_PARTITIONS, or use another namespace)")
        if count == 1:
            return [self.keys]
        # Each process starts its claims at a partition of its own.
        self._claim_from = random.randrange(count)
        return [Keys(self.namespace, tag=tag) for tag in partitions.tags(self.namespace, count)]

    def part_of(self, ident: str) -> int:
        """The partition of a task, object, function or schedule id."""
        return partitions.partition_of(ident, self.partition_count)

    def keys_for(self, ident: str) -> Keys:
        """The keys of the partition `ident` lives in."""
        parts = self.parts
        return parts[0] if len(parts) == 1 else parts[partitions.partition_of(ident, len(parts))]

    def notify_key_in(self, part: int, notify_key: str) -> str:
        """A client's notification list (`keys.done(client)`) in partition `part`: every
        partition notifies its own list of the client."""
        if self.partition_count == 1 or not notify_key:
            return notify_key
        head, sep, client_id = notify_key.rpartition(":done:")
        if not sep:
            return notify_key
        return self.parts[part].done(client_id)

    def notify_keys(self, notify_key: str) -> list[str]:
        """Every list a client listening on `notify_key` must pop: one per partition."""
        return [self.notify_key_in(k, notify_key) for k in range(self.partition_count)]

    # -- scripts ---------------------------------------------------------------------------

    @property
    def last_corrupt(self) -> list[str]:
        """Keys the latest script call of this thread isolated as corrupt (usually [])."""
        return list(getattr(self._local, "last_corrupt", []))

    def _run(self, name: str, argv: Sequence[Any], extra_keys: Sequence[str] = (),
             part: int = 0, **key_params: str) -> Any:
        script = _SCRIPTS[name]
        pkeys = self.parts[part]
        keys = script.keys(pkeys, key_params, extra_keys)
        args = [pkeys.prefix, self._script_clock() if self._script_clock else "", *argv]
        result, corrupt, *more = self._eval(name, script.source, keys, args)
        self._note_corrupt([_s(k) for k in corrupt], pkeys)
        if len(more) > 1 and more[1] and len(self.parts) > 1:
            self._ring([_s(q) for q in more[1]])
        if more and more[0]:
            # A task other partitions wait for ended here (lib.lua release_dependents): its
            # end is applied there now; if that fails, by a sweep (the step itself is done).
            try:
                crossing.apply_outbox(self, part)
            except Exception as e:  # noqa: BLE001 - the outbox keeps it for the sweep
                log.warning("applying the outbox of partition %d failed (a sweep will): %s",
                            part, e)
        return result

    def _ring(self, bells: Sequence[str]) -> None:
        """Partitioned: ring, at the namespace's own prefix, the bells a script rang in its
        partition. Idle workers wait there, on one slot, whatever partition their work comes
        from (a blocking pop cannot span slots). A bell is a hint: one lost (this process
        died first, or Redis failed this call) costs only the wait's timeout."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            for name in bells:
                pipe.lpush(self.keys.bell(name), "1")
                pipe.ltrim(self.keys.bell(name), 0, BELL_MAX - 1)
            pipe.execute()
        except Exception as e:  # noqa: BLE001 - a hint; the step itself is done
            log.debug("ringing %s failed: %s", bells, e)

    def run_in(self, part: int, name: str, argv: Sequence[Any],
               extra_keys: Sequence[str] = (), **key_params: str) -> Any:
        """Run script `name` in partition `part` (for ftqueue/store/crossing.py)."""
        return self._run(name, argv, extra_keys, part=part, **key_params)

    def _eval(self, name: str, source: str, keys: list[str], args: list[Any]) -> Any:
        sha = self._sha.get(name)
        if sha is not None:
            try:
                return self._evalsha(name, sha, keys, args)
            except redis.exceptions.NoScriptError:
                pass  # Redis restarted, failed over, or flushed its script cache
        # On a cluster to the primary of the keys only: redis-py would send it to every
        # primary, and one that is down (or failing over) would fail the load for nothing.
        self._sha[name] = _s(self._on_node_of(keys[0], "SCRIPT LOAD", source))
        return self._evalsha(name, self._sha[name], keys, args)

    def _evalsha(self, name: str, sha: str, keys: list[str], args: list[Any]) -> Any:
        if not (self.replica_timeout_ms and name in REPLICATED_SCRIPTS):
            return self.redis.evalsha(sha, len(keys), *keys, *args)
        # WAIT counts the replicas that hold this connection's writes: the script and its
        # WAIT must share one connection, which a pooled client does not promise. On a
        # cluster that is a connection to the primary owning the namespace's slot.
        if isinstance(self.redis, redis.RedisCluster):
            try:
                return self._evalsha_wait(slot_client(self.redis, keys[0]), name, sha, keys,
                                          args)
            except (redis.exceptions.AskError, redis.ConnectionError, redis.TimeoutError):
                # Redirected (MOVED is an AskError: the script did not run there) or the
                # node is gone: learn the map again, so the retry goes to the slot's primary.
                reload_slots(self.redis)
                raise
        return self._evalsha_wait(self.redis, name, sha, keys, args)

    def _evalsha_wait(self, client: redis.Redis, name: str, sha: str, keys: list[str],
                      args: list[Any]) -> Any:
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command("EVALSHA", sha, len(keys), *keys,  # type: ignore[no-untyped-call]
                              *args)
            reply = conn.read_response()
            if name != "claim" or reply[0]:     # an empty claim has nothing to confirm
                conn.send_command(  # type: ignore[no-untyped-call]
                    "WAIT", 1, self.replica_timeout_ms)
                if int(conn.read_response()) < 1:
                    raise ReplicaWaitTimeout(
                        f"no replica confirmed the {name} within {self.replica_timeout_ms} "
                        "ms (FTQUEUE_DURABILITY=replicated): the primary has it, a failover "
                        "now could lose it")
            return reply
        except (redis.ResponseError, ReplicaWaitTimeout):
            raise       # the connection is fine
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(conn)

    def _note_corrupt(self, keys: list[str], where: Keys) -> None:
        self._local.last_corrupt = keys
        for key in keys:
            log.warning("corrupt record isolated: %s holds a type ftqueue did not write there "
                        "(the reason is in %s; counted as stats 'corrupt')", key,
                        where.corrupt)

    def submit(self, tasks: Sequence[StoreTask]) -> int:
        """tasks: (task_id, queue, args_blob, dep_ids, fields). Idempotent per task id."""
        if self.partition_count > 1:
            return crossing.submit(self, tasks)
        return self.submit_in(0, tasks)

    def submit_in(self, part: int, tasks: Sequence[StoreTask]) -> int:
        """Submit tasks that all live in partition `part`."""
        argv: list[Any] = [len(tasks)]
        keys: list[str] = []
        pkeys = self.parts[part]
        for task_id, queue, blob, deps, fields in tasks:
            if len(self.parts) > 1:
                fields = {**fields, "notify": self.notify_key_in(part, fields.get("notify", ""))}
            argv += [task_id, queue, blob, ",".join(deps), json.dumps(fields)]
            keys += [pkeys.task(task_id), pkeys.args(task_id)]
        return int(self._run("submit", argv, keys, part=part))

    def claim(self, node_id: str, worker_id: str, queues: Sequence[str], max_n: int,
              batch_divisor: int, lease_timeout_ms: int,
              shapes: Mapping[str, Sequence[str]] | None = None) -> list[Claimed]:
        return self.claim_due(node_id, worker_id, queues, max_n, batch_divisor,
                              lease_timeout_ms, shapes)[0]

    def claim_due(self, node_id: str, worker_id: str, queues: Sequence[str], max_n: int,
                  batch_divisor: int, lease_timeout_ms: int,
                  shapes: Mapping[str, Sequence[str]] | None = None,
                  ) -> tuple[list[Claimed], int | None]:
        """Claim (see claim.lua), after moving due DELAYED tasks of `queues` to their fronts;
        also ms until the next DELAYED task of `queues` is due (None: there is none).
        `shapes`: per queue, the resource shapes to take, in order (default: the default
        shape only)."""
        count = self.partition_count
        if count == 1:
            return self._claim_in(0, node_id, worker_id, queues, max_n, batch_divisor,
                                  lease_timeout_ms, shapes)
        # Partitioned: each in turn, from one that moves on with every claim, so the
        # workers of a fleet do not all start with the same partition.
        due: int | None = None
        start = self._claim_from
        self._claim_from = (start + 1) % count
        if self._found_nothing:
            # The bells rung for what the last pass did not find are spent: cleared before
            # this pass looks (one rung meanwhile stays, and wakes the next wait), so idle
            # workers do not wake for nothing, nor miss a task sent while they claim.
            self.redis.delete(*[self.keys.bell(q) for q in queues])
        for step in range(count):
            part = (start + step) % count
            rows, due_in = self._claim_in(part, node_id, worker_id, queues, max_n,
                                          batch_divisor, lease_timeout_ms, shapes)
            if due_in is not None:
                due = due_in if due is None else min(due, due_in)
            if rows:
                self._found_nothing = False
                return rows, due
        self._found_nothing = True
        return [], due

    def _claim_in(self, part: int, node_id: str, worker_id: str, queues: Sequence[str],
                  max_n: int, batch_divisor: int, lease_timeout_ms: int,
                  shapes: Mapping[str, Sequence[str]] | None,
                  ) -> tuple[list[Claimed], int | None]:
        pkeys = self.parts[part]
        keys: list[str] = []
        argv: list[Any] = [lease_timeout_ms, node_id, worker_id, max_n, batch_divisor,
                           len(queues)]
        for q in queues:
            wanted = list(shapes.get(q, ()) if shapes is not None else (DEFAULT_SHAPE,))
            argv += [q, len(wanted), *wanted]
            keys += [pkeys.bell(q), pkeys.delayed(q)]
            for shape in wanted:
                keys += [pkeys.queue(queue_slot(q, shape, node_id)),
                         pkeys.queue(queue_slot(q, shape))]
        rows, due_in = self._run("claim", argv, keys, part=part, node_id=node_id)
        return [_claimed(r) for r in rows], None if int(due_in) < 0 else int(due_in)

    def commit(self, outcomes: Sequence[tuple[str, str, str, bytes, bool, str]],
               next_task_id: str = "", *, worker_id: str = "",
               next_fence: str = "") -> list[str]:
        """outcomes: (task_id, fence, 'ok'|'err'|'cancelled', blob, retryable, message).
        `next_task_id` is marked RUNNING only while `worker_id` holds it (with `next_fence`,
        when given): a task swept and claimed elsewhere is left alone. Answers per outcome
        'finished' | 'failed' | 'retried' | 'fenced' | 'corrupt'."""
        if self.partition_count == 1:
            return self._commit_in(0, outcomes, next_task_id, worker_id, next_fence)
        # Partitioned: the outcomes of each partition in one call (the task started next
        # with those of its own partition, last), answers in the callers' order.
        by_part = self._positions_by_partition([outcome[0] for outcome in outcomes])
        next_part = self.part_of(next_task_id) if next_task_id else -1
        order = [p for p in by_part if p != next_part]
        if next_task_id:
            order.append(next_part)
        answers: list[str] = [""] * len(outcomes)
        for part in order:
            at = by_part.get(part, [])
            starts = part == next_part
            got = self._commit_in(part, [outcomes[i] for i in at],
                                  next_task_id if starts else "", worker_id,
                                  next_fence if starts else "")
            for i, answer in zip(at, got):
                answers[i] = answer
        return answers

    def _positions_by_partition(self, ids: Sequence[str]) -> dict[int, list[int]]:
        """Where each partition's ids are in `ids` (one call per partition, answers put back
        in the caller's order)."""
        by_part: dict[int, list[int]] = {}
        for i, ident in enumerate(ids):
            by_part.setdefault(self.part_of(ident), []).append(i)
        return by_part

    def _commit_in(self, part: int, outcomes: Sequence[tuple[str, str, str, bytes, bool, str]],
                   next_task_id: str, worker_id: str, next_fence: str) -> list[str]:
        pkeys = self.parts[part]
        argv: list[Any] = [next_task_id, worker_id, next_fence, len(outcomes)]
        keys = [key for outcome in outcomes
                for key in (pkeys.task(outcome[0]), pkeys.result(outcome[0]))]
        for task_id, fence, outcome, blob, retryable, message in outcomes:
            argv += [task_id, fence, outcome, blob, "1" if retryable else "0", message]
        if next_task_id:
            keys.append(pkeys.task(next_task_id))
        answers = [_s(r) for r in self._run("commit", argv, keys, part=part)]
        if next_task_id:
            self._local.next_held = answers.pop() == "next:held"
        return answers

    @property
    def next_task_held(self) -> bool:
        """After a `commit` with `next_task_id` and `worker_id`, on this thread: whether the
        worker still held that task (a worker that does not must not start it)."""
        return bool(getattr(self._local, "next_held", True))

    def renew(self, node_id: str, lease_timeout_ms: int, running: Sequence[str] = (),
              held: Sequence[str] = ()) -> int:
        """Heartbeat; extend the leases of the tasks the node's workers hold; mark the tasks
        they run as RUNNING."""
        return self.heartbeat(node_id, lease_timeout_ms, running, held)[0]

    def heartbeat(self, node_id: str, lease_timeout_ms: int, running: Sequence[str] = (),
                  held: Sequence[str] = (), running_by: Sequence[str] = (),
                  ) -> tuple[int, list[str], int, list[CancelRequest]]:
        """`renew`, and which of `running` (run by the workers `running_by`, in order) the
        node no longer holds: after it was declared dead (frozen or cut off past its lease),
        or that Redis forgot (lost its data). Attempts its workers must stop. Also the number
        of live nodes, and (task id, forced) for each running task whose cancel was asked."""
        by = list(running_by) if len(running_by) == len(running) else []
        count = self.partition_count
        if count == 1:
            return self._heartbeat_in(0, node_id, lease_timeout_ms, held, running, by)
        # Partitioned: the node is alive in every partition, each renewing its own leases.
        renewed, live_nodes = 0, 0
        stale: list[str] = []
        cancels: list[CancelRequest] = []

        def renew_in(part: int) -> None:
            nonlocal renewed, live_nodes
            mine = [i for i, t in enumerate(running) if self.part_of(t) == part]
            got = self._heartbeat_in(
                part, node_id, lease_timeout_ms, [t for t in held if self.part_of(t) == part],
                [running[i] for i in mine], [by[i] for i in mine] if by else [])
            renewed += got[0]
            stale.extend(got[1])
            live_nodes = max(live_nodes, got[2])
            cancels.extend(got[3])

        self._in_every_partition(renew_in)
        return renewed, stale, live_nodes, cancels

    def _in_every_partition(self, step: Callable[[int], None]) -> None:
        """`step` in each partition, each on its own (a node cut off from one primary loses
        only that partition's tasks): crossing.each_then_raise."""
        crossing.each_then_raise(range(self.partition_count), step)

    def _heartbeat_in(self, part: int, node_id: str, lease_timeout_ms: int,
                      held: Sequence[str], running: Sequence[str], by: Sequence[str],
                      ) -> tuple[int, list[str], int, list[CancelRequest]]:
        pkeys = self.parts[part]
        keys = [pkeys.task(t) for t in (*held, *running)]
        renewed, stale, live_nodes, cancels = self._run(
            "renew", [node_id, lease_timeout_ms, len(held), *held, *running, *by], keys,
            part=part, node_id=node_id)
        return (int(renewed), [_s(t) for t in stale], int(live_nodes),
                [_cancel_request(_s(c)) for c in cancels])

    def sweep(self, lease_timeout_ms: int, limit: int = DEFAULT_SWEEP_LIMIT,
              index_ttl_ms: int = DEFAULT_INDEX_TTL_MS, housekeeping: bool = True,
              ) -> tuple[list[tuple[str, str]], list[str]]:
        """See sweep.lua; `housekeeping`: also trim the listing indexes and forget what
        expired (not urgent: a node does it every few sweeps)."""
        all_swept: list[tuple[str, str]] = []
        all_dead: list[str] = []

        def sweep_in(part: int) -> None:
            swept, dead = self._run("sweep", [lease_timeout_ms, limit, index_ttl_ms,
                                              "1" if housekeeping else "0"], part=part)
            all_swept.extend(_pairs(swept))
            all_dead.extend(_s(d) for d in dead if _s(d) not in all_dead)

        self._in_every_partition(sweep_in)
        crossing.sweep(self)
        return all_swept, all_dead

    def worker_lost(self, node_id: str, worker_id: str, running_task_id: str, error_type: str,
                    message: str, charge: bool) -> list[tuple[str, str]]:
        """The worker is gone: the task it was running (if any) fails, the rest requeue."""
        out: list[tuple[str, str]] = []

        def lost_in(part: int) -> None:
            running = running_task_id if self.part_of(running_task_id) == part else ""
            out.extend(_pairs(self._run("worker_lost", [node_id, worker_id, running, error_type,
                                                        message, "1" if charge else "0"],
                                        part=part, node_id=node_id)))

        self._in_every_partition(lost_in)
        return out

    def lend(self, task_id: str, blocked: bool) -> str:
        """A task blocked in get lends its CPUs and max_concurrency slot (see lend.lua)."""
        return _s(self._run("lend", [task_id, "1" if blocked else "0"],
                            part=self.part_of(task_id), task_id=task_id))

    def deregister(self, node_id: str) -> None:
        """The node leaves on purpose (see deregister.lua)."""
        self._in_every_partition(
            lambda part: self._run("deregister", [node_id], part=part, node_id=node_id))

    def reconstruct(self, object_id: str) -> str:
        """Re-run the task behind a lost result (see reconstruct.lua for the answers)."""
        task_id = split_object_id(object_id)[0]
        return _s(self._run("reconstruct", [task_id], part=self.part_of(task_id),
                            task_id=task_id, object_id=object_id))

    def ensure_epoch(self) -> str:
        """This Redis's data generation: set once, so a Redis that lost everything (restarted
        without persistence, failed over to an empty replica) shows a new one."""
        if self.partition_count == 1:
            self.redis.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
            return _s(self.redis.get(self.keys.epoch))
        # Partitioned, each partition has its own (a primary can lose its data alone), and
        # the namespace's count of partitions is written again if Redis lost it.
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.partitions, self.partition_count, nx=True)
        for pkeys in self.parts:
            pipe.set(pkeys.epoch, uuid.uuid4().hex, nx=True)
            pipe.get(pkeys.epoch)
        replies = pipe.execute()
        return ",".join(_s(e) for e in replies[2::2])

    def current_epoch(self) -> str | None:
        """The data generation `ensure_epoch` set, None if Redis lost it (in any
        partition)."""
        pipe = self.redis.pipeline(transaction=False)
        for pkeys in self.parts:
            pipe.get(pkeys.epoch)
        epochs = pipe.execute()
        if any(e is None for e in epochs):
            return None
        return ",".join(_s(e) for e in epochs)

    def cancel(self, task_id: str, force: bool, recursive: bool) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        todo, seen = [task_id], set()
        while todo:
            root = todo.pop(0)
            part = self.part_of(root)
            got = _pairs(self._run("cancel", [root, "1" if force else "0",
                                              "1" if recursive else "0"],
                                   part=part, task_id=root))
            for ident, outcome in got:
                # A child in another partition (submitted with task_id=) is missing here:
                # it is cancelled where it lives.
                if outcome == "missing" and ident != root and self.part_of(ident) != part:
                    if ident not in seen:
                        seen.add(ident)
                        todo.append(ident)
                    continue
                out.append((ident, outcome))
        return out

    def requeue(self, task_id: str) -> str:
        """Run a FAILED task again with a fresh retry budget (see requeue.lua's answers)."""
        return _s(self._run("requeue", [task_id], part=self.part_of(task_id), task_id=task_id))

    def purge_batch(self, queue: str, batch: int) -> tuple[int, int]:
        """Cancel up to `batch` queued and `batch` DELAYED tasks of `queue`: (cancelled,
        ids left)."""
        total, left_all = 0, 0
        for part in range(self.partition_count):
            cancelled, left = self._run("purge", [queue, batch], part=part, queue=queue)
            total, left_all = total + int(cancelled), left_all + int(left)
        return total, left_all

    # -- schedules (ftqueue/schedules.py) ---------------------------------------------------

    def put_schedule(self, name: str, record: dict[str, str | bytes], next_ms: int) -> None:
        """Create or replace a schedule (one transaction: never half written)."""
        mapping: dict[Any, Any] = {**record, "next_ms": str(next_ms)}
        keys = self.keys_for(name)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.schedule(name))
        pipe.hset(keys.schedule(name), mapping=mapping)
        pipe.zadd(keys.schedules, {name: next_ms})
        pipe.execute()

    def remove_schedule(self, name: str) -> bool:
        keys = self.keys_for(name)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.schedule(name))
        pipe.zrem(keys.schedules, name)
        return bool(pipe.execute()[0])

    def redis_time_ms(self) -> int:
        """Redis's clock (the scripts' NOW), or the injected one."""
        if self._script_clock is not None:
            return int(self._script_clock())
        seconds, micros = self._on_namespace_node("TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    def schedules_due(self, max_n: int) -> tuple[int, list[tuple[str, int]]]:
        """(now in ms, the schedules with the earliest next ticks and those ticks)."""
        pipe = self.redis.pipeline(transaction=False)
        for pkeys in self.parts:
            pipe.zrange(pkeys.schedules, 0, max_n - 1, withscores=True)
        rows = sorted(((_s(n), int(t)) for part in pipe.execute() for n, t in part),
                      key=lambda row: row[1])
        return self.redis_time_ms(), rows[:max_n]

    def schedule_records(self, names: Sequence[str]) -> list[dict[str, bytes]]:
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys_for(name).schedule(name))
        return [{_s(k): _b(v) for k, v in row.items()} for row in pipe.execute()]

    def schedule_names(self) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for pkeys in self.parts:
            pipe.zrange(pkeys.schedules, 0, -1)
        return sorted(_s(n) for part in pipe.execute() for n in part)

    def fire_schedule(self, name: str, expected_ms: int, next_ms: int, task_id: str = "",
                      queue: str = "", args_blob: bytes = b"", fields: dict[str, str] | None = None,
                      tick_ms: int = 0) -> str:
        """Advance a schedule from the tick the caller saw, submitting tick_ms's task
        (none when task_id is ''); see fire.lua for the answers."""
        return _s(self._run("fire", [name, expected_ms, next_ms, task_id, queue, args_blob,
                                     json.dumps(fields or {}), tick_ms],
                            part=self.part_of(name), sched=name, task_id=task_id or "-"))

    def pop_cancel_requests(self, node_id: str, max_n: int = 100) -> list[CancelRequest]:
        """Each cancel relayed to this node (see cancel.lua)."""
        if self.partition_count == 1:
            items = self.redis.lpop(self.keys.cancel(node_id), max_n) or []
        else:
            pipe = self.redis.pipeline(transaction=False)
            for pkeys in self.parts:
                pipe.lpop(pkeys.cancel(node_id), max_n)
            items = [item for got in pipe.execute() for item in (got or [])]
        return [_cancel_request(_s(item)) for item in items]

    def wait_cancel_request(self, node_id: str, timeout_s: int,
                            part: int = 0) -> list[CancelRequest]:
        """The next cancel relayed to this node in partition `part`, waiting up to
        timeout_s for one."""
        item = self.redis.blpop([self.parts[part].cancel(node_id)], timeout=timeout_s)
        return [_cancel_request(_s(item[1]))] if item is not None else []

    def watch(self, notify_key: str, object_ids: Sequence[str]) -> list[str]:
        if not object_ids:
            return []
        if self.partition_count == 1:
            return self._watch_in(0, notify_key, object_ids)
        by_part = self._positions_by_partition(object_ids)
        answers = [""] * len(object_ids)
        for part, at in by_part.items():
            got = self._watch_in(part, self.notify_key_in(part, notify_key),
                                 [object_ids[i] for i in at])
            for i, answer in zip(at, got):
                answers[i] = answer
        return answers

    def _watch_in(self, part: int, notify_key: str, object_ids: Sequence[str]) -> list[str]:
        pkeys = self.parts[part]
        tasks = [split_object_id(i)[0] for i in object_ids]
        keys = [key for i, t in zip(object_ids, tasks)
                for key in (pkeys.task(t), pkeys.result(i), pkeys.waiters(t))]
        return [_s(r) for r in self._run("watch", [notify_key, *tasks], keys, part=part)]

    def stream(self, task_id: str, fence: str, values: Sequence[tuple[int, bytes]],
               tell: bool) -> int | str:
        """Store values a running attempt returns one by one (see stream.lua): how many were
        new, or 'fenced' / 'corrupt'."""
        argv: list[Any] = [task_id, fence, "1" if tell else "0"]
        for index, blob in values:
            argv += [index, blob]
        pkeys = self.keys_for(task_id)
        keys = [pkeys.result(item_id(task_id, index)) for index, _ in values]
        answer = self._run("stream", argv, keys, part=self.part_of(task_id), task_id=task_id)
        return answer if isinstance(answer, int) else _s(answer)

    def served_now_ms(self) -> int:
        """The served clock (docs/design.md): lease deadlines and heartbeats are on it."""
        return int(self._run("clock", [""])[0])

    def node_heartbeat_age_ms(self, node_id: str) -> int | None:
        """Served time since the node's last heartbeat; None if it is not alive in Redis."""
        served, heartbeat = self._run("clock", [node_id])
        return None if heartbeat in (b"", "") else int(served) - int(float(heartbeat))

    def corrupt_records(self) -> dict[str, str]:
        """Every key isolated as corrupt, with what was found and done."""
        out: dict[str, str] = {}
        for pkeys in self.parts:
            out.update({_s(k): _s(v) for k, v in self.redis.hgetall(pkeys.corrupt).items()})
        return out

    # -- plain reads and writes --------------------------------------------------------------

    def put(self, object_id: str, blob: bytes, ttl_s: int = 0) -> None:
        self.redis.set(self.keys_for(object_id).result(object_id), blob, ex=ttl_s or None)

    def store_function(self, digest: str, blob: bytes) -> None:
        self.redis.set(self.keys_for(digest).function(digest), blob, nx=True)

    def load_function(self, digest: str) -> bytes | None:
        blob = self.redis.get(self.keys_for(digest).function(digest))
        return None if blob is None else _b(blob)

    def task_fields(self, task_ids: Iterable[str], *fields: str) -> list[list[str | None]]:
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hmget(self.keys_for(task_id).task(task_id), *fields)
        return [[None if v is None else _s(v) for v in row] for row in pipe.execute()]

    def outcomes(self, object_ids: Sequence[str]) -> list[tuple[dict[str, str], bytes | None]]:
        """(task record, result blob) per id; the record is empty for a put object. A task
        key of the wrong type reads as a FAILED record whose message names it. For one of a
        task's several values (`<task>#<i>`): the value once returned (the record reads
        FINISHED then, even while the task still runs), else the task's own record and
        error."""
        pipe = self.redis.pipeline(transaction=False)
        for object_id in object_ids:
            task_id, index = split_object_id(object_id)
            pkeys = self.keys_for(task_id)
            pipe.hmget(pkeys.task(task_id), *_OUTCOME_FIELDS)
            pipe.get(pkeys.result(object_id))
            if index is not None:
                pipe.get(pkeys.result(task_id))
        raw = pipe.execute(raise_on_error=False)
        out, at = [], 0
        for object_id in object_ids:
            task_id, index = split_object_id(object_id)
            fields, blob = raw[at], raw[at + 1]
            at += 2
            record = self._outcome_record(task_id, fields)
            if index is not None:
                own = raw[at]
                at += 1
                if blob is not None and not isinstance(blob, Exception):
                    record = dict(record, state="FINISHED") if record else record
                elif record.get("state") == "FAILED":
                    blob = own
            out.append((record, None if isinstance(blob, Exception) and is_corrupt(blob)
                        else _reply_or_raise(blob)))
        return out

    def _outcome_record(self, object_id: str, fields: Any) -> dict[str, str]:
        if isinstance(fields, Exception) and is_corrupt(fields):
            return {"state": "FAILED", "error_type": CORRUPT_RECORD,
                    "error_message": f"its record {self.keys_for(object_id).task(object_id)} "
                                     f"is corrupt (see {self.keys_for(object_id).corrupt})",
                    "func": "", "node_id": "", "worker_id": ""}
        values = _reply_or_raise(fields)
        if values[0] is None:
            return {}
        return {name: _s(v or b"") for name, v in zip(_OUTCOME_FIELDS, values)}

    def pop_notifications(self, notify_key: str, timeout_s: float,
                          max_n: int = 1000) -> list[tuple[str, bytes | None]]:
        """(task id, inline result blob or None) for each completion notice: what is there
        already, else the first to arrive within timeout_s (handed over at once, not held
        back for a second round trip to drain more)."""
        items = self.redis.lpop(notify_key, max_n) or []
        if not items:
            first = self.redis.blpop([notify_key], timeout=timeout_s)
            items = [first[1]] if first is not None else []
        out: list[tuple[str, bytes | None]] = []
        for item in items:
            task_id, sep, blob = _b(item).partition(b"\n")
            out.append((task_id.decode(), blob if sep else None))
        return out

    def shapes(self, queues: Sequence[str]) -> dict[str, list[str]]:
        """Per queue, the resource shapes other than the default its tasks were sent with."""
        pipe = self.redis.pipeline(transaction=False)
        for pkeys in self.parts:
            for q in queues:
                pipe.smembers(pkeys.shapes(q))
        found: dict[str, set[str]] = {q: set() for q in queues}
        replies = pipe.execute()
        for i, members in enumerate(replies):
            found[queues[i % len(queues)]].update(_s(m) for m in members)
        return {q: sorted(found[q]) for q in queues}

    def wait_for_bell(self, queues: Sequence[str], timeout_s: float) -> None:
        """Wait for a bell of these queues (partitioned: the namespace's own, `_ring`)."""
        self.redis.blpop([self.keys.bell(q) for q in queues], timeout=timeout_s)

    def take_bell(self, queues: Sequence[str]) -> bool:
        """Whether a bell of these queues rang (one is taken), without blocking."""
        pipe = self.redis.pipeline(transaction=False)
        for q in queues:
            pipe.lpop(self.keys.bell(q))
        return any(r is not None for r in pipe.execute())

    def ping(self) -> None:
        """Raises if a Redis holding this namespace does not answer."""
        for pkeys in self.parts:
            self._on_node_of(pkeys.clock, "PING")

    def _on_namespace_node(self, *command: Any) -> Any:
        """A command that names no key, sent to the Redis holding the namespace (on a
        cluster, the primary owning its hash slot; partitioned, the first partition's)."""
        return self._on_node_of(self.parts[0].clock, *command)

    def _on_node_of(self, key: str, *command: Any) -> Any:
        """A command that names no key, sent to the Redis holding `key`."""
        if isinstance(self.redis, redis.RedisCluster):
            return self.redis.execute_command(  # type: ignore[no-untyped-call]
                *command, target_nodes=slot_node(self.redis, key))
        return self.redis.execute_command(*command)  # type: ignore[no-untyped-call]

    def next_job_id(self) -> str:
        return f"{int(self.redis.incr(self.keys.job_counter)):08x}"

    def incr_stat(self, name: str, amount: int = 1) -> None:
        self.redis.hincrby(self.parts[0].stats, name, amount)
