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
_get_ident = _xthread.get_ident
_shield_enter = _xthread._shield_enter
_shield_exit = _xthread._shield_exit


class RLock:
    """A reentrant lock: the thread that holds it may acquire it again and
    must release it as many times. Killable, as ``Lock``."""

    __slots__ = ("_block", "_owner", "_count", "__weakref__")

    def __init__(self):
        self._block = _allocate_lock()
        self._owner = None
        self._count = 0

    def __repr__(self):
        owner = self._owner
        return "<%s %s.%s object owner=%r count=%d at %s>" % (
            "locked" if self._block.locked() else "unlocked",
            type(self).__module__, type(self).__qualname__,
            owner, self._count, hex(id(self)))

    def acquire(self, blocking=True, timeout=-1):
        me = _get_ident()
        if self._owner == me:
            self._count += 1
            return True
        rc = self._block.acquire(blocking, timeout)
        if rc:
            self._owner = me
            self._count = 1
        return rc

    __enter__ = acquire

    def release(self):
        if self._owner != _get_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if not self._count:
            self._owner = None
            self._block.release()

    def __exit__(self, t, v, tb):
        self.release()

    def locked(self):
        return self._block.locked()

    # What Condition uses to wait with an RLock held at any depth.

    def _is_owned(self):
        return self._owner == _get_ident()

    def _release_save(self):
        if self._count == 0:
            raise RuntimeError("cannot release un-acquired lock")
        state = (self._count, self._owner)
        self._count = 0
        self._owner = None
        self._block.release()
        return state

    def _acquire_restore(self, state):
        self._block.acquire()
        self._count, self._owner = state

    def _at_fork_reinit(self):
        self._block._at_fork_reinit()
        self._owner = None
        self._count = 0


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

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def __repr__(self):
        return "<Condition(%s, %d)>" % (self._lock, len(self._waiters))

    def _release_save(self):
        self._lock.release()

    def _acquire_restore(self, state):
        self._lock.acquire()

    def _is_owned(self):
        # A plain lock: held, and not by us, cannot be told apart.
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
        saved_state = self._release_save()
        gotit = False
        try:
            if timeout is None:
                gotit = waiter.acquire()
            elif timeout > 0:
                gotit = waiter.acquire(True, timeout)
            else:
                gotit = waiter.acquire(False)
            return gotit
        finally:
            # Take the lock back even if this thread is being stopped: the
            # caller's `with` will release it. A second exception sent
            # meanwhile waits until the lock is held again.
            _shield_enter()
            try:
                self._acquire_restore(saved_state)
                if not gotit:
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass
            finally:
                _shield_exit()

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
