"""A demo workload for a running cluster (FTQUEUE_ADDRESS): submits tasks, prints where
they ran. Kill a worker container meanwhile and watch its tasks move.

    FTQUEUE_ADDRESS=redis://127.0.0.1:6379/0 python scripts/demo_cluster.py
"""

import collections
import socket
import time

import ftqueue


@ftqueue.remote
def work(i):
    time.sleep(0.5)
    return socket.gethostname()


def main() -> None:
    info = ftqueue.init()
    print(f"connected to {info.address}, job {info.job_id}")
    refs = [work.remote(i) for i in range(60)]
    hosts = collections.Counter(ftqueue.get(refs))
    for host, n in hosts.most_common():
        print(f"{host}: {n} tasks")
    ftqueue.shutdown()


if __name__ == "__main__":
    main()
