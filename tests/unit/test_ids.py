"""Task ids come from a block of OS randomness; a forked child must not repeat its parent's."""

from __future__ import annotations

import os
import re

from ftqueue.spec import new_id, new_put_id


def test_ids_are_unique_hex_of_their_length():
    ids = {new_id() for _ in range(5000)}
    assert len(ids) == 5000 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert re.fullmatch(r"[0-9a-f]{40}", new_put_id())


def test_a_forked_child_does_not_repeat_the_ids_its_parent_will_hand_out():
    new_id()                                  # a block is read, most of it not yet used
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, "".join(new_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read()
    os.waitpid(pid, 0)
    parent = "".join(new_id() for _ in range(8))
    assert len(child) == len(parent) == 256
    assert not {child[i:i + 32] for i in range(0, 256, 32)} & \
        {parent[i:i + 32] for i in range(0, 256, 32)}
