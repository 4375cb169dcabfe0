"""CPython's own tests of _thread (the installed ``test.test_thread``),
pointed at _xthread.

``test.test_thread`` does ``import _thread as thread``: its module-level
``thread`` becomes _xthread for each test, and so does everything else that
would otherwise bypass it:

- ``LockTests.locktype`` (bound to ``thread.allocate_lock`` when the class
  was created);
- ``test.lock_tests.start_new_thread`` / ``TIMEOUT_MAX`` (imported from
  _thread by name), so that the lock tests' helper threads are _xthread's;
- the ``_thread`` that ``test.support``'s thread helpers count with
  (``wait_threads_exit``, ``threading_setup``/``threading_cleanup``): its
  ``_count()`` adds _xthread's threads, so that those helpers wait for them.

Every test of the suite becomes one pytest test; the few that use what
_xthread does not have are skipped by name, with the reason, in ``SKIPS``.
"""
import _thread
import sys
import unittest

import pytest

import _xthread
import xthread._stop

test_thread = pytest.importorskip(
    "test.test_thread", reason="CPython's test suite is not installed")
lock_tests = pytest.importorskip("test.lock_tests")
from test import support  # noqa: E402

try:
    from test.support import threading_helper
except ImportError:     # 3.9: the helpers are in test.support itself
    threading_helper = support

# 3.13 rebuilt _thread's joinable threads on a thread handle object;
# _xthread keeps the older sentinel design (_start_joinable_thread returns
# (ident, sentinel, generation)), so these tests have nothing to run on.
_HANDLE_API = ("uses _thread.start_joinable_thread and the _ThreadHandle "
               "API of 3.13 (join/is_done/set_done/_make_thread_handle), "
               "which _xthread does not have: it joins through "
               "_start_joinable_thread's sentinel lock instead")

SKIPS = {
    "ThreadRunningTests.test_join_thread": _HANDLE_API,
    "ThreadRunningTests.test_join_thread_already_exited": _HANDLE_API,
    "ThreadRunningTests.test_join_several_times": _HANDLE_API,
    "ThreadRunningTests.test_joinable_not_joined": _HANDLE_API,
    "ThreadRunningTests.test_join_from_self": _HANDLE_API,
    "ThreadRunningTests.test_join_then_self_join": _HANDLE_API,
    "ThreadRunningTests.test_join_with_timeout": _HANDLE_API,
    "ThreadRunningTests.test_join_unstarted": _HANDLE_API,
    "ThreadRunningTests.test_set_done_unstarted": _HANDLE_API,
    "ThreadRunningTests.test_start_duplicate_handle": _HANDLE_API,
    "ThreadRunningTests.test_start_with_none_handle": _HANDLE_API,
}


class _CountingThreadModule:
    """_thread as test.support sees it: ``_count()`` also counts the
    threads that _xthread started, but for xthread's time-limit watchdog
    (left from other tests; it ends once idle)."""

    def __getattr__(self, name):
        return getattr(_thread, name)

    @staticmethod
    def _count():
        return (_thread._count() + _xthread._count()
                - xthread._stop._watchdog.running())


def _test_case_classes():
    for name in sorted(dir(test_thread)):
        obj = getattr(test_thread, name)
        if (isinstance(obj, type) and issubclass(obj, unittest.TestCase)
                and obj.__module__ == test_thread.__name__):
            yield obj


def _test_ids():
    loader = unittest.TestLoader()
    ids = []
    for cls in _test_case_classes():
        for method in loader.getTestCaseNames(cls):
            ids.append(f"{cls.__name__}.{method}")
    return ids


TEST_IDS = _test_ids()


@pytest.fixture
def pointed_at_xthread(monkeypatch):
    monkeypatch.setattr(test_thread, "thread", _xthread)
    monkeypatch.setattr(test_thread.LockTests, "locktype",
                        _xthread.allocate_lock)
    monkeypatch.setattr(lock_tests, "start_new_thread",
                        _xthread.start_new_thread)
    monkeypatch.setattr(lock_tests, "TIMEOUT_MAX", _xthread.TIMEOUT_MAX)
    monkeypatch.setattr(threading_helper, "_thread", _CountingThreadModule())
    if threading_helper is not support and hasattr(support, "_thread"):
        monkeypatch.setattr(support, "_thread", _CountingThreadModule())
    # Outside regrtest the suite prints progress; pytest shows it only on
    # failure, but keep it quiet.
    monkeypatch.setattr(support, "verbose", 0)


def test_pointed_at_xthread(pointed_at_xthread):
    assert test_thread.thread is _xthread
    case = test_thread.LockTests("test_constructor")
    assert type(case.locktype()) is _xthread.LockType
    assert lock_tests.start_new_thread is _xthread.start_new_thread
    # support's thread helpers now see _xthread's threads.
    before = threading_helper._thread._count()
    go = _xthread.allocate_lock()
    go.acquire()
    ident, sentinel, _ = _xthread._start_joinable_thread(
        go.acquire, ())
    try:
        assert threading_helper._thread._count() == before + 1
    finally:
        go.release()
    assert sentinel.acquire(timeout=30)


def test_suite_found():
    # The suite is there and has the tests this file is about.
    classes = {test_id.split(".")[0] for test_id in TEST_IDS}
    assert {"ThreadRunningTests", "BarrierTest", "LockTests"} <= classes
    assert len(TEST_IDS) >= 20
    if sys.version_info >= (3, 13):
        # The skip list names tests that exist (3.9-3.12 have none of them).
        assert set(SKIPS) <= set(TEST_IDS)


@pytest.mark.parametrize("test_id", TEST_IDS)
def test_cpython(test_id, pointed_at_xthread):
    if test_id in SKIPS:
        pytest.skip(SKIPS[test_id])
    class_name, method = test_id.split(".")
    case = getattr(test_thread, class_name)(method)
    result = unittest.TestResult()
    case.run(result)
    problems = result.errors + result.failures
    if problems:
        pytest.fail("\n".join(text for _, text in problems), pytrace=False)
    if result.skipped:
        pytest.skip(f"skipped by the suite: {result.skipped[0][1]}")
    assert result.testsRun == 1
    assert result.wasSuccessful()
