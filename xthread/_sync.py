"""Killable waits: drop-ins for ``threading``'s and ``queue``'s primitives.

Every wait here parks the thread in ``_xthread``, where an exception sent
to it through xthread (``raise_in_thread``, ``Thread.kill``,
``time_limit``) wakes it at once and is raised at the wait. A wait in
``time.sleep`` or a stdlib lock ends only when the call returns.

``Lock`` is the C lock; ``RLock``, ``Condition``, ``Event``,
``Semaphore``, ``BoundedSemaphore`` and the queues are built on it with
stdlib's interfaces and error messages.
"""
import collections as _collections
import queue as _queue
import time as _time

import _xthread

__all__ = [
    "sleep", "Lock", "RLock", "Condition", "Event", "Semaphore",
    "BoundedSemaphore", "Queue", "LifoQueue", "PriorityQueue",
]

sleep = _xthread.sleep
Lock = _xthread.LockType
_allocate_lock = _xthread.allocate_lock
_shield_enter = _xthread._shield_enter
_shield_exit = _xthread._shield_exit
_call_unshielded = _xthread._call_unshielded


# C, so that its bookkeeping and its wait are one call: an exception that
# lands as acquire() returns never finds the lock taken and its owner not
# yet noted (see src/_xthread/lock.c, "RLock").
RLock = _xthread.RLock


class Condition:
    """A condition variable over a lock (an ``RLock`` by default). Its
    waits are killable; a thread killed while waiting gets the lock back
    before the exception propagates, so ``with cond:`` releases it."""

    def __init__(self, lock=None):
        if lock is None:
            lock = RLock()
        self._lock = lock
        self.acquire = lock.acquire
        self.release = lock.release
        for name in ("_release_save", "_acquire_restore", "_is_owned"):
            method = getattr(lock, name, None)
            if method is not None:
                setattr(self, name, method)
        self._waiters = _collections.deque()

    # The lock's own __enter__ and __exit__, looked up by the with
    # statement and called by it: no frame of this class runs between the
    # lock being taken and the caller's with-block starting, so an
    # exception that lands there finds the block's exit in place.
    def _lock_enter(self):
        return self._lock.__enter__

    def _lock_exit(self):
        return self._lock.__exit__

    __enter__ = property(_lock_enter,
                         doc="The lock's __enter__ (takes the lock).")
    __exit__ = property(_lock_exit,
                        doc="The lock's __exit__ (releases the lock).")

    def __repr__(self):
        return "<Condition(%s, %d)>" % (self._lock, len(self._waiters))

    def _release_save(self):
        self._lock.release()

    def _acquire_restore(self, state):
        self._lock.acquire()

    def _is_owned(self):
        # A plain lock: held, and not by us, cannot be told apart. (No
        # exception lands between the two calls: see _NOT_HERE.)
        if self._lock.acquire(False):
            self._lock.release()
            return False
        return True

    def wait(self, timeout=None):
        """Release the lock, wait until notified or until *timeout*
        seconds pass, take the lock back; return whether notified."""
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = _allocate_lock()
        waiter.acquire()
        self._waiters.append(waiter)
        # Shielded, but for the wait itself: an exception sent to this
        # thread lands in the wait, or is held back until the lock is
        # held again; never while it is let go, where the caller's `with`
        # would then release a lock it does not hold.
        _shield_enter()
        try:
            saved_state = self._release_save()
            gotit = False
            try:
                if timeout is None:
                    gotit = _call_unshielded(waiter.acquire)
                elif timeout > 0:
                    gotit = _call_unshielded(
                        lambda: waiter.acquire(True, timeout))
                else:
                    gotit = waiter.acquire(False)
            finally:
                self._acquire_restore(saved_state)
                if not gotit:
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass
        finally:
            # What was held back is raised here, the lock held again: the
            # caller's `with` releases it.
            _shield_exit()
        return gotit

    def wait_for(self, predicate, timeout=None):
        """Wait until predicate() is true, or until *timeout* seconds
        pass; return the last value of predicate()."""
        endtime = None
        waittime = timeout
        result = predicate()
        while not result:
            if waittime is not None:
                if endtime is None:
                    endtime = _time.monotonic() + waittime
                else:
                    waittime = endtime - _time.monotonic()
                    if waittime <= 0:
                        break
            self.wait(waittime)
            result = predicate()
        return result

    def notify(self, n=1):
        """Wake up to *n* threads waiting on this condition."""
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        waiters = self._waiters
        # A waiter taken off the queue is always woken: no exception lands
        # in between (see _NOT_HERE).
        while waiters and n > 0:
            waiter = waiters.popleft()
            try:
                waiter.release()
            except RuntimeError:
                # It timed out or was stopped, and is removing itself.
                continue
            n -= 1

    def notify_all(self):
        """Wake every thread waiting on this condition."""
        self.notify(len(self._waiters))

    def notifyAll(self):
        self.notify_all()


class Semaphore:
    """A counter that acquire() decrements, waiting while it is zero, and
    release() increments."""

    def __init__(self, value=1):
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._cond = Condition(Lock())
        self._value = value

    def __repr__(self):
        return "<%s.%s at %s: value=%d>" % (
            type(self).__module__, type(self).__qualname__, hex(id(self)),
            self._value)

    def acquire(self, blocking=True, timeout=None):
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        rc = False
        endtime = None
        with self._cond:
            while self._value == 0:
                if not blocking:
                    break
                if timeout is not None:
                    if endtime is None:
                        endtime = _time.monotonic() + timeout
                    else:
                        timeout = endtime - _time.monotonic()
                        if timeout <= 0:
                            break
                self._cond.wait(timeout)
            else:
                self._value -= 1
                rc = True
        return rc

    __enter__ = acquire

    def release(self, n=1):
        if n < 1:
            raise ValueError("n must be one or more")
        with self._cond:
            self._value += n
            self._cond.notify(n)

    def __exit__(self, t, v, tb):
        self.release()


class BoundedSemaphore(Semaphore):
    """A semaphore whose release() beyond its initial value is an error."""

    def __init__(self, value=1):
        super().__init__(value)
        self._initial_value = value

    def release(self, n=1):
        if n < 1:
            raise ValueError("n must be one or more")
        with self._cond:
            if self._value + n > self._initial_value:
                raise ValueError("Semaphore released too many times")
            self._value += n
            self._cond.notify(n)


class Event:
    """A flag that threads wait on until another sets it."""

    def __init__(self):
        self._cond = Condition(Lock())
        self._flag = False

    def __repr__(self):
        return "<%s.%s at %s: %s>" % (
            type(self).__module__, type(self).__qualname__, hex(id(self)),
            "set" if self._flag else "unset")

    def is_set(self):
        return self._flag

    isSet = is_set

    def set(self):
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def clear(self):
        with self._cond:
            self._flag = False

    def wait(self, timeout=None):
        """Wait until the flag is set, or until *timeout* seconds pass;
        return the flag."""
        with self._cond:
            signaled = self._flag
            if not signaled:
                signaled = self._cond.wait(timeout)
            return signaled

    def _at_fork_reinit(self):
        self._cond = Condition(Lock())


class _KillableQueueMixin:
    """Replaces a stdlib queue's lock and conditions with killable ones;
    the queue's own methods (get, put, join, ...) are stdlib's."""

    def __init__(self, maxsize=0):
        super().__init__(maxsize)
        self.mutex = Lock()
        self.not_empty = Condition(self.mutex)
        self.not_full = Condition(self.mutex)
        self.all_tasks_done = Condition(self.mutex)


class Queue(_KillableQueueMixin, _queue.Queue):
    """``queue.Queue`` with killable waits."""


class LifoQueue(_KillableQueueMixin, _queue.LifoQueue):
    """``queue.LifoQueue`` with killable waits."""


class PriorityQueue(_KillableQueueMixin, _queue.PriorityQueue):
    """``queue.PriorityQueue`` with killable waits."""


# An exception sent to a thread inside these lands once they return, in
# the caller: never between a change they make and their return (a permit
# taken, an item got, a waiter woken), which the caller would not learn
# of. Queues run stdlib's methods over the killable conditions above.
# (Read by xthread._landing when it is first imported.)
_NOT_HERE = (
    Condition._lock_enter, Condition._lock_exit, Condition.wait, Condition.wait_for, Condition.notify,
    Condition.notify_all, Condition._is_owned, Condition._release_save,
    Condition._acquire_restore,
    Semaphore.acquire, Semaphore.release, BoundedSemaphore.release,
    Event.set, Event.clear, Event.wait,
    *{getattr(cls, name)
      for cls in (_queue.Queue, _queue.LifoQueue, _queue.PriorityQueue)
      for name in ("get", "put", "get_nowait", "put_nowait", "task_done",
                   "join", "qsize", "empty", "full", "_init", "_qsize",
                   "_put", "_get")},
)
