"""``xthread.Thread``: ``threading.Thread``'s life cycle on ``_xthread``.

The life cycle is stdlib's (``start`` -> ``_bootstrap`` ->
``_bootstrap_inner`` -> ``run``, then ``_delete``; ``join`` waits on a
sentinel lock released once the thread state is gone), with no Python
``Event`` or ``Condition`` in either:

* ``start`` calls ``_xthread._start_joinable_thread``, which returns with
  the thread's ident and a held sentinel lock once the thread runs: the
  new thread, holding the GIL, releases a handshake lock in C that the
  caller waits on with the GIL let go, so it goes on into ``run()``
  before the caller gets the GIL back, as with stdlib, but with no Python
  ``Event`` round trip.
* ``join`` waits on the sentinel, which the C bootstrap releases after
  ``PyThreadState_DeleteCurrent`` (spinning a little first, in C: see
  ``JOIN_SPIN_US``), taking and releasing it in one C call.

Attribute names are prefixed ``_xthread_`` so that they never collide with
the private names of ``threading.Thread`` on any version (3.13 added
``_handle``), which subclasses written for stdlib may use themselves.
"""
import os as _os
import sys as _sys
import time as _time
import weakref as _weakref

import threading as _threading

import _xthread

from . import _compat, _stop

__all__ = ["Thread"]

_start_joinable_thread = _xthread._start_joinable_thread
_allocate_lock = _xthread.allocate_lock
_deliver = _xthread._deliver
_find_record = _xthread._find_record
_call_unshielded = _xthread._call_unshielded
_handling = _xthread._handling
_monotonic = _time.monotonic
_get_ident = _xthread.get_ident
_get_native_id = _xthread.get_native_id
_native_id = _xthread._native_id
_gettrace = _compat.gettrace
_getprofile = _compat.getprofile
_active = _compat.active
_limbo = _compat.limbo
_active_limbo_lock = _compat.active_limbo_lock
_ExceptHookArgs = _threading.ExceptHookArgs


# Sentinels of started non-daemon threads, acquired at interpreter exit.
# Finished ones are pruned when the set has doubled since the last prune,
# so that a long-running process that never joins its threads does not
# grow it without bound. No lock: every use is made of single set
# operations (add, discard, copy, difference_update), each of which runs
# no Python code (a lock hashes and compares by identity) and so is
# atomic, under the GIL as on the free-threaded build (where each holds
# the set's own lock); it is only ever iterated as a copy. Two threads
# pruning at once may each set the next prune point: either will do.
_shutdown_sentinels = set()
_shutdown_prune_at = 64


def _track_for_shutdown(sentinel):
    global _shutdown_prune_at
    _shutdown_sentinels.add(sentinel)
    if len(_shutdown_sentinels) >= _shutdown_prune_at:
        _shutdown_sentinels.difference_update(
            [s for s in _shutdown_sentinels.copy() if not s.locked()])
        _shutdown_prune_at = 2 * len(_shutdown_sentinels) + 64


def _untrack_for_shutdown(sentinel):
    _shutdown_sentinels.discard(sentinel)


def _release_from_exit_wait(thread):
    """Interpreter exit no longer waits for *thread*, as if it were a
    daemon thread: for a pool worker written off while stuck in a call
    that no exception reaches."""
    thread._xthread_daemonic = True
    _untrack_for_shutdown(thread._xthread_sentinel)


def _join_non_daemon_threads():
    """Run by ``threading._shutdown`` before it joins stdlib's threads."""
    while True:
        # A thread started meanwhile (by a thread being waited for) is
        # left in the set for the next round.
        pending = _shutdown_sentinels.copy()
        _shutdown_sentinels.difference_update(pending)
        pending = [s for s in pending if s.locked()]
        if not pending:
            return
        for sentinel in pending:
            # Interruptible in the main thread: Ctrl-C stops the wait (and
            # never leaves the sentinel held: it is taken and let go in C).
            sentinel._wait_released()


# Every started thread, for the fork handler: a thread that has left
# threading._active but whose thread state still exists (its C teardown is
# under way) is not listed by threading, whose own fork handler then
# misses it.
_started_threads = _weakref.WeakSet()


def _after_fork_in_child():
    # The threads whose sentinels are listed do not exist in the child;
    # the forking thread is the child's main thread, which exit does not
    # wait for.
    _shutdown_sentinels.clear()
    # Runs after threading's handler (registered first, at its import),
    # which has left only the forking thread in _active. Any other thread
    # is gone, its sentinel held for ever: mark it stopped.
    current = _active.get(_get_ident())
    for thread in list(_started_threads):
        if thread is not current:
            thread._xthread_after_fork(False)


_compat.register_atexit(_join_non_daemon_threads)
_os.register_at_fork(after_in_child=_after_fork_in_child)
# No delivery is half armed at fork() (a no-op on GIL builds).
_os.register_at_fork(before=_xthread._fork_hold,
                     after_in_parent=_xthread._fork_release)


# Thread states: a started thread runs until its sentinel is released.
_NEW, _STARTING, _STARTED, _STOPPED = range(4)


class Thread(_threading.Thread):
    """A thread of control, as ``threading.Thread``, on ``_xthread``.

    Use it where ``threading.Thread`` stood: pass ``target=`` or subclass
    and override ``run()``. Inside the thread ``threading.current_thread()``
    returns this object. It is a subclass of ``threading.Thread`` for
    ``isinstance`` checks, but keeps none of stdlib's private state.
    """

    __slots__ = (
        "_xthread_target", "_xthread_args", "_xthread_kwargs",
        "_xthread_name", "_xthread_daemonic", "_xthread_ident",
        "_xthread_native_id", "_xthread_sentinel", "_xthread_state",
        "_xthread_stderr", "_xthread_generation",
    )

    @property
    def _xthread_initialized(self):
        # False for a subclass whose __init__ forgot Thread.__init__().
        return hasattr(self, "_xthread_state")

    def __init__(self, group=None, target=None, name=None,
                 args=(), kwargs=None, *, daemon=None):
        """Arguments as for ``threading.Thread``: always pass them by
        keyword. *group* must be None."""
        assert group is None, "group argument must be None for now"
        self._xthread_target = target
        self._xthread_name = str(name) if name else _compat.newname(target)
        self._xthread_args = args
        self._xthread_kwargs = {} if kwargs is None else kwargs
        if daemon is None:
            daemon = _threading.current_thread().daemon
        self._xthread_daemonic = bool(daemon)
        self._xthread_ident = None
        self._xthread_native_id = None
        self._xthread_sentinel = None
        self._xthread_generation = 0
        # Where threading.excepthook prints when sys.stderr is None at the
        # time of the error (see _stderr below).
        self._xthread_stderr = _sys.stderr
        self._xthread_state = _NEW

    def __repr__(self):
        assert self._xthread_initialized, "Thread.__init__() was not called"
        state = self._xthread_state
        if state == _STARTING and self._xthread_ident is not None:
            # Running (it set its ident), though start() has not returned
            # yet in the thread that called it: stdlib says "started".
            state = _STARTED
        if state == _STARTED and not self.is_alive():
            state = _STOPPED
        status = ("initial", "initial", "started", "stopped")[state]
        if self._xthread_daemonic:
            status += " daemon"
        if self._xthread_ident is not None:
            status += " %s" % self._xthread_ident
        return "<%s(%s, %s)>" % (type(self).__name__, self._xthread_name,
                                 status)

    # Life cycle

    def start(self):
        """Start the thread's activity: ``run()`` in a new OS thread.

        Returns once the new thread runs, as stdlib's: it is alive, listed
        by ``threading.enumerate()``, its ``ident`` and ``native_id`` are
        known, and it goes on into ``run()`` before the calling thread
        gets the GIL back in the ordinary case (the wait is a handshake in
        C, not a Python ``Event``). Calling it twice raises RuntimeError.
        """
        if not self._xthread_initialized:
            raise RuntimeError("thread.__init__() not called")
        if self._xthread_state != _NEW:
            raise RuntimeError("threads can only be started once")
        if _compat.REFUSE_START_AT_SHUTDOWN and _compat.shutting_down():
            raise RuntimeError("can't create new thread at interpreter shutdown")
        # The new thread may run before this call returns: it must find
        # itself started (is_alive(), daemon setter) and listed (enumerate).
        # The sentinel exists before the thread does, so that a join()
        # from any thread, even before start() returns, has it to wait on.
        sentinel = _allocate_lock()
        sentinel.acquire()
        self._xthread_sentinel = sentinel
        self._xthread_state = _STARTING
        calling = False
        # The C call's result, stored before it returns: an exception that
        # lands as it returns (a signal handler's) leaves a running thread.
        started = [None]
        try:
            with _active_limbo_lock():
                _limbo[self] = self
            # All bookkeeping before the OS thread exists, none after: the
            # new thread soon asks for the GIL, and should find it free.
            _started_threads.add(self)
            if not self._xthread_daemonic:
                _track_for_shutdown(sentinel)
            # Shielded until run(): an exception sent this early waits
            # until the thread is registered and inside the handlers
            # below, instead of escaping the bootstrap.
            calling = True
            ident, _, generation = _start_joinable_thread(
                self._bootstrap, (), None, sentinel, True, started)
        except BaseException:
            if started[0] is not None:
                # The thread runs (the exception, a Ctrl-C say, landed as
                # the call returned): it stays started, as with stdlib,
                # whose start() can raise in its wait for the new thread.
                self._xthread_started(*started[0])
                raise
            # Whoever waits on the sentinel already (a join from another
            # thread, the exit wait) must not wait for a thread that never
            # ran: a failed call has released it, else release it here.
            if not calling:
                sentinel.release()
            self._xthread_state = _NEW
            self._xthread_sentinel = None
            _started_threads.discard(self)
            _untrack_for_shutdown(sentinel)
            with _active_limbo_lock():
                _limbo.pop(self, None)
            raise
        self._xthread_started(ident, None, generation)

    def _xthread_started(self, ident, sentinel, generation):
        # The state stays _STARTING, which with an ident reads as started
        # (__repr__): only an ended wait writes it again (_STOPPED). A join
        # from another thread may have seen the thread end already; a
        # check-and-set here could undo that, leaving an ended thread alive
        # for ever, since without the GIL nothing keeps the two steps
        # together.
        self._xthread_ident = ident
        self._xthread_generation = generation

    def run(self):
        """The thread's activity: calls the target with its arguments.
        Override it in a subclass."""
        try:
            if self._xthread_target is not None:
                self._xthread_target(*self._xthread_args,
                                     **self._xthread_kwargs)
        finally:
            # Avoid a refcycle if the thread is running a function with
            # an argument that has a member that points to the thread.
            self._xthread_target = None
            self._xthread_args = ()
            self._xthread_kwargs = {}

    def _bootstrap(self):
        # Wrapper around the real bootstrap code that ignores exceptions
        # during interpreter cleanup: a daemon thread still running while
        # the interpreter tears down may find module globals set to None.
        # Those are almost certainly caused by the teardown, not by the
        # thread, so a daemon thread ends quietly then, as stdlib's does.
        try:
            self._bootstrap_inner()
        except:
            if self._xthread_daemonic and _sys is None:
                return
            raise

    def _bootstrap_inner(self):
        try:
            ident = _get_ident()
            # The parent sets these too once start() returns; this thread
            # gets here first.
            self._xthread_ident = ident
            self._xthread_native_id = _get_native_id()
            with _active_limbo_lock():
                _active[ident] = self
                _limbo.pop(self, None)
            trace = _gettrace()
            if trace:
                _sys.settrace(trace)
            profile = _getprofile()
            if profile:
                _sys.setprofile(profile)
            # The thread started shielded; only run() and the excepthook
            # run without it, so a stop lands in them (what was sent
            # before lands as run() would start) and never in this
            # bookkeeping.
            try:
                _call_unshielded(self.run)
            except _stop.ThreadKilled:
                # Asked for: the thread ends quietly, as on SystemExit.
                pass
            except:
                try:
                    _call_unshielded(self._xthread_report_exception)
                except _stop.ThreadKilled:
                    pass    # killed while its excepthook ran: as asked
        finally:
            self._xthread_delete()

    def _xthread_report_exception(self):
        """Hands the exception being handled to ``threading.excepthook``
        (looked up now, so a hook set after start applies); if the hook
        itself fails, to ``sys.excepthook``, as stdlib does."""
        exc_type, exc_value, exc_tb = _sys.exc_info()
        try:
            hook = _threading.excepthook
            hook(_ExceptHookArgs([exc_type, exc_value, exc_tb, self]))
        except Exception as exc:
            exc.__suppress_context__ = True
            del exc
            # As stdlib: a line that says the hook itself failed, then the
            # hook's error through sys.excepthook.
            stderr = _sys.stderr
            if stderr is None:
                stderr = self._xthread_stderr
            if stderr is not None:
                print("Exception in threading.excepthook:", file=stderr,
                      flush=True)
            sys_hook = _sys.excepthook or _sys.__excepthook__
            sys_hook(*_sys.exc_info())
        finally:
            exc_type = exc_value = exc_tb = None

    def _xthread_delete(self):
        """Removes this thread from ``threading._active``; runs in it."""
        with _active_limbo_lock():
            _active.pop(_get_ident(), None)

    def join(self, timeout=None):
        """Wait until the thread ends, or until *timeout* seconds pass.

        Returns None either way: call ``is_alive()`` to tell which.
        Joining a thread that was not started, or the current thread,
        raises RuntimeError. Returns only once the thread state is gone.
        """
        if not self._xthread_initialized:
            raise RuntimeError("Thread.__init__() not called")
        # The new thread may run before start() returns in the thread that
        # called it; it is started from its run() on, for itself and for
        # any other thread, and its sentinel exists from before it runs.
        if self._xthread_state == _NEW:
            raise RuntimeError("cannot join thread before it is started")
        if self._xthread_is_current():
            raise RuntimeError("cannot join current thread")
        self._xthread_wait(True, -1 if timeout is None else max(timeout, 0))

    def _xthread_is_current(self):
        # The ident alone does not tell: an ended thread's ident is reused
        # by the next thread the OS makes. A thread that is still alive
        # and has the calling thread's ident is the calling thread.
        return self._xthread_ident == _get_ident() and self.is_alive()

    def _xthread_wait(self, block, timeout):
        sentinel = self._xthread_sentinel
        if sentinel is None:
            return
        # Taken and let go again in one C call: an exception that ends the
        # wait (Ctrl-C, a stop sent to this thread) never leaves the
        # sentinel held, and a later join() still works (bpo-45274).
        if timeout == -1:
            ended = sentinel._wait_released(block)
        else:
            ended = sentinel._wait_released(block, timeout)
        # Remember the end (unless a failed start() has given the sentinel
        # up meanwhile).
        if ended and self._xthread_sentinel is sentinel:
            self._xthread_mark_stopped()

    def _xthread_mark_stopped(self):
        self._xthread_state = _STOPPED
        self._xthread_sentinel = None

    def is_alive(self):
        """Whether the thread has started and its thread state still
        exists."""
        assert self._xthread_initialized, "Thread.__init__() not called"
        if self._xthread_state in (_NEW, _STOPPED):
            return False
        self._xthread_wait(False, -1)
        return self._xthread_state != _STOPPED

    # Stopping the thread

    def raise_exc(self, exc):
        """Raise *exc* (an exception class or instance) in this thread.

        Returns True when the thread took it, False when it has already
        ended. Only this very thread can take it, never a later one that
        reuses its ident. It is raised at the thread's next point where
        the interpreter checks (after a call, at a loop's jump) and the
        handlers of its frame apply, so its ``except``, ``finally`` and
        ``with`` exits run; at once in one of xthread's killable waits; a
        thread blocked in another C call raises it when that call returns.
        An exception sent while the thread is in ``xthread.shield()`` is
        held back until the shield exits.
        """
        if not self._xthread_initialized:
            raise RuntimeError("Thread.__init__() not called")
        if self._xthread_state == _NEW:
            raise RuntimeError("cannot raise in a thread before it is started")
        if not self.is_alive():
            return False
        return _deliver(self._xthread_ident, exc,
                        generation=self._xthread_generation)

    def kill(self, timeout=None, *, interval=0.1, attempts=10):
        """Raise ``xthread.ThreadKilled`` in this thread and wait up to
        *timeout* seconds (None: no limit) for it to end.

        If the thread catches the exception and carries on, it is sent
        again every *interval* seconds, at most *attempts* times in all.
        Returns a ``KillResult``, true when the thread ended, which tells
        when the exception was sent and landed, how long the thread took
        to end, whether the frame's cleanup may have been skipped (plain
        delivery was all that could be used), and, when it did not end,
        its stack and whether it sits in a C call that no exception can
        reach.
        """
        if not self._xthread_initialized:
            raise RuntimeError("Thread.__init__() not called")
        if self._xthread_state == _NEW:
            raise RuntimeError("cannot kill a thread before it is started")
        if self._xthread_is_current():
            raise RuntimeError("cannot kill the current thread; raise "
                               "ThreadKilled instead")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be non-negative or None")
        if not interval > 0:
            raise ValueError("interval must be greater than zero")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        ident = self._xthread_ident
        record = _find_record(ident)
        if record is not None and record.generation != self._xthread_generation:
            record = None
        start = _monotonic()
        deadline = None if timeout is None else start + timeout
        sent = 0
        sent_at = None
        while self.is_alive():
            if sent < attempts:
                now = _monotonic()
                # Again only to a thread that swallowed the last one: one
                # still unwinding with it (its except and finally blocks,
                # its cleanup) is left to finish; the timeout bounds it.
                if ((sent == 0 or not _handling(ident, _stop.ThreadKilled))
                        and _deliver(
                            ident,
                            _stop.ThreadKilled("killed by Thread.kill()"),
                            generation=self._xthread_generation)):
                    sent += 1
                    if sent_at is None:
                        sent_at = now
                wait = interval
            else:
                wait = None
            if deadline is not None:
                left = deadline - _monotonic()
                if left <= 0:
                    break
                wait = left if wait is None else min(wait, left)
            self._xthread_wait(True, -1 if wait is None else wait)
        ended = not self.is_alive()
        elapsed = _monotonic() - start
        landed_at = record.landed_at if record is not None else None
        unguarded = record is not None and record.unguarded
        if ended:
            return _stop.KillResult(True, sent_at, landed_at, elapsed, sent,
                                    cleanup_may_be_skipped=unguarded)
        stack, in_c_call = _stop._stuck_report(ident, record)
        return _stop.KillResult(False, sent_at, landed_at, elapsed, sent,
                                stack, in_c_call, unguarded)

    # Properties: kept apart from stdlib's private attributes

    @property
    def name(self):
        """A string used for identification purposes only."""
        assert self._xthread_initialized, "Thread.__init__() not called"
        return self._xthread_name

    @name.setter
    def name(self, name):
        assert self._xthread_initialized, "Thread.__init__() not called"
        self._xthread_name = str(name)

    @property
    def ident(self):
        """The thread's identifier (``threading.get_ident()`` in it), or
        None before start."""
        assert self._xthread_initialized, "Thread.__init__() not called"
        return self._xthread_ident

    @property
    def native_id(self):
        """The operating system's id of the thread, or None before start.

        Known once ``start()`` has returned (the thread wrote it first
        thing); read from another thread while ``start()`` runs, it waits
        for the new thread's first instruction (microseconds)."""
        assert self._xthread_initialized, "Thread.__init__() not called"
        native_id = self._xthread_native_id
        if (native_id is None and self._xthread_ident is not None
                and self._xthread_state != _STOPPED):
            # None from a thread that ended without running (at exit).
            native_id = _native_id(self._xthread_ident,
                                   self._xthread_generation)
            if native_id is not None:
                self._xthread_native_id = native_id
        return native_id

    @property
    def daemon(self):
        """Whether interpreter exit leaves this thread running instead of
        waiting for it. Settable only before start()."""
        assert self._xthread_initialized, "Thread.__init__() not called"
        return self._xthread_daemonic

    @daemon.setter
    def daemon(self, daemonic):
        if not self._xthread_initialized:
            raise RuntimeError("Thread.__init__() not called")
        if self._xthread_state != _NEW:
            raise RuntimeError("cannot set daemon status of active thread")
        self._xthread_daemonic = bool(daemonic)

    # What subclasses written for stdlib read: the common "thread with a
    # return value" recipe overrides run() and calls
    # self._target(*self._args, **self._kwargs). Aliases of this class's
    # own slots, read and written as stdlib's plain attributes are.

    @property
    def _target(self):
        return self._xthread_target

    @_target.setter
    def _target(self, target):
        self._xthread_target = target

    @property
    def _args(self):
        return self._xthread_args

    @_args.setter
    def _args(self, args):
        self._xthread_args = args

    @property
    def _kwargs(self):
        return self._xthread_kwargs

    @_kwargs.setter
    def _kwargs(self, kwargs):
        self._xthread_kwargs = kwargs

    # What threading.excepthook reads of args.thread when sys.stderr is
    # None: the stderr that was current when the thread was created.
    # Settable, as stdlib's plain attribute is.

    @property
    def _stderr(self):
        return self._xthread_stderr

    @_stderr.setter
    def _stderr(self, stderr):
        self._xthread_stderr = stderr

    # What threading._after_fork calls on the objects it lists. Only the
    # forking thread exists in the child; it keeps its sentinel (its C
    # bootstrap goes on there and releases it); every other thread is gone.

    def _xthread_after_fork(self, alive):
        if alive:
            # The forking thread: threading has made it _main_thread.
            self._xthread_ident = _get_ident()
            self._xthread_native_id = _xthread.get_native_id()
            _compat.become_main_thread(self)
        else:
            self._xthread_mark_stopped()

    if _compat.PY313:
        def _after_fork(self, new_ident=None):
            self._xthread_after_fork(new_ident is not None)
    else:
        def _reset_internal_locks(self, is_alive):
            self._xthread_after_fork(is_alive)

        def _stop(self):
            # Also what 3.9-3.12's threading._shutdown calls on
            # _main_thread, when that is this object in a forked child.
            self._xthread_mark_stopped()
            _compat.stopped(self)
