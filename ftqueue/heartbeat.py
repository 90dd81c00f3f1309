"""A node's presence in Redis: its record, its heartbeat and lease renewal, its workers'
records, the cluster sweep it takes part in, and the health file for container checks."""

from __future__ import annotations

import json
import os
import random
import socket
import time
from typing import Iterable, Mapping

from redis.typing import EncodableT, FieldT

from . import resources
from .keys import Keys
from .settings import DEAD_WORKER_TTL_S, NodeSettings
from .store import Store, redact
from .store.store import CancelRequest
from .watchdog import rss_of
from .workerpool import WorkerHandle

HOUSEKEEPING_S = 5.0
# Duties every node shares (sweep, schedules) are spaced so the whole fleet makes about this
# many calls a second, each node at least every FLEET_MAX_INTERVAL_S.
FLEET_RATE_PER_S = 10.0
FLEET_MAX_INTERVAL_S = 5.0
WORKER_RECORD_MAX_AGE_S = 30.0


class NodeRecord:
    def __init__(self, store: Store, node_id: str, settings: NodeSettings,
                 index_ttl_ms: int) -> None:
        self.store = store
        self.node_id = node_id
        self.settings = settings
        self.lease_timeout_ms = int(settings.lease_timeout_s * 1000)
        self.index_ttl_ms = index_ttl_ms
        self.epoch = ""
        self.live_nodes = 1
        self._last_housekeeping = 0.0
        # Per worker: what its record last said, when that was written, and the start time
        # the record keeps (publish_workers).
        self._published: dict[str, tuple[tuple[object, ...], float, int]] = {}

    @property
    def keys(self) -> Keys:
        """Where the node's listing entry and its workers' records live: the namespace's
        keys, or partitioned, the first partition's (whose sweep forgets them)."""
        return self.store.parts[0]

    def register(self) -> None:
        """The node's record, in every partition (each one's scripts read it there)."""
        record: Mapping[str, object] = {
            "node_id": self.node_id, "host": socket.gethostname(), "pid": os.getpid(),
            "num_workers": self.settings.num_workers, "queues": ",".join(self.settings.queues),
            "started_ms": self.store.clock_ms(), "state": "ALIVE",
            "lease_timeout_s": self.settings.lease_timeout_s,
            "resources": json.dumps(dict(self.settings.resources)),
            "gpu_ids": ",".join(self.settings.gpu_ids),
        }
        pipe = self.store.redis.pipeline(transaction=False)
        for keys in self.store.parts:
            pipe.hset(keys.node(self.node_id), mapping=record)  # type: ignore[arg-type]
        pipe.execute()
        self.offer_resources()
        self.store.redis.zadd(self.keys.node_index, {self.node_id: self.store.clock_ms()})
        self.epoch = self.store.ensure_epoch()
        self.store.renew(self.node_id, self.lease_timeout_ms)

    def offer_resources(self) -> None:
        """All of what the node offers is free (at start, and after Redis lost its data)."""
        free: dict[FieldT, EncodableT] = {name: units for name, units in self.settings.resources}
        per_gpu = resources.UNIT
        free.update({f"gpu:{gpu}": per_gpu for gpu in self.settings.gpu_ids})
        # Partitioned, each partition has the whole of it: a node runs at most one task per
        # worker, and starts no more workers than it has CPUs (supervisor.py), so the
        # partitions' shares of one node never add up past it.
        for keys in self.store.parts:
            pipe = self.store.redis.pipeline(transaction=True)
            pipe.delete(keys.node_free(self.node_id))
            if free:
                pipe.hset(keys.node_free(self.node_id), mapping=free)
            pipe.execute()

    def deregister(self) -> None:
        self.store.deregister(self.node_id)

    def redis_was_reset(self) -> bool:
        """Redis lost its data since we registered (a new epoch)."""
        current = self.store.current_epoch()
        if current is None:
            return self.store.ensure_epoch() != self.epoch
        return current != self.epoch

    def renew(self, running: Iterable[str], held: Iterable[str],
              running_by: Iterable[str] = ()) -> tuple[list[str], list[CancelRequest]]:
        """Heartbeat; the running tasks this node no longer holds (declared dead meanwhile,
        or forgotten by a Redis that lost its data): their attempts must stop; and the
        running tasks whose cancel was asked."""
        _, stale, self.live_nodes, cancels = self.store.heartbeat(
            self.node_id, self.lease_timeout_ms, list(running), list(held), list(running_by))
        return stale, cancels

    def sweep(self) -> None:
        """The cluster's reaper, a share of it: the trims and forgetting only every
        HOUSEKEEPING_S (they are not urgent, and every node sweeps)."""
        now = time.monotonic()
        housekeeping = now - self._last_housekeeping >= HOUSEKEEPING_S
        self.store.sweep(self.lease_timeout_ms, index_ttl_ms=self.index_ttl_ms,
                         housekeeping=housekeeping)
        if housekeeping:
            self._last_housekeeping = now

    def fleet_interval(self, base_s: float) -> float:
        """How often this node runs a duty every node shares (sweep, schedules): `base_s`,
        spaced out as the fleet grows so the fleet's total stays near FLEET_RATE_PER_S
        calls a second, and never rarer than FLEET_MAX_INTERVAL_S (so a lost node is found
        within its lease plus that). Jittered, so the nodes' calls do not line up."""
        spaced = min(FLEET_MAX_INTERVAL_S, self.live_nodes / FLEET_RATE_PER_S)
        return max(base_s, spaced) * random.uniform(0.9, 1.1)

    def publish_workers(self, handles: Iterable[WorkerHandle]) -> None:
        """Each worker's record, for `ftqueue list workers` (written again after Redis lost
        its data). Only what changed is written: an idle fleet writes almost nothing."""
        handles = list(handles)
        now = time.monotonic()
        shown = {h.worker_id: self._shown(h) for h in handles}
        self._published = {w: p for w, p in self._published.items() if w in shown}
        stale = [h for h in handles if self._stale(h.worker_id, shown[h.worker_id], now)]
        if not stale:
            return
        pipe = self.store.redis.pipeline(transaction=False)
        now_ms = self.store.clock_ms()
        written: list[tuple[WorkerHandle, int]] = []
        for handle in stale:
            record: dict[FieldT, EncodableT] = {"current_task": handle.running,
                                            "tasks_run": handle.tasks_run,
                                            "blocked": int(handle.blocked),
                                            "rss_bytes": rss_of(handle) or 0}
            # Whole every time (it is written only when it changed, or every
            # WORKER_RECORD_MAX_AGE_S): a record Redis lost without losing its epoch (a
            # failover to a replica that missed it, a restart from an older snapshot) is
            # listed again at the next write, with its first start time.
            last = self._published.get(handle.worker_id)
            started_ms = last[2] if last and handle.registered else now_ms
            record.update({"worker_id": handle.worker_id, "node_id": self.node_id,
                           "pid": handle.pid, "host": socket.gethostname(),
                           "state": "ALIVE", "started_ms": started_ms,
                           "temporary": int(handle.temporary)})
            pipe.zadd(self.keys.workers, {handle.worker_id: started_ms},
                      nx=handle.registered)
            pipe.hset(self.keys.worker(handle.worker_id), mapping=record)
            # Rewritten at least every WORKER_RECORD_MAX_AGE_S while the node lives; a
            # node killed outright never marks its workers DEAD: their records go an hour
            # after its last write, as a dead worker's (losses.py).
            pipe.expire(self.keys.worker(handle.worker_id), DEAD_WORKER_TTL_S)
            written.append((handle, started_ms))
        pipe.execute()
        for handle, started_ms in written:
            handle.registered = True
            self._published[handle.worker_id] = (self._shown(handle), now, started_ms)

    @staticmethod
    def _shown(handle: WorkerHandle) -> tuple[object, ...]:
        """What a worker's record shows (its memory to the MiB)."""
        return (handle.registered, handle.running, handle.tasks_run, handle.blocked,
                (rss_of(handle) or 0) >> 20)

    def _stale(self, worker_id: str, shown: tuple[object, ...], now: float) -> bool:
        last = self._published.get(worker_id)
        return not last or last[0] != shown or now - last[1] >= WORKER_RECORD_MAX_AGE_S

    def write_health(self, path: str, redis_ok: bool) -> None:
        """For a container healthcheck (`ftqueue health`): who we are and when we last
        heartbeated. Owner-only, no secrets (the address is redacted), written atomically."""
        info: Mapping[str, object] = {
            "node_id": self.node_id, "address": redact(self.settings.address),
            "namespace": self.settings.namespace, "pid": os.getpid(), "heartbeat": time.time(),
            "redis_ok": redis_ok, "lease_timeout_s": self.settings.lease_timeout_s}
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
