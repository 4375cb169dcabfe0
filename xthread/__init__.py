"""xthread: threads you can stop safely, on CPython's own thread machinery.

``xthread.Thread`` is a drop-in for ``threading.Thread`` whose life cycle
runs on the ``_xthread`` C module: ``start()`` waits for the new thread
to run through a handshake in C, and ``join()`` waits in C.
"""
import _xthread

# Imported now, not by the first stop (which would import it from C): an
# import under way in another thread when the process forks leaves that
# module's import lock held in the child for ever, and the child's first
# stop would hang on it.
from . import _landing  # noqa: F401
from ._stop import (KillResult, Scope, ThreadKilled, TimeLimitExceeded,
                    raise_in_thread, shield, time_limit, wake_signal)
from ._sync import (BoundedSemaphore, Condition, Event, LifoQueue, Lock,
                    PriorityQueue, Queue, RLock, Semaphore, sleep)
from ._thread import Thread
from ._pool import (PoolHealth, StuckTask, TaskCancelled, ThreadPoolExecutor,
                    to_thread)

__version__ = "0.1.0"

__all__ = [
    "Thread", "get_ident", "get_native_id",
    "ThreadKilled", "TimeLimitExceeded", "KillResult", "raise_in_thread",
    "shield", "time_limit", "Scope", "wake_signal",
    "sleep", "Lock", "RLock", "Condition", "Event", "Semaphore",
    "BoundedSemaphore", "Queue", "LifoQueue", "PriorityQueue",
    "ThreadPoolExecutor", "TaskCancelled", "StuckTask", "PoolHealth",
    "to_thread",
]

get_ident = _xthread.get_ident
get_native_id = _xthread.get_native_id
