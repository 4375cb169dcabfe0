"""Storms: many stops sent at random moments to threads that use xthread's
locks, conditions, queues and limits. Afterwards every lock is free, every
``finally`` ran once per entry, no stop escaped its handler or was
replaced by another exception, and no thread is stuck.

Each storm is bounded in time (``STORM_S``) and every wait after it too.
"""
import gc
import random
import sys
import threading
import time

import pytest

import xthread
from helpers import JOIN_TIMEOUT

STORM_S = 3.0


class Stop(Exception):
    pass


class Storm:
    """Worker threads running ``body(i)`` in a loop that catches Stop;
    one killer thread sending Stop to a random worker, again and again."""

    def __init__(self, body, workers=8):
        self.body = body
        self.done = threading.Event()
        self.unexpected = []
        self.entered = [0] * workers
        self.left = [0] * workers
        # Daemon: a worker stuck by a bug fails the test, not the exit.
        self.threads = [xthread.Thread(target=self._work, args=(i,),
                                       name=f"storm-{i}", daemon=True)
                        for i in range(workers)]

    def _work(self, i):
        # A Stop may land anywhere, even between the handlers below: the
        # outer loop takes it up again.
        while True:
            try:
                while not self.done.is_set():
                    try:
                        self.entered[i] += 1
                        try:
                            self.body(i)
                        finally:
                            self.left[i] += 1
                    except Stop:
                        pass
                    except BaseException as exc:  # noqa: B902 - recorded
                        self.unexpected.append(repr(exc))
                return
            except Stop:
                continue

    @staticmethod
    def _where(frame):
        """Where a stuck thread is, innermost first."""
        where = []
        while frame is not None:
            where.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            frame = frame.f_back
        return where

    def run(self, seconds=STORM_S):
        for t in self.threads:
            t.start()
        rng = random.Random(1)
        sent = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rng.choice(self.threads).raise_exc(Stop)
            sent += 1
            if rng.random() < 0.5:
                time.sleep(rng.random() * 0.001)
        # What was sent last lands, then the workers leave their loops.
        time.sleep(0.1)
        self.done.set()
        for t in self.threads:
            t.join(JOIN_TIMEOUT)
        frames = sys._current_frames()
        stuck = {t.name: self._where(frames.get(t.ident))
                 for t in self.threads if t.is_alive()}
        del frames
        self.threads = [t for t in self.threads if t.is_alive()]
        gc.collect()
        assert not stuck, f"stuck after the storm: {stuck}"
        assert not self.unexpected, self.unexpected[:5]
        # A Stop can land after `entered += 1` and before the try: at most
        # one entry per Stop sent may lack its exit.
        assert sum(self.left) <= sum(self.entered)
        assert sent > 100
        return sent


def test_storm_on_locks_conditions_and_queues_leaves_them_free():
    rlock = xthread.RLock()
    lock = xthread.Lock()
    cond = xthread.Condition()
    cond_plain = xthread.Condition(xthread.Lock())
    sem = xthread.Semaphore(2)
    bsem = xthread.BoundedSemaphore(1)
    event = xthread.Event()
    q = xthread.Queue()

    def body(i):
        k = i % 6
        if k == 0:
            with rlock:
                with rlock:
                    pass
        elif k == 1:
            with cond:
                cond.wait(0.0005)
        elif k == 2:
            with cond_plain:
                cond_plain.notify()
                cond_plain.wait(0.0005)
        elif k == 3:
            with sem:
                with lock:
                    pass
            event.wait(0.0005)
        elif k == 4:
            with bsem:
                pass
        else:
            q.put(1)
            q.get(timeout=0.01)

    Storm(body).run()
    # Nothing is left held, and no permit was lost or added.
    assert not rlock.locked() and not lock.locked()
    for c in (cond, cond_plain):
        assert c.acquire(timeout=JOIN_TIMEOUT)
        c.release()
    assert sem.acquire(timeout=JOIN_TIMEOUT)
    assert sem.acquire(timeout=JOIN_TIMEOUT)
    assert not sem.acquire(timeout=0.01)
    assert bsem.acquire(timeout=JOIN_TIMEOUT)
    with pytest.raises(ValueError):
        bsem.release()
        bsem.release()
    assert not q.mutex.locked()


def test_storm_on_nested_time_limits_keeps_every_limit_working():
    fired = []

    def body(i):
        try:
            with xthread.time_limit(0.002):
                with xthread.time_limit(0.001):
                    xthread.sleep(0.01)
        except xthread.TimeLimitExceeded:
            fired.append(i)

    Storm(body, workers=4).run()
    assert fired
    # The watchdog still serves limits: a fresh one fires.
    with pytest.raises(xthread.TimeLimitExceeded):
        with xthread.time_limit(0.01):
            xthread.sleep(JOIN_TIMEOUT)
    assert not sys.exc_info()[0]
