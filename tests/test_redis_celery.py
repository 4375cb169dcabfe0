"""xthread.contrib.celery's pool in a real Celery worker on a real Redis
(``celery.contrib.testing.worker.start_worker``, 4 threads): time limits,
soft limits, revoke with terminate, a task stuck in a C call, and
ordinary tasks around them. Skipped, saying why, where Celery, redis-py or
redis-server is missing.
"""
import time

import pytest

import xthread
from helpers import JOIN_TIMEOUT, wait_until

celery = pytest.importorskip("celery")
redis = pytest.importorskip("redis")

from celery.contrib.testing.worker import start_worker  # noqa: E402
from celery.exceptions import SoftTimeLimitExceeded  # noqa: E402

THREADS = 4


def test_a_celery_worker_stops_tasks_and_keeps_its_slots(redis_url):
    r = redis.Redis.from_url(redis_url)
    app = celery.Celery("xthread_celery_test", broker=redis_url,
                        backend=redis_url)
    app.conf.update(worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True)

    @app.task(time_limit=0.3)
    def spin(tag):
        r.rpush("started", tag)
        try:
            while True:
                pass
        finally:
            r.rpush("finally", tag)

    @app.task(soft_time_limit=0.2)
    def soft():
        try:
            while True:
                pass
        except SoftTimeLimitExceeded:
            return "caught"

    @app.task
    def wait_long(tag):
        r.rpush("started", tag)
        try:
            xthread.Event().wait(JOIN_TIMEOUT)
        finally:
            r.rpush("finally", tag)

    @app.task(time_limit=0.3)
    def in_c_call():
        time.sleep(1.5)     # before 3.15 no exception reaches it
        return "woke"

    @app.task
    def count(i):
        r.rpush("counted", i)

    def finished():
        return sorted(x.decode() for x in r.lrange("finally", 0, -1))

    with start_worker(app, pool="xthread.contrib.celery:TaskPool",
                      concurrency=THREADS, perform_ping_check=False,
                      shutdown_timeout=JOIN_TIMEOUT) as worker:
        # A hard limit stops a Python loop; the finally runs; the task
        # fails with Celery's TimeLimitExceeded.
        result = spin.delay("limited")
        with pytest.raises(Exception) as info:
            result.get(timeout=JOIN_TIMEOUT)
        assert type(info.value).__name__ == "TimeLimitExceeded"
        wait_until("the finally", lambda: finished() == ["limited"])
        # A soft limit is caught by the task.
        assert soft.delay().get(timeout=JOIN_TIMEOUT) == "caught"
        # revoke(terminate=True) ends a running task.
        waiting = wait_long.delay("revoked")
        wait_until("the task to start",
               lambda: b"revoked" in r.lrange("started", 0, -1))
        app.control.revoke(waiting.id, terminate=True)
        wait_until("the revoked task's finally",
               lambda: "revoked" in finished())
        wait_until("REVOKED", lambda: waiting.state == "REVOKED")
        # A task in a C call is reported at its hard limit and its slot
        # given to a new thread.
        stuck = in_c_call.delay()
        with pytest.raises(Exception) as info:
            stuck.get(timeout=JOIN_TIMEOUT)
        assert type(info.value).__name__ == "TimeLimitExceeded"
        # Every slot takes a stuck task at once, and each is stopped.
        results = [spin.delay(f"all-{i}") for i in range(THREADS)]
        for res in results:
            with pytest.raises(Exception):
                res.get(timeout=JOIN_TIMEOUT)
        wait_until("every finally", lambda: len(finished()) == 2 + THREADS)
        # Ordinary tasks around all that: each runs once.
        n = 100
        for res in [count.delay(i) for i in range(n)]:
            res.get(timeout=JOIN_TIMEOUT)
        assert sorted(int(x) for x in r.lrange("counted", 0, -1)) \
            == list(range(n))
        info = worker.pool.info
        assert info["implementation"] == "xthread.contrib.celery:TaskPool"
        assert info["max-concurrency"] == THREADS
    r.close()
