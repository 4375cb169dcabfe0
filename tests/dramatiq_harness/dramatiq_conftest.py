"""pytest configuration for dramatiq's own tests, copied as their
``conftest.py`` (beside ``common.py``) by ``test_dramatiq.py``, which runs
them: the fixtures they ask for, written here since dramatiq's published
sdist ships its tests but not its conftest.

With ``XTHREAD_DRAMATIQ=xthread`` in the environment, dramatiq is pointed
at xthread before its modules are imported: its threads (``WorkerThread``,
``ConsumerThread``, the time-limit manager) are ``xthread.Thread``\\ s, and
its ``raise_thread_exception`` is ``xthread.raise_in_thread``, and the
brokers it makes get ``xthread.contrib.dramatiq``'s ``TimeLimit`` and
``ShutdownNotifications`` in place of dramatiq's. The file
named by ``XTHREAD_DRAMATIQ_CHECKS`` gets what was checked, so that the
caller knows the patch took effect.
"""
import json
import logging
import os
import threading

import pytest

MODE = os.environ.get("XTHREAD_DRAMATIQ", "stdlib")

if MODE == "xthread":
    import xthread

    def _raise_thread_exception(thread_id, exception):
        # dramatiq's own logs the failure instead of raising; so does this.
        if not xthread.raise_in_thread(thread_id, exception):
            name = getattr(exception, "__name__", type(exception).__name__)
            logging.getLogger("dramatiq.threading").critical(
                "Failed to set exception (%s) in thread %r.", name,
                thread_id)

    # The classes are made as dramatiq's modules are imported: make them
    # on xthread.Thread.
    _stdlib_thread = threading.Thread
    threading.Thread = xthread.Thread
    try:
        import dramatiq
        import dramatiq.middleware
        import dramatiq.middleware.shutdown
        import dramatiq.middleware.threading
        import dramatiq.middleware.time_limit
        import dramatiq.threading
        import dramatiq.worker
    finally:
        threading.Thread = _stdlib_thread
    for _module in (dramatiq.threading, dramatiq.middleware,
                    dramatiq.middleware.threading,
                    dramatiq.middleware.time_limit,
                    dramatiq.middleware.shutdown):
        if hasattr(_module, "raise_thread_exception"):
            _module.raise_thread_exception = _raise_thread_exception
    # Brokers made without a middleware list get xthread's TimeLimit and
    # ShutdownNotifications in the places of dramatiq's.
    from xthread.contrib import dramatiq as _contrib
    _ours = {dramatiq.middleware.TimeLimit: _contrib.TimeLimit,
             dramatiq.middleware.ShutdownNotifications:
                 _contrib.ShutdownNotifications}
    dramatiq.middleware.default_middleware[:] = [
        _ours.get(m, m) for m in dramatiq.middleware.default_middleware]

import dramatiq  # noqa: E402
import dramatiq.worker  # noqa: E402
from dramatiq.brokers.stub import StubBroker  # noqa: E402


def _checks():
    import dramatiq.middleware.time_limit as time_limit
    return {
        "mode": MODE,
        "dramatiq": dramatiq.__version__,
        "worker_thread": [c.__module__ + "." + c.__qualname__
                          for c in dramatiq.worker.WorkerThread.__mro__],
        "consumer_thread": [c.__module__ + "." + c.__qualname__
                            for c in dramatiq.worker.ConsumerThread.__mro__],
        "raise_thread_exception": "%s.%s" % (
            time_limit.raise_thread_exception.__module__,
            time_limit.raise_thread_exception.__qualname__),
        "default_middleware": [
            m.__module__ + "." + m.__qualname__
            for m in dramatiq.middleware.default_middleware],
    }


_checks_file = os.environ.get("XTHREAD_DRAMATIQ_CHECKS")
if _checks_file:
    with open(_checks_file, "w") as _f:
        json.dump(_checks(), _f)


@pytest.fixture
def stub_broker():
    """A stub broker, booted, set as dramatiq's global one; closed after."""
    broker = StubBroker()
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.emit_before("process_stop")
    broker.close()


@pytest.fixture
def stub_worker(stub_broker):
    """A started worker on the stub broker; stopped after."""
    worker = dramatiq.Worker(stub_broker, worker_timeout=100,
                             worker_threads=32)
    worker.start()
    yield worker
    worker.stop()
