from ftqueue.supervisor import CRASH_LOOP_LIMIT, Exit, Restart, decide_restart
from ftqueue.worker import EXIT_RECYCLE


def test_crash_is_respawned():
    assert decide_restart(Exit(-9, False, False), False, 1) is Restart.RESPAWN


def test_exit_zero_not_asked_for_is_a_crash():
    assert not Exit(0, False, False).on_purpose
    assert Exit(0, True, False).on_purpose
    assert Exit(EXIT_RECYCLE, False, False).on_purpose


def test_recycle_is_respawned_even_in_a_crash_loop():
    assert decide_restart(Exit(EXIT_RECYCLE, False, False), False, 99) is Restart.RESPAWN


def test_crash_loop_slows_down():
    assert decide_restart(Exit(1, False, False), False, CRASH_LOOP_LIMIT) is Restart.RESPAWN_LATER


def test_nothing_respawned_when_stopping_or_temporary():
    assert decide_restart(Exit(-9, False, False), True, 0) is Restart.NONE
    assert decide_restart(Exit(-9, False, True), False, 0) is Restart.NONE
    assert decide_restart(Exit(0, True, False), False, 0) is Restart.NONE


def test_exit_description_names_the_signal():
    assert "SIGKILL" in Exit(-9, False, False).describe(42)
    assert "exit code 3" in Exit(3, False, False).describe(42)


def test_oom_victim_is_the_newest_running_task():
    from ftqueue.supervisor import WorkerHandle, pick_oom_victim

    old = WorkerHandle("a", None, 1, running="t1", task_started=10.0)
    new = WorkerHandle("b", None, 2, running="t2", task_started=20.0)
    idle = WorkerHandle("c", None, 3, task_started=30.0)
    dying = WorkerHandle("d", None, 4, running="t4", task_started=40.0, kill_reason="oom")
    assert pick_oom_victim([old, new, idle, dying]) is new
    assert pick_oom_victim([idle]) is None
