"""xthread.contrib.dramatiq: TimeLimit and ShutdownNotifications in place
of dramatiq's, on a stub broker with a real worker (its threads are
dramatiq's own, stdlib threads).

Skipped where dramatiq is not installed (``.ci/run`` installs it in the
job that runs dramatiq's own tests).
"""
import threading
import time

import pytest

dramatiq = pytest.importorskip("dramatiq")

from dramatiq.brokers.stub import StubBroker  # noqa: E402
from dramatiq.middleware import shutdown as stock_shutdown  # noqa: E402
from dramatiq.middleware import time_limit as stock_time_limit  # noqa: E402

import xthread  # noqa: E402
from xthread.contrib import dramatiq as xdramatiq  # noqa: E402

from helpers import JOIN_TIMEOUT  # noqa: E402

TimeLimitExceeded = xdramatiq.TimeLimitExceeded
Shutdown = xdramatiq.Shutdown


@pytest.fixture
def broker():
    broker = xdramatiq.install(StubBroker())
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.emit_before("process_stop")
    broker.close()


@pytest.fixture
def worker(broker):
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()


def test_install_replaces_the_stock_middleware_and_keeps_its_settings():
    broker = StubBroker()
    kinds = [type(m) for m in broker.middleware]
    assert stock_time_limit.TimeLimit in kinds
    assert stock_shutdown.ShutdownNotifications in kinds
    stock_limit = broker.middleware[kinds.index(stock_time_limit.TimeLimit)]
    stock_limit.time_limit = 1234
    assert xdramatiq.install(broker) is broker
    ours = [type(m) for m in broker.middleware]
    # Same places, our classes.
    assert ours[kinds.index(stock_time_limit.TimeLimit)] is xdramatiq.TimeLimit
    assert (ours[kinds.index(stock_shutdown.ShutdownNotifications)]
            is xdramatiq.ShutdownNotifications)
    assert stock_time_limit.TimeLimit not in ours
    limit = broker.middleware[kinds.index(stock_time_limit.TimeLimit)]
    assert limit.time_limit == 1234
    # The exceptions are dramatiq's own.
    assert TimeLimitExceeded is stock_time_limit.TimeLimitExceeded
    assert Shutdown is stock_shutdown.Shutdown
    broker.close()


def test_a_limit_stops_a_python_loop_and_its_finally_runs(broker, worker):
    cleanup, started = [], threading.Event()

    @dramatiq.actor(max_retries=0, time_limit=200)
    def spin():
        started.set()
        try:
            while True:
                pass
        finally:
            cleanup.append("finally")

    spin.send()
    with pytest.raises(TimeLimitExceeded):
        broker.join(spin.queue_name, timeout=JOIN_TIMEOUT * 1000)
    worker.join()
    assert started.is_set()
    assert cleanup == ["finally"]


def test_a_message_option_sets_the_limit_and_a_killable_wait_ends(
        broker, worker):
    never = xthread.Event()
    seen = []

    @dramatiq.actor(max_retries=0)
    def wait():
        try:
            never.wait(JOIN_TIMEOUT)
        except TimeLimitExceeded as exc:
            seen.append(exc)
            raise

    wait.send_with_options(time_limit=100)
    with pytest.raises(TimeLimitExceeded):
        broker.join(wait.queue_name, timeout=JOIN_TIMEOUT * 1000)
    worker.join()
    assert len(seen) == 1 and not never.is_set()


def test_a_limit_reaches_only_its_own_message(broker, worker):
    # Messages whose work ends about when their limit does: each either
    # finishes or fails with TimeLimitExceeded inside its actor; none is
    # hit after it finished, no other message is hit, and every worker
    # thread lives on (a limit that escaped would end the thread).
    done, failed_inside = [], []

    @dramatiq.actor(max_retries=0, time_limit=2)
    def close_call(i):
        try:
            deadline = time.monotonic() + 0.002
            while time.monotonic() < deadline:
                pass
        except TimeLimitExceeded:
            failed_inside.append(i)
            raise
        done.append(i)

    @dramatiq.actor(max_retries=0)
    def unlimited(i):
        done.append(("free", i))

    n = 60
    for i in range(n):
        close_call.send(i)
        unlimited.send(i)
    broker.join(close_call.queue_name, fail_fast=False,
                timeout=JOIN_TIMEOUT * 1000)
    finished = [i for i in done if not isinstance(i, tuple)]
    assert sorted(finished + failed_inside) == list(range(n))
    assert sorted(i for tag, i in (d for d in done if isinstance(d, tuple))) \
        == list(range(n))
    assert sum(t.is_alive() for t in worker.workers) == 4


def test_no_limit_outside_a_worker(broker):
    @dramatiq.actor(time_limit=1)
    def direct():
        ev = xthread.Event()
        return ev.wait(0.05)

    # Called directly, not processed: no limit applies.
    assert direct() is False


def test_shutdown_reaches_actors_that_asked(broker):
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    started, told = threading.Event(), []
    never = xthread.Event()

    @dramatiq.actor(max_retries=0, notify_shutdown=True)
    def long_job():
        started.set()
        try:
            never.wait(JOIN_TIMEOUT)
        except Shutdown:
            told.append(True)

    long_job.send()
    assert started.wait(JOIN_TIMEOUT)
    worker.stop()
    assert told == [True]


def test_a_call_no_exception_reaches_is_written_off_and_replaced(
        broker, worker, caplog):
    limiter = next(m for m in broker.middleware
                   if isinstance(m, xdramatiq.TimeLimit))
    limiter.grace = 100
    held = threading.Lock()     # stdlib's: its acquire is one C call
    held.acquire()
    started, ended = threading.Event(), threading.Event()
    where = []

    @dramatiq.actor(max_retries=0, time_limit=100, queue_name="stuck")
    def stuck():
        where.append(threading.current_thread())
        started.set()
        try:
            held.acquire()      # the stuck line
            held.release()
        finally:
            ended.set()

    barrier = threading.Barrier(4, timeout=JOIN_TIMEOUT)

    @dramatiq.actor(max_retries=0)
    def together():
        barrier.wait()

    with caplog.at_level("WARNING"):
        stuck.send()
        assert started.wait(JOIN_TIMEOUT)
        (thread,) = where
        deadline = time.monotonic() + JOIN_TIMEOUT
        while thread in worker.workers:
            assert time.monotonic() < deadline, "never written off"
            time.sleep(0.01)
    (record,) = [r for r in caplog.records
                 if "written off" in r.getMessage()]
    assert "inside a C call" in record.getMessage()
    # The stack from the actor's own frames on.
    assert record.getMessage().rstrip().endswith(
        "held.acquire()      # the stuck line")
    assert "in process_message" not in record.getMessage()
    # The worker has its 4 threads again, and all 4 take a message at once
    # (the barrier breaks, failing the messages, if one is missing).
    assert len(worker.workers) == 4
    for _ in range(4):
        together.send()
    broker.join(together.queue_name, fail_fast=True,
                timeout=JOIN_TIMEOUT * 1000)
    assert not barrier.broken
    # When its call returns, the written-off thread ends: the limit's
    # exception lands there (the message fails) and its loop stops.
    assert thread.is_alive() and not ended.is_set()
    held.release()
    assert ended.wait(JOIN_TIMEOUT)
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()
    assert len(worker.workers) == 4
