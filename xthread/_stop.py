"""Stopping threads: raise_in_thread, shields, time limits, kill reports.

Everything goes through one delivery path, ``_xthread._deliver``, which
checks under the GIL, in the same C call that hands the exception to the
interpreter, that the target is the thread meant (its generation: idents
are reused) and is still inside the block meant (its scope). A pending
exception is withdrawn when its scope exits; a shield holds exceptions back
until it exits; a thread in a killable wait wakes at once; otherwise it is
raised where the handlers of the target's frame apply (``_landing``).
"""
import heapq as _heapq
from heapq import heappush as _heappush
import itertools as _itertools
import math as _math
import os as _os
import sys as _sys
import time as _time
import traceback as _traceback

import _xthread

__all__ = [
    "ThreadKilled", "TimeLimitExceeded", "KillResult", "raise_in_thread",
    "shield", "time_limit", "Scope", "wake_signal",
]

_deliver = _xthread._deliver
_nudge = _xthread._nudge
# Whether a thread blocked in a system call is signalled out of it (3.15+).
_SIGNAL_WAKES = bool(_xthread._SIGNAL_WAKES)
# Whether threads take turns on a GIL now (always before 3.13; on a
# free-threaded build it can be switched on at run time).
_gil_enabled = getattr(_sys, "_is_gil_enabled", lambda: True)
_get_ident = _xthread.get_ident
_monotonic = _time.monotonic


class ThreadKilled(BaseException):
    """Raised in a thread by ``Thread.kill()``. A ``BaseException``, so
    that ``except Exception`` does not swallow it."""


class TimeLimitExceeded(BaseException):
    """Raised in a thread whose ``time_limit`` ran out. A
    ``BaseException``, so that ``except Exception`` does not swallow it."""


def raise_in_thread(ident, exc):
    """Raise *exc* (an exception class or instance) in the thread with this
    ident, any thread of the interpreter, stdlib ones included.

    Returns True when a live thread took it, False when no live thread
    has this ident. The thread raises it where the handlers of its frame
    apply (its next call return or loop jump), or at once if it is in one
    of xthread's killable waits; a thread blocked in another C call raises
    it when that call returns. A thread that never used xthread (no
    record) gets CPython's plain delivery, at its next bytecode boundary.
    A non-integer ident is TypeError, a negative one ValueError, a
    non-exception TypeError.
    """
    return _deliver(ident, exc)


def wake_signal(signum=None):
    """The signal that xthread sends to a thread blocked in a system call
    (``time.sleep``, a socket call, ``select``...) to make an exception
    sent to it land there: CPython 3.15 raises a pending exception in such
    a call once a signal interrupts it; earlier versions do not, and
    nothing is sent there.

    Returns the signal's number, 0 for none (the default, ``SIGURG``, is
    used unless ``XTHREAD_WAKE_SIGNAL`` in the environment names another
    at import: a number, a name such as ``SIGUSR2``, or ``0``/``off``).
    With *signum*, use that signal from now on (0: none) and return the
    previous one. xthread installs its handler, which does nothing, only
    over the signal's default action: a signal that has a handler of
    someone else's is never taken over, and threads are then not
    signalled."""
    if signum is None:
        return _xthread._wake_signal()
    return _xthread._wake_signal(signum)


def _wake_signal_from_environment():
    value = _os.environ.get("XTHREAD_WAKE_SIGNAL", "").strip()
    if not value:
        return
    if value.lower() in ("0", "off", "none"):
        signum = 0
    elif value.isdigit():
        signum = int(value)
    else:
        import signal
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        signum = getattr(signal, name, None)
        if not isinstance(signum, int) or name.startswith("SIG_"):
            raise ValueError("XTHREAD_WAKE_SIGNAL=%r names no signal (a "
                             "number, a name such as SIGUSR2, or 0 for "
                             "none)" % value)
    try:
        _xthread._wake_signal(int(signum))
    except (TypeError, ValueError) as exc:
        raise ValueError("XTHREAD_WAKE_SIGNAL=%r: %s" % (value, exc)) from None


_wake_signal_from_environment()


class shield:
    """``with shield():`` holds back exceptions sent through xthread until
    the block exits, then raises the first one. Nestable: only the
    outermost exit raises. Protects cleanup, and lock entry and exit,
    from being interrupted half-way."""

    __slots__ = ()

    def __enter__(self):
        _xthread._shield_enter()
        return self

    def __exit__(self, exc_type, exc, tb):
        _xthread._shield_exit()
        return False


# Time limits: one watchdog thread for the whole process, started on first
# use, sleeping until the earliest deadline in a heap. Entering a limit
# pushes an entry (and wakes the watchdog only when it is the new
# earliest); leaving marks it cancelled, to be dropped lazily.

# A heap item: [deadline, seq, ident, scope, seconds, action, exception];
# lists compare in C, and seq is unique, so comparisons never go past it.
# Cancelling sets the ident to None. With no action, a due item raises
# its exception (a class, instantiated with a message naming the limit,
# or an instance) in thread ident inside scope; with one, the watchdog
# calls action() instead (the pool's per-task limits and grace checks).
_DEADLINE, _SEQ, _IDENT, _SCOPE, _SECONDS, _ACTION, _EXCEPTION = range(7)

# 3.15+: a thread signalled out of a system call whose exception has not
# landed is signalled again after this long, then at doubling intervals
# up to the cap.
_WAKE_FIRST_S = 0.005
_WAKE_MAX_S = 0.2

# The longest the watchdog keeps the GIL while waiting for a deadline.
_SPIN_S = 0.0005
# The longest single wait (a lock's timeout is bounded; far deadlines are
# waited for in steps).
_MAX_WAIT_S = 86400.0


# An idle watchdog (no limit open) ends after this long, so that a process
# that used a limit once does not keep a thread for good; a fork ends an
# idle one at once (see _Watchdog._before_fork).
_LINGER_S = 1.0

_shield_enter = _xthread._shield_enter
_shield_exit = _xthread._shield_exit


class _Watchdog:
    """One OS thread for every time limit (and the pool's timers), started
    on demand and ended when idle. It is xthread's machinery, not the
    user's thread: started with ``_xthread._start_joinable_thread``, not as
    a ``threading.Thread``, so ``threading.enumerate()``,
    ``active_count()`` and ``_thread._count()`` never list it; while it
    runs an action of the pool's (which may log, or call future
    callbacks), ``threading.current_thread()`` there is a placeholder
    named ``xthread-watchdog``, listed for that moment only.

    Every lock taken here is taken inside a shield: an exception sent to
    the calling thread (an outer limit firing while an inner one is
    entered) waits until the lock is released, instead of leaving it held
    for good and every limit dead."""

    def __init__(self):
        self._reset()
        self._placeholder = None
        _os.register_at_fork(before=self._before_fork,
                             after_in_child=self._after_fork_in_child)

    def _reset(self):
        # After fork the thread is gone and the locks may be held by it.
        self._mutex = _xthread.allocate_lock()
        self._wake = _xthread.allocate_lock()
        self._wake.acquire()
        self._heap = []
        self._cancelled = 0
        self._wake_at = _math.inf
        self._seq = _itertools.count()
        # (ident, sentinel, generation, native_id) of the running watchdog;
        # set and cleared under the mutex.
        self._thread = None
        self._stop = False

    def add(self, seconds, scope, action=None, ident=None,
            exception=None):
        deadline = _monotonic() + seconds
        if ident is None:
            ident = _get_ident()
        item = [deadline, next(self._seq), ident, scope, seconds, action,
                exception]
        _shield_enter()
        try:
            mutex = self._mutex
            mutex.acquire()
            try:
                thread = self._thread
                if thread is not None and not thread[1].locked():
                    # It ended without clearing this: an exception escaped
                    # it (MemoryError, say). Start another.
                    thread = self._thread = None
                if thread is None:
                    # Raises if no thread can be made: the limit is then
                    # refused, never left unguarded.
                    self._thread = self._start()
                _heappush(self._heap, item)
                wake = thread is not None and deadline < self._wake_at
                if deadline < self._wake_at:
                    self._wake_at = deadline
            finally:
                mutex.release()
            # Under the shield too: an exception landing here (a stop
            # sent to the thread that opens the limit) must not cost the
            # watchdog its wake-up. It may be waiting with no deadline at
            # all, for the next add() to poke it.
            if wake:
                self._poke()
        finally:
            _shield_exit()
        return item

    def running(self):
        """Whether the watchdog thread runs now."""
        return self._thread is not None

    def wake_until_landed(self, ident, scope, generation=0,
                          after=_WAKE_FIRST_S):
        """3.15+: while what was sent to thread *ident* for *scope* has not
        landed and the thread sits in a call, signal it again (a signal
        that came just before it entered its system call is lost), at
        growing intervals, until it lands or the scope closes."""
        def again():
            if _nudge(ident, generation, scope):
                self.wake_until_landed(ident, scope, generation,
                                       min(after * 2, _WAKE_MAX_S))
        self.add(after, scope, again, ident)

    def cancel(self, item):
        # The scope is closed already (time_limit.__exit__, in C).
        item[_IDENT] = None
        # A count for compaction only, bumped without the mutex: an update
        # lost to a race (no GIL on 3.14t, or a switch between the read
        # and the write) only moves the next compaction.
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            _shield_enter()
            try:
                with self._mutex:
                    heap = [i for i in self._heap if i[_IDENT] is not None]
                    _heapq.heapify(heap)
                    self._heap = heap
                    self._cancelled = 0
            finally:
                _shield_exit()

    def _poke(self):
        try:
            self._wake.release()
        except RuntimeError:
            pass        # already awake

    def _start(self):
        # Under the mutex. The new thread runs _run, which waits for the
        # mutex first.
        ident, sentinel, generation = _xthread._start_joinable_thread(
            self._run, ())
        return (ident, sentinel, generation,
                _xthread._native_id(ident, generation))

    def _live(self):
        for item in self._heap:
            if item[_IDENT] is not None:
                return True
        return False

    def _run(self):
        # Machinery, not a user's thread: what is sent to it (a sweep that
        # stops every thread, say) is held back for good, so that the
        # limits never lose their watchdog. kill() of it gives up.
        _shield_enter()
        idle_since = None
        while True:
            due = []
            with self._mutex:
                now = _monotonic()
                heap = self._heap
                # Only what is due: dropping cancelled entries ahead of
                # time would leave the heap empty after every quick block,
                # and every next block would have to wake this thread.
                while heap and heap[0][_DEADLINE] <= now:
                    item = _heapq.heappop(heap)
                    if item[_IDENT] is not None:
                        due.append(item)
                    else:
                        self._cancelled = max(0, self._cancelled - 1)
                if due or self._live():
                    idle_since = None
                    self._stop = False      # a fork waits for nothing
                elif self._stop or (idle_since is not None
                                    and now - idle_since >= _LINGER_S):
                    # No limit open: end. A later add() starts another.
                    self._heap = []
                    self._cancelled = 0
                    self._wake_at = _math.inf
                    self._thread = None
                    self._stop = False
                    return
                elif idle_since is None:
                    idle_since = now
                self._wake_at = heap[0][_DEADLINE] if heap else _math.inf
                wake_at = self._wake_at
            for item in due:
                ident = item[_IDENT]
                if ident is None:
                    continue
                action = item[_ACTION]
                if action is None:
                    exc = item[_EXCEPTION] or TimeLimitExceeded
                    if isinstance(exc, type):
                        exc = exc("time limit of %g s exceeded"
                                  % item[_SECONDS])
                    if (_deliver(ident, exc, scope=item[_SCOPE])
                            and _SIGNAL_WAKES):
                        self.wake_until_landed(ident, item[_SCOPE])
                    continue
                self._call(action)
            if idle_since is not None:
                # Idle: wait for a new limit, at most until the linger ends.
                self._wake.acquire(
                    True, max(0.0, min(wake_at, idle_since + _LINGER_S)
                              - _monotonic()))
                continue
            # This thread needs the GIL to deliver, and a thread spinning
            # in Python gives it up only after the switch interval. So
            # wake that much early: when the GIL is busy, getting it back
            # takes about that long; when it was free, the deadline is
            # still ahead, and a second wait, now uncontended, ends on it.
            # Without a GIL (3.14t with it off) there is nothing to wait for.
            left = wake_at - _monotonic()
            early = _sys.getswitchinterval() if _gil_enabled() else 0.0
            if left > early:
                # At most _LINGER_S: cancel() does not poke this thread, so
                # a limit that was live when it last looked and is closed
                # now is noticed at the latest then, and an idle watchdog
                # ends (it waited for the cancelled deadline, an hour say,
                # when the block ended while it looked: often with the GIL
                # off, rarely with it).
                self._wake.acquire(True, min(left - early, _LINGER_S))
                # Poked (a new earlier deadline), or one interval before
                # this one, or time to look again.
                continue
            if left > _SPIN_S:
                self._wake.acquire(True, min(left, _MAX_WAIT_S))
            else:
                # Close enough: hold on to the GIL until the deadline.
                while _monotonic() < wake_at:
                    pass

    def _call(self, action):
        # A pool's action may log or run future callbacks, which look up
        # threading.current_thread(): answer with a placeholder for the
        # call only, instead of letting threading make a _DummyThread that
        # would stay listed.
        import threading
        placeholder = self._placeholder
        if placeholder is None:
            placeholder = self._placeholder = threading.Thread(
                name="xthread-watchdog", daemon=True)
            # Made only to answer current_thread(): not a thread that test
            # suites' leak checks (threading._dangling) should count.
            threading._dangling.discard(placeholder)
        active = threading._active
        ident = _get_ident()
        active[ident] = placeholder
        try:
            action()
        except BaseException as exc:
            # Never lose the watchdog to one action.
            _report_unraisable(exc, action)
            exc = None
        finally:
            if active.get(ident) is placeholder:
                del active[ident]

    def _before_fork(self):
        # With no limit open, end the watchdog before the fork, so that
        # the process forks with no thread of xthread's (3.12+ warns when
        # a multi-threaded process forks). With one open, it goes on, in
        # the parent and (restarted) in the child.
        _shield_enter()
        try:
            with self._mutex:
                thread = self._thread
                if thread is None or self._live():
                    return
                self._stop = True
            self._poke()
            ident, sentinel, generation, native_id = thread
            deadline = _monotonic() + 1.0
            while not sentinel._wait_released(True, 0.01):
                if self._thread is thread and not self._stop:
                    return      # a limit was opened meanwhile: it goes on
                if _monotonic() > deadline:
                    return
            # Its thread state is gone; wait (briefly) until the OS thread
            # is too, as the kernel counts it.
            task = "/proc/self/task/%d" % native_id if native_id else None
            while (task is not None and _os.path.exists(task)
                   and _monotonic() < deadline):
                _time.sleep(0.0001)
        finally:
            _shield_exit()

    def _after_fork_in_child(self):
        # Only the forking thread exists here: keep its limits (they go on
        # firing in the child), drop the others', and start a watchdog
        # for what is kept.
        me = _get_ident()
        kept = [item for item in self._heap
                if item[_IDENT] == me]
        self._reset()
        if kept:
            _heapq.heapify(kept)
            self._heap = kept
            self._wake_at = kept[0][_DEADLINE]
            self._thread = self._start()


def _report_unraisable(exc, obj):
    hook = getattr(_sys, "unraisablehook", None)
    if hook is None:
        return
    hook(_UnraisableArgs(type(exc), exc, exc.__traceback__,
                         "Exception ignored in xthread watchdog action", obj))


class _UnraisableArgs:
    # What sys.unraisablehook reads: the attributes of its argument.
    __slots__ = ("exc_type", "exc_value", "exc_traceback", "err_msg",
                 "object")

    def __init__(self, exc_type, exc_value, exc_traceback, err_msg, obj):
        self.exc_type = exc_type
        self.exc_value = exc_value
        self.exc_traceback = exc_traceback
        self.err_msg = err_msg
        self.object = obj


_watchdog = _Watchdog()


def _check_exception(exception):
    if isinstance(exception, BaseException) or (
            isinstance(exception, type)
            and issubclass(exception, BaseException)):
        return exception
    raise TypeError("exception must be an exception class or instance, "
                    "not %s" % type(exception).__name__)


class time_limit(_xthread.Scoped):
    """Raise ``TimeLimitExceeded`` in the thread running the block once
    *seconds* have passed; a context manager and a decorator.

    *exception* (by keyword) is what is raised instead: a class, made
    anew each time the limit fires with a message naming the limit, or
    an instance, raised as that very object.

    Any thread, the main one included. Limits nest, each raising its own
    exception; an outer limit still fires when an inner one's exception
    was caught inside. An exception meant for a block is never raised
    after it exits: ``__enter__``/``__exit__`` are C code, and the exit
    closes the block's scope (withdrawing what is pending for it) before
    any bytecode runs. All limits share one watchdog thread.
    """

    __slots__ = ("seconds", "exception", "_entries")

    def __init__(self, seconds, *, exception=TimeLimitExceeded):
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError("seconds must be a number, not %s"
                            % type(seconds).__name__)
        if not seconds > 0:
            raise ValueError("seconds must be greater than zero, not %r"
                             % (seconds,))
        self.seconds = seconds
        self.exception = _check_exception(exception)
        # By scope token: one object may be entered by several threads at
        # once, and nested (the scopes themselves live on each thread).
        self._entries = {}

    def _scope_entered(self, scope):
        self._entries[scope] = _watchdog.add(self.seconds, scope,
                                             exception=self.exception)

    def _scope_exited(self, scope):
        item = self._entries.pop(scope, None)
        if item is not None:        # None: the entry failed before adding
            _watchdog.cancel(item)

    def __call__(self, func):
        import functools
        seconds, exception = self.seconds, self.exception

        @functools.wraps(func)
        def limited(*args, **kwargs):
            with time_limit(seconds, exception=exception):
                return func(*args, **kwargs)
        return limited

    def __repr__(self):
        if self.exception is TimeLimitExceeded:
            return "time_limit(%r)" % (self.seconds,)
        return "time_limit(%r, exception=%r)" % (self.seconds,
                                                 self.exception)


# Scope -> the token of its open block: who holds each open Scope.
_scope_claims = {}


class Scope(_xthread.Scoped):
    """A delivery scope: ``with xthread.Scope() as scope:`` opens it in
    the calling thread, and ``scope.raise_exc(exc)``, from any thread,
    raises *exc* in that thread, but only while the block runs.

    ``raise_exc`` returns True when the exception was delivered, False
    when the block has not started or has ended. An exception sent but
    not landed when the block exits is withdrawn as the block closes (in
    C, before any bytecode of ``__exit__``), never raised after it. It
    lands where the frame's handlers apply, at once in a killable wait,
    and is held back by ``xthread.shield()``, as every stop is.

    Scopes nest, with each other, with time limits and shields; each
    exception reaches only the block of its own scope. This is the
    machinery under ``time_limit`` and the pool's tasks, for libraries
    that build their own stops (a soft time limit with an exception of
    their own, a cancel scope). One object opens one block at a time;
    entering it again while open is a RuntimeError.
    """

    # `_open` is (ident, generation, scope token) while the block runs,
    # else None: one attribute, written and read whole, so that a sender
    # never pairs one block's token with another's thread.
    __slots__ = ("_ident", "_open")

    def __init__(self):
        self._ident = None
        self._open = None

    def _scope_entered(self, scope):
        opened = (_get_ident(), _xthread._record().generation, scope)
        # The claim decides between two threads entering at once (one
        # dict operation: atomic with the GIL or without it). If anything
        # lands after it, C calls _scope_exited, which gives it back.
        if _scope_claims.setdefault(self, scope) != scope:
            raise RuntimeError("this Scope is open already; make a new "
                               "Scope for each block")
        self._ident = opened[0]
        self._open = opened

    def _scope_exited(self, scope):
        if _scope_claims.get(self) == scope:
            # Only the block that holds the claim ends it.
            self._open = None
            del _scope_claims[self]

    @property
    def active(self):
        """Whether the block is running."""
        return self._open is not None

    @property
    def ident(self):
        """The ident of the thread running (or that last ran) the block,
        or None."""
        return self._ident

    def raise_exc(self, exc):
        """Raise *exc* (an exception class or instance) in the block's
        thread while the block runs. Returns whether it was delivered."""
        if isinstance(exc, type):
            if not issubclass(exc, BaseException):
                raise TypeError("exceptions must derive from BaseException, "
                                "not %s" % exc.__name__)
        elif not isinstance(exc, BaseException):
            raise TypeError("exceptions must derive from BaseException, "
                            "not %s" % type(exc).__name__)
        is_open = self._open
        if is_open is None:
            return False
        ident, generation, scope = is_open
        return _deliver(ident, exc, generation=generation, scope=scope)

    def __repr__(self):
        is_open = self._open
        return "<xthread.Scope %s>" % (
            "open in thread %s" % is_open[0] if is_open else "closed")


# Kill reports

class KillResult:
    """What ``Thread.kill()`` found. True when the thread ended.

    ``ended``: whether the thread ended before the timeout.
    ``sent_at`` / ``landed_at``: ``time.monotonic()`` when the exception
    was (first) sent and when it was raised in the thread (None: never).
    ``elapsed``: seconds from the first send to the thread's end (or to
    the timeout). ``attempts``: how many times it was sent.
    ``stack``: the thread's Python stack when it did not end (a list of
    strings as ``traceback.format_stack``), else None.
    ``in_c_call``: whether the thread, not ended, sits inside a C call that
    no exception can interrupt (``time.sleep``, a socket read, a lock of
    another library).
    ``cleanup_may_be_skipped``: whether the exception went by CPython's
    plain delivery on a version where that can skip the ``except``,
    ``finally`` and ``with`` exits of the frame it lands in (xthread could
    not arm its own: every ``sys.monitoring`` tool id was taken, or on
    3.11 the thread had a trace function of its own). False whenever
    xthread raised it where the frame's handlers apply.
    """

    __slots__ = ("ended", "sent_at", "landed_at", "elapsed", "attempts",
                 "stack", "in_c_call", "cleanup_may_be_skipped")

    def __init__(self, ended, sent_at, landed_at, elapsed, attempts,
                 stack=None, in_c_call=False, cleanup_may_be_skipped=False):
        self.ended = ended
        self.sent_at = sent_at
        self.landed_at = landed_at
        self.elapsed = elapsed
        self.attempts = attempts
        self.stack = stack
        self.in_c_call = in_c_call
        self.cleanup_may_be_skipped = cleanup_may_be_skipped

    def __bool__(self):
        return self.ended

    def __repr__(self):
        if self.ended:
            return "<KillResult ended after %.1f ms, %d attempt(s)>" % (
                (self.elapsed or 0) * 1e3, self.attempts)
        where = ""
        if self.stack:
            where = " at " + self.stack[-1].strip().splitlines()[0]
        return "<KillResult not ended after %.1f ms, %d attempt(s)%s%s>" % (
            (self.elapsed or 0) * 1e3, self.attempts,
            ", inside a C call" if self.in_c_call else "", where)


def _stuck_report(ident, record):
    """The stack of a thread that did not end, and whether it sits in a C
    call: the exception last sent to it has not landed, so the thread has
    run no bytecode since (a thread that runs Python, even one that
    swallows the exception, lands it at once), and no shield holds it."""
    frame = _sys._current_frames().get(ident)
    if frame is None:
        return None, False
    try:
        stack = _traceback.format_stack(frame)
    finally:
        del frame
    in_c_call = (record is not None and record.pending
                 and record.shield_depth == 0)
    return stack, in_c_call
