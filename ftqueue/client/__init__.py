"""The client side of ftqueue, one job per module:

    records.py       a task as submitted: its record fields and sealed arguments
    submit_queue.py  the buffer and the one thread that sends submissions to Redis
    completions.py   the listener thread and the getters waiting on completions
    lineage.py       what this process submitted, for a Redis that lost it
    results.py       final records turned into values; lost results rebuilt
    calls.py         Redis calls bounded by a caller's deadline
    client.py        Client: the above composed; get, wait, put, cancel
"""

from .client import Client

__all__ = ["Client"]
