"""The examples of the page ftqueue started from run unchanged with `import ftqueue as ray`,
on the embedded default (no address anywhere)."""

from __future__ import annotations

import re

from conftest import child_env, run_script

ERRORS_EXAMPLE = '''
import ftqueue as ray

@ray.remote
def f():
    raise Exception("the real error")

@ray.remote
def g(x):
    return


try:
    ray.get(f.remote())
except ray.exceptions.RayTaskError as e:
    print(e)

try:
    ray.get(g.remote(f.remote()))
except ray.exceptions.RayTaskError as e:
    print(e)
'''

CRASH_RETRY_EXAMPLE = '''
import numpy as np
import os
import ftqueue as ray
import time

ray.init(ignore_reinit_error=True)

@ray.remote(max_retries=1)
def potentially_fail(failure_probability):
    time.sleep(0.2)
    if np.random.random() < failure_probability:
        os._exit(0)
    return 0

for _ in range(3):
    try:
        ray.get(potentially_fail.remote(0.5))
        print('SUCCESS')
    except ray.exceptions.WorkerCrashedError:
        print('FAILURE')
'''

EXCEPTION_RETRY_EXAMPLE = '''
import numpy as np
import os
import ftqueue as ray
import time

ray.init(ignore_reinit_error=True)

class RandomError(Exception):
    pass

@ray.remote(max_retries=1, retry_exceptions=True)
def potentially_fail(failure_probability):
    if failure_probability < 0 or failure_probability > 1:
        raise ValueError(
            "failure_probability must be between 0 and 1, but got: "
            f"{failure_probability}"
        )
    time.sleep(0.2)
    if np.random.random() < failure_probability:
        raise RandomError("Failed!")
    return 0

for _ in range(3):
    try:
        ray.get(potentially_fail.remote(0.5))
        print('SUCCESS')
    except RandomError:
        print('FAILURE')

retry_on_exception = potentially_fail.options(retry_exceptions=[RandomError])
try:
    ray.get(retry_on_exception.remote(-1))
except ValueError:
    print("FAILED AS EXPECTED")
else:
    raise RuntimeError("An exception should be raised so this shouldn't be reached.")

for _ in range(3):
    try:
        ray.get(retry_on_exception.remote(0.5))
        print('SUCCESS')
    except RandomError:
        print('FAILURE AFTER RETRIES')
'''


def test_errors_example():
    result = run_script(ERRORS_EXAMPLE, env=child_env())
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^ftqueue::f\(\) \(pid=\d+, ip=[\d.]+\)$", out, re.M)
    assert re.search(r"^ftqueue::g\(\) \(pid=\d+, ip=[\d.]+\)$", out, re.M)
    assert "  At least one of the input arguments for this task could not be computed:" in out
    assert 'raise Exception("the real error")' in out
    assert out.count("Exception: the real error") == 2


def test_crash_retry_example():
    result = run_script(CRASH_RETRY_EXAMPLE, env=child_env())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert len(lines) == 3 and set(lines) <= {"SUCCESS", "FAILURE"}


def test_exception_retry_example():
    result = run_script(EXCEPTION_RETRY_EXAMPLE, env=child_env())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 7
    assert set(lines[:3]) <= {"SUCCESS", "FAILURE"}
    assert lines[3] == "FAILED AS EXPECTED"
    assert set(lines[4:]) <= {"SUCCESS", "FAILURE AFTER RETRIES"}
