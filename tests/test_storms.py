"""Storms: many stops sent at random moments to threads that use xthread's
locks, conditions, queues and limits. Afterwards every lock is free, every
``finally`` ran once per entry, no stop escaped its handler or was
replaced by another exception, and no thread is stuck. Then the
interpreter's exit with daemon xthreads in every state, and a thread
start that the OS refuses.

Each storm is bounded in time (``STORM_S``) and every wait after it too.
"""
import gc
import os
import random
import sys
import threading
import time

import pytest

import xthread
from helpers import JOIN_TIMEOUT, assert_clean_exit, run_script

STORM_S = 3.0
# Stops sent at the least, whatever the time it takes.
STORM_LEAST = 101


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
        # Set by each worker inside its loop: a Stop sent before then
        # would be raised as run() starts, outside the loop that catches
        # it (start() returns before run() begins).
        self.ready = [threading.Event() for _ in range(workers)]
        # Daemon: a worker stuck by a bug fails the test, not the exit.
        self.threads = [xthread.Thread(target=self._work, args=(i,),
                                       name=f"storm-{i}", daemon=True)
                        for i in range(workers)]

    def _work(self, i):
        # A Stop may land anywhere, even between the handlers below: the
        # outer loop takes it up again.
        while True:
            try:
                self.ready[i].set()
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

    def _send(self, seed, deadline, counts, least):
        # For the storm's time, and on until `least` were sent: with the
        # GIL off, on a loaded machine, a delivery can take milliseconds
        # (arming stops the world), and the storm must still be one.
        rng = random.Random(seed)
        sent = 0
        bound = time.monotonic() + JOIN_TIMEOUT
        while ((time.monotonic() < deadline or sent < least)
               and time.monotonic() < bound):
            rng.choice(self.threads).raise_exc(Stop)
            sent += 1
            if rng.random() < 0.5:
                time.sleep(rng.random() * 0.001)
        counts.append(sent)

    def run(self, seconds=STORM_S, senders=1):
        """Sends from this thread and `senders - 1` more, all at once."""
        for t in self.threads:
            t.start()
        for ready in self.ready:
            assert ready.wait(JOIN_TIMEOUT), "a worker did not start"
        deadline = time.monotonic() + seconds
        counts = []
        least = -(-STORM_LEAST // senders)
        others = [threading.Thread(target=self._send,
                                   args=(seed, deadline, counts, least),
                                   daemon=True)
                  for seed in range(2, senders + 1)]
        for t in others:
            t.start()
        self._send(1, deadline, counts, least)
        for t in others:
            t.join(JOIN_TIMEOUT)
        assert not any(t.is_alive() for t in others), "a sender is stuck"
        sent = sum(counts)
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
        assert sent >= STORM_LEAST, "the senders could not send the storm"
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


def _step(n):
    return n % 3


@pytest.mark.skipif(not hasattr(sys, "monitoring"),
                    reason="sys.monitoring arming is 3.12+")
def test_storm_of_many_senders_leaves_no_arming_behind():
    """Four threads send at once to threads that run Python code, so that
    deliveries are armed, landed and disarmed concurrently, by senders and
    by the targets themselves. Afterwards xthread holds no sys.monitoring
    tool id: it gives its id back only when its count of armed deliveries
    comes back to exactly zero, so a lost or doubled count shows here."""
    def body(i):
        n = 0
        for _ in range(100):
            n += _step(n)

    Storm(body).run(senders=4)
    mon = sys.monitoring
    assert [mon.get_tool(tool) for tool in range(6)].count("xthread") == 0


class Hit(Exception):
    pass


def test_senders_racing_into_one_scope_lose_and_double_nothing():
    """Four threads send scoped exceptions into one open Scope at once.
    The target holds a shield and takes them only in short unshielded
    killable waits, so every delivery goes through the record's
    held-back and queued paths while other senders change them. Each
    raise_exc that returned True lands exactly once, before the block
    ends: without the record's lock (GIL off), two senders overwrote
    each other's pending exception or queue and one was lost."""
    scope = xthread.Scope()
    entered = threading.Event()
    sending_done = threading.Event()
    sent = []
    received = []
    per_sender = 500

    def target():
        import _xthread
        with scope:
            with xthread.shield():
                entered.set()
                deadline = time.monotonic() + JOIN_TIMEOUT
                while time.monotonic() < deadline:
                    try:
                        _xthread._call_unshielded(
                            lambda: xthread.sleep(0.002))
                    except Hit:
                        received.append(1)
                    if sending_done.is_set() and len(received) >= sum(sent):
                        break

    t = xthread.Thread(target=target, daemon=True)
    t.start()
    assert entered.wait(JOIN_TIMEOUT)

    def send():
        n = 0
        for _ in range(per_sender):
            n += scope.raise_exc(Hit)
        sent.append(n)

    senders = [threading.Thread(target=send) for _ in range(4)]
    for s in senders:
        s.start()
    for s in senders:
        s.join(JOIN_TIMEOUT)
    assert not any(s.is_alive() for s in senders), "a sender is stuck"
    sending_done.set()
    t.join(JOIN_TIMEOUT)
    assert not t.is_alive(), "the target is stuck"
    assert sum(sent) == 4 * per_sender      # the block was open throughout
    assert len(received) == sum(sent)


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


# Exit storm: the interpreter exits while daemon xthreads are in every
# state. Exit code and stderr are what the same program gives without
# the threads; never a hang, a crash or an abort.

EXIT_STORM = """
    import sys, threading, time
    import _xthread, xthread

    how = sys.argv[1]
    ready = threading.Semaphore(0)

    def spin():
        ready.release()
        while True:
            pass

    def c_call():
        ready.release()
        time.sleep(3600)

    def killable():
        ready.release()
        xthread.sleep(3600)

    def in_limit():
        with xthread.time_limit(3600):
            ready.release()
            while True:
                pass

    def swallower():
        ready.release()
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass

    def locked(lock):
        ready.release()
        with lock:
            pass

    def starter():
        ready.release()
        while True:
            t = xthread.Thread(target=len, args=((),), daemon=True)
            try:
                t.start()
            except RuntimeError:
                return      # refused: the interpreter is exiting

    held = xthread.Lock()
    held.acquire()
    targets = [spin, c_call, killable, in_limit, swallower, starter,
               lambda: locked(held)]
    threads = []
    for target in targets:
        t = xthread.Thread(target=target, daemon=True)
        t.start()
        threads.append(t)
    # Busy pool workers: as with stdlib's pool, exit waits for their
    # tasks (so these end).
    def task(wait):
        ready.release()
        wait(0.3)
    pool = xthread.ThreadPoolExecutor(max_workers=2)
    pool.submit(task, time.sleep)
    pool.submit(task, xthread.sleep)
    for _ in range(len(targets) + 2):
        assert ready.acquire(timeout=30)
    # A kill under way at exit.
    killer = xthread.Thread(target=threads[4].kill, daemon=True)
    killer.start()
    if how == "exit":
        sys.exit(3)
    if how == "raise":
        raise KeyError("uncaught in main")
    print("end of script")
"""


@pytest.mark.skipif(sys.version_info < (3, 11), reason=(
    "known CPython 3.9/3.10 race: a daemon thread that wakes in take_gil "
    "after finalization has ended reads the freed interpreter (seen on "
    "3.10, 1 exit in about 13: SIGSEGV in COMPUTE_EVAL_BREAKER under "
    "take_gil, the main thread already in the C library's exit "
    "handlers); 3.9 shares that code"))
@pytest.mark.parametrize("how, rc", [("return", 0), ("exit", 3),
                                     ("raise", 1)])
def test_exit_storm_exits_as_stdlib_would(how, rc):
    for _ in range(3):
        code, out, err = run_script(EXIT_STORM, args=(how,))
        assert_clean_exit(code, out, err, expected_rc=rc)
        if how == "return":
            assert out == "end of script\n" and err == ""
        elif how == "exit":
            assert out == "" and err == ""
        else:
            assert err.rstrip().endswith("KeyError: 'uncaught in main'")
            assert err.count("Traceback") == 1, err


# Start refused: the OS will not make another thread.

def test_start_refused_by_the_os_raises_and_leaves_nothing_behind():
    # A stack no machine can map (a low RLIMIT_NPROC would do too, but
    # not for root, which CI may be).
    code, out, err = run_script("""
        import threading
        import _xthread, xthread

        before = _xthread._count()
        _xthread.stack_size(1 << 46)
        threading.stack_size(1 << 46)
        refused = []
        for cls in (xthread.Thread, threading.Thread):
            t = cls(target=len, args=((),))
            try:
                t.start()
            except RuntimeError as exc:
                refused.append((cls.__module__, str(exc)))
        with xthread.ThreadPoolExecutor(max_workers=1) as pool:
            try:
                pool.submit(len, ()).result(30)
            except RuntimeError as exc:
                refused.append(("pool", str(exc)))
        _xthread.stack_size(0)
        threading.stack_size(0)
        t = xthread.Thread(target=len, args=((),))
        t.start()
        t.join(30)
        print(len(refused), _xthread._count() == before, t.is_alive())
        for who, why in refused:
            print(who, why)
    """)
    assert_clean_exit(code, out, err)
    lines = out.splitlines()
    assert lines[0] == "3 True False", out
    assert all("can't start new thread" in line for line in lines[1:]), out


def test_storm_on_short_lived_threads_inside_limits():
    # Threads that enter and leave limits and end, while two killers send
    # them stops at random: the moments a limit fires, a scope closes and
    # a thread ends all meet a delivery (3.11 once crashed here). In a
    # subprocess, so that a crash fails this test only.
    code, out, err = run_script("""
        import random, sys, threading, time
        import xthread

        class Stop(Exception):
            pass

        STORM_S = float(sys.argv[1])
        end = time.monotonic() + STORM_S
        alive = []

        def body():
            try:
                for _ in range(3):
                    try:
                        with xthread.time_limit(0.001 + random.random() / 500):
                            x = 0
                            for i in range(300):
                                x += i
                    except (Stop, xthread.TimeLimitExceeded):
                        pass
            except Stop:
                pass

        def killer():
            rng = random.Random()
            while time.monotonic() < end:
                threads = list(alive)
                if threads:
                    rng.choice(threads).raise_exc(Stop)

        killers = [threading.Thread(target=killer) for _ in range(2)]
        for k in killers:
            k.start()
        started = 0
        while time.monotonic() < end:
            t = xthread.Thread(target=body, daemon=True)
            t.start()
            alive.append(t)
            started += 1
            if len(alive) > 8:
                alive.pop(0).join(30)
        for k in killers:
            k.join(30)
        for t in alive:
            t.join(30)
        print(started, sum(t.is_alive() for t in alive))
    """, args=(str(STORM_S),))
    assert_clean_exit(code, out, err)
    started, stuck = map(int, out.split())
    assert started > 10 and stuck == 0, out


@pytest.mark.skipif(os.environ.get("XTHREAD_SANITIZER") == "1", reason=(
    "under AddressSanitizer one child of a fork storm hung (3.11 job, "
    "once); whether in the sanitizer's runtime or in xthread is not "
    "known yet: the storm runs in every other job"))
def test_fork_storm_children_can_start_kill_and_join():
    # fork() while other threads start, end, wait on xthread's locks and
    # are killed: each child must be able to start, kill and join a
    # thread, and take and let go of the locks, then exit 0. A child that
    # hangs (a mutex inherited held) is killed and counted.
    code, out, err = run_script("""
        import os, signal, sys, threading, time
        import xthread

        STORM_S = float(sys.argv[1])
        end = time.monotonic() + STORM_S
        lock = xthread.Lock()
        cond = xthread.Condition()
        q = xthread.Queue()

        def worker():
            while time.monotonic() < end:
                with lock:
                    pass
                with cond:
                    cond.wait(0.0005)
                q.put(1)
                q.get(timeout=0.01)

        def spin():
            while True:
                pass

        def churn():
            while time.monotonic() < end:
                t = xthread.Thread(target=spin, daemon=True)
                t.start()
                t.kill(timeout=5)
                t.join(5)

        def in_child():
            global lock, cond, q
            if not getattr(sys, "_is_gil_enabled", lambda: True)():
                # Without the GIL the workers run during the fork, and one
                # may hold these in the child for good, as with stdlib's.
                lock = xthread.Lock()
                cond = xthread.Condition()
                q = xthread.Queue()
                q.put(1)
            t = xthread.Thread(target=spin, daemon=True)
            t.start()
            result = t.kill(timeout=10)
            t.join(10)
            ok = result.ended and not t.is_alive()
            ok = ok and lock.acquire(timeout=5)
            lock.release()
            with cond:
                cond.notify_all()
            q.put(2)
            return ok and q.get(timeout=5) in (1, 2)

        threads = [threading.Thread(target=f) for f in
                   (worker, worker, churn)]
        for t in threads:
            t.start()
        forks = hung = failed = 0
        while time.monotonic() < end:
            pid = os.fork()
            if pid == 0:
                try:
                    code = 0 if in_child() else 1
                except BaseException:
                    code = 2
                os._exit(code)
            forks += 1
            deadline = time.monotonic() + 20
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    failed += os.waitstatus_to_exitcode(status) != 0
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    hung += 1
                    break
                time.sleep(0.005)
        for t in threads:
            t.join(30)
        print(forks, hung, failed)
    """, args=(str(STORM_S),))
    assert_clean_exit(code, out, err)
    forks, hung, failed = map(int, out.split())
    assert forks > 3 and hung == 0 and failed == 0, out
