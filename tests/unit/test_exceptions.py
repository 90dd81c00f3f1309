from __future__ import annotations

import pickle

import cloudpickle
import pytest

from ftqueue import exceptions as ex
from ftqueue import payload
from ftqueue.spec import validate_options


class MyError(Exception):
    pass


def make_error(exc):
    try:
        raise exc
    except Exception as e:
        blob = payload.pack_error("f", e, payload.format_traceback(e), 7, "1.2.3.4", "t1")
        ok, err = payload.outcome_to_result("t1", {"state": "FAILED", "error_type":
                                                   "TASK_EXECUTION_EXCEPTION"}, blob)
        assert not ok
        return err


def test_task_error_is_instance_of_cause_class():
    err = make_error(MyError("boom"))
    assert isinstance(err, ex.TaskError) and isinstance(err, MyError)
    assert type(err).__name__ == "TaskError(MyError)"
    assert err.args == (err.cause,)
    assert str(err).splitlines()[0] == "ftqueue::f() (pid=7, ip=1.2.3.4)"
    assert str(err).splitlines()[-1].endswith("MyError: boom")
    assert "Traceback (most recent call last)" not in str(err)


def test_task_error_survives_pickling_as_dual_instance():
    err = make_error(MyError("boom"))
    again = cloudpickle.loads(cloudpickle.dumps(err))
    assert isinstance(again, MyError) and isinstance(again, ex.TaskError)
    assert str(again) == str(err)


def test_unpicklable_cause_becomes_unserializable_exception():
    class Local(Exception):
        def __reduce__(self):
            raise TypeError("no")

    err = make_error(Local("msg"))
    assert isinstance(err.cause, ex.UnserializableException)
    assert "msg" in str(err)


def test_system_errors_hierarchy():
    assert issubclass(ex.NodeDiedError, ex.WorkerCrashedError)
    assert issubclass(ex.OutOfMemoryError, ex.WorkerCrashedError)
    assert issubclass(ex.GetTimeoutError, TimeoutError)
    assert issubclass(ex.TaskTimeoutError, ex.TaskError) and issubclass(ex.TaskTimeoutError,
                                                                         TimeoutError)
    assert ex.RayTaskError is ex.TaskError and ex.RayError is ex.FtqueueError
    for name in ("WorkerCrashedError", "TaskCancelledError", "ObjectLostError",
                 "ObjectReconstructionFailedError", "GetTimeoutError", "NodeDiedError"):
        assert issubclass(getattr(ex, name), ex.FtqueueError)


def test_outcome_decoding_for_system_failures():
    ok, err = payload.outcome_to_result("t", {"state": "FAILED", "error_type": "NODE_DIED",
                                              "error_message": "gone", "func": "f"}, None)
    assert not ok and isinstance(err, ex.NodeDiedError) and "gone" in str(err)
    ok, err = payload.outcome_to_result("t", {"state": "FINISHED", "error_type": ""}, None)
    assert not ok and isinstance(err, ex.ObjectLostError)
    ok, value = payload.outcome_to_result("t", {}, payload.pack_value([1], "t"))
    assert ok and value == [1]


@pytest.mark.parametrize("options", [
    {"max_retries": -2}, {"max_retries": 1.5}, {"max_retries": True}, {"retry_exceptions": 1},
    {"retry_exceptions": [int]}, {"max_calls": -1}, {"queue": ""}, {"queue": "a b"},
    {"name": "x\ny"}, {"num_cpu": 1}, {"num_cpus": -1}, {"num_cpus": "1"},
    {"num_gpus": 1.5}, {"num_gpus": float("nan")}, {"memory": -1},
    {"resources": {"CPU": 1}}, {"resources": {"GPU": 1}}, {"resources": {"a b": 1}},
    {"resources": {"x": -1}}, {"resources": [1]}, {"scheduling_strategy": "PACK"},
    {"runtime_env": {"pip": ["requests"]}}, {"runtime_env": {"env_vars": {"A": 1}}},
    {"num_returns": 0}, {"num_returns": "dynamic"}, {"queue": "a@b"}, {"num_cpus": 0.00001},
])
def test_bad_options_raise_value_error(options):
    with pytest.raises(ValueError):
        validate_options(options)


def test_good_options_pass():
    validate_options({"max_retries": -1, "retry_exceptions": [KeyError], "max_calls": 1,
                      "name": "n", "queue": "q"})
    validate_options({"num_cpus": 0.5, "num_gpus": 2, "memory": 10**9,
                      "resources": {"accel": 0.25}, "scheduling_strategy": "SPREAD",
                      "runtime_env": {"env_vars": {"A": "1"}}, "num_returns": 3})


def test_runtime_env_error_names_the_key():
    with pytest.raises(ValueError, match="'pip'"):
        validate_options({"runtime_env": {"env_vars": {}, "pip": ["x"]}})


def test_serialization_error_is_type_error():
    import threading

    with pytest.raises(TypeError):
        payload.pack_args([threading.Lock()], {}, False, "f", "t1")
    assert pickle.loads(pickle.dumps(ex.UnserializableException("T", "m"))).type_name == "T"
