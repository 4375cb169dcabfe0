"""Workloads on worker pools: a task's round trip, and how soon a
cancelled running task frees its worker.

Each workload maps implementation names to a function that takes a loop
count and returns seconds per operation (or, for latencies, one sample).
The first implementation is the baseline that ratios are taken against.
"""
import concurrent.futures
import threading
import time

import xthread


def _noop():
    pass


def round_trip():
    """submit() of a no-op task until its result() returns, one at a time,
    on a pool of 4 workers kept for the whole run."""
    pools = {
        "stdlib": concurrent.futures.ThreadPoolExecutor(4),
        "xthread": xthread.ThreadPoolExecutor(4),
    }

    def bench(pool):
        def run(loops):
            t0 = time.perf_counter()
            for _ in range(loops):
                pool.submit(_noop).result()
            return (time.perf_counter() - t0) / loops
        return run
    return {name: bench(pool) for name, pool in pools.items()}


def _spin(started):
    started.set()
    while True:
        pass


def cancel_running():
    """cancel() of a task spinning in Python, until its worker has let go
    of it (Future.wait_stopped) and served the next task. stdlib's pool
    cannot stop a running task (cancel() returns False): there is no
    baseline."""
    pool = xthread.ThreadPoolExecutor(1)

    def run(loops):
        total = 0.0
        for _ in range(loops):
            started = threading.Event()
            f = pool.submit(_spin, started)
            started.wait(10)
            t0 = time.perf_counter()
            if not f.cancel():
                raise RuntimeError("cancel() of a running task failed")
            f.wait_stopped(10)
            pool.submit(_noop).result(10)
            total += time.perf_counter() - t0
        return total / loops
    return {"xthread": run}


def _cpu_task(n=20000):
    x = 0
    for i in range(n):
        x += i * i
    return x


CPU_TASKS = 8


def cpu_bound(workers):
    """CPU_TASKS tasks of pure Python arithmetic submitted at once to a
    pool of `workers`, until every result is in: throughput. With a GIL
    more workers do not go faster; on a free-threaded build with the GIL
    off they can, for either pool."""
    pools = {
        "stdlib": concurrent.futures.ThreadPoolExecutor(workers),
        "xthread": xthread.ThreadPoolExecutor(workers),
    }

    def bench(pool):
        def run(loops):
            t0 = time.perf_counter()
            for _ in range(loops):
                for f in [pool.submit(_cpu_task) for _ in range(CPU_TASKS)]:
                    f.result()
            return (time.perf_counter() - t0) / loops
        return run
    return {name: bench(pool) for name, pool in pools.items()}


WORKLOADS = [
    ("pool submit->result", round_trip, 200, ("ratio", 1.0)),
] + [
    ("pool %d CPU tasks, %d worker%s" % (CPU_TASKS, w, "s" * (w > 1)),
     (lambda w=w: cpu_bound(w)), 3, ("ratio", 1.05))
    for w in (1, 2, 4)
] + [
    ("pool cancel running -> worker free", cancel_running, 1,
     ("max", 5e-3)),
]
