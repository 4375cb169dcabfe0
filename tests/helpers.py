"""Shared helpers for the tests (imported as ``helpers``: pytest puts this
directory on ``sys.path`` because ``tests/`` has no ``__init__.py``).

Every wait in the tests is bounded by one of the timeouts below; none is a
synchronisation by ``time.sleep``.
"""
import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time
import types

import _xthread

#: Upper bound for any wait on a thread, lock or event. Generous: a loaded
#: CI machine must not turn a slow pass into a failure.
JOIN_TIMEOUT = 30.0

#: A free-threaded build running with its GIL off (PYTHON_GIL=0). Read
#: after _xthread's import, which settles it.
GIL_OFF = not getattr(sys, "_is_gil_enabled", lambda: True)()

#: Upper bound for a whole subprocess script.
SCRIPT_TIMEOUT = 60.0


class Joinable:
    """A thread started with ``_xthread._start_joinable_thread``."""

    def __init__(self, ident, sentinel, generation):
        self.ident = ident
        self.sentinel = sentinel
        self.generation = generation

    @property
    def native_id(self):
        """The thread's OS id (waits for its first instruction); None once
        it has ended."""
        return _xthread._native_id(self.ident, self.generation)

    def join(self, timeout=JOIN_TIMEOUT):
        """Wait (bounded) until the thread's state is gone; fail if not."""
        if not self.sentinel.acquire(timeout=timeout):
            raise AssertionError(
                f"thread {self.ident} still running after {timeout} s")
        self.sentinel.release()


def join_or_fail(thread, timeout=JOIN_TIMEOUT):
    """Join a Thread (bounded); fail if it is still alive."""
    thread.join(timeout)
    assert not thread.is_alive(), f"{thread!r} still alive after {timeout} s"


def start_joinable(function, *args, **kwargs):
    """Start ``function(*args, **kwargs)`` in an _xthread thread; return a
    :class:`Joinable`."""
    return Joinable(*_xthread._start_joinable_thread(function, args, kwargs))


@contextlib.contextmanager
def joined(function, *args, **kwargs):
    """Start a joinable thread and join it when the block ends, even when
    the block fails (so that no test leaves a thread behind)."""
    t = start_joinable(function, *args, **kwargs)
    try:
        yield t
    finally:
        t.join()


class UnraisableCatcher:
    """Records what ``sys.unraisablehook`` receives; ``event`` is set at the
    first call."""

    def __init__(self):
        self.records = []
        self.event = threading.Event()

    def __call__(self, args):
        self.records.append(types.SimpleNamespace(
            exc_type=args.exc_type, exc_value=args.exc_value,
            exc_traceback=args.exc_traceback, err_msg=args.err_msg,
            object=args.object))
        self.event.set()

    def wait(self, timeout=JOIN_TIMEOUT):
        assert self.event.wait(timeout), "sys.unraisablehook was not called"
        return self.records[0]


@contextlib.contextmanager
def catch_unraisable():
    """Replace ``sys.unraisablehook`` for the block. Join the threads that
    may report before the block ends."""
    catcher = UnraisableCatcher()
    old = sys.unraisablehook
    sys.unraisablehook = catcher
    try:
        yield catcher
    finally:
        sys.unraisablehook = old


@contextlib.contextmanager
def switch_interval(seconds):
    """Make forced GIL hand-overs rare for the block: a thread that holds
    the GIL keeps it until it blocks, so "the other thread is waiting in a
    C call" is certain once the GIL comes back."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


@contextlib.contextmanager
def stack_size(size):
    """Set the thread stack size for the block; restore it afterwards."""
    old = _xthread.stack_size(size)
    try:
        yield old
    finally:
        _xthread.stack_size(old)


def run_script(code, timeout=SCRIPT_TIMEOUT, args=()):
    """Run ``code`` (dedented) with ``sys.executable -X faulthandler`` in a
    subprocess; return ``(returncode, stdout, stderr)``. A hang past
    ``timeout`` fails the test (the child is killed)."""
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    env["PYTHONFAULTHANDLER"] = "1"
    try:
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c",
             textwrap.dedent(code), *args],
            capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"script did not finish in {timeout} s\n"
            f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}") from None
    return proc.returncode, proc.stdout, proc.stderr


CRASH_MARKERS = ("Fatal Python error", "Segmentation fault",
                 "Aborted", "core dumped", "Current thread 0x")


def assert_clean_exit(rc, out, err, expected_rc=0):
    """The script exited with ``expected_rc`` and did not crash."""
    for marker in CRASH_MARKERS:
        assert marker not in err, f"crash ({marker!r}):\n{err}"
    assert rc == expected_rc, f"exit code {rc}\nstdout:\n{out}\nstderr:\n{err}"


def start_sleeper(exc_type=ValueError):
    """Start a stdlib thread that sleeps in short steps until *exc_type*
    is raised in it; return ``(thread, caught)``, once it runs. What it
    catches is appended to ``caught``; it ends then."""
    caught = []
    ready = threading.Event()

    def sleeper():
        try:
            ready.set()
            while True:
                time.sleep(0.001)
        except exc_type as exc:
            caught.append(exc)

    thread = threading.Thread(target=sleeper)
    thread.start()
    assert ready.wait(JOIN_TIMEOUT)
    return thread, caught


def wait_until(what, check, timeout=JOIN_TIMEOUT):
    """Polls check() until it is true; fails, naming what, after timeout
    (for state kept outside this process: a broker's lists)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
