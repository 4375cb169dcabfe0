"""os.fork() in a process with xthreads: in the child only the forking
thread exists, the others are reported ended, new threads start, and the
child exits normally; a fork made inside an xthread makes that object the
child's main thread (what multiprocessing's "fork" start method does when
it is used from a worker thread).

Tests take ``thread_cls`` and run once with stdlib's ``threading.Thread``
and once with ``xthread.Thread``. The checks made in a forked child report
through the child's exit code and a pipe; the parent waits for the child
with a bounded poll and kills it when the time is up.
"""
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback

import pytest

import xthread
from helpers import join_or_fail, start_sleeper

if not hasattr(os, "fork"):
    pytest.skip("needs os.fork()", allow_module_level=True)

#: Upper bound for any wait on a thread, lock or event.
JOIN_TIMEOUT = 30.0
#: Upper bound for a forked child, or a subprocess script.
CHILD_TIMEOUT = 60.0

# 3.12+ warn when a process with threads forks; pyproject makes warnings
# errors.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning")

class Parked:
    """A thread of ``cls`` that waits on an event until released."""

    def __init__(self, cls, **kwargs):
        self.started = threading.Event()
        self.release = threading.Event()
        self.thread = cls(target=self._park, **kwargs)

    def _park(self):
        self.started.set()
        self.release.wait(JOIN_TIMEOUT + CHILD_TIMEOUT)

    def __enter__(self):
        self.thread.start()
        assert self.started.wait(JOIN_TIMEOUT)
        return self.thread

    def __exit__(self, *exc):
        self.release.set()
        join_or_fail(self.thread)


def fork_and_check(check):
    """Fork; in the child run ``check()`` and leave with ``os._exit``: 0 if
    it passed, 1 with the traceback sent through a pipe. Returns the pid
    and the read end of the pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            check()
            code = 0
        except BaseException:  # noqa: B902 - report anything
            with contextlib.suppress(BaseException):
                os.write(w, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def wait_child(pid, r=None, timeout=CHILD_TIMEOUT):
    """Wait (bounded) for child ``pid``; return ``(exit code, report)``.
    A child still there after ``timeout`` is killed and the test fails."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    hung = False
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid == pid:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            hung = True
            break
        tick.wait(0.005)
    report = b""
    if r is not None:
        # The child is gone: its end of the pipe is closed.
        with os.fdopen(r, "rb") as f:
            report = f.read()
    if hung:
        raise AssertionError(f"child {pid} hung: killed after {timeout} s\n"
                             f"{report.decode()}")
    return os.waitstatus_to_exitcode(status), report.decode()


def assert_child_ok(pid, r):
    code, report = wait_child(pid, r)
    assert (code, report) == (0, ""), f"child exit code {code}\n{report}"


def assert_ended_in_child(thread):
    """In a child: ``thread`` (running in the parent) is reported ended and
    ``join`` returns at once."""
    assert not thread.is_alive()
    start = time.monotonic()
    thread.join()
    thread.join(0)
    assert time.monotonic() - start < JOIN_TIMEOUT / 2
    assert not thread.is_alive()
    assert thread not in threading.enumerate()
    assert "stopped" in repr(thread)


def start_and_join_in_child(cls):
    box = []
    t = cls(target=lambda: box.append(threading.current_thread()))
    t.start()
    t.join(JOIN_TIMEOUT)
    assert not t.is_alive()
    assert box == [t]
    return t


# Fork in the main thread


def test_fork_in_main_thread(thread_cls):
    parked = [Parked(thread_cls) for _ in range(3)]
    parked.append(Parked(thread_cls, daemon=True))
    with contextlib.ExitStack() as stack:
        threads = [stack.enter_context(p) for p in parked]
        main = threading.current_thread()

        def check():
            for t in threads:
                assert_ended_in_child(t)
            assert threading.current_thread() is main
            assert threading.main_thread() is main
            assert threading.enumerate() == [main]
            assert threading.active_count() == 1
            for cls in (thread_cls, threading.Thread, xthread.Thread):
                start_and_join_in_child(cls)
            # A non-daemon thread still running at the child's exit: what
            # multiprocessing's fork child does (threading._shutdown, then
            # os._exit) joins it, and never waits for the parent's threads.
            go = threading.Event()
            done = []
            late = thread_cls(target=lambda: (go.wait(JOIN_TIMEOUT),
                                              done.append(True)))
            late.start()
            go.set()
            threading._shutdown()
            assert done == [True]
            assert not late.is_alive()

        pid, r = fork_and_check(check)
        assert_child_ok(pid, r)
        # The parent's threads are untouched.
        assert all(t.is_alive() for t in threads)


def test_fork_in_main_thread_without_threading_shutdown(thread_cls):
    with Parked(thread_cls) as t:
        def check():
            assert_ended_in_child(t)
            start_and_join_in_child(thread_cls)

        pid, r = fork_and_check(check)
        assert_child_ok(pid, r)
        assert t.is_alive()


def test_fork_while_a_thread_ends(thread_cls):
    # A thread that has left threading._active but still has its thread
    # state (its thread-local values are being destroyed) when the process
    # forks: in the child it is gone too.
    in_del = threading.Event()
    forked = threading.Event()
    local = threading.local()

    class Blocker:
        def __del__(self):
            in_del.set()
            forked.wait(JOIN_TIMEOUT)

    def target():
        local.value = Blocker()

    t = thread_cls(target=target)
    t.start()
    try:
        assert in_del.wait(JOIN_TIMEOUT)
        assert t not in threading.enumerate()

        def check():
            assert not t.is_alive()
            t.join(JOIN_TIMEOUT / 4)
            assert not t.is_alive()
            start_and_join_in_child(thread_cls)

        pid, r = fork_and_check(check)
    finally:
        forked.set()
        join_or_fail(t)
    assert_child_ok(pid, r)


FORK_SCRIPT = """
import os, signal, sys, threading, time, warnings
import xthread
Thread = {cls}
warnings.simplefilter("ignore", DeprecationWarning)

def main_in(*names):
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        if frame.f_code.co_name in names:
            return True
        frame = frame.f_back
    return False

def wait_until(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.002)
    return True

release = threading.Event()
started = [threading.Event() for _ in range(3)]
threads = [Thread(target=lambda e=e: (e.set(), release.wait(60)))
           for e in started]
threads.append(Thread(target=lambda: release.wait(60), daemon=True))
for t in threads:
    t.start()
assert all(e.wait(30) for e in started)

pid = os.fork()
if pid == 0:
    import atexit
    atexit.register(lambda: print("child atexit", flush=True))
    print("child sees alive:", [t.is_alive() for t in threads], flush=True)
    def late():
        # The child's exit must wait for this one, and only this one.
        print("child waits at exit:", wait_until(lambda: main_in("_shutdown")),
              flush=True)
    Thread(target=late).start()
    sys.exit(0)         # a normal exit: the child finalizes

deadline = time.monotonic() + 30
while True:
    wpid, status = os.waitpid(pid, os.WNOHANG)
    if wpid == pid:
        break
    if time.monotonic() > deadline:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print("child hung", flush=True)
        status = None
        break
    threading.Event().wait(0.005)
if status is not None:
    print("child exit code:", os.waitstatus_to_exitcode(status), flush=True)
print("parent sees alive:", [t.is_alive() for t in threads], flush=True)
release.set()
for t in threads:
    t.join(30)
"""


def test_forked_child_exits_normally(thread_cls):
    # In a subprocess, so that the child can run a whole interpreter exit.
    name = {threading.Thread: "threading.Thread",
            xthread.Thread: "xthread.Thread"}[thread_cls]
    code = FORK_SCRIPT.format(cls=name)
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                          capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT, env=env)
    assert "Fatal Python error" not in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "child sees alive: [False, False, False, False]\n"
        "child waits at exit: True\n"
        "child atexit\n"
        "child exit code: 0\n"
        "parent sees alive: [True, True, True, True]\n"), proc.stderr


# Fork inside a thread


def run_in_thread(cls, function, **kwargs):
    """Run ``function()`` in a thread of ``cls``; return its result or
    re-raise its error in the caller."""
    box = {}

    def target():
        try:
            box["result"] = function()
        except BaseException as exc:  # noqa: B902
            box["error"] = exc

    t = cls(target=target, **kwargs)
    t.start()
    join_or_fail(t, JOIN_TIMEOUT + CHILD_TIMEOUT)
    if "error" in box:
        raise box["error"]
    return t, box["result"]


def test_fork_inside_thread(thread_cls):
    with Parked(thread_cls) as other:
        def forker():
            me = threading.current_thread()
            parent_ident = threading.get_ident()

            def check():
                assert threading.current_thread() is me
                assert threading.main_thread() is me
                assert me.is_alive()
                assert me.ident == threading.get_ident() == parent_ident
                if thread_cls is xthread.Thread:
                    # xthread gives the child's native id; stdlib keeps
                    # the parent's (multiprocessing resets it itself).
                    assert me.native_id == threading.get_native_id()
                assert "started" in repr(me)
                assert_ended_in_child(other)
                assert threading.enumerate() == [me]
                for cls in (thread_cls, threading.Thread, xthread.Thread):
                    t = start_and_join_in_child(cls)
                    assert t.daemon is me.daemon
                # What multiprocessing's fork child does before os._exit.
                threading._shutdown()
                assert not me.is_alive()
                # A second call does nothing.
                threading._shutdown()

            pid, r = fork_and_check(check)
            return wait_child(pid, r)

        t, (code, report) = run_in_thread(thread_cls, forker)
        assert (code, report) == (0, ""), f"child exit code {code}\n{report}"
        assert other.is_alive()


def test_fork_inside_daemon_thread(thread_cls):
    def forker():
        me = threading.current_thread()

        def check():
            assert threading.main_thread() is me
            assert me.daemon is True
            t = start_and_join_in_child(thread_cls)
            assert t.daemon is True
            threading._shutdown()

        pid, r = fork_and_check(check)
        return wait_child(pid, r)

    t, (code, report) = run_in_thread(thread_cls, forker, daemon=True)
    assert (code, report) == (0, ""), f"child exit code {code}\n{report}"


def test_fork_inside_thread_child_starts_and_leaves_thread(thread_cls):
    # The child starts a non-daemon thread and calls threading._shutdown()
    # while it runs: _shutdown waits for it.
    def forker():
        def check():
            go = threading.Event()
            done = []

            def late():
                go.wait(JOIN_TIMEOUT)
                done.append(True)

            thread_cls(target=late).start()
            go.set()
            threading._shutdown()
            assert done == [True]

        pid, r = fork_and_check(check)
        return wait_child(pid, r)

    t, (code, report) = run_in_thread(thread_cls, forker)
    assert (code, report) == (0, ""), f"child exit code {code}\n{report}"


# multiprocessing, "fork" start method, from inside a thread


def mp_child(queue, value):
    current = threading.current_thread()
    queue.put((value * 2, current.name, threading.main_thread() is current,
               os.getpid()))


def test_multiprocessing_fork_inside_thread(thread_cls):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")

    def forker():
        queue = ctx.Queue()
        process = ctx.Process(target=mp_child, args=(queue, 21))
        process.start()
        try:
            result = queue.get(timeout=CHILD_TIMEOUT)
        finally:
            process.join(CHILD_TIMEOUT)
            if process.exitcode is None:
                process.kill()
                process.join()
            queue.close()
            queue.join_thread()
        return result, process.exitcode

    t, (result, exitcode) = run_in_thread(thread_cls, forker, name="forker")
    assert exitcode == 0
    value, name, is_main, pid = result
    assert value == 42
    assert name == "forker"
    assert is_main is True
    assert pid != os.getpid()


# Fork while other threads are inside xthread's C code


def test_fork_while_threads_wait_on_locks_leaves_the_locks_usable():
    # Threads in timed, contended acquires take each lock's internal mutex
    # without the GIL; a fork at that moment used to give the child that
    # mutex held by a thread it does not have, and the child's next
    # release() or contended acquire() of the lock hung for good.
    locks = [xthread.Lock() for _ in range(4)]
    stop = threading.Event()

    def contend(i):
        lock = locks[i % len(locks)]
        while not stop.is_set():
            if lock.acquire(timeout=0.001):
                lock.release()

    threads = [xthread.Thread(target=contend, args=(i,), daemon=True)
               for i in range(24)]
    for t in threads:
        t.start()

    def check():
        for lock in locks:
            if lock.locked():           # held by a thread that is gone
                lock.release()
            assert lock.acquire(timeout=JOIN_TIMEOUT)
            waiter = xthread.Thread(target=lock.acquire,
                                    kwargs={"timeout": 0.05})
            waiter.start()              # a contended acquire, timing out
            waiter.join(JOIN_TIMEOUT)
            assert not waiter.is_alive()
            lock.release()
        start_and_join_in_child(xthread.Thread)

    try:
        for _ in range(15):
            pid, r = fork_and_check(check)
            assert_child_ok(pid, r)
    finally:
        stop.set()
        for t in threads:
            join_or_fail(t)


def test_child_delivers_to_new_threads_that_reuse_parent_idents():
    # glibc gives the child's new threads the stacks (and so the idents) of
    # the parent's threads, which xthread knew by their records: the child
    # used to deliver to those stale records, and the exception was lost.
    with contextlib.ExitStack() as stack:
        parked = [stack.enter_context(Parked(xthread.Thread))
                  for _ in range(6)]
        idents = {t.ident for t in parked}

        def check():
            reused = 0
            for _ in range(len(idents) + 2):
                t, caught = start_sleeper(ValueError)
                reused += t.ident in idents
                assert xthread.raise_in_thread(t.ident, ValueError)
                t.join(JOIN_TIMEOUT)
                assert not t.is_alive(), "the exception was lost"
                assert len(caught) == 1
            assert reused, "no ident was reused: the check proves nothing"

        pid, r = fork_and_check(check)
        assert_child_ok(pid, r)
