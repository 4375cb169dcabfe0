"""A Celery execution pool on xthread's pool: threads whose tasks can be
stopped.

    app.conf.worker_pool = "xthread.contrib.celery:TaskPool"

or ``CELERY_CUSTOM_WORKER_POOL=xthread.contrib.celery:TaskPool celery -A
proj worker -P custom`` (the command's ``-P`` takes Celery's own pools and
``custom`` only).

Celery's own ``threads`` pool ignores time limits and cannot terminate a
running task. This one, for each task:

* ``soft_time_limit`` raises ``celery.exceptions.SoftTimeLimitExceeded``
  in the task's thread (the task may catch it), as the prefork pool does;
* ``time_limit`` stops the task; it fails with ``TimeLimitExceeded``,
  reported through Celery's usual handler (``Request.on_timeout``: result
  backend, ``on_failure``, signals, events);
* ``revoke(task_id, terminate=True)`` stops the running task (state
  ``REVOKED``);
* a task that no exception reaches (a C call; ``time.sleep`` before
  CPython 3.15) is reported at its hard limit all the same, its worker
  thread is written off and replaced, so that ``-c N`` tasks keep
  running, and the thread ends quietly when its call returns.

Warm shutdown waits for running tasks (those not started are cancelled,
as Celery's own thread pool does); cold shutdown stops them. The
exceptions land where the task's ``except``/``finally``/``with`` apply
(see README, *Cleanup always runs*).
"""
import itertools
from concurrent.futures import wait as _wait

from celery.concurrency.base import BasePool, apply_target
from celery.exceptions import SoftTimeLimitExceeded

import xthread

__all__ = ["TaskPool"]

# What the pool raises to stop a task: they pass through Celery's tracer
# (which catches Exception only) and are reported by the pool, not as the
# task's own failure.
_STOPS = (xthread.TaskCancelled, xthread.TimeLimitExceeded)


class _Job:
    """One task given to the pool."""

    def __init__(self, pool, ident, timeout_callback, soft, hard):
        self.pool = pool
        self.id = ident             # the "pid" Celery keeps for the task
        self.timeout_callback = timeout_callback
        self.soft = soft
        self.hard = hard
        self.future = None
        self.terminated = False

    def run(self, target, args, kwargs, callback, accept_callback):
        self.pool._jobs[self.id] = self
        outcome = []
        soft = None
        try:
            if self.soft:
                soft = SoftTimeLimitExceeded(self.soft)
                with xthread.time_limit(self.soft, exception=soft):
                    apply_target(target, args, kwargs, outcome.append,
                                 accept_callback, pid=self.id,
                                 propagate=_STOPS)
            else:
                apply_target(target, args, kwargs, outcome.append,
                             accept_callback, pid=self.id, propagate=_STOPS)
        finally:
            self.pool._jobs.pop(self.id, None)
        if soft is not None and soft.__traceback__ is not None:
            # It was raised (the task may have caught it): Celery logs it.
            soft.__traceback__ = None
            if self.timeout_callback is not None:
                self.timeout_callback(True, self.soft)
        if outcome and callback is not None and not self.terminated:
            callback(outcome[0])

    def done(self, future):
        # A hard limit: the task was stopped, or written off stuck in a
        # call that no exception reaches. Reported once, here.
        if future.cancelled() or self.terminated:
            return
        if (isinstance(future.exception(), xthread.TimeLimitExceeded)
                and self.timeout_callback is not None):
            self.timeout_callback(False, self.hard)

    def terminate(self):
        """Stop the task if it runs (revoke with terminate=True)."""
        if self.terminated or self.id not in self.pool._jobs:
            return
        self.terminated = True
        self.future.cancel()


class ApplyResult:
    """What ``apply_async`` returns: Celery keeps a weak reference to it,
    and calls ``terminate`` when the task is revoked with terminate."""

    def __init__(self, job):
        self._job = job
        self.f = job.future         # the name Celery's own pool uses
        self.get = job.future.result

    def wait(self, timeout=None):
        _wait([self.f], timeout)

    def terminate(self, signal=None):
        self._job.terminate()


class TaskPool(BasePool):
    """Celery's execution pool on ``xthread.ThreadPoolExecutor``."""

    body_can_be_buffer = True
    signal_safe = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.executor = xthread.ThreadPoolExecutor(
            max_workers=self.limit, thread_name_prefix="celery-xthread")
        self._jobs = {}
        self._next_id = itertools.count(1).__next__

    def on_stop(self):
        # Warm shutdown: the running tasks end on their own; those not
        # started never will (as Celery's own thread pool).
        self.executor.shutdown(wait=True, cancel_futures=True)
        super().on_stop()

    def on_terminate(self):
        # Cold shutdown: the running tasks are stopped.
        self.executor.shutdown(wait=False, cancel_futures=True,
                               interrupt=True)

    def on_apply(self, target, args=None, kwargs=None, callback=None,
                 accept_callback=None, timeout_callback=None,
                 soft_timeout=None, timeout=None, **_):
        # The task's own limits, else the worker's (--soft-time-limit,
        # --time-limit), which Celery hands the pool as options.
        soft_timeout = soft_timeout or self.options.get("soft_timeout")
        timeout = timeout or self.options.get("timeout")
        job = _Job(self, self._next_id(), timeout_callback, soft_timeout,
                   timeout)
        run_args = (target, args, kwargs, callback, accept_callback)
        if timeout:
            job.future = self.executor.submit_with_limit(timeout, job.run,
                                                         *run_args)
        else:
            job.future = self.executor.submit(job.run, *run_args)
        job.future.add_done_callback(job.done)
        return ApplyResult(job)

    def terminate_job(self, pid, signal=None):
        job = self._jobs.get(pid)
        if job is not None:
            job.terminate()

    def _get_info(self):
        info = super()._get_info()
        health = self.executor.health()
        info.update({"max-concurrency": self.limit,
                     "threads": health.workers,
                     "busy": health.busy,
                     "replaced": health.replaced})
        return info

