"""xthread.contrib.celery.TaskPool on its own, as Celery's worker drives
it (on_apply with the request's callbacks), without a broker. The real
worker on Redis: test_redis_celery.py; Celery's own pool tests:
test_celery.py."""
import threading

import pytest

celery = pytest.importorskip("celery")

from celery.exceptions import SoftTimeLimitExceeded  # noqa: E402

import xthread  # noqa: E402
from xthread.contrib.celery import TaskPool  # noqa: E402

from helpers import JOIN_TIMEOUT  # noqa: E402


class Calls:
    """The callbacks a Celery request gives the pool, recording."""

    def __init__(self):
        self.events = []
        self.accepted = threading.Event()
        self.ended = threading.Event()
        self.pid = None

    def accept(self, pid, time_accepted):
        self.pid = pid
        self.accepted.set()

    def success(self, value):
        self.events.append(("success", value))
        self.ended.set()

    def timeout(self, soft, seconds):
        self.events.append(("soft" if soft else "hard", seconds))
        if not soft:
            self.ended.set()

    def apply(self, pool, fn, *args):
        return pool.on_apply(fn, args, {}, callback=self.success,
                             accept_callback=self.accept,
                             timeout_callback=self.timeout)


@pytest.fixture
def pool():
    p = TaskPool(limit=2)
    p.start()
    yield p
    p.terminate()


def spin(cleanup):
    try:
        while True:
            pass
    finally:
        cleanup.append("finally")


def test_a_hard_limit_is_reported_once_and_never_as_success():
    pool = TaskPool(limit=2, timeout=0.2)      # the worker's --time-limit
    pool.start()
    try:
        calls, cleanup = Calls(), []
        result = calls.apply(pool, spin, cleanup)
        assert calls.ended.wait(JOIN_TIMEOUT)
        result.wait(JOIN_TIMEOUT)
        assert result.f.done()
        assert calls.events == [("hard", 0.2)]
        assert cleanup == ["finally"]
    finally:
        pool.stop()


def test_a_soft_limit_is_raised_in_the_task_and_logged(pool):
    calls = Calls()

    def task():
        try:
            xthread.Event().wait(JOIN_TIMEOUT)
        except SoftTimeLimitExceeded:
            return "caught"
    pool.on_apply(task, (), {}, callback=calls.success,
                  accept_callback=calls.accept,
                  timeout_callback=calls.timeout, soft_timeout=0.1)
    assert calls.ended.wait(JOIN_TIMEOUT)
    assert calls.events == [("soft", 0.1), ("success", "caught")]


def test_terminate_job_stops_the_task_it_was_given_the_pid_of(pool):
    first, second = Calls(), Calls()
    cleanup = []
    stopped = first.apply(pool, spin, cleanup)
    release = threading.Event()
    second.apply(pool, release.wait, JOIN_TIMEOUT)
    assert first.accepted.wait(JOIN_TIMEOUT)
    assert second.accepted.wait(JOIN_TIMEOUT)
    assert first.pid != second.pid
    pool.terminate_job(first.pid)
    pool.executor.shutdown(wait=False)   # no new work; the second goes on
    release.set()
    assert second.ended.wait(JOIN_TIMEOUT)
    assert second.events == [("success", True)]
    stopped.wait(JOIN_TIMEOUT)
    assert stopped.f.done()
    assert first.events == []            # terminated: Celery reports it
    assert cleanup == ["finally"]


def test_info_shows_the_pool():
    pool = TaskPool(limit=3)
    try:
        info = pool.info
        assert info["implementation"] == "xthread.contrib.celery:TaskPool"
        assert info["max-concurrency"] == 3
        assert info["replaced"] == 0
    finally:
        pool.stop()
