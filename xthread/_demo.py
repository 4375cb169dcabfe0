"""``python -m xthread demo``: a pool stopping every kind of task.

A pool of three workers gets six tasks: one that finishes, one spinning in
Python, one in a killable wait, one that swallows the first stop, one over
its time limit, and one asleep in ``time.sleep``. Up to CPython 3.14 no
exception reaches a thread inside that call: the task is reported stuck,
its worker replaced, and it is released once the call returns. From 3.15
xthread signals the thread out of the call and the task is stopped like
the others. Each outcome is printed as it arrives, then the pool's health.
Exit status 0 when every outcome is the one expected.
"""
import sys
import threading
import time

from ._pool import ThreadPoolExecutor
from ._stop import _SIGNAL_WAKES, TimeLimitExceeded
from ._sync import Event

WORKERS = 3
GRACE = 0.3
LIMIT = 0.2
SLEEP = 1.5
# Every wait here is bounded, so that a fault ends the demo instead of
# hanging it.
BOUND = 10.0


def finishes(started):
    started.set()
    return sum(range(100_000))


def spins(started):
    started.set()
    while True:
        pass


def waits(started):
    started.set()
    Event().wait()


def swallows(started):
    started.set()
    try:
        while True:
            pass
    except BaseException:
        pass            # carries on: the pool sends the stop again
    while True:
        pass


def sleeps(started):
    started.set()
    time.sleep(SLEEP)
    return "woke up"


class _Started:
    """Set by a task as it starts; remembers when."""

    def __init__(self):
        self.event = threading.Event()
        self.at = None

    def set(self):
        self.at = time.monotonic()
        self.event.set()

    def wait(self, timeout):
        return self.event.wait(timeout)


class _Printer:
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def __call__(self, label, text):
        with self.lock:
            print("%7.1f ms  %-26s %s" % ((time.monotonic() - self.t0) * 1e3,
                                         label, text),
                  file=self.out, flush=True)


def run(out=sys.stdout):
    say = _Printer(out)
    failures = []
    print("xthread demo: a pool of %d workers, grace period %d ms; %s"
          % (WORKERS, GRACE * 1e3,
             "a thread in time.sleep is signalled out of it (CPython 3.15+)"
             if _SIGNAL_WAKES else
             "no exception reaches a thread in time.sleep before CPython "
             "3.15"), file=out, flush=True)
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="demo",
                              grace=GRACE)
    done = threading.Semaphore(0)
    plans = [
        # label, function, how it is stopped, what it must end as
        ("finishes", finishes, None, "finished"),
        ("spins in Python", spins, "cancel", "stopped"),
        ("waits in Event.wait()", waits, "cancel", "stopped"),
        ("swallows the stop", swallows, "cancel", "stopped"),
        ("over a %d ms limit" % (LIMIT * 1e3), spins, "limit", "limit"),
        ("in time.sleep(%g)" % SLEEP, sleeps, "cancel",
         "stopped" if _SIGNAL_WAKES else "stuck"),
    ]
    tasks = []
    for label, fn, how, expect in plans:
        started = _Started()
        if how == "limit":
            future = pool.submit_with_limit(LIMIT, fn, started)
        else:
            future = pool.submit(fn, started)
        tasks.append((label, future, started, how, expect))
        if len(tasks) % WORKERS == 0:
            # Each batch fills the pool; stop it before the next one.
            _stop_batch(tasks[-WORKERS:], say, done, failures)
    _stop_batch(tasks[len(tasks) - len(tasks) % WORKERS:], say, done,
                failures)
    for _ in tasks:
        if not done.acquire(timeout=BOUND):
            failures.append("an outcome did not arrive")
            break

    # Any stuck worker was replaced: the pool still runs WORKERS tasks at
    # once.
    barrier = threading.Barrier(WORKERS, timeout=BOUND)
    batch = [pool.submit(barrier.wait) for _ in range(WORKERS)]
    try:
        for f in batch:
            f.result(BOUND)
        say("capacity", "%d tasks ran at once%s" % (
            WORKERS, " after the replacement" if pool.health().replaced
            else ""))
    except Exception as exc:
        failures.append("capacity not kept: %r" % (exc,))
        barrier.abort()

    for stuck in pool.stuck:
        if stuck.released.wait(BOUND):
            say("in time.sleep(%g)" % SLEEP,
                "released: the call returned after %.0f ms, its worker "
                "exited quietly"
                % ((stuck.released_at - stuck.sent_at) * 1e3))
        else:
            failures.append("the sleeping task was never released")
    alive = pool.health().workers
    pool.shutdown(wait=True)
    health = pool.health()
    print("pool health: %d of %d workers alive, %d replaced, %d still "
          "stuck, tasks lost: %s"
          % (alive, health.max_workers, health.replaced, len(health.stuck),
             health.lost or "none"),
          file=out, flush=True)
    if alive != WORKERS:
        failures.append("%d workers alive, expected %d" % (alive, WORKERS))
    if health.lost:
        failures.append("%d tasks lost" % health.lost)
    for failure in failures:
        print("FAILED: " + failure, file=out, flush=True)
    return 1 if failures else 0


def _stop_batch(batch, say, done, failures):
    for label, future, started, how, expect in batch:
        if not started.wait(BOUND):
            failures.append("%s: never started" % label)
            continue
        # From the cancel, or (no cancel) from the task's start.
        sent = time.monotonic() if how == "cancel" else started.at
        if how == "cancel" and not future.cancel():
            failures.append("%s: cancel() returned False" % label)
        future.add_stopped_callback(
            lambda f, label=label, sent=sent, expect=expect:
            _report(say, done, failures, label, f, sent, expect))


def _report(say, done, failures, label, future, sent, expect):
    ms = (time.monotonic() - sent) * 1e3
    if future.stuck is not None:
        outcome = "stuck"
        stuck = future.stuck
        say(label, "stuck %s at %s %.0f ms after the cancel: worker "
            "written off and replaced" % ("in a C call" if stuck.in_c_call
                              else "in Python", stuck.where, ms))
    elif future.cancelled():
        outcome = "stopped"
        say(label, "stopped after %.1f ms (cancelled)" % ms)
    elif isinstance(future.exception(0), TimeLimitExceeded):
        outcome = "limit"
        say(label, "stopped %.1f ms after it started: %s"
            % (ms, future.exception(0)))
    elif future.exception(0) is None:
        outcome = "finished"
        say(label, "finished %.1f ms after it started" % ms)
    else:
        outcome = "failed"
        say(label, "failed: %r" % (future.exception(0),))
    if outcome != expect:
        failures.append("%s: %s, expected %s" % (label, outcome, expect))
    done.release()

