"""Stops reach a thread blocked in a system call on CPython 3.15+.

3.15 raises a thread's pending asynchronous exception in
``PyErr_CheckSignals``, which ``time.sleep``, socket calls and ``select``
call when a signal interrupts their system call; xthread then signals the
thread (``xthread.wake_signal()``, SIGURG by default) after a delivery to a
thread inside a call. Up to 3.14 nothing is signalled, and the exception
lands when the call returns.

No test asserts how fast: a stop that reached the call ends a call of a
minute within the bounded join; one that did not reach it is seen as a
call that ran its whole (short) length.
"""
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import _xthread
import xthread

from helpers import GIL_OFF, JOIN_TIMEOUT, join_or_fail

WAKES = bool(_xthread._SIGNAL_WAKES)
needs_wakes = pytest.mark.skipif(
    not WAKES, reason="signals wake blocked threads on CPython 3.15+ only")

#: Longer than any bounded wait below: a call that ends before it was
#: interrupted.
LONG = 2 * JOIN_TIMEOUT + 10


class Stop(Exception):
    pass


class Blocker:
    """A thread that blocks in one system call and records how it ended."""

    def __init__(self, kind):
        self.kind = kind
        self.a, self.b = socket.socketpair()
        self.entered = threading.Event()
        self.outcome = None
        self.fin = 0

    def call(self):
        if self.kind == "sleep":
            time.sleep(LONG)
        elif self.kind == "recv":
            self.a.recv(1)
        else:
            select.select([self.a], [], [], LONG)

    def run(self):
        try:
            self.entered.set()
            self.call()
            self.outcome = "returned"
        except BaseException as exc:
            self.outcome = exc
        finally:
            self.fin += 1

    def close(self):
        # Ends a recv or select that no stop reached (not a sleep).
        self.b.close()
        self.a.close()


KINDS = ["sleep", "recv", "select"]


def blocked(kind, cls=xthread.Thread):
    b = Blocker(kind)
    t = cls(target=b.run, daemon=True)
    t.start()
    assert b.entered.wait(JOIN_TIMEOUT)
    return b, t


def finish(b, t):
    try:
        join_or_fail(t)
    finally:
        b.close()


@needs_wakes
@pytest.mark.parametrize("kind", KINDS)
def test_raise_exc_reaches_a_blocked_call(kind):
    b, t = blocked(kind)
    sent = Stop("wake")
    assert t.raise_exc(sent)
    finish(b, t)
    assert b.outcome is sent
    assert b.fin == 1


@needs_wakes
@pytest.mark.parametrize("kind", KINDS)
def test_raise_in_thread_reaches_a_stdlib_thread(kind):
    """A thread that never used xthread: plain delivery, then the signal."""
    b, t = blocked(kind, threading.Thread)
    assert xthread.raise_in_thread(t.ident, Stop)
    finish(b, t)
    assert type(b.outcome) is Stop
    assert b.fin == 1


@needs_wakes
@pytest.mark.parametrize("kind", KINDS)
def test_kill_reaches_a_blocked_call(kind):
    b, t = blocked(kind)
    result = t.kill(JOIN_TIMEOUT)
    b.close()
    assert result, result
    assert not result.cleanup_may_be_skipped
    assert isinstance(b.outcome, xthread.ThreadKilled)
    assert b.fin == 1


@needs_wakes
@pytest.mark.parametrize("kind", KINDS)
def test_time_limit_reaches_a_blocked_call(kind):
    b = Blocker(kind)
    try:
        with xthread.time_limit(0.05):
            b.run()         # catches what stops it
    finally:
        b.close()
    assert isinstance(b.outcome, xthread.TimeLimitExceeded)
    assert b.fin == 1


@needs_wakes
def test_pool_cancel_and_limit_reach_a_blocked_call():
    with xthread.ThreadPoolExecutor(2, grace=JOIN_TIMEOUT) as pool:
        started = threading.Event()

        def task():
            started.set()
            time.sleep(LONG)

        future = pool.submit(task)
        assert started.wait(JOIN_TIMEOUT)
        assert future.cancel()
        assert future.wait_stopped(JOIN_TIMEOUT)
        assert future.stuck is None

        limited = pool.submit_with_limit(0.05, time.sleep, LONG)
        with pytest.raises(xthread.TimeLimitExceeded):
            limited.result(JOIN_TIMEOUT)
        assert limited.wait_stopped(JOIN_TIMEOUT)
        assert limited.stuck is None
        assert pool.health().stuck == []


def _no_wake_signal_pending():
    return xthread.wake_signal() not in signal.sigpending()


@needs_wakes
def test_only_the_target_is_signalled():
    """A bystander blocks the wake signal: had it been sent one, it would
    be pending for it."""
    sig = xthread.wake_signal()
    ready, done, verdict = threading.Event(), threading.Event(), []

    def bystander():
        signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
        ready.set()
        done.wait(JOIN_TIMEOUT)
        verdict.append(_no_wake_signal_pending())

    by = threading.Thread(target=bystander)
    by.start()
    assert ready.wait(JOIN_TIMEOUT)
    try:
        for kind in KINDS:
            b, t = blocked(kind)
            assert t.raise_exc(Stop)
            finish(b, t)
            assert type(b.outcome) is Stop
    finally:
        done.set()
        join_or_fail(by)
    assert verdict == [True]


@needs_wakes
def test_no_signal_after_the_scope_closed():
    """Once a limit's block is left, its re-signalling stops: the thread,
    now blocking the wake signal, has none pending for a while after."""
    sig = xthread.wake_signal()
    out = []

    def target():
        try:
            with xthread.time_limit(0.02):
                time.sleep(LONG)
        except xthread.TimeLimitExceeded:
            out.append("stopped")
        signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
        # Longer than the first re-signal intervals (5, 10, 20... ms).
        xthread.sleep(0.3)
        out.append(_no_wake_signal_pending())

    t = xthread.Thread(target=target)
    t.start()
    join_or_fail(t)
    assert out == ["stopped", True]


def test_nudge_needs_an_outstanding_delivery():
    """Nothing sent, a thread that has ended, an unknown thread: no
    signal, on every version."""
    assert _xthread._nudge(threading.get_ident()) is False
    ev = xthread.Event()
    t = xthread.Thread(target=ev.wait, args=(JOIN_TIMEOUT,))
    t.start()
    assert _xthread._nudge(t.ident) is False
    ev.set()
    join_or_fail(t)
    assert _xthread._nudge(t.ident) is False
    with pytest.raises(TypeError):
        _xthread._nudge("1")


def lands_after_the_call(seconds=0.3):
    """Send to a thread in time.sleep(seconds); return (how long the sleep
    ran before the exception was raised, what it caught)."""
    out = []
    entered = threading.Event()

    def target():
        start = time.monotonic()
        try:
            entered.set()
            time.sleep(seconds)
        except Stop as exc:
            out.append((time.monotonic() - start, exc))

    t = xthread.Thread(target=target)
    t.start()
    assert entered.wait(JOIN_TIMEOUT)
    assert t.raise_exc(Stop)
    join_or_fail(t)
    return out[0]


@pytest.mark.skipif(WAKES, reason="up to CPython 3.14")
@pytest.mark.xfail(GIL_OFF, strict=False, reason=(
    "known gap with the GIL off: the sender may not read the target's "
    "frames, so a thread in a C call arms itself only at its next jump, "
    "call, return or yield, here after its try (not strict: a stop that "
    "comes before the call begins is answered at the call, and lands)"))
def test_before_3_15_the_call_runs_to_its_end():
    """Nothing changes there: the exception lands when the call returns."""
    slept, exc = lands_after_the_call(0.3)
    assert slept >= 0.29
    assert type(exc) is Stop


@needs_wakes
def test_someone_elses_handler_is_never_taken_over():
    sig = xthread.wake_signal()
    calls = []
    old = signal.signal(sig, lambda *args: calls.append(args))
    try:
        slept, exc = lands_after_the_call(0.3)
    finally:
        signal.signal(sig, old)
    assert slept >= 0.29        # not interrupted: xthread sent nothing
    assert calls == []


@needs_wakes
def test_wake_signal_zero_turns_it_off():
    old = xthread.wake_signal(0)
    try:
        assert xthread.wake_signal() == 0
        slept, exc = lands_after_the_call(0.3)
    finally:
        assert xthread.wake_signal(old) == 0
    assert slept >= 0.29


@needs_wakes
def test_another_wake_signal():
    old = xthread.wake_signal(signal.SIGUSR2)
    try:
        b, t = blocked("sleep")
        assert t.raise_exc(Stop)
        finish(b, t)
        assert type(b.outcome) is Stop
    finally:
        assert xthread.wake_signal(old) == signal.SIGUSR2
        # xthread gave SIGUSR2 its default action back.
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)


def test_wake_signal_bad_input():
    with pytest.raises(TypeError, match="signum must be an int"):
        xthread.wake_signal("SIGURG")
    with pytest.raises(TypeError):
        xthread.wake_signal(True)
    for bad in (-1, signal.SIGKILL, signal.SIGSTOP, 10 ** 30, 100000):
        with pytest.raises(ValueError, match="cannot wake threads"):
            xthread.wake_signal(bad)
    assert xthread.wake_signal() == signal.SIGURG


@pytest.mark.parametrize("value, expected", [
    ("SIGUSR1", signal.SIGUSR1), ("usr2", signal.SIGUSR2),
    (str(int(signal.SIGWINCH)), signal.SIGWINCH), ("off", 0), ("0", 0),
])
def test_wake_signal_from_the_environment(value, expected):
    env = dict(os.environ, XTHREAD_WAKE_SIGNAL=value)
    out = subprocess.run(
        [sys.executable, "-c", "import xthread; print(xthread.wake_signal())"],
        env=env, capture_output=True, text=True, timeout=JOIN_TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == expected


@pytest.mark.parametrize("value", ["SIGBOGUS", "SIG_DFL", "99999", "-3"])
def test_wake_signal_bad_environment(value):
    env = dict(os.environ, XTHREAD_WAKE_SIGNAL=value)
    out = subprocess.run(
        [sys.executable, "-c", "import xthread"],
        env=env, capture_output=True, text=True, timeout=JOIN_TIMEOUT)
    assert out.returncode != 0
    assert "ValueError: XTHREAD_WAKE_SIGNAL=" in out.stderr
