"""The one place where xthread touches private names of ``threading``
(and the list of those of ``concurrent.futures`` that its pool uses).

Checked against CPython 3.9, 3.10, 3.11, 3.12, 3.13, 3.14 and 3.15 (the
versions CI runs).

``xthread.Thread`` lives beside ``threading``: its threads are listed in
``threading._active`` so that ``current_thread()``, ``enumerate()``,
logging's ``threadName`` and ``threading.local`` see them, and it answers
the calls that ``threading`` makes on the objects it lists (after a fork,
at exit). Those names are private and change between versions; each one
used is below, with why, keyed by version. A change in a future CPython
breaks this file and no other.

Read and written:

* ``_active`` (dict ident -> thread), ``_limbo`` (dict thread -> thread),
  ``_active_limbo_lock``: registration while a thread runs, as
  ``Thread._bootstrap_inner`` does. ``_active_limbo_lock`` is rebound by
  ``threading._after_fork``, so it is looked up on every use.
* ``_newname``: default names from stdlib's own counter, so that
  ``Thread-N`` numbers never collide with stdlib threads. 3.9 takes no
  template argument and adds no ``(target)`` suffix; 3.10+ do.
* ``_trace_hook`` / ``_profile_hook`` on 3.9 (3.10 added the public
  ``gettrace``/``getprofile``).
* ``_dangling`` (a weak set of every Thread made): the time-limit
  watchdog's placeholder ``threading.Thread`` (see ``_stop._Watchdog``) is
  taken off it, so that leak checks that read it do not count it.
* ``_register_atexit`` and ``_SHUTTING_DOWN``: joining non-daemon threads
  at the point stdlib joins its own (``threading._shutdown`` runs these
  callbacks before it joins, 3.9+), and refusing to start a thread once
  shutdown has begun on 3.12.0-3.12.2, as stdlib does there.

Answered (methods that ``threading`` calls on the objects in ``_active``):

* ``threading.excepthook`` (3.8+) reads ``args.thread._stderr`` when
  ``sys.stderr`` is None: the stderr current when the thread was created.

* 3.9-3.12 ``_after_fork``: ``_reset_internal_locks(is_alive)``, ``_stop()``
  and an assignment to ``_ident``.
* 3.13 ``_after_fork``: ``_after_fork(new_ident=None)``.
* When a fork happens inside an xthread, that object becomes
  ``threading._main_thread`` in the child, and ``threading._shutdown`` at
  the child's exit reads ``_is_stopped`` / ``_tstate_lock`` / ``_stop()``
  (3.9-3.12), ``_handle.is_done()`` / ``_handle._set_done()`` (3.13), or
  ``_os_thread_handle.is_done()`` / ``_os_thread_handle._set_done()``
  (3.14, 3.15: the attribute was renamed).
  ``become_main_thread`` gives the object exactly those, only then;
  ``stopped`` keeps ``_is_stopped`` right (``threading._main_thread`` is
  read to tell).

``concurrent.futures`` (``xthread._pool``): the pool subclasses stdlib's
``ThreadPoolExecutor`` for ``isinstance`` checks but calls none of its
methods and keeps all of its own state (3.14 replaced the private
``_initializer``/``_initargs`` with a worker context, which broke the pool
while it called stdlib's constructor). What it still uses, unchanged on
every version checked:

* ``concurrent.futures.thread._threads_queues``, ``_global_shutdown_lock``
  and ``_shutdown``: stdlib's exit handler (``_python_exit``, run by
  ``threading._shutdown``) wakes and joins the workers listed there, and
  its fork handler clears the list; submitting is refused once it ran.
* ``concurrent.futures._base``: the future states (``PENDING``,
  ``RUNNING``, ``FINISHED``, ``CANCELLED_AND_NOTIFIED``), ``LOGGER``, and
  ``Future``'s ``_condition``, ``_state``, ``_result``, ``_exception``,
  ``_waiters`` and ``_invoke_callbacks``, to settle a running future that
  a cancel stopped, as ``Future.set_result`` does.
* The attribute names that CPython's own executor tests read on a pool
  (``_max_workers``, ``_threads``, ``_broken``, ``_shutdown``,
  ``_work_queue``, ``_shutdown_lock``, ``_thread_name_prefix``) are set
  with stdlib's meaning, by the pool itself.
"""
import sys
import threading

import _xthread

PY310 = sys.version_info >= (3, 10)
PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)
PY314 = sys.version_info >= (3, 14)
PY315 = sys.version_info >= (3, 15)

active = threading._active
limbo = threading._limbo


def active_limbo_lock():
    """stdlib's registry lock; rebound after every fork, so never cached."""
    return threading._active_limbo_lock


if PY310:
    def newname(target):
        name = threading._newname("Thread-%d")
        if target is not None:
            try:
                name += f" ({target.__name__})"
            except AttributeError:
                pass
        return name

    gettrace = threading.gettrace
    getprofile = threading.getprofile
else:
    def newname(target):
        return threading._newname()

    def gettrace():
        return threading._trace_hook

    def getprofile():
        return threading._profile_hook


register_atexit = threading._register_atexit


def shutting_down():
    """True once interpreter exit has begun joining threads."""
    return threading._SHUTTING_DOWN


# 3.12.0 made starting a thread once shutdown has begun an error
# (gh-104690: in atexit callbacks, in threads while exit joins them);
# 3.12.3 and 3.13 start it again until finalization proper (gh-113964),
# when the C module refuses on its own. xthread follows the running version.
REFUSE_START_AT_SHUTDOWN = (3, 12) <= sys.version_info[:3] < (3, 12, 3)


class _DoneHandle:
    """What ``threading._shutdown`` asks of ``_main_thread._handle``
    (3.13) or ``_main_thread._os_thread_handle`` (3.14, 3.15)."""

    __slots__ = ("_done", "_thread")

    def __init__(self, thread):
        self._done = False
        self._thread = thread

    def is_done(self):
        return self._done

    def _set_done(self):
        # threading._shutdown() marks the main thread done: from then on
        # is_alive() is False, as for stdlib's main thread.
        self._done = True
        self._thread._xthread_mark_stopped()


def become_main_thread(thread):
    """Gives ``thread`` what ``threading._shutdown`` reads of
    ``threading._main_thread``: called in a forked child whose forking
    thread was ``thread``. Only then: a user subclass may use these names
    for its own purposes, and on every other object they stay unset."""
    if PY314:
        thread._os_thread_handle = _DoneHandle(thread)
    elif PY313:
        thread._handle = _DoneHandle(thread)
    else:
        lock = _xthread.allocate_lock()
        lock.acquire()
        thread._tstate_lock = lock
        thread._is_stopped = False


def stopped(thread):
    """3.9-3.12: ``thread._stop()`` was called. ``threading._shutdown``
    reads ``_main_thread._is_stopped`` to run only once: keep it true for a
    thread that became the main thread (``become_main_thread``)."""
    if thread is threading._main_thread:
        thread._is_stopped = True
