"""xthread.ThreadPoolExecutor and xthread.to_thread: a drop-in for stdlib's
pool whose running tasks can be stopped (cancel, time limits, interrupting
shutdown), that writes off and replaces a worker stuck in a C call, and an
asyncio.to_thread whose cancelling stops the function in its thread.

CPython's own ThreadPoolExecutor and to_thread tests run against these
classes in test_cpython_pool.py; here is what stdlib's pool does not do.
"""
import asyncio
import concurrent.futures as cf
import contextvars
import logging
import subprocess
import sys
import threading
import time

import pytest

import _xthread
import xthread
from helpers import JOIN_TIMEOUT, SCRIPT_TIMEOUT

T = JOIN_TIMEOUT


@pytest.fixture
def pool():
    p = xthread.ThreadPoolExecutor(2, grace=0.5)
    yield p
    p.shutdown(wait=True, interrupt=True)


def spin_until_stopped(started, seen):
    """A task spinning in Python until an exception reaches it; records
    what reached it, and that its finally ran."""
    started.set()
    try:
        while True:
            pass
    except BaseException as exc:
        seen.append(exc)
        raise
    finally:
        seen.append("finally")


def wait_on(started, event):
    started.set()
    return event.wait(T)


# Drop-in


def test_is_a_stdlib_executor_with_stdlib_futures_and_names(pool):
    assert isinstance(pool, cf.ThreadPoolExecutor)
    f = pool.submit(threading.current_thread)
    assert isinstance(f, cf.Future)
    worker = f.result(T)
    assert isinstance(worker, xthread.Thread)
    assert worker.name.startswith("ThreadPoolExecutor-")
    assert worker.name.endswith("_0")
    assert not worker.daemon
    with xthread.ThreadPoolExecutor(1, thread_name_prefix="named") as p:
        assert p.submit(lambda: threading.current_thread().name).result(
            T) == "named_0"


def test_map_wait_as_completed_and_wrap_future(pool):
    assert list(pool.map(pow, [2, 3], [5, 2], timeout=T)) == [32, 9]
    fs = [pool.submit(abs, -i) for i in range(5)]
    done, not_done = cf.wait(fs, timeout=T)
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=T)) == [
        0, 1, 2, 3, 4]

    async def main():
        return await asyncio.wrap_future(pool.submit(sum, [1, 2, 3]))
    assert asyncio.run(main()) == 6


def test_map_timeout_stops_the_late_call(pool):
    started, seen = threading.Event(), []
    release = xthread.Event()

    def task(i):
        if i == 0:
            return spin_until_stopped(started, seen)
        return i
    it = pool.map(task, [0, 1], timeout=0.05)
    with pytest.raises(cf.TimeoutError):
        list(it)
    # The running call was cancelled, so stopped, not left to spin.
    assert started.wait(T)
    deadline = time.monotonic() + T
    while "finally" not in seen and time.monotonic() < deadline:
        release.wait(0.005)
    assert isinstance(seen[0], xthread.TaskCancelled)


def test_initializer_and_failing_initializer():
    local = threading.local()

    def init(value):
        local.value = value
    with xthread.ThreadPoolExecutor(1, initializer=init,
                                    initargs=(7,)) as p:
        assert p.submit(lambda: local.value).result(T) == 7

    def bad():
        raise ValueError("no")
    p = xthread.ThreadPoolExecutor(1, initializer=bad)
    with pytest.raises(cf.thread.BrokenThreadPool):
        p.submit(int).result(T)
    p.shutdown()


def test_bad_input_is_a_clear_error(pool):
    with pytest.raises(TypeError, match="callable"):
        pool.submit(42)
    with pytest.raises(ValueError, match="max_workers"):
        xthread.ThreadPoolExecutor(0)
    for bad in (0, -1, -0.5):
        with pytest.raises(ValueError, match="time_limit"):
            xthread.ThreadPoolExecutor(1, time_limit=bad)
        with pytest.raises(ValueError, match="seconds"):
            pool.submit_with_limit(bad, int)
        with pytest.raises(ValueError, match="grace"):
            xthread.ThreadPoolExecutor(1, grace=bad)
    with pytest.raises(TypeError, match="time_limit"):
        xthread.ThreadPoolExecutor(1, time_limit="1")
    with pytest.raises(TypeError, match="seconds"):
        pool.submit_with_limit(None, int)
    with pytest.raises(TypeError, match="initializer"):
        xthread.ThreadPoolExecutor(1, initializer=3)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(int)


# Cancelling a running task


def test_cancel_stops_a_running_task_and_the_worker_serves_on(pool):
    started, seen = threading.Event(), []
    callbacks = []
    f = pool.submit(spin_until_stopped, started, seen)
    f.add_done_callback(callbacks.append)
    assert started.wait(T)
    worker = pool.submit(threading.current_thread)
    assert f.running()
    assert f.cancel() is True
    assert f.cancelled() and f.done()
    assert callbacks == [f]
    with pytest.raises(cf.CancelledError):
        f.result(T)
    assert f.wait_stopped(T)
    assert isinstance(seen[0], xthread.TaskCancelled)
    assert seen[1:] == ["finally"]
    assert callbacks == [f]
    # Cancelling again changes nothing.
    assert f.cancel() is True
    assert callbacks == [f]
    # Both workers still serve.
    threads = {worker.result(T)}
    barrier = threading.Barrier(2, timeout=T)
    both = [pool.submit(lambda: (barrier.wait(),
                                 threading.current_thread())[1])
            for _ in range(2)]
    threads |= {f.result(T) for f in both}
    assert all(t.is_alive() for t in threads)
    assert pool.health().replaced == 0


def test_cancel_of_a_finished_task_is_false(pool):
    f = pool.submit(int, "3")
    assert f.result(T) == 3
    assert f.cancel() is False
    assert f.wait_stopped(0)


def test_cancel_in_a_killable_wait_is_prompt(pool):
    started, never = threading.Event(), xthread.Event()
    f = pool.submit(wait_on, started, never)
    assert started.wait(T)
    assert f.cancel()
    assert f.wait_stopped(T)
    assert pool.submit(int, "5").result(T) == 5


def test_a_cancel_never_reaches_the_next_task_or_the_worker():
    # The task ends a moment after the cancel, over and over, so that the
    # cancel sometimes lands in the task, sometimes finds it ended: never
    # is it raised in the worker loop or in the next task, which checks
    # that it ran to its end.
    with xthread.ThreadPoolExecutor(1, grace=5) as p:
        results = []
        for i in range(300):
            f = p.submit(lambda n=i % 50: sum(range(n * 20)))
            probe = p.submit(lambda i=i: i)
            f.cancel()
            results.append(probe.result(T))
            assert f.done()
        assert results == list(range(300))
        assert p.health().replaced == 0
        assert len(p._threads) == 1


def test_pending_cancel_is_stdlibs(pool):
    gate = xthread.Event()
    started = threading.Event()
    blockers = [pool.submit(wait_on, started, gate) for _ in range(2)]
    f = pool.submit(int)
    assert f.cancel()
    assert f.cancelled()
    assert f.wait_stopped(T)       # it never runs
    gate.set()
    for b in blockers:
        assert b.result(T) is True


# Time limits


def test_pool_time_limit_ends_tasks_with_TimeLimitExceeded():
    with xthread.ThreadPoolExecutor(1, time_limit=0.05) as p:
        started, seen = threading.Event(), []
        f = p.submit(spin_until_stopped, started, seen)
        exc = f.exception(T)
        assert isinstance(exc, xthread.TimeLimitExceeded)
        assert seen[0] is exc
        assert seen[1:] == ["finally"]
        # A quick task is not touched by its limit.
        assert p.submit(sum, [1, 2]).result(T) == 3


def test_per_call_limit_takes_no_keyword_from_the_task(pool):
    def task(seconds, *, time_limit):
        return seconds, time_limit
    assert pool.submit_with_limit(5, task, 1, time_limit=2).result(T) == (
        1, 2)
    started, seen = threading.Event(), []
    f = pool.submit_with_limit(0.05, spin_until_stopped, started, seen)
    assert isinstance(f.exception(T), xthread.TimeLimitExceeded)
    assert "0.05" in str(f.exception())


def test_time_limit_and_cancel_are_one_stop(pool):
    started, seen = threading.Event(), []
    f = pool.submit_with_limit(0.05, spin_until_stopped, started, seen)
    assert started.wait(T)
    f.cancel()
    assert f.wait_stopped(T)
    assert f.done()
    assert seen.count("finally") == 1


def test_a_task_that_swallows_the_stop_gets_it_again(pool):
    started, caught = threading.Event(), []

    def swallow():
        started.set()
        while True:
            try:
                while True:
                    pass
            except xthread.TaskCancelled as exc:
                caught.append(exc)
                if len(caught) == 2:
                    raise
    f = pool.submit(swallow)
    assert started.wait(T)
    assert f.cancel()
    assert f.wait_stopped(T)
    assert len(caught) == 2
    assert f.stuck is None


# Shutdown


def test_shutdown_interrupt_stops_running_and_pending_tasks():
    p = xthread.ThreadPoolExecutor(2)
    starts = [threading.Event() for _ in range(2)]
    seen = [[], []]
    running = [p.submit(spin_until_stopped, starts[i], seen[i])
               for i in range(2)]
    pending = [p.submit(int) for _ in range(3)]
    assert all(s.wait(T) for s in starts)
    p.shutdown(wait=True, interrupt=True)
    assert all(f.cancelled() for f in running + pending)
    assert all(s[-1] == "finally" for s in seen)
    assert not any(t.is_alive() for t in p._threads)
    assert p.health().lost == 0


def test_shutdown_without_interrupt_lets_running_tasks_finish(pool):
    gate = xthread.Event()
    started = threading.Event()
    f = pool.submit(wait_on, started, gate)
    assert started.wait(T)
    t = threading.Thread(target=pool.shutdown)
    t.start()
    gate.set()
    t.join(T)
    assert not t.is_alive()
    assert f.result(0) is True


# Stuck workers


class CBlocker:
    """A task that sits in a C call no exception reaches (acquiring a
    stdlib lock) until the test releases it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.lock.acquire()
        self.started = threading.Event()

    def __call__(self):
        self.started.set()
        self.lock.acquire()     # the stuck line
        self.lock.release()
        return "released"

    def release(self):
        self.lock.release()


def test_stuck_task_is_reported_and_its_worker_replaced(caplog):
    p = xthread.ThreadPoolExecutor(2, grace=0.2)
    blocker = CBlocker()
    try:
        f = p.submit(blocker)
        assert blocker.started.wait(T)
        stuck_thread = p.submit(threading.current_thread)
        stuck_thread = next(iter(p._threads))
        with caplog.at_level(logging.WARNING, logger="xthread"):
            assert f.cancel()
            assert f.wait_stopped(T)
        report = f.stuck
        assert isinstance(report, xthread.StuckTask)
        assert report.in_c_call
        assert report.reason == "cancelled"
        assert report.where.endswith("test_pool.py:%d" % (
            CBlocker.__call__.__code__.co_firstlineno + 2))
        assert report.stack and "self.lock.acquire()" in report.stack[-1]
        assert p.stuck == [report]
        assert any("inside a C call" in r.getMessage()
                   for r in caplog.records)
        health = p.health()
        assert health.replaced == 1 and health.stuck == [report]
        # Capacity kept: two tasks at once, on two live workers, neither
        # the stuck one.
        barrier = threading.Barrier(2, timeout=T)
        ts = [p.submit(lambda: (barrier.wait(), threading.current_thread())[1])
              for _ in range(2)]
        workers = {t.result(T) for t in ts}
        assert len(workers) == 2
        assert report.thread not in workers
        assert report.thread.is_alive()
        # Its call returns: it lets go and exits quietly.
        blocker.release()
        assert report.released.wait(T)
        report.thread.join(T)
        assert not report.thread.is_alive()
        assert p.stuck == []
        assert stuck_thread is not None
    finally:
        if blocker.lock.locked():
            blocker.release()
        p.shutdown(wait=True)
    # The write-off does not hold up shutdown either.
    assert p.health().lost == 0


def test_never_more_than_max_workers_tasks_at_once():
    p = xthread.ThreadPoolExecutor(2, grace=0.1)
    blocker = CBlocker()
    lock = threading.Lock()
    running = [0, 0]    # now, most

    def counted():
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        try:
            return sum(range(2000))
        finally:
            with lock:
                running[0] -= 1
    try:
        f = p.submit(blocker)
        assert blocker.started.wait(T)
        assert f.cancel()
        assert f.wait_stopped(T)
        assert f.stuck is not None
        for g in [p.submit(counted) for _ in range(200)]:
            g.result(T)
        # The stuck task is not on a live worker; the others never went
        # past two at once.
        assert running[1] <= 2
    finally:
        blocker.release()
        p.shutdown()


def test_stuck_over_limit_ends_its_future_with_the_limit():
    p = xthread.ThreadPoolExecutor(1, grace=0.1)
    blocker = CBlocker()
    try:
        f = p.submit_with_limit(0.05, blocker)
        assert isinstance(f.exception(T), xthread.TimeLimitExceeded)
        assert f.wait_stopped(T)
        assert f.stuck.reason == "time limit"
        assert p.submit(int, "4").result(T) == 4
    finally:
        blocker.release()
        p.shutdown()


def test_exit_does_not_wait_for_a_written_off_worker():
    code = """
import threading, xthread
p = xthread.ThreadPoolExecutor(1, grace=0.1)
lock = threading.Lock(); lock.acquire()
started = threading.Event()
def stuck():
    started.set()
    lock.acquire()
f = p.submit(stuck)
assert started.wait(30)
f.cancel()
assert f.wait_stopped(30) and f.stuck is not None
print("exiting", flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=SCRIPT_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "exiting\n"


@pytest.mark.parametrize("first", ["concurrent.futures.thread", "xthread"])
def test_exit_ends_idle_workers_whatever_was_imported_first(first):
    # Exit hooks run in reverse order of registration: with stdlib's pool
    # module imported before xthread, its wake-up of idle workers would
    # run after xthread's wait for them, and exit would hang.
    code = f"""
import {first}
import concurrent.futures.thread, xthread
p = xthread.ThreadPoolExecutor(2)
assert p.submit(len, ()).result(30) == 0
print("exiting", flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=SCRIPT_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "exiting\n"


# to_thread


def test_to_thread_returns_and_carries_context():
    var = contextvars.ContextVar("var")

    async def main():
        var.set("seen")
        return await xthread.to_thread(lambda a, *, b: (a, b, var.get()),
                                       1, b=2)
    assert asyncio.run(main()) == (1, 2, "seen")


def test_cancelling_to_thread_stops_the_function_before_the_await_ends():
    started, seen = threading.Event(), []

    async def main():
        task = asyncio.ensure_future(
            xthread.to_thread(spin_until_stopped, started, seen))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The function has stopped, its finally run, by now.
        return list(seen)
    seen_at_end = asyncio.run(main())
    assert isinstance(seen_at_end[0], xthread.TaskCancelled)
    assert seen_at_end[1:] == ["finally"]


def test_wait_for_timeout_stops_to_thread():
    started, seen = threading.Event(), []

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                xthread.to_thread(spin_until_stopped, started, seen), 0.05)
        return list(seen)
    assert asyncio.run(main())[1:] == ["finally"]


def test_cancelled_to_thread_stuck_in_c_ends_after_the_grace_period(caplog):
    blocker = CBlocker()

    async def main():
        task = asyncio.ensure_future(xthread.to_thread(blocker))
        while not blocker.started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The await ended although the call has not returned.
        return blocker.lock.locked()
    try:
        with caplog.at_level(logging.WARNING, logger="xthread"):
            assert asyncio.run(main()) is True
        assert any("inside a C call" in r.getMessage()
                   for r in caplog.records)
    finally:
        blocker.release()


# The demo


def test_demo_reports_every_outcome():
    proc = subprocess.run([sys.executable, "-m", "xthread", "demo"],
                          capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    lines = out.splitlines()

    def line(label):
        found = [l for l in lines if label in l]
        assert found, f"no line for {label!r} in:\n{out}"
        return found

    assert "finished" in line("finishes")[0]
    assert "stopped after" in line("spins in Python")[0]
    assert "stopped after" in line("waits in Event.wait()")[0]
    assert "stopped after" in line("swallows the stop")[0]
    assert "time limit" in line("limit")[0]
    sleeping = line("in time.sleep(")
    assert "3 tasks ran at once" in line("capacity")[0]
    if _xthread._SIGNAL_WAKES:
        # 3.15+: signalled out of the call, stopped like the others.
        assert len(sleeping) == 1
        assert "stopped after" in sleeping[0]
        assert lines[-1] == ("pool health: 3 of 3 workers alive, 0 "
                             "replaced, 0 still stuck, tasks lost: none")
        assert "written off" not in proc.stderr
    else:
        assert "stuck in a C call at" in sleeping[0]
        assert "_demo.py:" in sleeping[0]
        assert "released" in sleeping[1]
        assert lines[-1] == ("pool health: 3 of 3 workers alive, 1 "
                             "replaced, 0 still stuck, tasks lost: none")
        assert "written off" in proc.stderr      # logged through logging


def test_main_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "xthread", "--help"],
                          capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT)
    assert proc.returncode == 0
    assert "demo" in proc.stdout


def test_stopped_callbacks_run_once_and_no_waiter_misses_the_end():
    # Callbacks are added just after submit, so they race the worker that
    # ends the task: added before it let go, they run in the worker;
    # after, at once. Either way once each. A second thread waits in
    # wait_stopped() on every future as they end: none misses its end.
    n = 400
    counts = [0] * n
    all_called = threading.Event()
    called = []
    lock = threading.Lock()

    def stopped(i):
        def callback(future):
            with lock:
                counts[i] += 1
                called.append(i)
                if len(called) == n:
                    all_called.set()
        return callback

    missed = []
    with xthread.ThreadPoolExecutor(2) as p:
        futures = []
        for i in range(n):
            f = p.submit(sum, range(i % 40))
            f.add_stopped_callback(stopped(i))
            futures.append(f)

        def wait_all():
            missed.extend(i for i, f in enumerate(futures)
                          if not f.wait_stopped(T))

        waiter = threading.Thread(target=wait_all)
        waiter.start()
        waiter.join(T * 2)
        assert not waiter.is_alive()
        assert [f.result(T) for f in futures] == [
            sum(range(i % 40)) for i in range(n)]
    assert not missed
    assert all_called.wait(T)
    assert counts == [1] * n
