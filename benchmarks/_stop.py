"""Workloads on stopping threads: kill latency and time limits.

Each workload maps implementation names to a function that takes a loop
count and returns seconds per operation (or, for latencies, one sample).
The first implementation is the baseline that ratios are taken against.
"""
import ctypes
import queue
import threading
import time

import xthread


def _spin_target(ready, out):
    def f():
        pass

    def spin():
        ready.set()
        while True:
            f()
    return spin


def _start_spinner(cls):
    ready = threading.Event()
    t = cls(target=_spin_target(ready, None), daemon=True)
    t.start()
    ready.wait(10)
    return t


def _ctypes_raise(ident, exc):
    """What dramatiq's raise_thread_exception does."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc))


def kill_spinning_blocking():
    def stdlib(loops):
        total = 0.0
        for _ in range(loops):
            t = _start_spinner(threading.Thread)
            t0 = time.perf_counter()
            _ctypes_raise(t.ident, SystemExit)
            t.join()
            total += time.perf_counter() - t0
        return total / loops

    def xthread_(loops):
        total = 0.0
        for _ in range(loops):
            t = _start_spinner(xthread.Thread)
            t0 = time.perf_counter()
            t.kill()
            total += time.perf_counter() - t0
        return total / loops
    return {"stdlib+ctypes": stdlib, "xthread": xthread_}


def kill_spinning_busy_caller():
    """The caller goes on running Python until the target has ended."""
    def stdlib(loops):
        total = 0.0
        for _ in range(loops):
            t = _start_spinner(threading.Thread)
            t0 = time.perf_counter()
            _ctypes_raise(t.ident, SystemExit)
            while t.is_alive():
                pass
            total += time.perf_counter() - t0
        return total / loops

    def xthread_(loops):
        total = 0.0
        for _ in range(loops):
            t = _start_spinner(xthread.Thread)
            t0 = time.perf_counter()
            t.raise_exc(xthread.ThreadKilled)
            while t.is_alive():
                pass
            total += time.perf_counter() - t0
        return total / loops
    return {"stdlib+ctypes": stdlib, "xthread": xthread_}


BUSY_THREADS = 2


def kill_spinning_others_busy():
    """kill() of a thread spinning in Python while BUSY_THREADS more run
    Python all along (plain threading threads, never stopped): what the
    others cost the stop. With a GIL they share it with the target; on a
    free-threaded build with the GIL off they run beside it."""
    def with_busy(kill_one):
        def run(loops):
            stop = threading.Event()
            ready = [threading.Event() for _ in range(BUSY_THREADS)]

            def busy(ready):
                ready.set()
                x = 0
                while not stop.is_set():
                    x += 1
            others = [threading.Thread(target=busy, args=(r,), daemon=True)
                      for r in ready]
            for t in others:
                t.start()
            for r in ready:
                r.wait(10)
            try:
                return sum(kill_one() for _ in range(loops)) / loops
            finally:
                stop.set()
                for t in others:
                    t.join(10)
        return run

    def stdlib():
        t = _start_spinner(threading.Thread)
        t0 = time.perf_counter()
        _ctypes_raise(t.ident, SystemExit)
        t.join()
        return time.perf_counter() - t0

    def xthread_():
        t = _start_spinner(xthread.Thread)
        t0 = time.perf_counter()
        t.kill()
        return time.perf_counter() - t0
    return {"stdlib+ctypes": with_busy(stdlib), "xthread": with_busy(xthread_)}


# Waits of WAIT_S seconds: a stdlib thread ends only when its wait does.
WAIT_S = 0.05


def _waits(mod_thread, event_cls, lock_factory, queue_cls, sleep):
    def in_event():
        event_cls().wait(WAIT_S)

    def in_lock():
        lock = lock_factory()
        lock.acquire()
        lock.acquire(True, WAIT_S)

    def in_queue():
        try:
            queue_cls().get(timeout=WAIT_S)
        except queue.Empty:
            pass

    def in_sleep():
        sleep(WAIT_S)

    def in_join():
        other = mod_thread(target=sleep, args=(WAIT_S,), daemon=True)
        other.start()
        other.join()
    return {"sleep": in_sleep, "Event.wait": in_event,
            "Lock.acquire": in_lock, "Queue.get": in_queue, "join": in_join}


def kill_in_wait(which):
    std = _waits(threading.Thread, threading.Event, threading.Lock,
                 queue.Queue, time.sleep)[which]
    xt = _waits(xthread.Thread, xthread.Event, xthread.Lock, xthread.Queue,
                xthread.sleep)[which]

    def run(cls, target, stop, loops):
        total = 0.0
        for _ in range(loops):
            entered = threading.Event()

            def body():
                entered.set()
                target()
            t = cls(target=body, daemon=True)
            t.start()
            entered.wait(10)
            time.sleep(0.002)       # let it block in the wait
            t0 = time.perf_counter()
            stop(t)
            t.join()
            total += time.perf_counter() - t0
        return total / loops

    return {
        "stdlib+ctypes": lambda loops: run(
            threading.Thread, std,
            lambda t: _ctypes_raise(t.ident, SystemExit), loops),
        "xthread": lambda loops: run(
            xthread.Thread, xt, lambda t: t.raise_exc(xthread.ThreadKilled),
            loops),
    }


def time_limit_enter_exit():
    impls = {}

    def timer(loops):
        timers = []
        t0 = time.perf_counter()
        for _ in range(loops):
            t = threading.Timer(60, print)
            t.start()
            t.cancel()
            timers.append(t)
        elapsed = time.perf_counter() - t0
        # Not timed, but not left to disturb the next implementation.
        for t in timers:
            t.join()
        return elapsed / loops
    impls["threading.Timer"] = timer

    limit = xthread.time_limit(60)

    def xt(loops):
        t0 = time.perf_counter()
        for _ in range(loops):
            with limit:
                pass
        return (time.perf_counter() - t0) / loops
    impls["xthread"] = xt

    try:
        import stopit
    except ImportError:
        pass
    else:
        def stopit_(loops):
            t0 = time.perf_counter()
            for _ in range(loops):
                with stopit.ThreadingTimeout(60):
                    pass
            return (time.perf_counter() - t0) / loops
        impls["stopit"] = stopit_
    try:
        import func_timeout
    except ImportError:
        pass
    else:
        def noop():
            pass

        def ft(loops):
            t0 = time.perf_counter()
            for _ in range(loops):
                func_timeout.func_timeout(60, noop)
            return (time.perf_counter() - t0) / loops
        impls["func_timeout"] = ft
    return impls


# Twice the default switch interval and more: a shorter limit around a
# thread that spins in Python may land up to one switch interval late (the
# watchdog needs the GIL, which the spinning thread yields only then).
LIMIT_S = 0.05


def time_limit_lateness():
    """How long after its deadline a limit's exception lands in a loop."""
    def f():
        pass

    def xt(loops):
        total = 0.0
        for _ in range(loops):
            t0 = time.perf_counter()
            try:
                with xthread.time_limit(LIMIT_S):
                    while True:
                        f()
            except xthread.TimeLimitExceeded:
                total += time.perf_counter() - t0 - LIMIT_S
        return total / loops

    def timer(loops):
        # threading.Timer + ctypes, as peers do it.
        total = 0.0
        for _ in range(loops):
            me = threading.get_ident()
            t0 = time.perf_counter()
            timer = threading.Timer(LIMIT_S, _ctypes_raise, (me, TimeoutError))
            try:
                timer.start()
                while True:
                    f()
            except TimeoutError:
                total += time.perf_counter() - t0 - LIMIT_S
            finally:
                timer.cancel()
                timer.join()
        return total / loops
    return {"threading.Timer+ctypes": timer, "xthread": xt}


# name, factory, loops per round, unit, target (on the xthread median):
# ("ratio", x) compares with the baseline, ("max", seconds) is absolute.
WORKLOADS = [
    ("kill spinning, caller waits", kill_spinning_blocking, 1, None),
    ("kill spinning, caller busy", kill_spinning_busy_caller, 1,
     ("max", 0.5e-3)),
    ("kill spinning, %d other threads busy" % BUSY_THREADS,
     kill_spinning_others_busy, 1, None),
] + [
    ("kill in %s (%g s)" % (w, WAIT_S), (lambda w=w: kill_in_wait(w)), 1,
     ("max", 5e-3))
    for w in ("sleep", "Event.wait", "Lock.acquire", "Queue.get", "join")
] + [
    ("time limit enter+exit", time_limit_enter_exit, 300, ("max", 2e-6)),
    ("time limit lateness", time_limit_lateness, 1, ("max", 5e-3)),
]
