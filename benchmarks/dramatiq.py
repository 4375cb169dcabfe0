"""dramatiq on a real Redis: its stock TimeLimit and ShutdownNotifications
against xthread.contrib.dramatiq's, in one run.

    python -m pip install . 'dramatiq[redis]' && python -m benchmarks.dramatiq

Needs ``redis-server`` on the PATH (Debian: ``apt-get install
redis-server``); it is started on a free loopback port and stopped after.
A worker runs in this process (4 threads) on a broker made for each round,
with the stock middleware or with ``install(broker)``; rounds alternate
(A B A B ...) so that drift in the machine hits both alike.

* throughput: small messages (an actor that adds to a counter) per
  second, median over rounds; the ratio is xthread's over stock's
  (target: at least 0.97, an overhead of 3 % at most);
* lateness: actors spinning in Python under a 300 ms limit; how long
  after 300 ms the limit's exception reached the actor, p50 and p99, with
  one actor stuck while the other threads idle (target for xthread: p99
  under 10 ms), and with every thread stuck at once (then the GIL passes
  from spinner to spinner, a switch interval each, before the target
  gets it). Stock's limit thread polls once a second.
"""
import statistics
import sys
import threading
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import TimeLimitExceeded

from xthread.contrib.dramatiq import install

from ._redis import RedisServer, finish, parse_args, quantile

THREADS = 4
LIMIT_MS = 300


def _round(url, impl, messages, spins):
    """One round on a fresh broker: returns (messages per second,
    lateness of each limited actor in seconds)."""
    broker = RedisBroker(url=url)
    if impl == "xthread":
        install(broker)
    broker.flush_all()
    counted = [0]
    lock = threading.Lock()
    late = []

    @dramatiq.actor(broker=broker, max_retries=0,
                    actor_name=f"count_{impl}")
    def count():
        with lock:
            counted[0] += 1

    @dramatiq.actor(broker=broker, max_retries=0, time_limit=LIMIT_MS,
                    actor_name=f"spin_{impl}")
    def spin():
        t0 = time.monotonic()
        try:
            while True:
                pass
        except TimeLimitExceeded:
            late.append(time.monotonic() - t0 - LIMIT_MS / 1000)

    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=THREADS,
                             worker_timeout=100)
    worker.start()
    try:
        t0 = time.perf_counter()
        for _ in range(messages):
            count.send()
        broker.join(count.queue_name, timeout=600_000)
        worker.join()
        rate = messages / (time.perf_counter() - t0)
        # One stuck actor at a time (the other threads idle), then every
        # thread stuck at once.
        for _ in range(spins):
            spin.send()
            broker.join(spin.queue_name, timeout=600_000)
            worker.join()
        alone = len(late)
        for _ in range(spins):
            spin.send()
        broker.join(spin.queue_name, timeout=600_000)
        worker.join()
    finally:
        worker.stop()
        broker.close()
    if counted[0] != messages or len(late) != 2 * spins:
        raise SystemExit(f"{impl}: {counted[0]} of {messages} counted, "
                         f"{len(late)} of {2 * spins} limits fired")
    return rate, late[:alone], late[alone:]


def run(rounds, messages, spins):
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp)
        try:
            rates = {"stock": [], "xthread": []}
            late = {"stock": [], "xthread": []}
            late_all = {"stock": [], "xthread": []}
            _round(server.url, "stock", messages // 4, 0)      # warm-up
            _round(server.url, "xthread", messages // 4, 0)
            for r in range(rounds):
                order = ["stock", "xthread"]
                if r % 2:
                    order.reverse()
                for impl in order:
                    rate, alone, crowded = _round(server.url, impl,
                                                  messages, spins)
                    rates[impl].append(rate)
                    late[impl].extend(alone)
                    late_all[impl].extend(crowded)
        finally:
            server.close()
    result = {"dramatiq": dramatiq.__version__,
              "python": sys.version.split()[0],
              "threads": THREADS, "limit_ms": LIMIT_MS, "impls": {}}
    for impl in ("stock", "xthread"):
        result["impls"][impl] = {
            "messages_per_s": statistics.median(rates[impl]),
            "late_p50_ms": quantile(late[impl], 0.5) * 1000,
            "late_p99_ms": quantile(late[impl], 0.99) * 1000,
            "all_stuck_late_p50_ms": quantile(late_all[impl], 0.5) * 1000,
            "all_stuck_late_p99_ms": quantile(late_all[impl], 0.99) * 1000,
            "rates": rates[impl],
            "late_ms": [x * 1000 for x in late[impl]],
            "all_stuck_late_ms": [x * 1000 for x in late_all[impl]],
        }
    result["throughput_ratio"] = (
        result["impls"]["xthread"]["messages_per_s"]
        / result["impls"]["stock"]["messages_per_s"])
    return result


def main(argv=None):
    args = parse_args("python -m benchmarks.dramatiq", "actors", argv)
    result = run(args.rounds, args.messages, args.spins)
    print(f"dramatiq {result['dramatiq']} on Redis, Python "
          f"{result['python']}, {THREADS} worker threads, "
          f"{args.rounds} rounds")
    for impl in ("stock", "xthread"):
        figures = result["impls"][impl]
        print(f"  {impl:8s} {figures['messages_per_s']:8.0f} messages/s;"
              f" {LIMIT_MS} ms limit late by p50/p99: one stuck "
              f"{figures['late_p50_ms']:6.1f}/{figures['late_p99_ms']:6.1f}"
              f" ms, all {THREADS} stuck "
              f"{figures['all_stuck_late_p50_ms']:6.1f}/"
              f"{figures['all_stuck_late_p99_ms']:6.1f} ms")
    finish(result, result["impls"]["xthread"]["late_p99_ms"], args.json)


if __name__ == "__main__":
    main()
