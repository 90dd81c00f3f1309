"""A node's presence in Redis: its record, its heartbeat and lease renewal, its workers'
records, the cluster sweep it takes part in, and the health file for container checks."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Iterable, Mapping

from redis.typing import EncodableT, FieldT

from . import resources
from .settings import NodeSettings
from .store import Store, redact
from .watchdog import rss_of
from .workerpool import WorkerHandle


class NodeRecord:
    def __init__(self, store: Store, node_id: str, settings: NodeSettings,
                 index_ttl_ms: int) -> None:
        self.store = store
        self.keys = store.keys
        self.node_id = node_id
        self.settings = settings
        self.lease_timeout_ms = int(settings.lease_timeout_s * 1000)
        self.index_ttl_ms = index_ttl_ms
        self.epoch = ""

    def register(self) -> None:
        self.store.redis.hset(self.keys.node(self.node_id), mapping={
            "node_id": self.node_id, "host": socket.gethostname(), "pid": os.getpid(),
            "num_workers": self.settings.num_workers, "queues": ",".join(self.settings.queues),
            "started_ms": self.store.clock_ms(), "state": "ALIVE",
            "lease_timeout_s": self.settings.lease_timeout_s,
            "resources": json.dumps(dict(self.settings.resources)),
            "gpu_ids": ",".join(self.settings.gpu_ids),
        })
        self.offer_resources()
        self.store.redis.zadd(self.keys.node_index, {self.node_id: self.store.clock_ms()})
        self.epoch = self.store.ensure_epoch()
        self.store.renew(self.node_id, self.lease_timeout_ms)

    def offer_resources(self) -> None:
        """All of what the node offers is free (at start, and after Redis lost its data)."""
        free: dict[FieldT, EncodableT] = {name: units for name, units in self.settings.resources}
        per_gpu = resources.UNIT
        free.update({f"gpu:{gpu}": per_gpu for gpu in self.settings.gpu_ids})
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.delete(self.keys.node_free(self.node_id))
        if free:
            pipe.hset(self.keys.node_free(self.node_id), mapping=free)
        pipe.execute()

    def deregister(self) -> None:
        self.store.deregister(self.node_id)

    def redis_was_reset(self) -> bool:
        """Redis lost its data since we registered (a new epoch)."""
        return self.store.ensure_epoch() != self.epoch

    def renew(self, running: Iterable[str], held: Iterable[str],
              running_by: Iterable[str] = ()) -> list[str]:
        """Heartbeat; the running tasks this node no longer holds (declared dead meanwhile,
        or forgotten by a Redis that lost its data): their attempts must stop."""
        return self.store.heartbeat(self.node_id, self.lease_timeout_ms, list(running),
                                    list(held), list(running_by))[1]

    def sweep(self) -> None:
        self.store.sweep(self.lease_timeout_ms, index_ttl_ms=self.index_ttl_ms)

    def publish_workers(self, handles: Iterable[WorkerHandle]) -> None:
        """Each worker's record, for `ftqueue list workers` (refreshed with the heartbeat,
        so it comes back after Redis lost its data)."""
        handles = list(handles)
        pipe = self.store.redis.pipeline(transaction=False)
        now_ms = self.store.clock_ms()
        for handle in handles:
            record: dict[FieldT, EncodableT] = {"current_task": handle.running,
                                            "tasks_run": handle.tasks_run,
                                            "blocked": int(handle.blocked),
                                            "rss_bytes": rss_of(handle) or 0}
            if not handle.registered:
                record.update({"worker_id": handle.worker_id, "node_id": self.node_id,
                               "pid": handle.pid, "host": socket.gethostname(),
                               "state": "ALIVE", "started_ms": now_ms,
                               "temporary": int(handle.temporary)})
                pipe.zadd(self.keys.workers, {handle.worker_id: now_ms})
            pipe.hset(self.keys.worker(handle.worker_id), mapping=record)
        pipe.execute()
        for handle in handles:
            handle.registered = True

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
