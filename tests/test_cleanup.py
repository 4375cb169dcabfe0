"""Cleanup always runs: a thread stopped through xthread runs the
``except``, ``finally`` and ``with`` exits of the frame it is stopped in,
whatever the loop shape, on every supported version.

Each shape below is a loop inside a handler *in the same function*, the
case where CPython's own delivery (``PyThreadState_SetAsyncExc``) raises
at a loop's backward jump that the exception table does not cover, and the
frame's handlers are skipped (python/cpython#108214 on 3.11/3.12,
python/cpython#130279 on 3.13). ``test_plain_delivery_*`` shows that
CPython behaviour itself, per version, so that a CPython that fixes it (or
a new one that breaks another shape) is noticed.

A shape calls ``ctx.ready()`` just before its protected region and then
loops until an exception stops it. A trial counts only when the exception
passed through the shape's frame inside that region (its traceback line):
one that lands in ``ready()`` itself, before the region, is a race of the
harness, not a result, and the trial is run again (a bounded number of
times). No trial waits by sleeping: senders wait on the ``ready`` event,
time limits fire on their own.
"""
import dis
import gc
import queue
import sys
import threading
import time

import pytest

import _xthread
import xthread

from helpers import GIL_OFF, JOIN_TIMEOUT, join_or_fail

TRIALS = 100
PLAIN_TRIALS = 20
# Runs allowed per counted trial (for trials that land before the region).
MAX_RUNS = 3

_flag = False       # never set: every loop runs until it is stopped


class Ctx:
    """One trial: the shape's counters, its lock, the caught exception."""

    def __init__(self):
        self.ready_event = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.fin = 0            # finally blocks and except clauses run
        self.caught = None      # what the caller frame caught
        self.scope = None

    def ready(self):
        self.ready_event.set()


def _nop():
    pass


# Each shape: `ctx.ready()` on its first line, then the protected region,
# whose first line is REGION lines below `def`.

def while_not_flag_pass(ctx):
    ctx.ready()
    try:
        while not _flag: pass       # noqa: E701 (one line, as measured)
    finally:
        ctx.fin += 1


def while_true_if_break(ctx):
    ctx.ready()
    try:
        while True:
            if _flag:
                break
    finally:
        ctx.fin += 1


def while_true_pass(ctx):
    ctx.ready()
    try:
        while True: pass            # noqa: E701 (one line, as measured)
    finally:
        ctx.fin += 1


def while_not_flag_increment(ctx):
    ctx.ready()
    try:
        i = 0
        while not _flag:
            i += 1
    finally:
        ctx.fin += 1


def for_range_if_break(ctx):
    ctx.ready()
    try:
        for i in range(10 ** 15):
            if _flag:
                break
    finally:
        ctx.fin += 1


def while_not_flag_len(ctx):
    ctx.ready()
    try:
        while not _flag:
            len(())
    finally:
        ctx.fin += 1


def with_lock_while_not_flag(ctx):
    ctx.ready()
    with ctx.lock:
        while not _flag: pass       # noqa: E701 (one line, as measured)
    ctx.fin += 1        # not reached: the exit runs with the exception


def while_true_call(ctx):
    ctx.ready()
    try:
        while True: _nop()          # noqa: E701 (one line, as measured)
    finally:
        ctx.fin += 1


def _spin():
    while not _flag:
        pass


def loop_in_callee(ctx):
    ctx.ready()
    try:
        _spin()
    finally:
        ctx.fin += 1


def with_in_try_in_loop(ctx):
    ctx.ready()
    try:
        while not _flag:
            try:
                with ctx.lock:
                    pass
            except BaseException:
                ctx.fin += 10       # the inner except, at most once
                raise
    finally:
        ctx.fin += 1


def nested_loops(ctx):
    ctx.ready()
    try:
        while True:
            for i in range(3):
                j = 0
                while j < 2:
                    j += 1
    finally:
        ctx.fin += 1


REGION = 2

SHAPES = [
    while_not_flag_pass, while_true_if_break, while_true_pass,
    while_not_flag_increment, for_range_if_break, while_not_flag_len,
    with_lock_while_not_flag, while_true_call, loop_in_callee,
    with_in_try_in_loop, nested_loops,
]


def expected_fin(shape, ctx):
    """What the handlers must have counted: one finally; for the inner
    handler of with_in_try_in_loop, one more run of it if the exception
    landed inside the inner try."""
    if shape is with_lock_while_not_flag:
        return {0}
    if shape is with_in_try_in_loop:
        return {1, 11}
    return {1}


def landed_in_region(shape, exc):
    """Whether *exc* passed through the shape's frame inside its region."""
    code = shape.__code__
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            # None: an instruction without a line, which the compiler
            # makes only for handler code inside the region.
            return (tb.tb_lineno is None
                    or tb.tb_lineno >= code.co_firstlineno + REGION)
        tb = tb.tb_next
    return False


def check(shape, ctx, sent):
    """Assert one counted trial; *sent* is the exception object, or a
    class when the sender makes the instance."""
    assert ctx.caught is not None, "the caller frame caught nothing"
    if isinstance(sent, BaseException):
        assert ctx.caught is sent, f"caught {ctx.caught!r}, sent {sent!r}"
    else:
        assert type(ctx.caught) is sent, f"caught {ctx.caught!r}"
    assert ctx.fin in expected_fin(shape, ctx), (
        f"{shape.__name__}: handlers ran {ctx.fin!r} (cleanup skipped or "
        f"run twice)")
    assert not ctx.lock.locked(), f"{shape.__name__}: lock left held"


def run_shape(shape, ctx):
    """The caller frame: runs the shape and catches what stops it."""
    try:
        shape(ctx)
    except BaseException as exc:
        ctx.caught = exc
    finally:
        ctx.done.set()


class Worker:
    """One xthread that runs trial after trial, each given by ``wrap``
    (how the shape is entered: plain, or inside a scope)."""

    def __init__(self, wrap=None):
        self.jobs = queue.Queue()
        self.wrap = wrap or run_shape
        self.thread = xthread.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            self.wrap(*job)

    def stop(self):
        self.jobs.put(None)
        join_or_fail(self.thread)


def counted_trials(trial, shape, trials=TRIALS):
    """Run trial() until *trials* of them counted; returns the contexts."""
    counted = []
    runs = 0
    while len(counted) < trials:
        runs += 1
        assert runs <= trials * MAX_RUNS, (
            f"{shape.__name__}: only {len(counted)} of {runs} trials landed "
            f"inside the protected region")
        ctx = trial()
        if ctx is not None and landed_in_region(shape, ctx.caught):
            counted.append(ctx)
        elif ctx is not None and ctx.lock.locked():
            ctx.lock.release()
    return counted


def send_to_worker(worker, shape, send):
    """A trial in *worker*: wait until the shape is ready, send, wait until
    the caller frame has caught it."""
    def trial():
        ctx = Ctx()
        worker.jobs.put((shape, ctx))
        assert ctx.ready_event.wait(JOIN_TIMEOUT), "shape never started"
        ctx.sent = send(worker, ctx)
        if not ctx.done.wait(JOIN_TIMEOUT):
            # Not left looping for the rest of the session (a loop that
            # holds the GIL would starve every later test): stop it with
            # kill's re-deliveries, then fail.
            killed = worker.thread.kill(timeout=JOIN_TIMEOUT)
            raise AssertionError(
                f"{shape.__name__}: the exception never landed "
                f"(the worker then killed: {bool(killed)})")
        return ctx
    return trial


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.__name__)
def test_raise_exc(shape):
    worker = Worker()
    try:
        def send(worker, ctx):
            exc = ValueError("stop", id(ctx))
            exc.__cause__ = KeyError("why")
            assert worker.thread.raise_exc(exc)
            return exc
        for ctx in counted_trials(send_to_worker(worker, shape, send), shape):
            check(shape, ctx, ctx.sent)
            assert ctx.caught.args == ("stop", id(ctx))
            assert isinstance(ctx.caught.__cause__, KeyError)
    finally:
        worker.stop()


class Scope(_xthread.Scoped):
    """A bare delivery scope, as a thread pool's task scope would be."""

    def __init__(self, ctx):
        self.ctx = ctx

    def _scope_entered(self, token):
        self.ctx.scope = token

    def _scope_exited(self, token):
        pass


def run_shape_in_scope(shape, ctx):
    with Scope(ctx):
        run_shape(shape, ctx)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.__name__)
def test_deliver_scoped(shape):
    worker = Worker(run_shape_in_scope)
    try:
        generation = _xthread._find_record(worker.thread.ident).generation

        def send(worker, ctx):
            exc = LookupError("cancelled", id(ctx))
            assert _xthread._deliver(worker.thread.ident, exc,
                                     generation=generation, scope=ctx.scope)
            return exc
        for ctx in counted_trials(send_to_worker(worker, shape, send), shape):
            check(shape, ctx, ctx.sent)
    finally:
        worker.stop()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.__name__)
def test_pool_cancel(shape):
    # Future.cancel() of a running task: its stop goes through the task's
    # scope, on the same path.
    with xthread.ThreadPoolExecutor(1) as pool:
        def trial():
            ctx = Ctx()
            future = pool.submit(run_shape, shape, ctx)
            assert ctx.ready_event.wait(JOIN_TIMEOUT), "shape never started"
            assert future.cancel()
            assert ctx.done.wait(JOIN_TIMEOUT), (
                f"{shape.__name__}: the stop never landed")
            assert future.wait_stopped(JOIN_TIMEOUT)
            return ctx
        for ctx in counted_trials(trial, shape):
            check(shape, ctx, xthread.TaskCancelled)
        assert pool.health().replaced == 0


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.__name__)
def test_time_limit(shape):
    results = []

    def trials():
        def trial():
            ctx = Ctx()
            try:
                with xthread.time_limit(0.001):
                    run_shape(shape, ctx)
            except xthread.TimeLimitExceeded as exc:
                ctx.caught = exc        # landed outside run_shape: recount
            return ctx
        results.extend(counted_trials(trial, shape))

    t = xthread.Thread(target=trials)
    t.start()
    join_or_fail(t)
    assert len(results) == TRIALS
    for ctx in results:
        check(shape, ctx, xthread.TimeLimitExceeded)
        assert "0.001" in str(ctx.caught)


@pytest.fixture
def no_gc_in_targets():
    """Keep the cyclic GC from running in a target thread: a collection
    there runs weakref callbacks and finalizers of other objects (here,
    earlier trials' Thread objects leaving threading's WeakSet), and an
    exception that lands inside such a callback is reported as
    unraisable instead of raised, as CPython does with its own delivery
    (kill then sends it again). See README, "Cleanup always runs"."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.__name__)
def test_kill(shape, no_gc_in_targets):
    def trial():
        ctx = Ctx()
        t = xthread.Thread(target=run_shape, args=(shape, ctx))
        t.start()
        assert ctx.ready_event.wait(JOIN_TIMEOUT), "shape never started"
        result = t.kill(JOIN_TIMEOUT)
        assert result, f"{shape.__name__}: not killed: {result!r}"
        assert not result.cleanup_may_be_skipped
        join_or_fail(t)
        return ctx
    for ctx in counted_trials(trial, shape):
        check(shape, ctx, xthread.ThreadKilled)
        assert ctx.caught.args == ("killed by Thread.kill()",)


# What CPython itself does: plain PyThreadState_SetAsyncExc, handler in the
# same frame as the loop. ALL: the frame's handlers are skipped (for the
# with shape: the lock stays held) in every trial; SOME: in some trials,
# depending on which eval-breaker check the exception meets first (the
# callee's start or the loop's jump for `while True: f()`; the POP_BLOCK
# that ends a `with` body on 3.9/3.10, seen with xthread's hand-over
# timing); not asserted, as a rare event may not show in 20 trials; a
# shape not listed: never.

PLAIN_SHAPES = [
    while_not_flag_pass, while_true_if_break, while_true_pass,
    while_not_flag_increment, for_range_if_break, while_not_flag_len,
    with_lock_while_not_flag, while_true_call, with_in_try_in_loop,
    nested_loops,
]

ALL, SOME = "all", "some"

_SKIPS = {
    (3, 9): {with_in_try_in_loop: SOME},
    (3, 10): {with_in_try_in_loop: SOME},
    (3, 11): {while_true_pass: ALL, while_true_call: SOME},
    (3, 12): {while_true_pass: ALL, while_true_call: SOME,
              nested_loops: SOME},
    (3, 13): {while_not_flag_pass: ALL, while_not_flag_increment: ALL,
              for_range_if_break: ALL, while_not_flag_len: ALL,
              with_lock_while_not_flag: ALL, with_in_try_in_loop: SOME,
              nested_loops: SOME},
    # with_in_try_in_loop: 0 of 40 on the GIL builds, 2 of 20 once on
    # 3.14t (free-threaded, GIL enabled).
    (3, 14): {while_true_if_break: ALL, for_range_if_break: ALL,
              nested_loops: SOME, with_in_try_in_loop: SOME},
    (3, 15): {while_true_if_break: ALL, for_range_if_break: ALL,
              nested_loops: SOME, with_in_try_in_loop: SOME},
}


class Stop(Exception):
    pass


def skipped(shape, ctx):
    held = ctx.lock.locked()
    if held:
        ctx.lock.release()
    return held or ctx.fin not in expected_fin(shape, ctx)


@pytest.mark.parametrize("shape", PLAIN_SHAPES, ids=lambda s: s.__name__)
def test_plain_delivery_skips_cleanup_as_recorded(shape):
    version = sys.version_info[:2]
    if version not in _SKIPS:
        pytest.fail(f"no record of what plain delivery skips on CPython "
                    f"{sys.version.split()[0]}: measure it and add it to "
                    f"_SKIPS")
    worker = Worker()
    try:
        def send(worker, ctx):
            assert _xthread.set_async_exc(worker.thread.ident, Stop) == 1
            return Stop
        trial = send_to_worker(worker, shape, send)
        ctxs = counted_trials(trial, shape, PLAIN_TRIALS)
        n = sum(skipped(shape, ctx) for ctx in ctxs)
        for ctx in ctxs:
            assert type(ctx.caught) is Stop
    finally:
        worker.stop()
    expected = _SKIPS[version].get(shape)
    where = f"CPython {sys.version.split()[0]} skipped {shape.__name__}'s " \
            f"handlers in {n} of {PLAIN_TRIALS} trials"
    fix = "Update _SKIPS, the README and XTHREAD_LANDING in compat.h"
    if expected == ALL and GIL_OFF:
        # With the GIL off the sender does not wait for a switch, and the
        # worker runs on meanwhile: where it lands varies more (19 of 20
        # skipped once in CI, where 20 of 20 were recorded with the GIL;
        # 40 of 40 at the loop's test in a later script run).
        assert n > 0, (
            f"{where}; recorded as always (most, with the GIL off). Has "
            f"CPython fixed it? {fix}")
    elif expected == ALL:
        assert n == PLAIN_TRIALS, (
            f"{where}; recorded as always. Has CPython fixed it? {fix}")
    elif expected is None:
        assert n == 0, f"{where}; recorded as never. {fix}"


def test_no_events_left_after_delivery():
    """Arming never outlives the delivery: no tool id held, no events on
    the code of the stopped frames."""
    if not hasattr(sys, "monitoring"):
        pytest.skip("sys.monitoring is 3.12+")
    worker = Worker()
    try:
        def send(worker, ctx):
            exc = ValueError("stop")
            assert worker.thread.raise_exc(exc)
            return exc
        trial = send_to_worker(worker, while_not_flag_pass, send)
        counted_trials(trial, while_not_flag_pass, 5)
    finally:
        worker.stop()
    mon = sys.monitoring
    for tool in range(6):
        assert mon.get_tool(tool) != "xthread"


def test_busy_tool_ids_fall_back_to_plain_delivery():
    """With every free sys.monitoring tool id taken by other tools, a
    delivery still lands (plain), and the record says it was unguarded."""
    if not hasattr(sys, "monitoring"):
        pytest.skip("sys.monitoring is 3.12+")
    mon = sys.monitoring
    taken = []
    for tool in range(6):
        if mon.get_tool(tool) is None:
            mon.use_tool_id(tool, "test-busy")
            taken.append(tool)
    try:
        ctx = Ctx()
        t = xthread.Thread(target=run_shape, args=(loop_in_callee, ctx))
        t.start()
        assert ctx.ready_event.wait(JOIN_TIMEOUT)
        result = t.kill(JOIN_TIMEOUT)
        assert result
        assert result.cleanup_may_be_skipped
        assert ctx.fin == 1     # a handler in a caller frame always runs
    finally:
        for tool in taken:
            mon.free_tool_id(tool)


def test_kill_of_a_traced_thread_reports_plain_delivery():
    """Up to 3.11 xthread arms through the thread's trace function slot,
    so a thread that runs a trace function of its own (a debugger,
    coverage) gets plain delivery, and kill says cleanup may have been
    skipped; 3.12+ arm through sys.monitoring whatever the thread traces."""
    def tracer(frame, event, arg):
        return tracer

    ctx = Ctx()

    def traced():
        sys.settrace(tracer)
        try:
            run_shape(loop_in_callee, ctx)
        finally:
            sys.settrace(None)

    t = xthread.Thread(target=traced)
    t.start()
    assert ctx.ready_event.wait(JOIN_TIMEOUT)
    result = t.kill(JOIN_TIMEOUT)
    assert result
    assert result.cleanup_may_be_skipped is (sys.version_info < (3, 12))
    assert ctx.fin == 1     # a handler in a caller frame always runs
    assert isinstance(ctx.caught, xthread.ThreadKilled)


def test_kill_lands_after_a_stray_withdrawal():
    """Withdrawing with nothing pending (PyThreadState_SetAsyncExc(ident,
    NULL), as any library may do) leaves the async-exception signal set
    for every thread on 3.11, and a frame traced for an armed delivery
    then spins at its RESUME without running. Kill's re-delivery sends
    the exception plain as well, which clears the signal: the stop is not
    lost, and still lands where the handlers apply (at the call)."""
    ctx = Ctx()
    t = xthread.Thread(target=run_shape, args=(while_true_call, ctx))
    t.start()
    assert ctx.ready_event.wait(JOIN_TIMEOUT)
    assert _xthread.set_async_exc(threading.get_ident(), None) == 1
    result = t.kill(JOIN_TIMEOUT)
    assert result, result
    join_or_fail(t)
    assert isinstance(ctx.caught, xthread.ThreadKilled)
    assert ctx.fin == 1


@pytest.mark.parametrize("gc_on", [True, False])
def test_arming_leaves_the_collector_as_it_found_it(gc_on):
    # Arming takes the target's stack with the collector paused (a
    # collection there could let the target run mid-walk): it is switched
    # back only if it was on.
    running, stop, caught = (threading.Event(), threading.Event(),
                             threading.Event())

    def spin():
        running.set()
        try:
            while not stop.is_set():
                pass
        except KeyError:
            caught.set()

    was = gc.isenabled()
    (gc.enable if gc_on else gc.disable)()
    try:
        t = xthread.Thread(target=spin, daemon=True)
        t.start()
        assert running.wait(JOIN_TIMEOUT)
        assert t.raise_exc(KeyError)
        assert caught.wait(JOIN_TIMEOUT)
        join_or_fail(t)
        assert gc.isenabled() is gc_on
    finally:
        stop.set()
        (gc.enable if was else gc.disable)()


def test_a_kill_while_a_with_waits_in_enter_leaves_the_lock_free():
    """A kill re-sends an armed stop plain after 50 ms so that a thread in
    a C call gets it when the call returns. Not while the thread is in a
    ``with``'s __enter__: from 3.14 that call's own check raises at the
    CALL, which no handler of the ``with`` covers yet, so a lock that
    __enter__ took would stay held by a dead thread. The stop lands in the
    ``with`` body instead, and __exit__ gives the lock back."""
    lock = threading.Lock()     # the stdlib's: its wait is not killable
    lock.acquire()
    caught = []

    def target():
        try:
            with lock:
                while True:
                    pass
        except xthread.ThreadKilled as exc:
            caught.append(exc)

    t = xthread.Thread(target=target, daemon=True)
    t.start()
    # Bounded wait until the thread sits in the call of __enter__.
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not _in_call_of(t, target.__code__):
        assert time.monotonic() < deadline, "never reached the with"
        time.sleep(0.001)
    try:
        result = t.kill(0.3, interval=0.06, attempts=5)
        assert not result and result.in_c_call
    finally:
        lock.release()
    join_or_fail(t)
    assert len(caught) == 1
    assert lock.acquire(timeout=JOIN_TIMEOUT), "the dead thread kept it"
    lock.release()


def _in_call_of(thread, code):
    frame = sys._current_frames().get(thread.ident)
    if frame is None or frame.f_code is not code:
        return False
    op = code.co_code[frame.f_lasti]
    return dis.opname[op].startswith(("CALL", "SETUP_WITH", "BEFORE_WITH"))
