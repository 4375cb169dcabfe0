"""xthread's killable primitives as drop-ins for threading's and queue's.

Every behaviour test takes ``impl`` and runs once with stdlib's classes and
once with xthread's, so the test itself is checked against the original.
(That their waits are killable is tested in test_stop.py.)
"""
import queue
import threading
import time
import types

import pytest

import _xthread
import xthread
from helpers import JOIN_TIMEOUT, join_or_fail

#: A wait that is meant to time out.
SHORT = 0.05

STDLIB = types.SimpleNamespace(
    name="stdlib", Lock=threading.Lock, RLock=threading.RLock,
    Condition=threading.Condition, Event=threading.Event,
    Semaphore=threading.Semaphore, BoundedSemaphore=threading.BoundedSemaphore,
    Queue=queue.Queue, LifoQueue=queue.LifoQueue,
    PriorityQueue=queue.PriorityQueue)

XTHREAD = types.SimpleNamespace(
    name="xthread", Lock=xthread.Lock, RLock=xthread.RLock,
    Condition=xthread.Condition, Event=xthread.Event,
    Semaphore=xthread.Semaphore, BoundedSemaphore=xthread.BoundedSemaphore,
    Queue=xthread.Queue, LifoQueue=xthread.LifoQueue,
    PriorityQueue=xthread.PriorityQueue)


@pytest.fixture(params=[STDLIB, XTHREAD], ids=lambda impl: impl.name)
def impl(request):
    return request.param


def run(function, *args):
    """Runs function(*args) in a daemon thread; returns (thread, box):
    box.result / box.exc once box.done is set."""
    box = types.SimpleNamespace(result=None, exc=None, done=threading.Event())

    def target():
        try:
            box.result = function(*args)
        except BaseException as exc:
            box.exc = exc
        finally:
            box.done.set()

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def finish(t, box):
    assert box.done.wait(JOIN_TIMEOUT), "the thread's call did not end"
    join_or_fail(t)
    if box.exc is not None:
        raise box.exc
    return box.result


def test_types():
    assert issubclass(xthread.Queue, queue.Queue)
    assert issubclass(xthread.LifoQueue, queue.LifoQueue)
    assert issubclass(xthread.PriorityQueue, queue.PriorityQueue)
    assert xthread.Lock is _xthread.LockType
    assert isinstance(xthread.Lock(), _xthread.LockType)
    assert issubclass(xthread.BoundedSemaphore, xthread.Semaphore)


# Lock

def test_lock_basics(impl):
    lock = impl.Lock()
    assert not lock.locked()
    assert lock.acquire() is True
    assert lock.locked()
    assert lock.acquire(blocking=False) is False
    assert lock.acquire(timeout=SHORT) is False
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


def test_lock_context_manager(impl):
    lock = impl.Lock()
    with lock as got:
        assert got is True
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(KeyError):
        with lock:
            raise KeyError
    assert not lock.locked()


def test_lock_released_by_another_thread(impl):
    lock = impl.Lock()
    lock.acquire()
    finish(*run(lock.release))
    assert not lock.locked()


def test_lock_acquire_argument_errors(impl):
    lock = impl.Lock()
    with pytest.raises(ValueError):
        lock.acquire(False, 1)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-2)


def test_lock_handed_to_waiter(impl):
    lock = impl.Lock()
    lock.acquire()
    t, box = run(lock.acquire, True, JOIN_TIMEOUT)
    lock.release()
    assert finish(t, box) is True
    assert lock.locked()
    lock.release()


# RLock

def test_rlock_reentrancy(impl):
    rlock = impl.RLock()
    for _ in range(3):
        assert rlock.acquire()
    # Another thread cannot take it at any depth.
    assert finish(*run(rlock.acquire, True, SHORT)) is False
    rlock.release()
    rlock.release()
    assert finish(*run(rlock.acquire, False)) is False
    rlock.release()
    # Free now: another thread takes it (and keeps it: it ends holding it).
    assert finish(*run(rlock.acquire, True, JOIN_TIMEOUT)) is True


def test_rlock_release_by_non_owner(impl):
    rlock = impl.RLock()
    with pytest.raises(RuntimeError):
        rlock.release()
    rlock.acquire()
    t, box = run(rlock.release)
    with pytest.raises(RuntimeError):
        finish(t, box)
    rlock.release()
    with pytest.raises(RuntimeError):
        rlock.release()


def test_rlock_release_save_only_by_its_holder():
    # Condition.wait lets go of every level with _release_save: only the
    # holder may (CPython's RLock refuses others from 3.13; before, any
    # thread could let go of another's hold). xthread refuses on every
    # version.
    rlock = xthread.RLock()
    with pytest.raises(RuntimeError):
        rlock._release_save()
    rlock.acquire()
    rlock.acquire()
    t, box = run(rlock._release_save)
    with pytest.raises(RuntimeError):
        finish(t, box)
    assert rlock._is_owned() and rlock._recursion_count() == 2
    saved = rlock._release_save()
    assert not rlock.locked() and not rlock._is_owned()
    assert finish(*run(rlock.acquire, False)) is True   # and keeps it
    with pytest.raises(RuntimeError):
        rlock._release_save()
    rlock = xthread.RLock()
    rlock._acquire_restore(saved)
    assert rlock._recursion_count() == 2
    rlock.release()
    rlock.release()
    assert not rlock.locked()


def test_rlock_context_manager(impl):
    rlock = impl.RLock()
    with rlock:
        with rlock:
            assert finish(*run(rlock.acquire, False)) is False
        assert finish(*run(rlock.acquire, False)) is False
    t, box = run(lambda: rlock.acquire(timeout=JOIN_TIMEOUT)
                 and rlock.release() is None)
    assert finish(t, box) is True


# Condition

@pytest.mark.parametrize("lock_kind", [None, "Lock", "RLock"])
def test_condition_notify_and_notify_all(impl, lock_kind):
    lock = None if lock_kind is None else getattr(impl, lock_kind)()
    cond = impl.Condition(lock)
    n = 4
    waiting = []
    woke = []

    def waiter(i):
        with cond:
            waiting.append(i)
            if cond.wait(JOIN_TIMEOUT):
                woke.append(i)

    started = [run(waiter, i) for i in range(n)]

    def all_waiting():
        # A waiter that appended is inside wait() once the lock is free.
        with cond:
            return len(waiting) == n

    deadline = time.monotonic() + JOIN_TIMEOUT
    while not all_waiting():
        assert time.monotonic() < deadline, "waiters did not start"
        time.sleep(0.001)
    with cond:
        cond.notify()
    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        with cond:
            if woke:
                break
        assert time.monotonic() < deadline, "notify() woke nobody"
        time.sleep(0.001)
    with cond:
        assert len(woke) == 1
        assert len(cond._waiters) == n - 1
        cond.notify_all()
    for t, box in started:
        finish(t, box)
    assert sorted(woke) == list(range(n))


def test_condition_wait_timeout(impl):
    cond = impl.Condition()
    with cond:
        start = time.monotonic()
        assert cond.wait(SHORT) is False
        assert time.monotonic() - start >= SHORT * 0.9
        assert cond.wait(0) is False
        # The lock is held again after the wait.
        assert cond._is_owned()


def test_condition_wait_for(impl):
    cond = impl.Condition()
    state = {"ready": False}
    with cond:
        assert cond.wait_for(lambda: "value") == "value"
        assert cond.wait_for(lambda: state["ready"], SHORT) is False

    def waiter():
        with cond:
            return cond.wait_for(lambda: state["ready"] and "yes",
                                 JOIN_TIMEOUT)

    t, box = run(waiter)
    with cond:
        state["ready"] = True
        cond.notify_all()
    assert finish(t, box) == "yes"


def test_condition_without_lock(impl):
    cond = impl.Condition()
    with pytest.raises(RuntimeError):
        cond.wait(SHORT)
    with pytest.raises(RuntimeError):
        cond.notify()
    with pytest.raises(RuntimeError):
        cond.notify_all()


def test_condition_over_rlock_held_twice(impl):
    cond = impl.Condition(impl.RLock())
    with cond:
        with cond:
            t, box = run(lambda: cond.acquire(timeout=JOIN_TIMEOUT)
                         and (cond.notify(), cond.release()))
            # wait() releases the lock at every depth, and restores it.
            assert cond.wait(JOIN_TIMEOUT) is True
            assert cond._is_owned()
        assert cond._is_owned()
    finish(t, box)
    assert finish(*run(lambda: cond.acquire(False)))


# Event

def test_event(impl):
    ev = impl.Event()
    assert not ev.is_set()
    assert ev.wait(SHORT) is False
    assert ev.wait(0) is False
    ev.set()
    assert ev.is_set()
    assert ev.wait() is True
    assert ev.wait(0) is True
    ev.clear()
    assert not ev.is_set()
    assert ev.wait(SHORT) is False


def test_event_wakes_waiters(impl):
    ev = impl.Event()
    started = [run(ev.wait, JOIN_TIMEOUT) for _ in range(3)]
    ev.set()
    assert [finish(t, box) for t, box in started] == [True] * 3


# Semaphore, BoundedSemaphore

@pytest.mark.parametrize("kind", ["Semaphore", "BoundedSemaphore"])
def test_semaphore_counts(impl, kind):
    sem = getattr(impl, kind)(2)
    assert sem.acquire()
    assert sem.acquire(blocking=False)
    assert sem.acquire(blocking=False) is False
    assert sem.acquire(timeout=SHORT) is False
    sem.release()
    assert sem.acquire(timeout=JOIN_TIMEOUT)
    sem.release(2)
    with sem:
        with sem:
            assert sem.acquire(blocking=False) is False
    assert sem.acquire(blocking=False)
    sem.release()


@pytest.mark.parametrize("kind", ["Semaphore", "BoundedSemaphore"])
def test_semaphore_errors(impl, kind):
    cls = getattr(impl, kind)
    with pytest.raises(ValueError):
        cls(-1)
    sem = cls(1)
    with pytest.raises(ValueError):
        sem.acquire(False, 1)
    with pytest.raises(ValueError):
        sem.release(0)


def test_semaphore_release_beyond_initial(impl):
    sem = impl.Semaphore(1)
    sem.release()               # a plain semaphore may go above
    assert sem.acquire(blocking=False)
    assert sem.acquire(blocking=False)
    assert sem.acquire(blocking=False) is False


def test_bounded_semaphore_over_release(impl):
    sem = impl.BoundedSemaphore(2)
    with pytest.raises(ValueError):
        sem.release()
    sem.acquire()
    with pytest.raises(ValueError):
        sem.release(2)
    sem.release()
    with pytest.raises(ValueError):
        sem.release()


def test_semaphore_wakes_waiter(impl):
    sem = impl.Semaphore(0)
    t, box = run(sem.acquire, True, JOIN_TIMEOUT)
    sem.release()
    assert finish(t, box) is True


# Queues

def test_queue_put_get_task_done_join(impl):
    q = impl.Queue()
    n = 50
    got = []

    def consumer():
        for _ in range(n):
            item = q.get(timeout=JOIN_TIMEOUT)
            got.append(item)
            q.task_done()

    c = run(consumer)
    for i in range(n):
        q.put(i)
    joiner = run(q.join)
    finish(*joiner)
    finish(*c)
    assert got == list(range(n))
    assert q.empty()
    assert q.unfinished_tasks == 0
    with pytest.raises(ValueError):
        q.task_done()


def test_queue_join_waits_for_task_done(impl):
    q = impl.Queue()
    q.put("x")
    assert q.get() == "x"
    t, box = run(q.join)
    assert not box.done.wait(SHORT)     # one task not done yet
    q.task_done()
    finish(t, box)


def test_queue_maxsize(impl):
    q = impl.Queue(maxsize=2)
    q.put(1)
    q.put_nowait(2)
    assert q.full()
    assert q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put(3, timeout=SHORT)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    # A blocked put goes through once there is room.
    t, box = run(q.put, 3, True, JOIN_TIMEOUT)
    assert q.get(timeout=JOIN_TIMEOUT) == 1
    finish(t, box)
    assert [q.get(), q.get()] == [2, 3]
    with pytest.raises(queue.Empty):
        q.get(timeout=SHORT)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(ValueError):
        q.get(timeout=-1)


def test_queue_get_waits_for_put(impl):
    q = impl.Queue()
    t, box = run(q.get, True, JOIN_TIMEOUT)
    q.put("item")
    assert finish(t, box) == "item"


def test_lifo_and_priority_order(impl):
    lq = impl.LifoQueue()
    pq = impl.PriorityQueue()
    for i in (3, 1, 2):
        lq.put(i)
        pq.put(i)
    assert [lq.get_nowait() for _ in range(3)] == [2, 1, 3]
    assert [pq.get_nowait() for _ in range(3)] == [1, 2, 3]
    with pytest.raises(queue.Empty):
        lq.get(timeout=SHORT)
    with pytest.raises(queue.Empty):
        pq.get(timeout=SHORT)


def test_queue_many_producers_and_consumers(impl):
    q = impl.Queue(maxsize=5)
    per, producers, consumers = 200, 4, 4
    out = []
    out_lock = threading.Lock()

    def produce(base):
        for i in range(per):
            q.put(base + i, timeout=JOIN_TIMEOUT)

    def consume():
        while True:
            item = q.get(timeout=JOIN_TIMEOUT)
            if item is None:
                return
            with out_lock:
                out.append(item)

    cs = [run(consume) for _ in range(consumers)]
    ps = [run(produce, k * per) for k in range(producers)]
    for p in ps:
        finish(*p)
    for _ in cs:
        q.put(None, timeout=JOIN_TIMEOUT)
    for c in cs:
        finish(*c)
    assert sorted(out) == list(range(per * producers))
