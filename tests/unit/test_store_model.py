"""T21 (docs/reliability §6.2): a model-based test of the store's scripts. A Hypothesis state
machine drives the Lua transitions directly (no worker processes) with a fake clock: submits
of every kind, claims by a few workers on two nodes, commits of every outcome, stale commits,
worker and node losses, cancels, requeues, lost results rebuilt, lent slots. After every step
the records are checked against the model and against each other (see `check`); at the end
everything is drained and every task must end FINISHED or FAILED.

Deterministic and bounded for CI, on fakeredis. For a longer hunt:
FTQUEUE_MODEL_EXAMPLES=2000 FTQUEUE_MODEL_STEPS=100 (random, not derandomized), and
FTQUEUE_MODEL_REDIS=1 to run on a real redis-server too; pass --timeout=0 to pytest.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import fakeredis
import pytest
import redis
import storekit
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from storekit import FakeClock

from ftqueue.state import StateReader
from ftqueue.store import Claimed, Store

LEASE_MS = 3000
STEP_S = 0.5                     # below the served clock's gap cap
CPU = 10_000                     # one CPU in the node_free hash
NODE_CPUS = 2
NODES = {"n1": ("w1", "w2"), "n2": ("w3", "w4")}
NODE_OF = {w: n for n, ws in NODES.items() for w in ws}
BYSTANDER = "bystander"          # a node that only heartbeats (keeps the served clock going)
QUEUE = "default"
NOTIFY = ("ftq:done:d1", "ftq:done:d2")       # submitters
GETTER = "ftq:done:g1"                          # a process in get that submitted nothing
LIMITS = {"L1": 1, "L2": 2}      # limit keys with max_concurrency
RATE_KEY, RATE_N, RATE_MS = "R", 2, 1000      # a limit key with max_rate "2/s"
SLOTS = (QUEUE, *(f"{QUEUE}@node={n}" for n in NODES))
STRATEGIES = ("", "", "SPREAD", "node:n1", "soft:n2")
FUNCS = ("f", "g")
MAX_TASKS = 12
TERMINAL = {"FINISHED", "FAILED"}
ACTIVE = {"SUBMITTED_TO_WORKER", "RUNNING"}

EXAMPLES = int(os.environ.get("FTQUEUE_MODEL_EXAMPLES", "0"))
STEPS = int(os.environ.get("FTQUEUE_MODEL_STEPS", "50"))


@dataclass
class Task:
    """What the model knows of one task (attempt counters since its last requeue)."""

    task_id: str
    func: str
    max_retries: int
    retry_exc: bool
    deps: tuple[str, ...]
    limit: str
    notify: str
    strategy: str = ""
    ends: int = 0              # moves into a final state seen
    charged: int = 0           # charged retries and rebuilds since the last requeue
    free: int = 0              # uncharged retries since the last requeue
    starts: int = 0            # attempts started since the last requeue
    attempts: int = 0          # attempt number now (never reset)
    cancel_requested: bool = False
    disturbed: bool = False    # a dependency was requeued or rebuilt
    taken_back: bool = False   # lent and taken back in this attempt (may run over a limit)
    state: str = ""


@dataclass
class Held:
    """A task a worker holds: the first it runs, the rest are prefetched."""

    claimed: Claimed
    started: bool
    must_fail: bool = False    # an argument was not computed: the worker fails it

    @property
    def task_id(self) -> str:
        return self.claimed.task_id


@dataclass
class Attach:
    key: str
    task_id: str
    needed: int                 # notices on `key` once the task is final


@dataclass
class Snapshot:
    records: dict[str, dict[str, str]] = field(default_factory=dict)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class StoreModel(RuleBasedStateMachine):
    client_factory: Callable[[], Any] = staticmethod(fakeredis.FakeRedis)

    def __init__(self) -> None:
        super().__init__()
        self.client = self.client_factory()
        self.clock = FakeClock()
        self.store = Store(self.client, "ftq", clock_ms=self.clock)
        self.keys = self.store.keys
        self.tasks: dict[str, Task] = {}
        self.order: list[str] = []
        self.held: dict[str, list[Held]] = {w: [] for w in NODE_OF}
        self.alive = {n: True for n in NODES}       # heartbeating
        self.going_on = {n: True for n in NODES}    # its workers still run and commit
        self.stale: list[Claimed] = []
        self.notices: Counter[tuple[str, str]] = Counter()
        self.attached: list[Attach] = []
        self.reopen_ok: set[str] = set()     # may leave a final state in this step
        self.rebuild_step = False
        self.rate_starts: list[int] = []
        for node in NODES:
            self.client.hset(self.keys.node(node), mapping={
                "node_id": node, "queues": QUEUE, "state": "ALIVE",
                "resources": f'{{"CPU": {NODE_CPUS * CPU}}}', "gpu_ids": ""})
            self.client.hset(self.keys.node_free(node), mapping={"CPU": NODE_CPUS * CPU})
            self.store.renew(node, LEASE_MS)
        self.store.renew(BYSTANDER, LEASE_MS)

    # -- reading ---------------------------------------------------------------------------

    def records(self) -> dict[str, dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for tid in self.order:
            pipe.hgetall(self.keys.task(tid))
        return {tid: {_text(k): _text(v) for k, v in raw.items()}
                for tid, raw in zip(self.order, pipe.execute())}

    def record(self, tid: str) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.client.hgetall(self.keys.task(tid)).items()}

    def budget_left(self, m: Task) -> bool:
        return m.max_retries == -1 or m.charged < m.max_retries

    def expect_loss(self, tid: str, rec: dict[str, str], started: bool, charge: bool) -> str:
        """lib.lua fail_attempt, from the model's budget."""
        m = self.tasks[tid]
        if rec.get("cancel"):
            return "cancelled"
        if not started:
            return "released"
        if not charge:
            return "requeued"
        return "retried" if self.budget_left(m) else "failed"

    def apply(self, tid: str, outcome: str) -> None:
        m = self.tasks[tid]
        if outcome == "retried":
            m.charged += 1
            m.attempts += 1
        elif outcome == "requeued":
            m.free += 1
            m.attempts += 1
        if outcome in ("retried", "requeued", "released"):
            assert not m.cancel_requested, f"{tid}: cancelled, yet {outcome}"

    # -- time, heartbeats, sweeps ------------------------------------------------------------

    def renew(self, node: str) -> list[str]:
        held = [h for w in NODES[node] for h in self.held[w]]
        running = [(w, h.task_id) for w in NODES[node] for h in self.held[w][:1] if h.started]
        _, stale, _, _ = self.store.heartbeat(
            node, LEASE_MS, [t for _, t in running], [h.task_id for h in held],
            [w for w, _ in running])
        return stale

    def tick(self, seconds: float = STEP_S) -> None:
        self.clock.advance(seconds)
        for node, up in self.alive.items():
            if up:
                assert self.renew(node) == [], f"a live node {node} told to stop attempts"
        self.store.renew(BYSTANDER, LEASE_MS)
        before = self.records()
        swept, _dead = self.store.sweep(LEASE_MS)
        for tid, outcome in swept:
            rec = before[tid]
            assert outcome == self.expect_loss(tid, rec, rec["state"] == "RUNNING", True), \
                (tid, outcome, rec)
            assert not self.alive[rec["node_id"]], f"{tid} swept from live node {rec}"
            self.apply(tid, outcome)

    # -- starting (claim, and a prefetched task started by a commit) -----------------------

    def started(self, h: Held, rec: dict[str, str]) -> None:
        m = self.tasks[h.task_id]
        m.starts += 1
        states = [self.record(d).get("state") for d in m.deps]
        if not m.disturbed:
            assert all(s in TERMINAL for s in states), f"{m.task_id} started before {m.deps}"
        h.must_fail = any(s != "FINISHED" for s in states)
        assert rec["state"] == "RUNNING"

    def start_next(self, worker: str) -> None:
        """The worker goes on with its next prefetched task (commit with no outcome)."""
        queue = self.held[worker]
        while queue and not queue[0].started:
            h = queue[0]
            before = self.record(h.task_id)
            self.store.commit([], h.task_id, worker_id=worker, next_fence=h.claimed.fence)
            if self.store.next_task_held:
                h.started = True
                if before.get("state") == "SUBMITTED_TO_WORKER":
                    self.started(h, self.record(h.task_id))
            else:
                self.stale.append(queue.pop(0).claimed)

    def busy(self) -> list[str]:
        """Workers running a task (on live nodes, or on a dead one whose workers go on)."""
        return [w for w in sorted(NODE_OF) if self.going_on[NODE_OF[w]] and self.held[w]
                and self.held[w][0].started]

    def idle(self) -> list[str]:
        return [w for w in sorted(NODE_OF) if self.going_on[NODE_OF[w]] and not self.held[w]]

    # -- rules -----------------------------------------------------------------------------

    @precondition(lambda self: len(self.order) < MAX_TASKS)
    @rule(func=st.sampled_from(FUNCS), max_retries=st.sampled_from([0, 1, 2, -1]),
          retry_exc=st.booleans(), deps=st.lists(st.integers(0, MAX_TASKS), max_size=2,
                                                 unique=True),
          delay_ms=st.sampled_from([0, 0, 1000, 2500]), retry_delay=st.booleans(),
          limit=st.sampled_from(["", "", "L1", "L2", RATE_KEY]), nested=st.booleans(),
          notify=st.sampled_from(NOTIFY), strategy=st.sampled_from(STRATEGIES))
    def submit(self, func: str, max_retries: int, retry_exc: bool, deps: list[int],
               delay_ms: int, retry_delay: bool, limit: str, nested: bool, notify: str,
               strategy: str) -> None:
        tid = f"t{len(self.order)}"
        dep_ids = tuple(dict.fromkeys(self.order[i % len(self.order)] for i in deps)) \
            if self.order else ()
        parent = ""
        if nested:
            running = [h.task_id for w, hs in self.held.items() for h in hs[:1]
                       if h.started and self.alive[NODE_OF[w]]]
            parent = running[0] if running else ""
        fields = {"name": func, "func": func, "fn": "digest", "job_id": "00000001",
                  "parent_task_id": parent, "max_retries": str(max_retries), "notify": notify}
        if delay_ms:
            fields["delay_ms"] = str(delay_ms)
        if retry_delay:
            fields["retry_delay_ms"] = "500"
        if limit == RATE_KEY:
            fields.update(limit_key=limit, max_rate="2/s", rate_n=str(RATE_N),
                          rate_ms=str(RATE_MS))
        elif limit:
            fields.update(limit_key=limit, max_concurrency=str(LIMITS[limit]))
        if strategy:
            fields["strategy"] = strategy
        self.tasks[tid] = Task(tid, func, max_retries, retry_exc, dep_ids, limit, notify,
                               strategy)
        self.order.append(tid)
        assert self.store.submit([(tid, QUEUE, b"args", list(dep_ids), fields)]) == 1

    @precondition(lambda self: self.order)
    @rule(i=st.integers(0, MAX_TASKS), notify=st.sampled_from(NOTIFY))
    def submit_again(self, i: int, notify: str) -> None:
        """An idempotent submit (`task_id=`): nothing runs; a new submitter is told."""
        tid = self.order[i % len(self.order)]
        m = self.tasks[tid]
        rec = self.record(tid)
        fields = {"name": m.func, "func": m.func, "fn": "digest", "job_id": "00000002",
                  "parent_task_id": "", "max_retries": "0", "notify": notify}
        assert self.store.submit([(tid, QUEUE, b"other", [], fields)]) == 0
        if notify != m.notify:
            self.attached.append(Attach(notify, tid, self.notices[(notify, tid)] + 1))
        assert self.record(tid)["state"] == rec["state"]

    @precondition(lambda self: self.order)
    @rule(i=st.integers(0, MAX_TASKS), key=st.sampled_from([GETTER, *NOTIFY]))
    def watch(self, i: int, key: str) -> None:
        """A process in get waits for a task: told when it ends, or told it has."""
        tid = self.order[i % len(self.order)]
        state = self.record(tid)["state"]
        (got,) = self.store.watch(key, [tid])
        assert got == ("ready" if state in TERMINAL else "pending"), (tid, state, got)
        if got == "pending" and key != self.tasks[tid].notify:
            self.attached.append(Attach(key, tid, self.notices[(key, tid)] + 1))

    @precondition(lambda self: self.idle())
    @rule(i=st.integers(0, 3), n=st.integers(1, 3))
    def claim_some(self, i: int, n: int) -> None:
        idle = self.idle()
        self.claim(idle[i % len(idle)], n)

    def claim(self, w: str, n: int) -> None:
        node = NODE_OF[w]
        if not self.going_on[node] or self.held[w]:
            return
        before = self.records()
        rows = self.store.claim(node, w, [QUEUE], n, 1, LEASE_MS)
        if _text(self.client.hget(self.keys.node(node), "state")) == "DEAD":
            assert rows == [], "a node declared dead claims nothing"
        for i, row in enumerate(rows):
            m = self.tasks[row.task_id]
            assert before[row.task_id]["state"] in ("PENDING_NODE_ASSIGNMENT", "DELAYED"), \
                (row, before[row.task_id])
            assert row.attempt == m.attempts, (row, m)
            assert int(row.fence) == int(before[row.task_id].get("fence", 0)) + 1
            if m.limit:
                assert i == 0, f"a limited task {row.task_id} prefetched"
            if m.limit == RATE_KEY:
                self.rate_starts.append(self.clock.now_ms)
                recent = [t for t in self.rate_starts if t > self.clock.now_ms - RATE_MS]
                assert len(recent) <= RATE_N, ("over max_rate", self.rate_starts)
            pin = before[row.task_id].get("pin")
            assert pin in (None, node), (row.task_id, "pinned elsewhere", pin, node)
            h = Held(row, started=i == 0)
            self.held[w].append(h)
            if i == 0:
                self.started(h, self.record(row.task_id))

    def _commit(self, w: str, outcome: str, resend: bool = False) -> None:
        queue = self.held[w]
        if not self.going_on[NODE_OF[w]] or not queue or not queue[0].started:
            return
        h = queue[0]
        m = self.tasks[h.task_id]
        retryable = outcome == "err" and m.retry_exc
        if h.must_fail and outcome != "cancelled":
            outcome, retryable = "err", False
        nxt = queue[1] if len(queue) > 1 else None
        rec = self.record(h.task_id)
        if rec.get("state") not in ACTIVE or rec.get("fence") != h.claimed.fence:
            expected = "fenced"
        elif rec.get("cancel") or outcome == "cancelled":
            expected = "failed"
        elif outcome == "ok":
            expected = "finished"
        elif retryable and self.budget_left(m):
            expected = "retried"
        else:
            expected = "failed"
        next_before = self.record(nxt.task_id) if nxt else {}
        blob = b"V" + h.task_id.encode() if outcome == "ok" else b"E"
        got = self.store.commit([(h.task_id, h.claimed.fence, outcome, blob, retryable, "boom")],
                                nxt.task_id if nxt else "", worker_id=w,
                                next_fence=nxt.claimed.fence if nxt else "")
        assert got == [expected], (h.task_id, outcome, rec, got)
        if resend:       # the reply was lost: the batcher sends the batch again
            again = self.store.commit(
                [(h.task_id, h.claimed.fence, outcome, blob, retryable, "boom")],
                nxt.task_id if nxt else "", worker_id=w,
                next_fence=nxt.claimed.fence if nxt else "")
            assert again == ["fenced"], (h.task_id, again)
        self.apply(h.task_id, expected)
        after = self.record(h.task_id)
        if expected == "failed" and (rec.get("cancel") or outcome == "cancelled"):
            assert after["error_type"] == "TASK_CANCELLED", after
        queue.pop(0)
        if nxt:
            if self.store.next_task_held:
                nxt.started = True
                if next_before.get("state") == "SUBMITTED_TO_WORKER":
                    self.started(nxt, self.record(nxt.task_id))
            else:
                self.stale.append(queue.pop(0).claimed)
            self.start_next(w)

    @precondition(lambda self: self.busy())
    @rule(i=st.integers(0, 3))
    def commit_ok(self, i: int) -> None:
        w = self.busy()[i % len(self.busy())]
        self._commit(w, "ok")

    @precondition(lambda self: self.busy())
    @rule(i=st.integers(0, 3), outcome=st.sampled_from(["ok", "err"]))
    def commit_sent_twice(self, i: int, outcome: str) -> None:
        w = self.busy()[i % len(self.busy())]
        self._commit(w, outcome, resend=True)

    @precondition(lambda self: self.busy())
    @rule(i=st.integers(0, 3))
    def commit_error(self, i: int) -> None:
        w = self.busy()[i % len(self.busy())]
        """An exception: retryable as the task's retry_exceptions says."""
        self._commit(w, "err")

    @precondition(lambda self: self.busy())
    @rule(i=st.integers(0, 3))
    def commit_cancelled(self, i: int) -> None:
        w = self.busy()[i % len(self.busy())]
        self._commit(w, "cancelled")

    @precondition(lambda self: self.stale)
    @rule(i=st.integers(0, 50), outcome=st.sampled_from(["ok", "err"]))
    def commit_stale(self, i: int, outcome: str) -> None:
        """A worker that lost its task (swept, handed back) commits late: fenced."""
        c = self.stale[i % len(self.stale)]
        rec = self.record(c.task_id)
        got = self.store.commit([(c.task_id, c.fence, outcome, b"Vlate", True, "late")])
        assert got == ["fenced"], (c, rec, got)

    @precondition(lambda self: self.busy())
    @rule(i=st.integers(0, 3), charge=st.booleans())
    def worker_lost(self, i: int, charge: bool) -> None:
        w = self.busy()[i % len(self.busy())]
        node = NODE_OF[w]
        if not self.alive[node]:
            return          # its supervisor, who would tell, is frozen
        queue = self.held[w]
        running = queue[0].task_id if queue and queue[0].started else ""
        before = {h.task_id: self.record(h.task_id) for h in queue}
        got = self.store.worker_lost(node, w, running, "WORKER_DIED", "SIGKILL", charge)
        mine = {tid for tid, rec in before.items() if rec.get("worker_id") == w
                and rec.get("node_id") == node and rec.get("state") in ACTIVE}
        assert {tid for tid, _ in got} == mine, (got, before)
        for tid, outcome in got:
            assert outcome == self.expect_loss(tid, before[tid], tid == running, charge), \
                (tid, outcome, before[tid])
            self.apply(tid, outcome)
        self.stale += [h.claimed for h in queue]
        queue.clear()

    @precondition(lambda self: any(self.alive.values()))
    @rule(i=st.integers(0, 1), go_on=st.booleans())
    def node_lost(self, i: int, go_on: bool) -> None:
        """The node stops heartbeating while Redis serves others: past its lease, swept.
        `go_on`: only its supervisor froze (or was cut off); its workers go on committing."""
        up = [n for n in sorted(NODES) if self.alive[n]]
        node = up[i % len(up)]
        self.alive[node] = False
        self.going_on[node] = go_on
        late: set[str] = set()
        for k in range(int(LEASE_MS / 1000 / STEP_S) + 3):
            self.tick()
            if go_on and k == 1:       # its workers claim on until it is declared dead
                for w in NODES[node]:
                    self.claim(w, 3)
                    late |= {h.task_id for h in self.held[w]}
            if _text(self.client.hget(self.keys.node(node), "state")) == "DEAD":
                break
        assert _text(self.client.hget(self.keys.node(node), "state")) == "DEAD"
        for tid, rec in self.records().items():
            if rec.get("node_id") == node and rec["state"] in ACTIVE:
                assert tid in late, f"{tid} still leased by lost {node}: {rec}"

    @precondition(lambda self: not all(self.alive.values()))
    @rule(i=st.integers(0, 1))
    def node_back_up(self, i: int) -> None:
        down = [n for n in sorted(NODES) if not self.alive[n]]
        self.node_back(down[i % len(down)])

    def node_back(self, node: str) -> None:
        """A node declared dead comes back: the attempts it lost are stopped."""
        if self.alive[node]:
            return
        self.alive[node] = self.going_on[node] = True
        stale = self.renew(node)
        for w in NODES[node]:
            keep = []
            for h in self.held[w]:
                (self.stale.append(h.claimed) if h.task_id in stale and h.started
                 else keep.append(h))
            # What it runs went elsewhere: it goes on with what it still holds.
            self.held[w] = keep
            if keep and not keep[0].started:
                self.start_next(w)

    @rule()
    def wait(self) -> None:
        self.tick()

    @rule(seconds=st.sampled_from([1.0, 2.0]))
    def wait_longer(self, seconds: float) -> None:
        for _ in range(int(seconds / STEP_S)):
            self.tick()

    @precondition(lambda self: self.order)
    @rule(i=st.integers(0, MAX_TASKS), force=st.booleans(), recursive=st.booleans(),
          rare=st.integers(0, 2))
    def cancel(self, i: int, force: bool, recursive: bool, rare: int) -> None:
        if rare:
            return
        tid = self.order[i % len(self.order)]
        before = self.records()
        got = self.store.cancel(tid, force, recursive)
        assert got[0][0] == tid
        for cid, outcome in got:
            state = before[cid].get("state", "")
            expected = ("final" if state in TERMINAL else "requested" if state in ACTIVE
                        else "cancelled")
            assert outcome == expected, (cid, outcome, before[cid])
            if outcome == "requested":
                self.tasks[cid].cancel_requested = True
            if outcome in ("requested", "cancelled"):
                after = self.record(cid)
                if force or outcome == "cancelled" or state == "SUBMITTED_TO_WORKER":
                    assert (after["state"], after["error_type"]) == ("FAILED", "TASK_CANCELLED")
        if recursive:
            children = {t for t, rec in before.items()
                        if rec.get("parent_task_id") == tid}
            assert children <= {c for c, _ in got}, (children, got)

    def in_state(self, *states: str) -> list[str]:
        return [t for t in self.order if self.tasks[t].state in states] or self.order

    @precondition(lambda self: self.order)
    @rule(i=st.integers(0, MAX_TASKS), failed=st.booleans())
    def requeue(self, i: int, failed: bool) -> None:
        among = self.in_state("FAILED") if failed else self.order
        tid = among[i % len(among)]
        state = self.record(tid)["state"]
        got = self.store.requeue(tid)
        assert got == ("requeued" if state == "FAILED" else state)
        if got == "requeued":
            m = self.tasks[tid]
            after = self.record(tid)
            if after["state"] in TERMINAL:    # pinned to a node that is gone: fails again
                assert after["error_type"] == "TASK_UNSCHEDULABLE_ERROR", after
                m.ends += 1
            m.charged = m.free = m.starts = 0
            m.attempts += 1
            m.cancel_requested = False
            self.reopen_ok.add(tid)
            for d in self.tasks.values():
                if tid in d.deps:
                    d.disturbed = True

    @precondition(lambda self: self.order)
    @rule(i=st.integers(0, MAX_TASKS), lose=st.booleans())
    def reconstruct(self, i: int, lose: bool) -> None:
        """The result of a finished task is lost (deleted) and rebuilt by a getter."""
        among = self.in_state("FINISHED")
        tid = among[i % len(among)]
        if self.record(tid)["state"] != "FINISHED":
            return
        if lose:
            self.client.delete(self.keys.result(tid))
        there = bool(self.client.exists(self.keys.result(tid)))
        got = self.store.reconstruct(tid)
        assert got in ("ready", "resubmitted", "exhausted", "waiting", "no_lineage"), got
        assert (got == "ready") == there, (tid, got)
        self.rebuild_step = True

    @precondition(lambda self: self.busy())
    @rule(i=st.integers(0, 3), blocked=st.booleans())
    def lend_or_take_back(self, i: int, blocked: bool) -> None:
        self.lend(self.busy()[i % len(self.busy())], blocked)

    def lend(self, w: str, blocked: bool) -> None:
        """The running task blocks in get (lends its CPU and limit slot) or goes on."""
        queue = self.held[w]
        if not self.going_on[NODE_OF[w]] or not queue or not queue[0].started:
            return
        tid = queue[0].task_id
        got = self.store.lend(tid, blocked)
        assert got in ("lent", "taken back", "unchanged")
        if got == "taken back":
            self.tasks[tid].taken_back = True

    @precondition(lambda self: self.order)
    @rule(i=st.integers(0, MAX_TASKS))
    def lose_result(self, i: int) -> None:
        """A result is lost (evicted, expired) with nobody asking for it yet."""
        among = self.in_state("FINISHED")
        self.client.delete(self.keys.result(among[i % len(among)]))

    @rule(rare=st.integers(0, 7))
    def purge(self, rare: int) -> None:
        if rare == 0:
            self.store.purge_batch(QUEUE, 100)

    # -- invariants ------------------------------------------------------------------------

    def collect_notices(self) -> None:
        for key in (*NOTIFY, GETTER):
            for item in self.client.lrange(key, 0, -1):
                self.notices[(key, _text(item).split("\n", 1)[0])] += 1
            self.client.delete(key)

    @invariant()
    def check(self) -> None:
        self.collect_notices()
        recs = self.records()
        c = self.client
        pipe = c.pipeline(transaction=False)
        for slot in SLOTS:
            pipe.lrange(self.keys.queue(slot), 0, -1)
        pipe.zrange(self.keys.delayed(QUEUE), 0, -1)
        pipe.zrange(self.keys.leases, 0, -1)
        for node in NODES:
            pipe.smembers(self.keys.node_tasks(node))
            pipe.hgetall(self.keys.node_free(node))
        for key in LIMITS:
            pipe.smembers(self.keys.limit_running(key))
            pipe.lrange(self.keys.limit_waiting(key), 0, -1)
        for tid in self.order:
            pipe.llen(self.keys.attempts(tid))
            pipe.smembers(self.keys.dependents(tid))
        raw = iter(pipe.execute())
        in_slot = {slot: [_text(x) for x in next(raw)] for slot in SLOTS}
        queued = [t for ids in in_slot.values() for t in ids]
        delayed = {_text(x) for x in next(raw)}
        leased = {_text(x) for x in next(raw)}
        node_tasks, free = {}, {}
        for node in NODES:
            node_tasks[node] = {_text(x) for x in next(raw)}
            free[node] = {_text(k): _text(v) for k, v in next(raw).items()}
        running, waiting = {}, {}
        for key in LIMITS:
            running[key] = {_text(x) for x in next(raw)}
            waiting[key] = [_text(x) for x in next(raw)]
        n_attempts, dependents = {}, {}
        for tid in self.order:
            n_attempts[tid] = next(raw)
            dependents[tid] = {_text(x) for x in next(raw)}
        all_waiting = [t for key in LIMITS for t in waiting[key]]

        for tid in self.order:
            m, rec = self.tasks[tid], recs[tid]
            state = rec.get("state", "")
            where = (tid, state, rec)
            # Terminal states change only by a requeue or a rebuild of a lost result.
            if m.state in TERMINAL and state != m.state:
                if state not in TERMINAL and tid in self.reopen_ok:
                    pass
                elif m.state == "FINISHED" and self.rebuild_step and (
                        state not in TERMINAL
                        or rec.get("error_type") == "TASK_UNSCHEDULABLE_ERROR"):
                    m.charged += 1          # a rebuild is charged (reconstruct.lua)
                    m.attempts += 1
                    if state in TERMINAL:   # pinned to a node that is gone
                        m.ends += 1
                    for d in self.tasks.values():
                        if tid in d.deps:
                            d.disturbed = True
                else:
                    raise AssertionError(f"final {tid} changed {m.state} -> {state}: {rec}")
            if state in TERMINAL and m.state not in TERMINAL:
                m.ends += 1
            if state not in ACTIVE:
                m.taken_back = False
            m.state = state
            # Exactly one place, as the state says.
            n_queued = queued.count(tid) + all_waiting.count(tid)
            in_nodes = [n for n, ts in node_tasks.items() if tid in ts]
            if state == "PENDING_NODE_ASSIGNMENT":
                assert n_queued == 1, ("queued once", *where, queued, waiting)
                slot = f"{QUEUE}@node={rec['pin']}" if rec.get("pin") else QUEUE
                assert tid in in_slot[slot] or tid in all_waiting, ("slot", *where, in_slot)
                if rec.get("pin"):
                    assert self.alive[rec["pin"]], ("pinned to a dead node", *where)
            else:
                assert n_queued == 0, ("in a queue", *where, queued, waiting)
            assert (tid in delayed) == (state == "DELAYED"), ("delayed", *where)
            assert (tid in leased) == (state in ACTIVE), ("leased", *where)
            if state in ACTIVE:
                assert in_nodes == [rec["node_id"]], ("node_tasks", *where, in_nodes)
                assert rec.get("worker_id"), where
            else:
                assert in_nodes == [], ("node_tasks", *where, in_nodes)
                assert "held" not in rec and "lent" not in rec and "limit_lent" not in rec, \
                    ("holds room", *where)
            if "held" in rec:
                assert rec["held"] == rec["node_id"], where
            if state == "PENDING_ARGS_AVAIL":
                registered = [d for d in m.deps
                              if recs[d].get("state") not in TERMINAL and tid in dependents[d]]
                assert int(rec["deps"]) == len(registered) >= 1, ("deps", *where, registered)
            # Budget, attempts, cancels.
            assert int(rec["attempt"]) == m.attempts == n_attempts[tid], \
                ("attempts", *where, m, n_attempts[tid])
            assert int(rec["retries"]) == m.charged, ("retries", *where, m)
            if m.max_retries >= 0:
                assert m.charged <= m.max_retries, ("over budget", *where, m)
            assert m.starts <= 1 + m.charged + m.free, ("runs", *where, m)
            if rec.get("cancel"):
                assert state in ACTIVE or (state, rec.get("error_type")) == \
                    ("FAILED", "TASK_CANCELLED"), ("cancel", *where)
            if m.cancel_requested and state in TERMINAL:
                assert (state, rec.get("error_type")) == ("FAILED", "TASK_CANCELLED"), where
            # Failures travel along dependencies (the worker fails a task whose argument
            # failed; rebuilt or requeued arguments are left out).
            if state == "FINISHED" and not m.disturbed:
                assert all(recs[d]["state"] == "FINISHED" for d in m.deps), ("deps", *where)
            # No end goes untold.
            assert self.notices[(m.notify, tid)] == m.ends, \
                ("notices", *where, m, self.notices[(m.notify, tid)])
        for a in self.attached:
            if recs[a.task_id].get("state") in TERMINAL:
                assert self.notices[(a.key, a.task_id)] >= a.needed, ("attached", a)
        for tid in leased:
            assert tid in recs, tid
        # Limits: slots held by running attempts of the key only, within its limit.
        for key, cap in LIMITS.items():
            active = {t for t, r in recs.items() if r.get("limit_key") == key
                      and r.get("state") in ACTIVE}
            holding = {t for t in active if "limit_lent" not in recs[t]}
            assert running[key] == holding, ("limit running", key, running[key], holding)
            over = sum(1 for t in active if self.tasks[t].taken_back)
            assert len(running[key]) <= cap + over, ("over limit", key, running[key])
            for t in waiting[key]:
                assert recs[t].get("limit_key") == key, (key, t, recs[t])
            if waiting[key]:
                coming = {t for t, r in recs.items() if r.get("limit_key") == key
                          and (t in queued or r.get("state") == "DELAYED")}
                assert len(running[key]) + len(coming) >= cap, \
                    ("stranded", key, running[key], coming, waiting[key])
        # Node capacity: what is free is what is offered less what its running tasks hold.
        for node in NODES:
            if not free[node]:
                continue
            holds = [t for t, r in recs.items() if r.get("held") == node and "lent" not in r]
            assert int(free[node]["CPU"]) == NODE_CPUS * CPU - CPU * len(holds), \
                ("node_free", node, free[node], holds)
            over = any(self.tasks[t].taken_back for t, r in recs.items()
                       if r.get("node_id") == node and r.get("state") in ACTIVE)
            if not over:
                assert int(free[node]["CPU"]) >= 0, ("node_free < 0", node, free[node])
                # What runs there holds room there: no more than the node offers.
                runs = [t for t, r in recs.items() if r.get("node_id") == node
                        and r.get("state") == "RUNNING" and "lent" not in r]
                assert all(recs[t].get("held") == node for t in runs), \
                    ("running without its room", node, runs, holds)
                assert len(runs) <= NODE_CPUS, ("over the node's CPUs", node, runs, holds)
        # summarize_tasks agrees with the records.
        expected: dict[str, Counter[str]] = {}
        for tid, rec in recs.items():
            state = rec["state"]
            if state not in TERMINAL and state not in ACTIVE:
                state = "PENDING"
            expected.setdefault(self.tasks[tid].func, Counter())[state] += 1
        assert StateReader(self.store).summarize_tasks() == \
            {f: dict(cnt) for f, cnt in expected.items()}
        self.reopen_ok.clear()
        self.rebuild_step = False

    def teardown(self) -> None:
        try:
            self.drain()
        finally:
            self.client.close()

    def drain(self) -> None:
        """Every node back; claim and commit everything until nothing is left to run."""
        for node in NODES:
            self.node_back(node)
        self.check()
        for _ in range(300):
            if all(r.get("state") in TERMINAL for r in self.records().values()) \
                    and not any(self.held.values()):
                break
            for w in sorted(NODE_OF):
                if self.held[w] and not self.held[w][0].started:
                    self.start_next(w)
                if self.held[w]:
                    self.lend(w, False)
                    self._commit(w, "ok")
                else:
                    self.claim(w, 3)
            self.tick()
            self.check()
        recs = self.records()
        stuck = {t: r.get("state") for t, r in recs.items() if r.get("state") not in TERMINAL}
        assert not stuck, f"not final after the drain: {stuck}"
        for tid, m in self.tasks.items():
            if not m.disturbed and any(recs[d]["state"] == "FAILED" for d in m.deps):
                assert recs[tid]["state"] == "FAILED", (tid, recs[tid])
        for node in NODES:
            assert int(self.client.hget(self.keys.node_free(node), "CPU")) == NODE_CPUS * CPU
        for key in LIMITS:
            assert self.client.scard(self.keys.limit_running(key)) == 0
            assert self.client.llen(self.keys.limit_waiting(key)) == 0


def machine_settings(examples: int, steps: int) -> settings:
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    derandomize=EXAMPLES == 0, database=None, print_blob=False,
                    suppress_health_check=list(HealthCheck))


def test_store_model_on_fakeredis() -> None:
    run_state_machine_as_test(StoreModel, settings=machine_settings(EXAMPLES or 40, STEPS))


@pytest.mark.skipif(not os.environ.get("FTQUEUE_MODEL_REDIS"),
                    reason="the long hunt on a real redis-server: FTQUEUE_MODEL_REDIS=1")
def test_store_model_on_redis_server(redis_server: Any) -> None:
    def client() -> redis.Redis:
        c = redis.Redis.from_url(redis_server.address)
        c.flushall()
        return c

    class OnServer(StoreModel):
        client_factory = staticmethod(client)

    run_state_machine_as_test(OnServer, settings=machine_settings(EXAMPLES or 40, STEPS))


# -- counterexamples found by the machine, kept as plain tests ------------------------------

env = storekit.env


def test_a_node_declared_dead_starts_no_prefetched_task(env):
    """A node's supervisor froze; its worker claimed on (t0 running, t1 prefetched) until the
    node was declared dead, which deleted its capacity record. A prefetched task started
    then reserved nothing, so once the node was back it ran unaccounted: the node showed all
    its CPUs free while t1 ran, and claimed past them. Like a claim, a start on a node
    declared dead is refused: the task goes back to its queue, not started."""
    store, clock, client = env
    client.hset("ftq:node:n1", mapping={"node_id": "n1", "queues": QUEUE, "state": "ALIVE",
                                        "resources": f'{{"CPU": {NODE_CPUS * CPU}}}'})
    client.hset("ftq:node_free:n1", "CPU", NODE_CPUS * CPU)
    store.renew("n1", LEASE_MS)
    for i in range(4):
        storekit.submit(store, f"t{i}")
    storekit.serve(store, clock, 1)                     # n1's heartbeats stop here
    t0, t1 = store.claim("n1", "w1", [QUEUE], 2, 1, LEASE_MS)
    storekit.serve(store, clock, 2.5)
    assert store.sweep(LEASE_MS) == ([], ["n1"])        # dead; t0, t1 still leased
    assert store.commit([("t0", t0.fence, "ok", b"V", False, "")], "t1", worker_id="w1",
                        next_fence=t1.fence) == ["finished"]
    assert not store.next_task_held
    assert storekit.state(client, "t1") == "PENDING_NODE_ASSIGNMENT"
    store.renew("n1", LEASE_MS, held=["t1"])           # back
    assert client.hget("ftq:node_free:n1", "CPU") == str(NODE_CPUS * CPU).encode()
    assert [t.task_id for t in store.claim("n1", "w2", [QUEUE], 1, 1, LEASE_MS)] == ["t1"]
    assert client.hget("ftq:node_free:n1", "CPU") == str((NODE_CPUS - 1) * CPU).encode()
