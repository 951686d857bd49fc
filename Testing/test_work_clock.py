"""Tests wait for background work as long as it works, and fail fast when it stalls."""

import subprocess
import sys
import time

import pytest

from work_clock import wait_while_working, work_seconds


def test_a_slow_run_that_keeps_working_outlasts_the_stall_limit():
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 4\nwhile time.time() < end: pass"])
    started = time.monotonic()
    try:
        wait_while_working(lambda: busy.poll() is not None, stall=2.5, what="the busy child")
    finally:
        busy.kill()
        busy.wait()
    assert time.monotonic() - started > 3.5  # twice past the stall limit: a clock limit of 2.5 s would have failed


def test_a_stalled_run_fails_after_the_stall_limit_not_the_ceiling():
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    try:
        with pytest.raises(AssertionError, match="the idle child did not happen: no work done for 2 s"):
            wait_while_working(lambda: idle.poll() is not None, stall=2.0, what="the idle child")
    finally:
        idle.kill()
        idle.wait()
    assert time.monotonic() - started < 20


def test_work_is_counted_in_descendants_only():
    before = work_seconds()
    end = time.process_time() + 0.5
    while time.process_time() < end:  # this process's own work does not count
        pass
    assert work_seconds() - before < 0.3
