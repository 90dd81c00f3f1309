"""The policy table: what each ending of an attempt costs, and when a worker is replaced."""

import pytest

from ftqueue.exceptions import TaskTimeoutError
from ftqueue.policy import (
    CRASH_LOOP_LIMIT,
    EXIT_RECYCLE,
    Ending,
    KillReason,
    Restart,
    classify_exit,
    decide_restart,
    exception_is_retryable,
    loss_cost,
    retry_allowed,
    timeout_is_retryable,
)

K = KillReason

# returncode, task in flight, kill reason, asked to stop -> ending
EXITS = [
    (-9, True, K.NONE, False, Ending.CRASHED),
    (1, True, K.NONE, False, Ending.CRASHED),
    (EXIT_RECYCLE, True, K.NONE, False, Ending.CRASHED),   # os._exit(75) inside a task
    (0, True, K.NONE, False, Ending.CRASHED),
    (0, True, K.NONE, True, Ending.CRASHED),               # asked to stop, died mid-task
    (-9, True, K.OOM, False, Ending.OOM_KILLED),
    (-9, True, K.RECYCLE, False, Ending.OOM_KILLED),       # a task started as we killed
    (-9, False, K.RECYCLE, False, Ending.RECYCLED),
    (-9, False, K.OOM, False, Ending.RECYCLED),
    (-9, True, K.CANCEL, False, Ending.CANCEL_KILLED),
    (-9, True, K.TIMEOUT, False, Ending.TIMEOUT_KILLED),
    (-9, True, K.STOP, True, Ending.STOPPED),
    (-9, False, K.STOP, True, Ending.RECYCLED),
    (EXIT_RECYCLE, False, K.NONE, False, Ending.RECYCLED),
    (0, False, K.NONE, True, Ending.RECYCLED),
    (0, False, K.NONE, False, Ending.IDLE_DEATH),
    (-11, False, K.NONE, False, Ending.IDLE_DEATH),
]


@pytest.mark.parametrize("code,in_flight,reason,asked,ending", EXITS)
def test_classify_exit(code, in_flight, reason, asked, ending):
    assert classify_exit(code, task_in_flight=in_flight, kill_reason=reason,
                         asked_to_stop=asked) is ending


# ending -> error type, charged, counts as a crash
COSTS = [
    (Ending.CRASHED, "WORKER_DIED", True, True),
    (Ending.OOM_KILLED, "OUT_OF_MEMORY", True, False),
    (Ending.STOPPED, "WORKER_DIED", False, False),
    (Ending.RECYCLED, "WORKER_DIED", False, False),
    (Ending.IDLE_DEATH, "WORKER_DIED", False, True),
    (Ending.CANCEL_KILLED, "WORKER_DIED", False, False),
    (Ending.TIMEOUT_KILLED, "WORKER_DIED", False, False),
]


@pytest.mark.parametrize("ending,error_type,charged,crash", COSTS)
def test_loss_cost(ending, error_type, charged, crash):
    cost = loss_cost(ending)
    assert (cost.error_type, cost.charged, cost.is_crash) == (error_type, charged, crash)


def test_every_ending_has_a_cost():
    for ending in Ending:
        loss_cost(ending)


def test_any_death_with_a_task_in_flight_is_charged_whatever_the_code():
    for code in (-9, -11, 0, 1, 2, EXIT_RECYCLE, 137):
        ending = classify_exit(code, task_in_flight=True, kill_reason=K.NONE,
                               asked_to_stop=False)
        assert loss_cost(ending).charged, code


def test_restart_decisions():
    assert decide_restart(Ending.CRASHED, node_stopping=False, asked_to_stop=False,
                          temporary=False, recent_crashes=1) is Restart.RESPAWN
    assert decide_restart(Ending.CRASHED, node_stopping=False, asked_to_stop=False,
                          temporary=False, recent_crashes=CRASH_LOOP_LIMIT) \
        is Restart.RESPAWN_LATER
    # a recycle is respawned at once even in a crash loop
    assert decide_restart(Ending.RECYCLED, node_stopping=False, asked_to_stop=False,
                          temporary=False, recent_crashes=99) is Restart.RESPAWN
    for kw in ({"node_stopping": True}, {"asked_to_stop": True}, {"temporary": True}):
        args = {"node_stopping": False, "asked_to_stop": False, "temporary": False, **kw}
        assert decide_restart(Ending.CRASHED, recent_crashes=0, **args) is Restart.NONE


def test_retryable_exceptions_as_in_ray():
    assert exception_is_retryable(ValueError(), True)
    assert not exception_is_retryable(ValueError(), False)
    assert exception_is_retryable(ConnectionResetError(), (ConnectionError,))
    assert not exception_is_retryable(ValueError(), (ConnectionError,))
    assert timeout_is_retryable((TimeoutError,))
    assert timeout_is_retryable((TaskTimeoutError,))
    assert not timeout_is_retryable((ValueError,))


def test_retry_budget():
    assert retry_allowed(-1, 10 ** 6)
    assert retry_allowed(1, 0) and not retry_allowed(1, 1)
    assert not retry_allowed(0, 0)


def test_exit_description_names_the_signal():
    from ftqueue.losses import describe_exit

    assert "SIGKILL" in describe_exit(-9, 42)
    assert "exit code 3" in describe_exit(3, 42)


def test_oom_victim_is_the_newest_running_task():
    from ftqueue.watchdog import pick_oom_victim
    from ftqueue.workerpool import WorkerHandle

    old = WorkerHandle("a", None, 1, running="t1", task_started=10.0)
    new = WorkerHandle("b", None, 2, running="t2", task_started=20.0)
    idle = WorkerHandle("c", None, 3, task_started=30.0)
    dying = WorkerHandle("d", None, 4, running="t4", task_started=40.0, kill_reason=K.OOM)
    assert pick_oom_victim([old, new, idle, dying]) is new
    assert pick_oom_victim([idle]) is None
