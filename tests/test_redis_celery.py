"""xthread.contrib.celery's pool in a real Celery worker on a real Redis:
in-process (``celery.contrib.testing.worker.start_worker``, 4 threads)
for time limits, soft limits, revoke with terminate, a task stuck in a C
call, and ordinary tasks around them; and as the ``celery worker``
command, for ``celery inspect stats``, a warm shutdown on SIGTERM and a
cold one on SIGQUIT.
Skipped, saying why, where Celery, redis-py or redis-server is missing.
"""
import os
import signal
import subprocess
import sys
import threading
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
        held = threading.Lock()
        held.acquire()
        try:
            held.acquire(timeout=5)     # one C call: no exception reaches it
        finally:
            r.rpush("finally", "c-call")

    @app.task
    def gather(tag):
        # Waits (bounded) until every thread holds a gather at once.
        r.rpush("gathered", tag)
        deadline = time.monotonic() + 20
        while r.llen("gathered") < THREADS and time.monotonic() < deadline:
            time.sleep(0.01)
        return r.llen("gathered") >= THREADS

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
        # given to a new thread: THREADS tasks still run at once beside it.
        stuck = in_c_call.delay()
        with pytest.raises(Exception) as info:
            stuck.get(timeout=JOIN_TIMEOUT)
        assert type(info.value).__name__ == "TimeLimitExceeded"
        gathered = [gather.delay(i) for i in range(THREADS)]
        assert [g.get(timeout=JOIN_TIMEOUT) for g in gathered] \
            == [True] * THREADS
        wait_until("the C call's finally", lambda: "c-call" in finished())
        # Every slot takes a stuck task at once, and each is stopped.
        results = [spin.delay(f"all-{i}") for i in range(THREADS)]
        for res in results:
            with pytest.raises(Exception):
                res.get(timeout=JOIN_TIMEOUT)
        wait_until("every finally", lambda: len(finished()) == 3 + THREADS)
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


CLI_APP = '''
import os
import celery
import redis
import xthread

URL = os.environ["XTHREAD_TEST_REDIS"]
app = celery.Celery("xthread_cli_app", broker=URL, backend=URL)
app.conf.update(broker_connection_retry_on_startup=True,
                task_track_started=True)
r = redis.Redis.from_url(URL)


@app.task
def slow(seconds):
    xthread.sleep(seconds)
    return "finished"


@app.task
def hang(tag):
    r.rpush("started", tag)
    try:
        xthread.Event().wait(600)
    finally:
        r.rpush("finally", tag)
    return "finished"
'''


class CeleryWorker:
    """The ``celery worker`` command, 4 threads of xthread's pool, on the
    app above; ``stop()`` kills it if it is still there."""

    def __init__(self, tmp_path, redis_url):
        (tmp_path / "xthread_cli_app.py").write_text(CLI_APP)
        # Celery's command takes a pool of its own list, or "custom",
        # named by this variable.
        env = dict(os.environ, XTHREAD_TEST_REDIS=redis_url,
                   CELERY_CUSTOM_WORKER_POOL="xthread.contrib.celery:TaskPool",
                   PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path))
        env.pop("PYTHONWARNINGS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "xthread_cli_app",
             "worker", "-P", "custom", "-c", "4",
             "--without-gossip", "--without-mingle", "--without-heartbeat",
             "-n", "xthread-test@%h"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.app = celery.Celery("client", broker=redis_url,
                                 backend=redis_url)
        self.out = ""

    def stats(self):
        """The worker's ``inspect stats``, once it answers."""
        stats = {}

        def answered():
            stats.update(self.app.control.inspect(timeout=0.5).stats() or {})
            return bool(stats)
        wait_until("the worker to answer inspect", answered)
        (answer,) = stats.values()
        return answer

    def signal_and_wait(self, signum):
        self.proc.send_signal(signum)
        self.out, _ = self.proc.communicate(timeout=JOIN_TIMEOUT)
        return self.proc.returncode

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.out += self.proc.communicate()[0]
        self.app.close()


@pytest.fixture
def cli_worker(tmp_path, redis_url):
    worker = CeleryWorker(tmp_path, redis_url)
    yield worker
    worker.stop()


def test_a_worker_process_shows_its_pool_and_shuts_down_warm(cli_worker):
    pool = cli_worker.stats()["pool"]
    assert pool["implementation"] == "xthread.contrib.celery:TaskPool"
    assert pool["max-concurrency"] == 4
    result = cli_worker.app.send_task("xthread_cli_app.slow", args=(1.0,))
    wait_until("the task to start", lambda: result.state == "STARTED")
    # Warm shutdown: the running task finishes.
    assert cli_worker.signal_and_wait(signal.SIGTERM) == 0, \
        cli_worker.out[-3000:]
    assert result.get(timeout=JOIN_TIMEOUT) == "finished"


def test_a_cold_shutdown_stops_the_running_tasks(cli_worker, redis_url):
    r = redis.Redis.from_url(redis_url)
    cli_worker.stats()
    results = [cli_worker.app.send_task("xthread_cli_app.hang", args=(tag,))
               for tag in ("a", "b")]
    wait_until("both tasks to start", lambda: r.llen("started") == 2)
    # Cold shutdown (SIGQUIT): Celery cancels the running tasks through the
    # pool (terminate_job), which stops them where they wait for ten
    # minutes; their finally blocks run and the worker exits.
    cli_worker.signal_and_wait(signal.SIGQUIT)
    assert sorted(r.lrange("finally", 0, -1)) == [b"a", b"b"], \
        cli_worker.out[-3000:]
    assert not any(res.state == "SUCCESS" for res in results)
    r.close()
