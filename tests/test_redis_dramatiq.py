"""A real dramatiq worker process on a real Redis, with
``xthread.contrib.dramatiq`` installed on its broker.

The test starts ``redis-server`` on a free loopback port and ``dramatiq``'s
own command with 4 worker threads, sends messages from this process and
reads what the actors did from Redis lists. Skipped, saying why, where
``redis-server``, the ``redis`` package or dramatiq is missing (``.ci/run``
installs them in the job that runs dramatiq's tests).
"""
import os
import signal
import subprocess
import sys

import pytest

from helpers import JOIN_TIMEOUT, wait_until

dramatiq = pytest.importorskip("dramatiq")
redis = pytest.importorskip("redis")

THREADS = 4

APP = '''
import os
import time
import dramatiq
import redis
import xthread
from dramatiq.brokers.redis import RedisBroker
from xthread.contrib.dramatiq import TimeLimit, install

URL = os.environ["XTHREAD_TEST_REDIS"]
r = redis.Redis.from_url(URL)
broker = install(RedisBroker(url=URL))
dramatiq.set_broker(broker)
for middleware in broker.middleware:
    if isinstance(middleware, TimeLimit):
        middleware.grace = 200      # ms before a stuck call is written off


@dramatiq.actor(max_retries=0, time_limit=300)
def spin(tag):
    r.rpush("started", tag)
    try:
        while True:
            pass
    finally:
        r.rpush("finally", tag)


@dramatiq.actor(max_retries=0, time_limit=300)
def wait(tag):
    r.rpush("started", tag)
    try:
        xthread.Event().wait(60)
    finally:
        r.rpush("finally", tag)


@dramatiq.actor(max_retries=0, time_limit=300)
def in_c_call(tag):
    import threading
    held = threading.Lock()
    held.acquire()
    r.rpush("started", tag)
    try:
        held.acquire(timeout=3)     # one C call: no exception reaches it
    finally:
        r.rpush("finally", tag)


@dramatiq.actor(max_retries=0)
def gather(tag):
    # Waits (bounded) until every thread holds a gather at once.
    r.rpush("gathered", tag)
    deadline = time.monotonic() + 20
    while r.llen("gathered") < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    r.rpush("together" if r.llen("gathered") >= 4 else "alone", tag)


@dramatiq.actor(max_retries=0)
def count(i):
    r.rpush("counted", i)
'''


@pytest.fixture
def app(tmp_path, redis_url, monkeypatch):
    (tmp_path / "xthread_app.py").write_text(APP)
    monkeypatch.setenv("XTHREAD_TEST_REDIS", redis_url)
    monkeypatch.syspath_prepend(str(tmp_path))
    import xthread_app
    yield xthread_app
    sys.modules.pop("xthread_app", None)
    xthread_app.broker.close()


def _start_worker(tmp_path, redis_url):
    env = dict(os.environ, XTHREAD_TEST_REDIS=redis_url,
               PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path))
    env.pop("PYTHONWARNINGS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "xthread_app",
         "--processes", "1", "--threads", str(THREADS)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_worker_stops_stuck_actors_on_time_and_keeps_every_thread(
        tmp_path, app, redis_url):
    r = redis.Redis.from_url(redis_url)
    worker = _start_worker(tmp_path, redis_url)
    try:
        # Every thread stuck at once: in a Python loop, then in a
        # killable wait; ordinary messages queue up behind them.
        for i in range(THREADS):
            app.spin.send(f"spin-{i}")
        n = 200
        for i in range(n):
            app.count.send(i)
        for i in range(THREADS):
            app.wait.send(f"wait-{i}")

        def llen(key):
            return r.llen(key)
        wait_until("every limited actor's finally",
               lambda: llen("finally") == 2 * THREADS)
        wait_until("every ordinary message", lambda: llen("counted") == n)
        # Then all THREADS threads take a stuck actor at once again.
        for i in range(THREADS):
            app.spin.send(f"again-{i}")
        wait_until("the second round", lambda: llen("finally") == 3 * THREADS)
        # An actor in a C call that no exception reaches: its thread is
        # written off and replaced, so that THREADS messages still run at
        # once beside it; when the call returns its finally runs.
        app.in_c_call.send("c-call")
        for i in range(THREADS):
            app.gather.send(f"gather-{i}")
        wait_until("the gathering", lambda: llen("together") == THREADS)
        assert llen("alone") == 0
        wait_until("the C call's finally",
                   lambda: llen("finally") == 3 * THREADS + 1)

        started = sorted(x.decode() for x in r.lrange("started", 0, -1))
        finished = sorted(x.decode() for x in r.lrange("finally", 0, -1))
        assert started == finished       # each finally ran, once
        assert len(set(started)) == 3 * THREADS + 1
        counted = sorted(int(x) for x in r.lrange("counted", 0, -1))
        assert counted == list(range(n))     # each exactly once
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            out, _ = worker.communicate(timeout=JOIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            out, _ = worker.communicate()
            pytest.fail("the worker did not end on SIGTERM:\n" + out[-3000:])
        r.close()
    assert worker.returncode == 0, out[-3000:]
    assert out.count("TimeLimitExceeded") >= 3 * THREADS, out[-3000:]
    assert "is written off and replaced" in out, out[-3000:]
