"""Sentinels: _set_sentinel() and the lock returned by
_start_joinable_thread, released after the thread's state is deleted."""
import _thread
import gc
import sys
import threading
import weakref

import pytest

import _xthread
from helpers import (JOIN_TIMEOUT, assert_clean_exit, catch_unraisable,
                     run_script, start_joinable)


class Payload:
    pass


class Parked:
    """A thread started with start_new_thread that takes ``count``
    sentinels (acquiring those listed in ``acquire``), reports them, then
    waits until ``go`` is set."""

    def __init__(self, count=1, acquire=(0,), before_exit=None,
                 start=_xthread.start_new_thread):
        self.go = threading.Event()
        self.ready = threading.Event()
        self.sentinels = []
        self.local = threading.local()
        self.local_ref = None
        self.count = count
        self.acquire = acquire
        self.before_exit = before_exit
        self.ident = start(self.run, ())

    def run(self):
        self.thread_ident = _xthread.get_ident()
        for i in range(self.count):
            s = _xthread._set_sentinel()
            if i in self.acquire:
                assert s.acquire(blocking=False)
            self.sentinels.append(s)
        del s
        payload = Payload()
        self.local.payload = payload
        self.local_ref = weakref.ref(payload)
        del payload
        self.ready.set()
        self.go.wait(JOIN_TIMEOUT)
        if self.before_exit is not None:
            self.before_exit()

    def wait_ready(self):
        assert self.ready.wait(JOIN_TIMEOUT)
        return self

    def finish(self, index=0):
        """Let the thread end and join it through sentinel ``index``."""
        self.go.set()
        assert self.sentinels[index].acquire(timeout=JOIN_TIMEOUT)
        self.sentinels[index].release()


def test_returns_unlocked_lock():
    t = Parked(count=2, acquire=(1,)).wait_ready()
    try:
        s = t.sentinels[0]
        assert type(s) is _xthread.LockType
        assert not s.locked()
        # An unheld sentinel is an ordinary lock.
        assert s.acquire(False)
        s.release()
    finally:
        t.finish(1)


def test_released_after_thread_state_is_gone():
    before = _xthread._count()
    t = Parked().wait_ready()
    s = t.sentinels[0]
    assert t.ident == t.thread_ident
    assert s.locked()
    assert not s.acquire(False)
    assert not s.acquire(timeout=0.01)
    assert t.ident in sys._current_frames()
    assert _xthread._count() == before + 1
    t.go.set()
    assert s.acquire(timeout=JOIN_TIMEOUT)
    # The thread state is deleted, not just cleared: no frame, no thread
    # that set_async_exc could find, its thread-local data freed, and
    # _count already back.
    assert t.ident not in sys._current_frames()
    assert _xthread.set_async_exc(t.ident, RuntimeError) == 0
    assert t.local_ref() is None
    assert _xthread._count() == before
    s.release()


def test_several_sentinels_all_released():
    t = Parked(count=5, acquire=(0, 1, 3, 4)).wait_ready()
    assert [s.locked() for s in t.sentinels] == [True, True, False, True,
                                                True]
    # One released by its thread before the end stays released.
    t.before_exit = t.sentinels[4].release
    t.finish(0)
    for s in t.sentinels:
        assert s.acquire(timeout=JOIN_TIMEOUT)
        s.release()


def test_many_sentinels():
    t = Parked(count=100, acquire=range(100)).wait_ready()
    t.finish(99)
    for s in t.sentinels:
        assert s.acquire(timeout=JOIN_TIMEOUT)


def test_sentinel_object_dropped_before_exit():
    """The thread keeps what it needs to release a sentinel that nobody
    else holds any more: no crash, and other sentinels still work."""
    t = Parked(count=2, acquire=(0, 1)).wait_ready()
    ref = weakref.ref(t.sentinels[1])
    del t.sentinels[1]
    # A free-threaded build frees an object made in another thread only
    # once that thread merges its reference counts; a collection does it.
    gc.collect()
    assert ref() is None
    t.finish(0)


def test_sentinel_outlives_thread():
    t = Parked().wait_ready()
    s = t.sentinels[0]
    t.finish()
    del t
    # Still an ordinary lock.
    assert s.acquire(False)
    assert not s.acquire(False)
    s.release()
    assert repr(s).startswith("<unlocked _xthread.lock")


def test_join_waits_past_its_first_spin():
    """A join spins briefly before it parks; a thread that ends later
    than that is still joined, by a timed and an untimed wait, and a
    timed wait of a live thread gives up."""
    t = Parked().wait_ready()
    s = t.sentinels[0]
    # Shorter than the spin, longer, none.
    assert not s.acquire(timeout=0.00005)
    assert not s.acquire(timeout=0.001)
    assert not s.acquire(timeout=0)
    joined = []
    joiners = [threading.Thread(target=lambda: joined.append(
                   s.acquire(timeout=JOIN_TIMEOUT) and (s.release() or 1))),
               threading.Thread(target=lambda: joined.append(
                   s.acquire() and (s.release() or 2)))]
    for j in joiners:
        j.start()
    # Spinning still or parked by now, both get it when the thread ends.
    t.go.set()
    for j in joiners:
        j.join(JOIN_TIMEOUT)
        assert not j.is_alive()
    assert sorted(joined) == [1, 2]


def test_sentinel_taken_again_is_an_ordinary_lock():
    """Once its thread has ended, a sentinel held by someone else makes
    others wait (and time out) as any lock does."""
    t = Parked().wait_ready()
    s = t.sentinels[0]
    t.finish()
    assert s.acquire(timeout=JOIN_TIMEOUT)
    outcome = []
    other = threading.Thread(
        target=lambda: outcome.append(s.acquire(timeout=0.01)))
    other.start()
    other.join(JOIN_TIMEOUT)
    assert outcome == [False]
    waiter = threading.Thread(
        target=lambda: outcome.append(s.acquire(timeout=JOIN_TIMEOUT)))
    waiter.start()
    s.release()
    waiter.join(JOIN_TIMEOUT)
    assert outcome == [False, True]
    s.release()


@pytest.mark.parametrize("ending", ["return", "raise", "exit"])
def test_released_however_the_thread_ends(ending):
    box = []
    ready = threading.Event()

    def function():
        s = _xthread._set_sentinel()
        s.acquire()
        box.append(s)
        ready.set()
        if ending == "raise":
            raise ValueError("end")
        if ending == "exit":
            _xthread.exit()

    with catch_unraisable() as hook:
        _xthread.start_new_thread(function, ())
        assert ready.wait(JOIN_TIMEOUT)
        assert box[0].acquire(timeout=JOIN_TIMEOUT)
    assert [r.exc_type for r in hook.records] == (
        [ValueError] if ending == "raise" else [])


def test_joinable_sentinel_and_set_sentinel_together():
    ready = threading.Event()
    box = []

    def function():
        s = _xthread._set_sentinel()
        s.acquire()
        box.append(s)
        ready.set()

    t = start_joinable(function)
    assert ready.wait(JOIN_TIMEOUT)
    t.join()
    assert box[0].acquire(timeout=JOIN_TIMEOUT)


def test_joinable_sentinel_dropped():
    ready = threading.Event()
    go = threading.Event()
    box = []

    def function():
        s = _xthread._set_sentinel()
        s.acquire()
        box.append(s)
        ready.set()
        go.wait(JOIN_TIMEOUT)

    ident, sentinel, _ = _xthread._start_joinable_thread(function, ())
    ref = weakref.ref(sentinel)
    del sentinel
    assert ref() is None
    assert ready.wait(JOIN_TIMEOUT)
    go.set()
    assert box[0].acquire(timeout=JOIN_TIMEOUT)


def test_in_thread_started_by_xthread_thread():
    box = []
    ready = threading.Event()

    def inner():
        s = _xthread._set_sentinel()
        s.acquire()
        box.append(s)
        ready.set()

    def outer():
        _xthread.start_new_thread(inner, ())

    t = start_joinable(outer)
    t.join()
    assert ready.wait(JOIN_TIMEOUT)
    assert box[0].acquire(timeout=JOIN_TIMEOUT)


def test_main_thread_refused():
    with pytest.raises(RuntimeError) as info:
        _xthread._set_sentinel()
    message = str(info.value)
    assert "_xthread" in message
    assert "release" in message


def _error_in(start_and_join):
    errors = []

    def function():
        try:
            _xthread._set_sentinel()
        except RuntimeError as exc:
            errors.append(exc)

    start_and_join(function)
    return errors


def test_threading_thread_refused():
    def start_and_join(function):
        t = threading.Thread(target=function)
        t.start()
        t.join(JOIN_TIMEOUT)
        assert not t.is_alive()

    errors = _error_in(start_and_join)
    assert len(errors) == 1
    assert "started by _xthread" in str(errors[0])


def test_thread_module_thread_refused():
    def start_and_join(function):
        done = threading.Event()

        def wrapper():
            try:
                function()
            finally:
                done.set()

        _thread.start_new_thread(wrapper, ())
        assert done.wait(JOIN_TIMEOUT)

    errors = _error_in(start_and_join)
    assert len(errors) == 1
    assert "started by _xthread" in str(errors[0])


def test_takes_no_arguments():
    with pytest.raises(TypeError):
        _xthread._set_sentinel(1)


def test_ctrl_c_interrupts_join():
    rc, out, err = run_script("""
        import signal, threading, _xthread

        go = threading.Event()
        ident, sentinel, _ = _xthread._start_joinable_thread(
            go.wait, (60,))

        ticks = []

        def handler(signum, frame):
            # Raises once, at the third signal: by then the main thread is
            # surely waiting.
            ticks.append(1)
            if len(ticks) == 3:
                raise KeyboardInterrupt

        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
        try:
            sentinel.acquire()          # join
        except KeyboardInterrupt:
            signal.setitimer(signal.ITIMER_REAL, 0)
            print("KeyboardInterrupt", sentinel.locked())
        go.set()
        print("joined", sentinel.acquire(timeout=30))
    """)
    assert_clean_exit(rc, out, err)
    assert out.split("\n")[:2] == ["KeyboardInterrupt True", "joined True"]
