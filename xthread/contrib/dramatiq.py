"""dramatiq middleware on xthread's scoped stops.

``TimeLimit`` and ``ShutdownNotifications`` take the place of dramatiq's
middleware of the same names, with the same options (``time_limit`` in
milliseconds, ``notify_shutdown``) and the same exceptions
(``dramatiq.middleware.TimeLimitExceeded``, ``Shutdown``). What changes:

* A limit fires at its deadline (xthread's watchdog), not at the next
  check of a thread that polls once a second (``interval`` is accepted and
  not needed).
* The exception is raised only inside the actor's function: the limit is
  a scope opened around that call and closed as it returns, before any
  other middleware's hook or the worker's own code runs. It never reaches
  a message that is done, another message, or the worker thread's loop.
* It lands where the actor's ``except``/``finally``/``with`` apply, on
  every Python version (see README, *Cleanup always runs*), and at once in
  xthread's killable waits.

What it cannot stop is what xthread cannot stop: a thread inside a C call
gets the exception when the call returns (``time.sleep`` included before
CPython 3.15). A call still running *grace* milliseconds after its limit
fired is reported with its stack, and its worker thread is written off:
a new one takes its place, so that the worker keeps its ``--threads``
running, and the old one ends when the call returns.

To switch a broker over, call :func:`install` on it, or build its
middleware list with these classes instead of dramatiq's.
"""
import functools
import threading
import time
import weakref

from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware
from dramatiq.middleware.shutdown import Shutdown
from dramatiq.middleware.time_limit import TimeLimitExceeded

import _xthread

import xthread
from xthread import _stop

__all__ = ["TimeLimit", "ShutdownNotifications", "install",
           "TimeLimitExceeded", "Shutdown"]

# What the next actor call in this worker thread runs under, set by the
# middleware's before_process_message and taken by that call: a deadline
# (monotonic seconds) and its TimeLimit, and the ShutdownNotifications to
# register with.
_plan = threading.local()

# Marks an actor function wrapped by _guard.
_GUARD = "__xthread_dramatiq_guard__"

# The shortest limit handed to xthread.time_limit: a deadline already
# passed fires as the actor starts.
_MIN_S = 1e-6


def _guard(actor):
    """Wraps the actor's function (once) so that the call that processes
    a message runs inside the scopes its middleware planned for it. A call
    with no plan (a direct call, a nested actor call) runs as before."""
    fn = actor.fn
    if getattr(fn, _GUARD, False):
        return

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        deadline = getattr(_plan, "deadline", None)
        limiter = getattr(_plan, "limiter", None)
        notifier = getattr(_plan, "notifier", None)
        _plan.deadline = _plan.limiter = _plan.notifier = None
        if notifier is not None:
            return notifier._run(_limited, limiter, deadline, fn, args,
                                 kwargs)
        return _limited(limiter, deadline, fn, args, kwargs)

    setattr(guarded, _GUARD, True)
    actor.fn = guarded


def _limited(limiter, deadline, fn, args, kwargs):
    if deadline is None:
        return fn(*args, **kwargs)
    exc = TimeLimitExceeded()
    call = _Call()
    try:
        # Inside the try: a stop landing once the watch is set still
        # cancels it, so it never writes off a thread that goes on.
        limiter._watch(call, deadline)
        with xthread.time_limit(max(deadline - time.monotonic(), _MIN_S),
                                exception=exc):
            return fn(*args, **kwargs)
    except TimeLimitExceeded as caught:
        if caught is exc:
            limiter.logger.warning(
                "Time limit exceeded. Raised in worker thread %r.",
                threading.get_ident())
        raise
    finally:
        exc = None      # the exception's traceback holds this frame
        limiter._ended(call)


class _Call:
    """One limited actor call, for the check at its deadline plus the
    grace: whether it ended, or was written off, decided under the lock."""

    __slots__ = ("thread", "lock", "item", "ended", "written_off")

    def __init__(self):
        self.thread = threading.current_thread()
        self.lock = threading.Lock()
        self.item = None
        self.ended = self.written_off = False


class TimeLimit(Middleware):
    """Cancels actors that run for too long, as
    ``dramatiq.middleware.TimeLimit``: *time_limit* (milliseconds; the
    ``time_limit`` actor and message option overrides it;
    ``float("inf")``: none) ends the actor's call with
    ``TimeLimitExceeded``. *interval* is accepted for compatibility and
    not used: each limit fires at its own deadline.

    *grace* (milliseconds): a call still running this long after its
    limit fired sits where no exception reaches it (a C call); it is
    logged with its stack and its worker thread written off: the worker
    starts a new one in its place, and the old one ends when the call
    returns."""

    def __init__(self, *, time_limit=600000, interval=1000, grace=1000):
        self.logger = get_logger(__name__, type(self))
        self.time_limit = time_limit
        self.interval = interval
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) \
                or not grace >= 0:
            raise ValueError("grace must be a number of milliseconds, at "
                             "least 0, not %r" % (grace,))
        self.grace = grace
        # The workers booted with this middleware: where a written-off
        # thread's replacement comes from.
        self._workers = weakref.WeakSet()
        # Worker thread -> the limited call it runs now. A write-off acts
        # only on that call: if a stop landed before a call's _ended ran
        # (Shutdown, in the finally), its watch finds a later call, or a
        # thread that has ended, and does nothing.
        self._running = weakref.WeakKeyDictionary()

    @property
    def actor_options(self):
        return {"time_limit"}

    def after_declare_actor(self, broker, actor):
        _guard(actor)

    def before_process_message(self, broker, message):
        actor = broker.get_actor(message.actor_name)
        limit = (message.options.get("time_limit")
                 or actor.options.get("time_limit", self.time_limit))
        if limit is None or limit == float("inf"):
            return
        _plan.deadline = time.monotonic() + limit / 1000
        _plan.limiter = self

    def after_process_message(self, broker, message, *, result=None,
                              exception=None):
        # The call took its plan; this drops one that no call took (a
        # message failed or skipped before its actor ran).
        _plan.deadline = _plan.limiter = None

    after_skip_message = after_process_message

    def before_worker_boot(self, broker, worker):
        self._workers.add(worker)

    def after_worker_shutdown(self, broker, worker):
        self._workers.discard(worker)

    def _watch(self, call, deadline):
        # Shielded: a stop sent meanwhile lands after call.item is set.
        with xthread.shield():
            self._running[call.thread] = call
            call.item = _stop._watchdog.add(
                max(deadline - time.monotonic(), 0.0) + self.grace / 1000,
                None, functools.partial(self._write_off, call))

    def _ended(self, call):
        with xthread.shield(), call.lock:
            call.ended = True
            if self._running.get(call.thread) is call:
                del self._running[call.thread]
            if call.item is not None and not call.written_off:
                _stop._watchdog.cancel(call.item)

    def _write_off(self, call):
        # In xthread's watchdog thread: the call outlived its limit by the
        # grace.
        with call.lock:
            if (call.ended or self._running.get(call.thread) is not call
                    or not call.thread.is_alive()):
                return
            call.written_off = True
            thread = call.thread
            stack, in_c_call = _stop._stuck_report(
                thread.ident, _xthread._find_record(thread.ident))
            if stack:
                # From the actor's own frames on: the worker's machinery
                # above them says nothing about where it is stuck.
                own = [i for i, entry in enumerate(stack)
                       if ", in _limited\n" in entry]
                if own:
                    stack = stack[own[-1] + 1:]
            worker = next((w for w in list(self._workers)
                           if thread in w.workers), None)
            replaced = worker is not None and thread.running
            self.logger.warning(
                "Time limit exceeded %.0f ms ago and the actor has not "
                "stopped: worker thread %r is %s.%s%s", self.grace,
                thread.ident,
                "inside a C call" if in_c_call else "running Python code",
                " It is written off and replaced; it ends when the call "
                "returns." if replaced else "",
                "\n" + "".join(stack).rstrip() if stack else "")
            if replaced:
                # Its loop ends after this message; the worker stops
                # counting (and waiting for) it; a new thread takes over.
                thread.stop()
                worker.workers.remove(thread)
                worker._add_worker()


class ShutdownNotifications(Middleware):
    """Raises ``Shutdown`` in actors that opted in (the
    ``notify_shutdown`` actor or message option, else *notify_shutdown*)
    when their worker begins to shut down, as
    ``dramatiq.middleware.ShutdownNotifications``: through the scope of
    the actor's call, so that it reaches that call only."""

    def __init__(self, notify_shutdown=False):
        self.logger = get_logger(__name__, type(self))
        self.notify_shutdown = notify_shutdown
        # The scopes of the calls running now that asked to be told.
        self._scopes = set()
        self._shutting_down = False

    @property
    def actor_options(self):
        return {"notify_shutdown"}

    def should_notify(self, actor, message):
        notify = message.options.get("notify_shutdown")
        if notify is None:
            notify = actor.options.get("notify_shutdown")
        if notify is None:
            notify = self.notify_shutdown
        return bool(notify)

    def after_declare_actor(self, broker, actor):
        _guard(actor)

    def before_process_message(self, broker, message):
        actor = broker.get_actor(message.actor_name)
        if self.should_notify(actor, message):
            _plan.notifier = self

    def after_process_message(self, broker, message, *, result=None,
                              exception=None):
        _plan.notifier = None

    after_skip_message = after_process_message

    def before_worker_shutdown(self, broker, worker):
        self.logger.debug("Sending shutdown notification to worker "
                          "threads...")
        self._shutting_down = True
        for scope in list(self._scopes):
            self._notify(scope)

    def _notify(self, scope):
        if scope.raise_exc(Shutdown):
            self.logger.info("Worker shutdown notification. Raised in "
                             "worker thread %r.", scope.ident)

    def _run(self, inner, *args):
        scope = xthread.Scope()
        with scope:
            self._scopes.add(scope)
            try:
                if self._shutting_down:
                    # The worker began to shut down before this call
                    # was registered: it is told at once.
                    self._notify(scope)
                return inner(*args)
            finally:
                self._scopes.discard(scope)


def install(broker):
    """Replaces dramatiq's ``TimeLimit`` and ``ShutdownNotifications`` in
    *broker*'s middleware by these, in place and with the same settings,
    and returns the broker. Call it before the worker boots."""
    from dramatiq.middleware import shutdown, time_limit
    stock = {time_limit.TimeLimit: lambda m: TimeLimit(
                 time_limit=m.time_limit),
             shutdown.ShutdownNotifications: lambda m: ShutdownNotifications(
                 notify_shutdown=m.notify_shutdown)}
    for i, middleware in enumerate(broker.middleware):
        make = stock.get(type(middleware))
        if make is None:
            continue
        ours = make(middleware)
        broker.middleware[i] = ours
        for actor in broker.actors.values():
            ours.after_declare_actor(broker, actor)
    return broker

