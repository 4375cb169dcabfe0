"""A ThreadPoolExecutor whose running tasks can be stopped, and to_thread.

``xthread.ThreadPoolExecutor`` is ``concurrent.futures.ThreadPoolExecutor``
(a subclass, for ``isinstance`` checks: the same constructor, names, queue
and exit handling, though it keeps all of its own state, since stdlib's
private worker state changes between versions) with three changes: its workers are ``xthread.Thread``s; each task runs inside a
delivery scope of its own, so ``Future.cancel()``, a per-task time limit and
``shutdown(interrupt=True)`` can raise in a running task without any
exception ever reaching the next task or the worker loop; and a task that
does not stop within a grace period is reported and its worker written off
and replaced, so that the pool keeps its capacity.
"""
import asyncio as _asyncio
import collections as _collections
import concurrent.futures as _futures
import concurrent.futures.thread as _cft
import contextvars as _contextvars
import itertools as _itertools
import logging as _logging
import os as _os
import queue as _queue
import re as _re
import threading as _threading
import time as _time
import weakref as _weakref
from concurrent.futures import _base

import _xthread

from . import _compat, _stop, _thread
from ._stop import TimeLimitExceeded
from ._sync import Event as _Event

__all__ = ["ThreadPoolExecutor", "TaskCancelled", "StuckTask", "PoolHealth",
           "to_thread"]

_LOGGER = _logging.getLogger("xthread")


def _wake_workers_at_exit():
    # Idle workers wait on their queues, and interpreter exit waits for
    # xthread's non-daemon threads (xthread._thread's hook): they must be
    # told to end first. stdlib's own hook (_python_exit) does that, but
    # exit hooks run in reverse order of registration, and it was
    # registered first if concurrent.futures.thread was imported before
    # xthread. Registered here, after xthread._thread's (imported above),
    # this one runs before that wait whatever the import order. (stdlib's
    # then runs again later: more None items and joins, harmless.)
    _cft._python_exit()


_compat.register_atexit(_wake_workers_at_exit)

# The first line of a format_stack entry for a frame of xthread's thread or
# pool machinery.
_OWN_FILES = _re.compile(
    r'\A  File "' + _re.escape(_os.path.join(
        _os.path.dirname(_os.path.abspath(__file__)), "")) +
    r'_(?:thread|pool)\.py"')

_deliver = _xthread._deliver
_find_record = _xthread._find_record
_nudge = _xthread._nudge
_get_ident = _xthread.get_ident
_monotonic = _time.monotonic
# 3.13 added os.process_cpu_count (the CPUs this process may use), and
# stdlib's pool sizes itself by it from then on.
_cpu_count = getattr(_os, "process_cpu_count", _os.cpu_count)
_watchdog = _stop._watchdog

_PENDING = _base.PENDING
_RUNNING = _base.RUNNING
_FINISHED = _base.FINISHED
_CANCELLED_AND_NOTIFIED = _base.CANCELLED_AND_NOTIFIED
_DONE = frozenset((_base.CANCELLED, _CANCELLED_AND_NOTIFIED, _FINISHED))

#: Default grace period: how long a stopped task may take to end before its
#: worker is written off.
DEFAULT_GRACE = 1.0
# While the grace period runs, the stop is sent again this many times
# (spread evenly), for a task that swallowed it.
_RESENDS = 4


class TaskCancelled(BaseException):
    """Raised inside a running task whose future was cancelled
    (``Future.cancel()``, ``shutdown(interrupt=True)``, or the cancelling
    of an awaiting ``to_thread``). A ``BaseException``, so that ``except
    Exception`` in the task does not swallow it."""


class StuckTask:
    """A task that did not stop within its pool's grace period.

    ``future``: the task's future; ``task_name``: its function's
    qualified name. ``thread``: the worker that was written
    off (it exits quietly once the task's call returns). ``reason``:
    ``"cancelled"``, ``"time limit"`` or ``"shutdown"``. ``stack``: the
    worker's Python stack when written off (``traceback.format_stack``
    strings). ``in_c_call``: whether it sat in a C call that no exception
    reaches (``time.sleep``, a socket read, another library's lock).
    ``where``: ``file:line`` of the task's innermost Python frame (None
    when the task is itself a C function). ``sent_at`` / ``written_off_at``: ``time.monotonic()`` times.
    ``released``: an ``xthread.Event`` set once the task's call returned
    and the worker let go of it; ``released_at``: when.
    """

    __slots__ = ("future", "task_name", "thread", "reason", "stack",
                 "in_c_call", "sent_at", "written_off_at", "released",
                 "released_at")

    def __init__(self, future, task_name, thread, reason, stack, in_c_call,
                 sent_at):
        self.future = future
        self.task_name = task_name
        self.thread = thread
        self.reason = reason
        self.stack = stack
        self.in_c_call = in_c_call
        self.sent_at = sent_at
        self.written_off_at = _monotonic()
        self.released = _Event()
        self.released_at = None

    @property
    def where(self):
        """``file:line`` of the innermost Python frame, or None."""
        if not self.stack:
            return None
        # format_stack: '  File "f.py", line 12, in name\n    code\n'
        first = self.stack[-1].strip().splitlines()[0]
        try:
            _, path, rest = first.split('"', 2)
            line = rest.split(",")[1].split()[1]
        except (ValueError, IndexError):
            return first
        return "%s:%s" % (path, line)

    def __repr__(self):
        return "<StuckTask %s in %s%s at %s%s>" % (
            self.reason, self.thread.name,
            ", inside a C call" if self.in_c_call else "", self.where,
            ", released" if self.released_at is not None else "")


class PoolHealth:
    """A snapshot of a pool: ``workers`` alive and serving, ``busy`` of
    them running a task, ``max_workers``, ``replaced`` (workers written
    off and replaced so far), ``stuck`` (StuckTask reports whose call has
    not returned yet), ``submitted``, ``completed`` (futures done) and
    ``lost`` (futures of a shut-down pool that will never be done: always
    0 unless a task was lost; a bug if not)."""

    __slots__ = ("workers", "busy", "max_workers", "replaced", "stuck",
                 "submitted", "completed", "lost")

    def __init__(self, **fields):
        for name in self.__slots__:
            setattr(self, name, fields[name])

    def __repr__(self):
        return "<PoolHealth %s>" % ", ".join(
            "%s=%r" % (n, getattr(self, n)) for n in self.__slots__)


class Future(_futures.Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also stops a
    running task."""

    # The running task (a _Task) once a worker has taken it.
    _xthread_task = None
    #: A StuckTask when the task's worker was written off, else None.
    stuck = None

    def cancel(self):
        """Cancel the task: a pending one as stdlib does; a running one by
        raising ``TaskCancelled`` in it, through its task's own scope.
        Returns True when the future is cancelled; False when it is done
        already (or the task ended an instant before the stop reached
        it)."""
        # Shielded: a task that cancels its own future takes the stop when
        # cancel() returns (raised from here), not half-way through it;
        # a stop sent to the caller meanwhile waits the same way.
        with _stop.shield():
            return self._cancel()

    def _cancel(self):
        with self._condition:
            task = self._xthread_task
            if self._state != _RUNNING or task is None:
                stopped = None
                pending = self._state == _PENDING
            else:
                # Under the future's lock: the worker sets a result or an
                # exception under it too, so exactly one of the two wins.
                stopped = task.stop(TaskCancelled("task cancelled"),
                                    "cancelled")
                if stopped:
                    self._state = _CANCELLED_AND_NOTIFIED
                    for waiter in self._waiters:
                        waiter.add_cancelled(self)
                    self._condition.notify_all()
        if stopped is None:
            if not super().cancel():
                return False
            if pending:
                # Cancelled before it ran: it never will.
                self._let_go()
            return True
        if stopped:
            self._invoke_callbacks()
        return stopped

    # Whether the task's code no longer runs on a serving worker; whether
    # anyone waits for that (wait_stopped, add_stopped_callback), and
    # their callbacks. The flag is first set without the future's lock
    # (notify=False, before the outcome): the worker does not contend for
    # the lock with a caller that result() is about to wake. The notifying
    # call reads `watched` under the lock: a watcher writes it under the
    # lock and then reads the flag, and without the GIL (3.14t) a store
    # then a load of two attributes in two threads may each miss the
    # other's store; the lock orders them, so no watcher waits for ever.
    # A watcher also waits for the outcome (_stopped_and_done): between the
    # early flag and the outcome, the future is let go but not done yet,
    # and wait_stopped() must not return then (its caller reads done()).
    # Every path sets the outcome before its notifying call.
    _xthread_let_go = False
    _xthread_watched = False
    _xthread_stopped_callbacks = None

    def _let_go(self, notify=True):
        # notify=False only sets the flag: the worker notifies once the
        # outcome is set, so that stopped callbacks can read it.
        self._xthread_let_go = True
        if not notify:
            return
        with self._condition:
            if not self._xthread_watched:
                return
            callbacks = self._xthread_stopped_callbacks
            self._xthread_stopped_callbacks = None
            self._condition.notify_all()
        for fn in callbacks or ():
            try:
                fn(self)
            except Exception:
                _LOGGER.exception("exception calling stopped callback "
                                  "for %r", self)

    def add_stopped_callback(self, fn):
        """Call ``fn(future)`` once the task's code no longer runs on a
        serving worker (see ``wait_stopped``): at once if that is so
        already, else in the thread where it happens."""
        with self._condition:
            self._xthread_watched = True
            if not self._stopped_and_done():
                if self._xthread_stopped_callbacks is None:
                    self._xthread_stopped_callbacks = []
                self._xthread_stopped_callbacks.append(fn)
                return
        fn(self)

    def wait_stopped(self, timeout=None):
        """Wait until the task's code no longer runs on a serving worker:
        it ended, it will never run (cancelled while pending, or the pool
        broke), or its worker was written off stuck. Returns whether that
        is so (False: *timeout* passed). A running task's future is done
        as soon as it is cancelled; this tells when its thread let go.
        When it returns True the future is done too, its outcome set."""
        with self._condition:
            self._xthread_watched = True
            return self._condition.wait_for(self._stopped_and_done, timeout)

    def _stopped_and_done(self):
        # Under the future's lock.
        return self._xthread_let_go and self._state in _DONE


def _result_or_cancel(future, timeout=None):
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future


def _finish(future, result=None, exception=None):
    """Set a running future's outcome unless it was cancelled or ended
    meanwhile; callbacks run after the lock is released, as stdlib's."""
    with future._condition:
        if future._state != _RUNNING:
            return False
        if exception is None:
            future._result = result
            for waiter in future._waiters:
                waiter.add_result(future)
        else:
            future._exception = exception
            for waiter in future._waiters:
                waiter.add_exception(future)
        future._state = _FINISHED
        future._condition.notify_all()
    future._invoke_callbacks()
    return True


class _WorkItem:
    __slots__ = ("future", "fn", "args", "kwargs", "limit")

    def __init__(self, future, fn, args, kwargs, limit):
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.limit = limit


class _Worker:
    """A worker thread's state, shared with its pool."""

    __slots__ = ("thread", "generation", "written_off", "released", "task",
                 "completed", "__weakref__")

    def __init__(self):
        self.thread = None
        # The running _Task, and how many tasks reached this worker: only
        # the worker writes them (no lock on the task's path).
        self.task = None
        self.completed = 0
        # Set by the worker itself (its thread runs before start() has
        # returned the generation to the pool).
        self.generation = 0
        self.written_off = False
        # Set when the worker stops serving: its loop ended, or it was
        # written off. shutdown(wait=True) waits on this, not on join(),
        # so that a stuck worker does not hold it up.
        self.released = _Event()


class _Task(_xthread.Scoped):
    """One task on its worker: a delivery scope (``with task:``, its
    ``__enter__``/``__exit__`` in C) that stops are sent into."""

    __slots__ = ("pool", "worker", "future", "fn", "ident", "generation",
                 "scope", "lock", "ended", "sent_at", "reason", "exc",
                 "limit", "items", "resends", "stuck")

    def __init__(self, pool, worker, future, fn):
        self.pool = pool
        self.worker = worker
        self.future = future
        self.fn = fn
        self.ident = _get_ident()
        self.generation = worker.generation
        self.scope = 0
        self.lock = _xthread.allocate_lock()
        self.ended = False
        self.sent_at = None
        self.reason = None
        self.items = []         # watchdog items to cancel at the end
        self.resends = 0
        self.exc = None
        self.limit = None
        self.stuck = None

    def _scope_entered(self, scope):
        self.scope = scope

    def _scope_exited(self, scope):
        # The scope is closed (in C): nothing sent for it can land now,
        # and stop() finds it ended. A task that was sent nothing and has
        # no limit is done (the common case, kept off the lock); items a
        # stop adds after this look at `ended` before acting.
        self.ended = True
        if self.sent_at is None and not self.items:
            return
        with self.lock:
            items, self.items = self.items, []
            stuck = self.stuck
        for item in items:
            _watchdog.cancel(item)
        if stuck is not None:
            stuck.released_at = _monotonic()
            stuck.released.set()
            self.pool._stuck_released(stuck)

    def arm_limit(self, seconds):
        self.limit = seconds
        item = _watchdog.add(seconds, self.scope, self._limit_expired,
                             self.ident)
        with self.lock:
            if self.ended:
                _watchdog.cancel(item)
            else:
                self.items.append(item)

    def _limit_expired(self):
        # In the watchdog thread.
        self.stop(TimeLimitExceeded(
            "task time limit of %g s exceeded" % self.limit), "time limit")

    def stop(self, exc, reason):
        """Send *exc* into the task; False when it has ended already."""
        with self.lock:
            if self.ended or self.stuck is not None:
                return False
            # Read before the send: while it hands the GIL over, the task
            # may end and its worker let go of the pool.
            grace = self.pool._grace
            if not _deliver(self.ident, exc, generation=self.generation,
                            scope=self.scope):
                return False
            if self.sent_at is None:
                self.sent_at = _monotonic()
                self.reason = reason
                self.exc = exc
                step = grace / (_RESENDS + 1)
                for n in range(1, _RESENDS + 1):
                    self.items.append(_watchdog.add(
                        step * n, self.scope, self._resend, self.ident))
                self.items.append(_watchdog.add(
                    grace, self.scope, self._grace_expired, self.ident))
        return True

    def _resend(self):
        # For a task that caught the stop and carried on. A stop still
        # pending (the task sits in a C call) is not sent twice.
        with self.lock:
            if self.ended or self.stuck is not None:
                return
            record = _find_record(self.ident)
            if record is not None and record.pending:
                # In a C call: on 3.15+ signal it out of a system call (a
                # signal may have come just before it entered one).
                _nudge(self.ident, self.generation, self.scope)
                return
            exc = self.exc
            cls = exc if isinstance(exc, type) else type(exc)
            if _xthread._handling(self.ident, cls):
                # Still unwinding with the last one (its except and
                # finally blocks): not swallowed; the grace period bounds
                # its cleanup.
                return
            if isinstance(exc, BaseException):
                exc = type(exc)(*exc.args)
            if _deliver(self.ident, exc, generation=self.generation,
                        scope=self.scope):
                self.resends += 1

    def _grace_expired(self):
        with self.lock:
            if self.ended or self.stuck is not None:
                return
            record = _find_record(self.ident)
            if record is not None and record.generation != self.generation:
                record = None
            stack, in_c_call = _stop._stuck_report(self.ident, record)
            if stack:
                # From the task's own frames on: the worker's machinery
                # above them says nothing about where it is stuck.
                own = [i for i, entry in enumerate(stack)
                       if _OWN_FILES.search(entry)]
                if own:
                    # (Nothing left: the task is itself a C function.)
                    stack = stack[own[-1] + 1:]
            name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
            stuck = StuckTask(self.future, name, self.worker.thread,
                              self.reason,
                              stack, in_c_call, self.sent_at)
            self.stuck = stuck
            self.worker.written_off = True
        self.future.stuck = stuck
        if self.reason == "time limit":
            _finish(self.future, exception=self.exc)
        self.pool._write_off(self.worker, stuck)
        self.future._let_go()


def _run_task(pool, worker, item):
    future = item.future
    task = _Task(pool, worker, future, item.fn)
    ran = False
    result = exception = None
    try:
        with task:
            future._xthread_task = task
            if future.set_running_or_notify_cancel():
                ran = True
                worker.task = task
                limit = item.limit
                if limit is not None:
                    task.arm_limit(limit)
                result = item.fn(*item.args, **item.kwargs)
    except BaseException as exc:
        # A stop sent for this task lands inside the with-block at the
        # latest; its scope closed in C before the with-exit returned.
        exception = exc
        exc = None
    finally:
        # Every future that reaches a worker passes here (one cancelled
        # while pending too).
        worker.task = None
        worker.completed += 1
        # Let go before the outcome is set: whoever result() wakes finds
        # the worker done with the task, and the worker does not contend
        # with it for the future's lock (see Future._let_go).
        future._let_go(notify=False)
    if task.stuck is None:
        # Done with (it ended, so it cannot be written off now): neither
        # the future nor a stray reference to the task keeps the pool, the
        # callable or its arguments alive (stdlib's futures hold none of
        # them). Before the outcome is set, so that the worker has little
        # left to do once result() wakes its caller.
        future._xthread_task = None
        task.fn = task.pool = task.future = None
    if ran:
        # A cancelled future keeps its cancellation.
        _finish(future, result, exception)
        exception = result = None
    future._let_go()


def _run_plain(item):
    # A task with no pool to stop it: stdlib's _WorkItem.run.
    future = item.future
    if future.set_running_or_notify_cancel():
        try:
            result = item.fn(*item.args, **item.kwargs)
        except BaseException as exc:
            _finish(future, exception=exc)
            exc = None
        else:
            _finish(future, result)
    future._let_go()


_IDLE = object()


def _worker(executor_reference, worker, work_queue, initializer, initargs):
    # As concurrent.futures.thread._worker (3.13's idle accounting), with
    # each task run in its own delivery scope and a stop for a written-off
    # worker.
    worker.generation = _xthread._record().generation
    try:
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException:
                _base.LOGGER.critical("Exception in initializer:",
                                      exc_info=True)
                executor = executor_reference()
                if executor is not None:
                    executor._initializer_failed()
                return
        while True:
            # (empty() first: cheaper than get_nowait() raising Empty.)
            work_item = _IDLE
            if not work_queue.empty():
                try:
                    work_item = work_queue.get_nowait()
                except _queue.Empty:
                    pass
            if work_item is _IDLE:
                executor = executor_reference()
                if executor is not None:
                    executor._idle.append(None)
                del executor
                work_item = work_queue.get(block=True)

            if work_item is not None:
                executor = executor_reference()
                if executor is None:
                    # The pool was collected with work queued: run it, as
                    # stdlib does (nothing is left to stop it); the
                    # collection queued a None after it.
                    _run_plain(work_item)
                    del work_item
                    continue
                _run_task(executor, worker, work_item)
                del executor, work_item
                if worker.written_off:
                    # Replaced while stuck: its call has returned; leave
                    # quietly, taking no more work.
                    return
                continue

            executor = executor_reference()
            if _cft._shutdown or executor is None or executor._shutdown:
                if executor is not None:
                    executor._shutdown = True
                work_queue.put(None)
                return
            del executor
    except BaseException:
        _base.LOGGER.critical("Exception in worker", exc_info=True)
    finally:
        worker.released.set()


def _check_seconds(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number or None, not %s"
                        % (name, type(value).__name__))
    if not value > 0:
        raise ValueError("%s must be greater than zero, not %r"
                         % (name, value))
    return value


class ThreadPoolExecutor(_cft.ThreadPoolExecutor):
    """``concurrent.futures.ThreadPoolExecutor`` whose running tasks can
    be stopped.

    Arguments as stdlib's, plus, by keyword: *time_limit*, seconds that
    every task may run before ``TimeLimitExceeded`` is raised in it (it
    becomes the future's exception; None: no limit), and *grace*, seconds
    a stopped task may take to end (default 1) before it is reported stuck
    (logged on the ``xthread`` logger, ``future.stuck`` and
    ``pool.stuck``) and its worker is written off and replaced.

    ``Future.cancel()`` stops a running task (``TaskCancelled`` is raised
    in it) and returns True; ``submit_with_limit`` gives one task its own
    limit; ``shutdown(interrupt=True)`` stops running tasks too.
    """

    # Pool names, numbered in creation order (as stdlib's, though counted
    # apart from it).
    _counter = _itertools.count().__next__

    def __init__(self, max_workers=None, thread_name_prefix="",
                 initializer=None, initargs=(), *, time_limit=None,
                 grace=DEFAULT_GRACE):
        # Every field is this class's own: stdlib's constructor is not
        # called, since the worker state it keeps is private and changes
        # between versions (3.14 replaced _initializer/_initargs with a
        # worker context). The names that CPython's own executor tests
        # read (_max_workers, _threads, _broken, _shutdown, _work_queue)
        # keep stdlib's meaning.
        time_limit = _check_seconds("time_limit", time_limit)
        grace = _check_seconds("grace", grace)
        if grace is None:
            raise TypeError("grace must be a number, not None")
        if max_workers is None:
            # As stdlib: CPUs this process may use, plus 4, at most 32.
            max_workers = min(32, (_cpu_count() or 1) + 4)
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._max_workers = max_workers
        self._work_queue = _queue.SimpleQueue()
        self._threads = set()
        self._broken = False
        self._shutdown = False
        self._shutdown_lock = _threading.Lock()
        self._thread_name_prefix = (thread_name_prefix or
                                    "ThreadPoolExecutor-%d" % self._counter())
        self._xthread_initializer = initializer
        self._xthread_initargs = initargs
        self._idle = _collections.deque()
        self._time_limit = time_limit
        self._grace = grace
        self._spawned = 0
        self._workers = {}          # thread -> _Worker
        self._state_lock = _xthread.allocate_lock()
        self._every_worker = []     # for the counts of health()
        self._stuck = []            # StuckTask, call not returned yet
        self._replaced = 0
        self._submitted = 0
        self._drained = 0

    # Submitting

    def submit(self, fn, /, *args, **kwargs):
        return self._submit(self._time_limit, fn, args, kwargs)

    submit.__doc__ = _base.Executor.submit.__doc__

    def submit_with_limit(self, seconds, fn, /, *args, **kwargs):
        """``submit(fn, *args, **kwargs)`` with a time limit of *seconds*
        for this task alone (instead of the pool's): ``TimeLimitExceeded``
        is raised in it once they have passed, and becomes the future's
        exception. Every keyword goes to *fn*."""
        seconds = _check_seconds("seconds", seconds)
        if seconds is None:
            raise TypeError("seconds must be a number, not None")
        return self._submit(seconds, fn, args, kwargs)

    def map(self, fn, *iterables, timeout=None, chunksize=1,
            buffersize=None):
        """As stdlib's ``Executor.map`` (3.14's, on every version:
        *buffersize*, when given, bounds how many calls are submitted
        ahead of the results taken; *chunksize* is ignored, as by stdlib's
        thread pool). On a timeout, or when the iterator is closed early,
        every call not yet done is cancelled, the one that timed out
        included, and so stopped if running (stdlib's 3.9 and 3.10 leave
        the timed-out call running)."""
        if buffersize is not None:
            if isinstance(buffersize, bool) or not isinstance(buffersize,
                                                              int):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        if timeout is not None:
            end_time = timeout + _monotonic()
        calls = zip(*iterables)
        if buffersize:
            fs = _collections.deque(
                self.submit(fn, *args)
                for args in _itertools.islice(calls, buffersize))
        else:
            fs = [self.submit(fn, *args) for args in calls]
        # The iterator holds the pool weakly, as stdlib's: it must not keep
        # a pool alive that nothing else refers to.
        pool_ref = _weakref.ref(self)

        def result_iterator():
            try:
                fs.reverse()
                while fs:
                    if buffersize:
                        pool = pool_ref()
                        args = next(calls, None) if pool is not None else None
                        if args is not None:
                            fs.appendleft(pool.submit(fn, *args))
                        pool = None
                    if timeout is None:
                        yield _result_or_cancel(fs.pop())
                    else:
                        yield _result_or_cancel(fs.pop(),
                                                end_time - _monotonic())
            finally:
                for future in fs:
                    future.cancel()
        return result_iterator()

    def _submit(self, limit, fn, args, kwargs):
        if not callable(fn):
            raise TypeError("the task must be callable, not %s"
                            % type(fn).__name__)
        with self._shutdown_lock, _cft._global_shutdown_lock:
            if self._broken:
                raise _cft.BrokenThreadPool(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _cft._shutdown:
                raise RuntimeError("cannot schedule new futures after "
                                   "interpreter shutdown")
            f = Future()
            self._work_queue.put(_WorkItem(f, fn, args, kwargs, limit))
            self._submitted += 1
            self._adjust_thread_count()
            return f

    def _initializer_failed(self):
        # As stdlib's, and the drained futures let go (they never run).
        with self._shutdown_lock:
            self._broken = ("A thread initializer failed, the thread pool "
                            "is not usable anymore")
            broken = _cft.BrokenThreadPool(self._broken)
            self._drain(lambda future: future.set_exception(broken))

    def _adjust_thread_count(self):
        # As stdlib's, with xthread workers; named by how many were
        # started (stdlib counts live ones, which is the same number
        # until a worker is replaced).
        # Idle workers: one token each in a deque (append and pop are
        # single C calls), instead of stdlib's Python-level semaphore.
        try:
            self._idle.pop()
            return
        except IndexError:
            pass
        if len(self._threads) < self._max_workers:
            self._spawn()

    def _spawn(self):
        def weakref_cb(_, q=self._work_queue):
            q.put(None)

        worker = _Worker()
        thread_name = "%s_%d" % (self._thread_name_prefix or self,
                                 self._spawned)
        t = _thread.Thread(name=thread_name, target=_worker,
                           args=(_weakref.ref(self, weakref_cb), worker,
                                 self._work_queue,
                                 self._xthread_initializer,
                                 self._xthread_initargs))
        worker.thread = t
        t.start()
        self._spawned += 1
        self._threads.add(t)
        self._workers[t] = worker
        self._every_worker.append(worker)
        _cft._threads_queues[t] = self._work_queue
        # start() has returned once the worker runs, and the worker goes on
        # to take its first task before this thread gets the GIL back in
        # the ordinary case, as with stdlib's pool.

    # Running tasks

    def _drain(self, settle):
        # Under _shutdown_lock: take every pending item off the queue;
        # settle(future) decides each one's end, and it lets go (it will
        # never run).
        drained = 0
        while True:
            try:
                work_item = self._work_queue.get_nowait()
            except _queue.Empty:
                break
            if work_item is not None:
                settle(work_item.future)
                work_item.future._let_go()
                drained += 1
        with self._state_lock:
            self._drained += drained

    def _write_off(self, worker, stuck):
        # In the watchdog thread: the task did not stop within the grace
        # period. Its worker stops counting; a new one takes its place.
        thread = worker.thread
        where = stuck.where or ("%s, a C function called by the worker"
                                % stuck.task_name)
        _LOGGER.warning(
            "%s: task %s did not stop %.0f ms after it was %s; it is %s at "
            "%s. Its worker is written off and replaced; it will exit when "
            "the call returns.\n%s",
            thread.name, stuck.task_name, self._grace * 1e3,
            {"cancelled": "cancelled", "time limit":
             "over its time limit", "shutdown": "stopped by shutdown"}.get(
                 stuck.reason, stuck.reason),
            "inside a C call" if stuck.in_c_call else "running Python code",
            where, "".join(stuck.stack or ()).rstrip())
        with self._state_lock:
            self._stuck.append(stuck)
            self._replaced += 1
        with self._shutdown_lock:
            self._threads.discard(thread)
            self._workers.pop(thread, None)
            _cft._threads_queues.pop(thread, None)
            _thread._release_from_exit_wait(thread)
            worker.released.set()
            if not self._shutdown and not self._broken:
                self._spawn()

    def _stuck_released(self, stuck):
        with self._state_lock:
            try:
                self._stuck.remove(stuck)
            except ValueError:
                pass

    @property
    def stuck(self):
        """StuckTask reports of written-off tasks whose call has not
        returned yet."""
        with self._state_lock:
            return list(self._stuck)

    def health(self):
        """A PoolHealth snapshot."""
        with self._state_lock:
            stuck = list(self._stuck)
            replaced = self._replaced
            submitted = self._submitted
            completed = self._drained + sum(
                w.completed for w in list(self._every_worker))
        serving = [w for w in list(self._workers.values())
                   if not w.written_off]
        busy = sum(1 for w in serving if w.task is not None)
        workers = sum(1 for t in list(self._threads) if t.is_alive())
        lost = 0
        if self._shutdown and not any(
                t.is_alive() for t in list(self._threads)):
            lost = submitted - completed
        return PoolHealth(workers=workers, busy=busy,
                          max_workers=self._max_workers, replaced=replaced,
                          stuck=stuck, submitted=submitted,
                          completed=completed, lost=lost)

    # Shutting down

    def shutdown(self, wait=True, *, cancel_futures=False, interrupt=False):
        """As stdlib's, and with *interrupt* true, also stop every running
        task (``TaskCancelled`` raised in it; its future is cancelled);
        *interrupt* implies *cancel_futures*. With *wait*, return once every
        worker has ended, or been written off stuck and waited for at most
        one grace period more."""
        with self._shutdown_lock:
            self._shutdown = True
            if cancel_futures or interrupt:
                self._drain(Future.cancel)
            self._work_queue.put(None)
            workers = list(self._workers.values())
        if interrupt:
            running = [w.task for w in workers]
            for task in running:
                if task is None:
                    continue
                future = task.future
                if future is not None:      # (None: it has just ended)
                    future.cancel()
        if wait:
            for worker in workers:
                worker.released.wait()
                if not worker.written_off:
                    worker.thread.join()
            # A written-off worker is waited for one grace period more: a
            # call that returns by then lets it end before shutdown does.
            deadline = _monotonic() + self._grace
            with self._state_lock:
                stuck = list(self._stuck)
            for report in stuck:
                if report.released.wait(max(0.0, deadline - _monotonic())):
                    report.thread.join(max(0.0, deadline - _monotonic()))


# to_thread

_default_pool = None
_default_pool_lock = _xthread.allocate_lock()


def _get_default_pool():
    global _default_pool
    with _default_pool_lock:
        if _default_pool is None:
            _default_pool = ThreadPoolExecutor(
                thread_name_prefix="xthread.to_thread")
        return _default_pool


def _forget_default_pool():
    global _default_pool, _default_pool_lock
    _default_pool = None
    _default_pool_lock = _xthread.allocate_lock()


_os.register_at_fork(after_in_child=_forget_default_pool)


async def to_thread(func, /, *args, **kwargs):
    """Run ``func(*args, **kwargs)`` in a thread of xthread's shared pool
    and await its result, as ``asyncio.to_thread`` (the caller's context
    variables are carried into the thread).

    Cancelling the awaiting task (``task.cancel()``, ``asyncio.timeout``,
    ``wait_for``) stops the function in its thread: ``TaskCancelled`` is
    raised in it, and the await ends once it has stopped, or after the
    pool's grace period with a report (logged) when it could not.
    """
    loop = _asyncio.get_running_loop()
    ctx = _contextvars.copy_context()
    future = _get_default_pool().submit(ctx.run, func, *args, **kwargs)
    try:
        return await _asyncio.wrap_future(future, loop=loop)
    except _asyncio.CancelledError:
        future.cancel()
        await _stopped(future, loop)
        raise


async def _stopped(future, loop):
    waiter = loop.create_future()

    def wake():
        if not waiter.done():
            waiter.set_result(None)

    def on_stopped(future):
        try:
            loop.call_soon_threadsafe(wake)
        except RuntimeError:
            pass        # the loop is closed: nobody waits any more

    future.add_stopped_callback(on_stopped)
    await waiter
