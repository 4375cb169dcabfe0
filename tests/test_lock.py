"""_xthread's lock: allocate_lock / allocate / LockType / lock."""
import _thread
import math
import re
import threading
import time
import weakref

import pytest

import _xthread
from helpers import (JOIN_TIMEOUT, assert_clean_exit, joined, run_script,
                     start_joinable)

FACTORIES = [
    pytest.param(_xthread.allocate_lock, id="allocate_lock"),
    pytest.param(_xthread.allocate, id="allocate"),
    pytest.param(_xthread.LockType, id="LockType"),
    pytest.param(_xthread.lock, id="lock"),
]


@pytest.fixture(params=FACTORIES)
def lock(request):
    return request.param()


# construction


def test_names_and_type():
    assert _xthread.LockType is _xthread.lock
    assert _xthread.LockType.__name__ == "lock"
    assert _xthread.LockType.__module__ == "_xthread"
    assert _xthread.LockType is not _thread.LockType


def test_factories_make_unlocked_locks(lock):
    assert type(lock) is _xthread.LockType
    assert lock.locked() is False


@pytest.mark.parametrize("factory", [_xthread.allocate_lock,
                                     _xthread.allocate])
def test_allocate_takes_no_arguments(factory):
    with pytest.raises(TypeError):
        factory(1)


def test_type_takes_no_arguments():
    with pytest.raises(TypeError, match="takes no arguments"):
        _xthread.LockType(1)
    with pytest.raises(TypeError, match="takes no arguments"):
        _xthread.LockType(x=1)


def test_not_subclassable():
    with pytest.raises(TypeError):
        class Sub(_xthread.LockType):
            pass


def test_each_lock_is_distinct():
    a, b = _xthread.allocate_lock(), _xthread.allocate_lock()
    assert a.acquire()
    assert not a.acquire(False)
    assert b.acquire(False)


# acquire / release / locked


def test_acquire_release_locked(lock):
    assert lock.acquire() is True
    assert lock.locked() is True
    assert lock.acquire(False) is False
    assert lock.release() is None
    assert lock.locked() is False
    assert lock.acquire(blocking=False) is True
    lock.release()


def test_aliases(lock):
    assert lock.acquire_lock() is True
    assert lock.locked_lock() is True
    assert lock.acquire_lock(False) is False
    assert lock.acquire_lock(blocking=False) is False
    assert lock.release_lock() is None
    assert lock.locked_lock() is False
    with pytest.raises(RuntimeError):
        lock.release_lock()


def test_release_unlocked_raises(lock):
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        lock.release()
    lock.acquire()
    lock.release()
    with pytest.raises(_xthread.error):
        lock.release()
    assert lock.locked() is False


def test_context_manager(lock):
    with lock as entered:
        assert entered is True
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(ZeroDivisionError):
        with lock:
            assert lock.locked()
            1 / 0
    assert not lock.locked()


def test_exit_of_unlocked_lock_raises(lock):
    with pytest.raises(RuntimeError):
        lock.__exit__(None, None, None)


def test_blocking_false(lock):
    lock.acquire()
    start = time.monotonic()
    assert lock.acquire(False) is False
    assert lock.acquire(blocking=0) is False
    assert lock.acquire(blocking=False, timeout=-1) is False
    assert lock.acquire(timeout=0) is False
    assert time.monotonic() - start < JOIN_TIMEOUT
    lock.release()
    assert lock.acquire(timeout=0) is True
    lock.release()


@pytest.mark.parametrize("timeout", [0.1, 1, 0.25])
def test_timeout_on_held_lock(lock, timeout):
    lock.acquire()
    start = time.monotonic()
    assert lock.acquire(timeout=timeout) is False
    elapsed = time.monotonic() - start
    # Generous bounds: never early (allowing clock granularity), and not
    # stuck.
    assert elapsed >= timeout * 0.9
    assert elapsed < timeout + JOIN_TIMEOUT
    assert lock.locked()
    lock.release()


def test_timeout_on_free_lock(lock):
    assert lock.acquire(timeout=JOIN_TIMEOUT) is True
    lock.release()
    assert lock.acquire(True, 0.5) is True
    lock.release()


def test_blocking_is_any_truth_value(lock):
    assert lock.acquire([1]) is True
    assert lock.acquire([]) is False
    lock.release()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"timeout": -2}, ValueError, "timeout value must be a non-negative"),
    ({"timeout": -0.5}, ValueError, "timeout value must be a non-negative"),
    ({"timeout": -1.5}, ValueError, "timeout value must be a non-negative"),
    ({"timeout": -math.inf}, ValueError, None),
    ({"blocking": False, "timeout": 1}, ValueError,
     "can't specify a timeout for a non-blocking call"),
    ({"blocking": False, "timeout": 0}, ValueError,
     "can't specify a timeout for a non-blocking call"),
    ({"timeout": _xthread.TIMEOUT_MAX * 2}, OverflowError, "too large"),
    ({"timeout": 1e300}, OverflowError, None),
    ({"timeout": math.inf}, OverflowError, None),
    ({"timeout": 10**400}, OverflowError, None),
    ({"timeout": "1"}, TypeError, None),
    ({"timeout": None}, TypeError, None),
    ({"timeout": 1j}, TypeError, None),
    ({"timeout": math.nan}, ValueError, None),
    ({"timeout": -math.nan}, ValueError, None),
    ({"unknown": 1}, TypeError, None),
    ({"blocking": True, "timeout": 1, "extra": 2}, TypeError, None),
])
def test_bad_timeouts(lock, kwargs, error, message):
    with pytest.raises(error) as info:
        lock.acquire(**kwargs)
    if message is not None:
        assert message in str(info.value)
    assert lock.locked() is False


@pytest.mark.parametrize("kwargs", [
    {"timeout": -2}, {"blocking": False, "timeout": 1},
    {"timeout": _xthread.TIMEOUT_MAX * 2}, {"timeout": "1"},
    {"timeout": math.nan}, {"timeout": None}, {"timeout": math.inf},
])
def test_bad_timeouts_same_errors_as_thread_module(kwargs):
    def error_of(lock):
        try:
            lock.acquire(**kwargs)
        except Exception as exc:
            return type(exc)
        return None

    assert error_of(_xthread.allocate_lock()) is error_of(
        _thread.allocate_lock())


def test_largest_timeout_accepted(lock):
    lock.acquire()
    # TIMEOUT_MAX itself is accepted; a thread releases the lock so that
    # the wait ends.
    with joined(lock.release):
        assert lock.acquire(timeout=_xthread.TIMEOUT_MAX) is True
    lock.release()


def test_too_many_positional_arguments(lock):
    with pytest.raises(TypeError):
        lock.acquire(True, 1, 2)


# repr, weakref


def test_repr(lock):
    assert re.fullmatch(r"<unlocked _xthread\.lock object at 0x[0-9a-f]+>",
                        repr(lock)), repr(lock)
    lock.acquire()
    assert re.fullmatch(r"<locked _xthread\.lock object at 0x[0-9a-f]+>",
                        repr(lock)), repr(lock)
    lock.release()
    assert repr(lock).startswith("<unlocked ")


@pytest.mark.parametrize("factory", FACTORIES)
def test_weakref(factory):
    lock = factory()
    ref = weakref.ref(lock)
    assert ref() is lock
    proxy = weakref.proxy(lock)
    assert proxy.acquire()
    assert lock.locked()
    proxy.release()
    del lock, proxy
    assert ref() is None


def test_held_lock_can_be_destroyed():
    lock = _xthread.allocate_lock()
    lock.acquire()
    ref = weakref.ref(lock)
    del lock
    assert ref() is None


# threads


def test_release_from_another_thread(lock):
    lock.acquire()
    with joined(lock.release):
        pass
    assert not lock.locked()
    assert lock.acquire(False)
    lock.release()


def test_waiter_wakes_on_release(lock):
    lock.acquire()
    waiting = threading.Event()
    result = []

    def waiter():
        waiting.set()
        result.append(lock.acquire(timeout=JOIN_TIMEOUT))
        lock.release()

    with joined(waiter):
        assert waiting.wait(JOIN_TIMEOUT)
        lock.release()
    assert result == [True]
    assert not lock.locked()


def test_waiter_times_out_while_held(lock):
    lock.acquire()
    result = []
    with joined(lambda: result.append(lock.acquire(timeout=0.1))):
        pass
    assert result == [False]
    assert lock.locked()
    lock.release()


def test_mutual_exclusion():
    lock = _xthread.allocate_lock()
    counter = [0]
    go = threading.Event()

    def worker():
        go.wait(JOIN_TIMEOUT)
        for _ in range(2000):
            with lock:
                value = counter[0]
                # A switch here would lose an update without the lock.
                counter[0] = value + 1

    threads = [start_joinable(worker) for _ in range(8)]
    go.set()
    for t in threads:
        t.join()
    assert counter == [16000]
    assert not lock.locked()


def test_stdlib_threads_use_it_too():
    lock = _xthread.allocate_lock()
    lock.acquire()
    result = []
    t = threading.Thread(target=lambda: result.append(
        lock.acquire(timeout=JOIN_TIMEOUT)))
    t.start()
    lock.release()
    t.join(JOIN_TIMEOUT)
    assert not t.is_alive()
    assert result == [True]
    assert lock.locked()


# _at_fork_reinit


def test_at_fork_reinit(lock):
    lock._at_fork_reinit()
    assert not lock.locked()
    lock.acquire()
    assert lock._at_fork_reinit() is None
    assert not lock.locked()
    assert lock.acquire(False)
    assert not lock.acquire(False)
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


# signals (in a subprocess: pytest-timeout owns SIGALRM in this process)


@pytest.mark.parametrize("call", ["lock.acquire()",
                                  "lock.acquire(timeout=50)",
                                  "lock.acquire(True, -1)"])
def test_ctrl_c_interrupts_acquire(call):
    rc, out, err = run_script(f"""
        import signal, sys, time, _xthread

        lock = _xthread.allocate_lock()
        lock.acquire()
        ticks = []

        def handler(signum, frame):
            # The first two signals do not raise: the wait goes on. The
            # third does, as Ctrl-C would.
            ticks.append(time.monotonic())
            if len(ticks) == 3:
                raise KeyboardInterrupt

        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
        start = time.monotonic()
        try:
            result = {call}
        except KeyboardInterrupt:
            signal.setitimer(signal.ITIMER_REAL, 0)
            print("KeyboardInterrupt", len(ticks), time.monotonic() - start)
            # The interrupted acquire did not take the lock: it is still
            # held once, by this thread.
            lock.release()
            print("released", lock.locked())
        else:
            print("returned", result)
    """)
    assert_clean_exit(rc, out, err)
    lines = out.split("\n")
    word, nticks, elapsed = lines[0].split()
    assert word == "KeyboardInterrupt"
    assert int(nticks) == 3
    assert float(elapsed) < 20
    assert lines[1] == "released False"


def test_real_sigint_interrupts_acquire():
    rc, out, err = run_script("""
        import os, signal, threading, _xthread

        lock = _xthread.allocate_lock()
        lock.acquire()

        # Python's own handler's behaviour, but once: a second SIGINT that
        # comes before done.set() must not end the script.
        fired = []
        def once(signum, frame):
            if not fired:
                fired.append(signum)
                raise KeyboardInterrupt
        signal.signal(signal.SIGINT, once)

        def interrupt():
            # Sent repeatedly until the main thread's wait is over, so that
            # it cannot be lost before the wait starts.
            while not done.wait(0.05):
                os.kill(os.getpid(), signal.SIGINT)

        done = threading.Event()
        threading.Thread(target=interrupt).start()
        try:
            lock.acquire()
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
        finally:
            done.set()
    """)
    assert_clean_exit(rc, out, err)
    assert out.strip() == "KeyboardInterrupt"


def test_signal_handler_that_returns_keeps_timeout():
    rc, out, err = run_script("""
        import signal, time, _xthread

        lock = _xthread.allocate_lock()
        lock.acquire()
        ticks = []
        signal.signal(signal.SIGALRM, lambda *a: ticks.append(1))
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
        start = time.monotonic()
        result = lock.acquire(timeout=1.0)
        elapsed = time.monotonic() - start
        signal.setitimer(signal.ITIMER_REAL, 0)
        print(result, len(ticks), elapsed)
    """)
    assert_clean_exit(rc, out, err)
    result, nticks, elapsed = out.split()
    assert result == "False"
    assert int(nticks) >= 2
    # The interrupted waits resume with the time left: about 1 s in all,
    # neither cut short by the signals nor restarted from scratch each time.
    assert 0.9 <= float(elapsed) < 15


def test_signal_during_wait_then_release():
    rc, out, err = run_script("""
        import signal, threading, time, _xthread

        lock = _xthread.allocate_lock()
        lock.acquire()
        ticks = []

        def handler(*args):
            ticks.append(1)
            if len(ticks) == 3:
                lock.release()   # the handler itself lets the wait end

        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
        result = lock.acquire(timeout=50)
        signal.setitimer(signal.ITIMER_REAL, 0)
        print(result, len(ticks) >= 3, lock.locked())
    """)
    assert_clean_exit(rc, out, err)
    assert out.split() == ["True", "True", "True"]
