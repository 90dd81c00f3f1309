"""The lines a worker and its supervisor exchange: built and parsed here only.

Worker -> supervisor, on the worker's control pipe (one line each):

    H <id> <id>...        claimed these (leased, not started): renew their leases
    S <id> <fence> <timeout_s|-> <retry_timeout 0|1> <func>
                          started the body of this task
    E                     the body ended, but its outcome cannot be committed yet (Redis
                          refuses it): stop timing the task; its D follows
    D <id> <id>...        these are settled in Redis (committed, or handed back)
    B / U                 blocked in get (lend my slot) / unblocked

H and D lines wait for the next line that must go at once (S before a body starts, E, B/U)
or for the end of the worker's step, so a task costs one write. A D that never arrives
only makes the supervisor think a task is in flight longer: its death is then reported for
a task Redis already has final, which the script ignores.

Supervisor -> worker, on its inbox pipe, followed by SIGUSR1:

    C <id>                cancel this task (interrupt it if it is running)
    T <id>                this task ran past its timeout_s: interrupt it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Held:
    task_ids: tuple[str, ...]


@dataclass(frozen=True)
class Started:
    task_id: str
    fence: str
    timeout_s: float | None
    retry_timeout: bool
    func_name: str


@dataclass(frozen=True)
class Ended:
    pass


@dataclass(frozen=True)
class Settled:
    task_ids: tuple[str, ...]


@dataclass(frozen=True)
class Blocked:
    blocked: bool


WorkerMessage = Union[Held, Started, Ended, Settled, Blocked]


@dataclass(frozen=True)
class Cancel:
    task_id: str


@dataclass(frozen=True)
class Timeout:
    task_id: str


SupervisorMessage = Union[Cancel, Timeout]


class ProtocolError(ValueError):
    """A line that is not part of the protocol."""


def encode(message: WorkerMessage | SupervisorMessage) -> bytes:
    if isinstance(message, Held):
        text = "H " + " ".join(message.task_ids)
    elif isinstance(message, Started):
        timeout = repr(message.timeout_s) if message.timeout_s else "-"
        func = "".join(c if c.isprintable() and not c.isspace() else "_"
                       for c in message.func_name) or "_"
        text = (f"S {message.task_id} {message.fence} {timeout} {int(message.retry_timeout)} "
                f"{func}")
    elif isinstance(message, Ended):
        text = "E"
    elif isinstance(message, Settled):
        text = "D " + " ".join(message.task_ids)
    elif isinstance(message, Blocked):
        text = "B" if message.blocked else "U"
    elif isinstance(message, Cancel):
        text = f"C {message.task_id}"
    else:
        text = f"T {message.task_id}"
    return text.encode() + b"\n"


def decode_worker(line: bytes) -> WorkerMessage:
    kind, _, rest = line.decode(errors="replace").partition(" ")
    parts = rest.split()
    if kind == "H":
        return Held(tuple(parts))
    if kind == "D":
        return Settled(tuple(parts))
    if kind == "E":
        return Ended()
    if kind in ("B", "U"):
        return Blocked(kind == "B")
    if kind == "S" and len(parts) == 5:
        task_id, fence, timeout, retry_timeout, func = parts
        return Started(task_id, fence, None if timeout == "-" else float(timeout),
                       retry_timeout == "1", func)
    raise ProtocolError(f"not a worker line: {line[:80]!r}")


def decode_supervisor(line: bytes) -> SupervisorMessage:
    kind, _, task_id = line.decode(errors="replace").partition(" ")
    if kind == "C" and task_id:
        return Cancel(task_id)
    if kind == "T" and task_id:
        return Timeout(task_id)
    raise ProtocolError(f"not a supervisor line: {line[:80]!r}")


class LineBuffer:
    """Bytes from a pipe in, whole lines out."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [line for line in lines if line]
