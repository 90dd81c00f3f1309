"""Time and flow control with real worker nodes: strict queue priority, delayed tasks and retry
backoff, idempotent submits, requeue and purge."""

from __future__ import annotations

from conftest import runs

import ftqueue


@ftqueue.remote(max_retries=0)
def record(path: str, tag: str) -> str:
    with open(path, "a") as f:
        f.write(f"{tag}\n")
    return tag


def test_later_queue_runs_only_when_earlier_is_empty(driver, start_node, tmp_path):
    path = str(tmp_path / "order")
    refs = [record.options(queue="default").remote(path, f"d{i}") for i in range(20)]
    refs += [record.options(queue="high").remote(path, f"h{i}") for i in range(20)]
    ftqueue.flush_submissions()
    start_node(1, "--queues", "high,default", "--prefetch", "4")
    ftqueue.get(refs, timeout=60)
    order = [tag[0] for tag in runs(path)]
    assert order == ["h"] * 20 + ["d"] * 20, order
