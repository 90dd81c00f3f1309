"""The main job on the embedded default: tasks run, a crashed worker's task is retried, an
application error reaches the caller with its remote traceback.

    python scripts/demo.py
"""

import os
import time

import ftqueue


@ftqueue.remote
def square(x):
    time.sleep(0.05)
    return x * x


@ftqueue.remote(max_retries=2)
def crashes_once():
    ctx = ftqueue.get_runtime_context()
    if ctx.attempt_number == 0:
        os._exit(1)          # the worker process dies mid-task
    return f"survived on attempt {ctx.attempt_number}"


@ftqueue.remote
def divide(a, b):
    return a / b


def main() -> None:
    info = ftqueue.init()
    print(f"embedded cluster at {info.address}, job {info.job_id}")

    refs = [square.remote(i) for i in range(20)]
    print("squares:", ftqueue.get(refs))

    ref = crashes_once.remote()
    print("crash retried:", ftqueue.get(ref))

    try:
        ftqueue.get(divide.remote(1, 0))
    except ZeroDivisionError as e:   # the remote error is also a ZeroDivisionError
        print("remote error, caught as ZeroDivisionError:")
        print(e)

    try:
        from ftqueue import state
    except ImportError:
        state = None
    if state is not None:
        for row in state.list_tasks(filters=[("task_id", "=", ref.hex())]):
            print(f"attempt {row['attempt_number']}: {row['state']} {row['error_type']}")
    ftqueue.shutdown()


if __name__ == "__main__":
    main()
