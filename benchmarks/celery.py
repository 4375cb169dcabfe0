"""Celery on a real Redis: its own ``threads`` pool against
``xthread.contrib.celery.TaskPool``, in one run.

    python -m pip install . 'celery[redis]' && python -m benchmarks.celery

Needs ``redis-server`` on the PATH (Debian: ``apt-get install
redis-server``); it is started on a free loopback port and stopped after.
Each round runs a worker in this process (``celery.contrib.testing.worker.
start_worker``, 4 threads) with one pool or the other; rounds alternate
(A B A B ...) so that drift in the machine hits both alike.

* throughput: small tasks (one that adds to a counter, no result stored)
  per second, median over rounds; the ratio is xthread's over stock's
  (target: at least 0.97, an overhead of 3 % at most);
* lateness: tasks spinning in Python under a 300 ms ``time_limit`` (the
  ``finally`` notes when it ran) or ``soft_time_limit`` (the ``except
  SoftTimeLimitExceeded`` notes it), one at a time while the other threads
  idle; how long after 300 ms since the task's body began; p50 and p99
  (target for xthread: p99 under 10 ms). The hard limit also with every
  thread stuck at once. Celery's ``threads`` pool enforces neither limit
  (celery#9203): its tasks give up on their own 200 ms after the limit,
  and are counted as not stopped.
"""
import statistics
import sys
import threading
import time

import celery
from celery.contrib.testing.worker import start_worker
from celery.exceptions import SoftTimeLimitExceeded

from ._redis import RedisServer, finish, parse_args, quantile

THREADS = 4
LIMIT = 0.3
GIVE_UP = LIMIT + 0.2
POOLS = {"stock": "threads", "xthread": "xthread.contrib.celery:TaskPool"}


def _round(url, impl, messages, spins):
    """One round with a fresh app and worker: (tasks per second, then the
    lateness in seconds of each soft limit, each hard limit with one task
    stuck, each with all stuck; None where the limit never fired)."""
    app = celery.Celery(f"bench_{impl}", broker=url)
    app.conf.update(worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True,
                    task_ignore_result=True, worker_prefetch_multiplier=4)
    counted = [0]
    all_counted = threading.Event()
    lock = threading.Lock()
    notes = []
    noted = threading.Semaphore(0)

    @app.task(shared=False)
    def count(n):
        with lock:
            counted[0] += 1
            if counted[0] == n:
                all_counted.set()

    def _spin(t0):
        while time.monotonic() - t0 < GIVE_UP:
            pass

    @app.task(shared=False, time_limit=LIMIT)
    def hard():
        t0 = time.monotonic()
        try:
            _spin(t0)
            notes.append(None)                  # it gave up on its own
        except BaseException:
            notes.append(time.monotonic() - t0 - LIMIT)
            raise
        finally:
            noted.release()

    @app.task(shared=False, soft_time_limit=LIMIT)
    def soft():
        t0 = time.monotonic()
        try:
            _spin(t0)
            notes.append(None)
        except SoftTimeLimitExceeded:
            notes.append(time.monotonic() - t0 - LIMIT)
        finally:
            noted.release()

    def batch(task, n):
        del notes[:]
        for _ in range(n):
            task.delay()
        for _ in range(n):
            if not noted.acquire(timeout=120):
                raise SystemExit(f"{impl}: a {task.name} never ended")
        return list(notes)

    with start_worker(app, pool=POOLS[impl], concurrency=THREADS,
                      perform_ping_check=False, shutdown_timeout=60,
                      loglevel="CRITICAL"):
        t0 = time.perf_counter()
        for _ in range(messages):
            count.delay(messages)
        if not all_counted.wait(600):
            raise SystemExit(f"{impl}: {counted[0]} of {messages} counted")
        rate = messages / (time.perf_counter() - t0)
        softs, alone = [], []
        for _ in range(spins):
            softs += batch(soft, 1)
            alone += batch(hard, 1)
        crowded = batch(hard, spins)
    app.close()
    if counted[0] != messages:
        raise SystemExit(f"{impl}: {counted[0]} of {messages} counted")
    return rate, softs, alone, crowded


def _lateness(values):
    fired = [v for v in values if v is not None]
    return {"p50_ms": _ms(quantile(fired, 0.5)),
            "p99_ms": _ms(quantile(fired, 0.99)),
            "not_stopped": len(values) - len(fired),
            "of": len(values)}


def _ms(x):
    return None if x is None else x * 1000


def run(rounds, messages, spins):
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp)
        try:
            figures = {impl: {"rates": [], "soft": [], "hard": [],
                              "all_stuck": []} for impl in POOLS}
            _round(server.url, "stock", messages // 4, 0)      # warm-up
            _round(server.url, "xthread", messages // 4, 0)
            for r in range(rounds):
                order = list(POOLS)
                if r % 2:
                    order.reverse()
                for impl in order:
                    rate, softs, alone, crowded = _round(
                        server.url, impl, messages, spins)
                    f = figures[impl]
                    f["rates"].append(rate)
                    f["soft"] += softs
                    f["hard"] += alone
                    f["all_stuck"] += crowded
        finally:
            server.close()
    result = {"celery": celery.__version__,
              "python": sys.version.split()[0],
              "threads": THREADS, "limit_ms": LIMIT * 1000, "impls": {}}
    for impl, f in figures.items():
        result["impls"][impl] = {
            "pool": POOLS[impl],
            "tasks_per_s": statistics.median(f["rates"]),
            "rates": f["rates"],
            "soft_late": _lateness(f["soft"]),
            "hard_late": _lateness(f["hard"]),
            "all_stuck_hard_late": _lateness(f["all_stuck"]),
        }
    result["throughput_ratio"] = (
        result["impls"]["xthread"]["tasks_per_s"]
        / result["impls"]["stock"]["tasks_per_s"])
    return result


def _show(late):
    if late["p50_ms"] is None:
        return f"never fired ({late['not_stopped']} of {late['of']})"
    text = f"{late['p50_ms']:6.1f}/{late['p99_ms']:6.1f} ms"
    if late["not_stopped"]:
        text += f", {late['not_stopped']} of {late['of']} not stopped"
    return text


def main(argv=None):
    args = parse_args("python -m benchmarks.celery", "tasks", argv)
    result = run(args.rounds, args.messages, args.spins)
    print(f"Celery {result['celery']} on Redis, Python {result['python']},"
          f" {THREADS} threads, {args.rounds} rounds; a {LIMIT * 1000:.0f}"
          f" ms limit late by p50/p99")
    for impl, figures in result["impls"].items():
        print(f"  {impl:8s} {figures['tasks_per_s']:8.0f} tasks/s")
        print(f"           soft, one stuck: {_show(figures['soft_late'])}")
        print(f"           hard, one stuck: {_show(figures['hard_late'])}")
        print(f"           hard, all {THREADS} stuck: "
              f"{_show(figures['all_stuck_hard_late'])}")
    finish(result, result["impls"]["xthread"]["hard_late"]["p99_ms"],
           args.json)


if __name__ == "__main__":
    main()
