"""Starting threads: start_new_thread / start_new / _start_joinable_thread,
and the small module functions (get_ident, get_native_id, _count,
stack_size, TIMEOUT_MAX, error, exit)."""
import _thread
import ctypes
import ctypes.util
import gc
import sys
import threading
import time
import weakref

import pytest

import _xthread
import xthread
from helpers import (JOIN_TIMEOUT, assert_clean_exit, catch_unraisable,
                     joined, run_script, stack_size, start_joinable,
                     switch_interval)

START_FUNCTIONS = [
    pytest.param(_xthread.start_new_thread, id="start_new_thread"),
    pytest.param(_xthread.start_new, id="start_new"),
]

ALL_STARTERS = START_FUNCTIONS + [
    pytest.param(_xthread._start_joinable_thread, id="_start_joinable_thread"),
]


class Payload:
    """An object whose lifetime a test watches through a weakref."""


def start_and_wait(start, function, args, kwargs=None):
    """Start ``function`` with ``start`` (any of the start functions) and
    wait, bounded, until the thread's state is gone: the thread takes a
    sentinel of its own (``_set_sentinel``) before it calls ``function``.
    Returns what ``start`` returned."""
    box = {}
    ready = threading.Event()

    def bootstrap(*a, **kw):
        box["sentinel"] = s = _xthread._set_sentinel()
        s.acquire()
        ready.set()
        function(*a, **kw)

    result = start(bootstrap, args, kwargs)
    assert ready.wait(JOIN_TIMEOUT)
    assert box["sentinel"].acquire(timeout=JOIN_TIMEOUT)
    return result


# start_new_thread / start_new


@pytest.mark.parametrize("start", START_FUNCTIONS)
def test_runs_function_with_args_and_kwargs(start):
    done = threading.Event()
    seen = {}

    def function(*args, **kwargs):
        seen["args"] = args
        seen["kwargs"] = kwargs
        seen["ident"] = _xthread.get_ident()
        seen["thread_ident"] = threading.get_ident()
        done.set()

    ident = start_and_wait(start, function, (1, "two"), {"three": 3})
    assert done.is_set()
    assert seen["args"] == (1, "two")
    assert seen["kwargs"] == {"three": 3}
    assert type(ident) is int
    assert ident == seen["ident"] == seen["thread_ident"]
    assert ident != _xthread.get_ident()


@pytest.mark.parametrize("start", ALL_STARTERS)
@pytest.mark.parametrize("extra", [(), (None,), ({},)],
                         ids=["no-kwargs", "kwargs-None", "kwargs-empty"])
def test_kwargs_optional(start, extra):
    done = threading.Event()
    seen = []

    def function(*args, **kwargs):
        seen.append((args, kwargs))
        done.set()

    start_and_wait(lambda f, a, k: start(f, a, *extra), function, (7,))
    assert done.is_set()
    assert seen == [((7,), {})]


@pytest.mark.parametrize("start", ALL_STARTERS)
@pytest.mark.parametrize("args, message", [
    ((None, ()), "first arg must be callable"),
    ((42, ()), "first arg must be callable"),
    ((print, [1]), "2nd arg must be a tuple"),
    ((print, None), "2nd arg must be a tuple"),
    ((print, (), [("a", 1)]), "optional 3rd arg must be a dictionary"),
    ((print, (), ()), "optional 3rd arg must be a dictionary"),
])
def test_bad_arguments(start, args, message):
    before = _xthread._count()
    with pytest.raises(TypeError) as info:
        start(*args)
    assert str(info.value) == message
    assert _xthread._count() == before


@pytest.mark.parametrize("start", ALL_STARTERS)
@pytest.mark.parametrize("args", [(), (print,),
                                  (print, (), {}, None, False, None, None)],
                         ids=["0", "1", "7"])
def test_wrong_number_of_arguments(start, args):
    with pytest.raises(TypeError):
        start(*args)


@pytest.mark.parametrize("started", [[], [None, None], (None,), "x"])
def test_started_must_be_a_list_of_one(started):
    before = _xthread._count()
    with pytest.raises(TypeError, match="list of one item"):
        _xthread._start_joinable_thread(print, (), None, None, False, started)
    assert _xthread._count() == before


def test_started_gets_the_result():
    started = [None]
    result = _xthread._start_joinable_thread(print, (), None, None, False,
                                             started)
    assert started == [result]
    ident, sentinel, generation = result
    assert sentinel._wait_released(timeout=JOIN_TIMEOUT)


def test_joinable_with_given_sentinel():
    """A held lock passed in becomes the sentinel; others are refused."""
    sentinel = _xthread.allocate_lock()
    sentinel.acquire()
    go = threading.Event()
    result = _xthread._start_joinable_thread(go.wait, (JOIN_TIMEOUT,), None,
                                             sentinel)
    assert result[1] is sentinel
    go.set()
    assert sentinel.acquire(timeout=JOIN_TIMEOUT)
    with pytest.raises(ValueError, match="held"):
        _xthread._start_joinable_thread(print, (), None,
                                        _xthread.allocate_lock())
    with pytest.raises(TypeError, match="sentinel"):
        _xthread._start_joinable_thread(print, (), None, object())


@pytest.mark.parametrize("start", ALL_STARTERS)
def test_bad_arguments_leak_nothing(start):
    payload = Payload()
    ref = weakref.ref(payload)
    with pytest.raises(TypeError):
        start(print, (payload,), "not a dict")
    del payload
    assert ref() is None


def test_tuple_subclass_and_dict_subclass_accepted():
    class T(tuple):
        pass

    class D(dict):
        pass

    seen = []
    start_and_wait(_xthread.start_new_thread,
                   lambda *a, **k: seen.append((a, k)), T((1, 2)), D(x=1))
    assert seen == [((1, 2), {"x": 1})]


@pytest.mark.parametrize("start", ALL_STARTERS)
@pytest.mark.parametrize("how", ["raise", "exit", "exit_thread", "code"])
def test_system_exit_is_silent(start, how):
    def function():
        if how == "raise":
            raise SystemExit
        if how == "code":
            raise SystemExit(3)
        getattr(_xthread, how)()

    with catch_unraisable() as hook:
        start_and_wait(start, function, ())
    assert hook.records == []


@pytest.mark.parametrize("start", ALL_STARTERS)
def test_exception_goes_to_unraisablehook(start):
    error = ValueError("task failed")
    box = []

    def function():
        box.append(_xthread._set_sentinel())
        box[0].acquire()
        raise error

    with catch_unraisable() as hook:
        # The function itself is the thread's function: it is the object
        # reported.
        start(function, ())
        record = hook.wait()
        assert box[0].acquire(timeout=JOIN_TIMEOUT)     # the thread is gone
        assert len(hook.records) == 1
    assert record.exc_type is ValueError
    assert record.exc_value is error
    assert record.exc_traceback is not None
    if sys.version_info < (3, 13):
        # 3.9-3.12 report the function as the object, as _thread does.
        assert record.object is function
        assert record.err_msg == "Exception ignored in thread started by"
    else:
        # 3.13 has only PyErr_FormatUnraisable, which passes no object; the
        # function is in the message, exactly as _thread 3.13 writes it.
        assert record.object is None
        assert record.err_msg == (
            f"Exception ignored in thread started by {function!r}")


def test_unraisable_report_matches_thread_module():
    """Same exception, same report as _thread's own threads (message with
    the function's repr replaced, and whether the object is the function)."""
    def function():
        raise ValueError("boom")

    reports = []
    for start in (_thread.start_new_thread, _xthread.start_new_thread):
        ran = threading.Event()

        ended = []

        def wrapper(ran=ran, ended=ended):
            ran.set()
            if start is _xthread.start_new_thread:
                ended.append(_xthread._set_sentinel())
                ended[0].acquire()
            function()

        with catch_unraisable() as hook:
            start(wrapper, ())
            record = hook.wait()
            if ended:
                assert ended[0].acquire(timeout=JOIN_TIMEOUT)
        reports.append((record.exc_type, str(record.exc_value),
                        record.err_msg.replace(repr(wrapper), "<function>"),
                        record.object is wrapper))
    assert reports[1] == reports[0]


@pytest.mark.parametrize("start", ALL_STARTERS)
def test_function_and_arguments_are_released(start):
    payload = Payload()
    kw_payload = Payload()

    class Function:
        def __call__(self, obj, *, kw):
            assert obj is payload_ref()
            assert kw is kw_payload_ref()

    function = Function()
    payload_ref = weakref.ref(payload)
    kw_payload_ref = weakref.ref(kw_payload)
    function_ref = weakref.ref(function)
    before = _xthread._count()
    with catch_unraisable() as hook:
        start_and_wait(start, function, (payload,), {"kw": kw_payload})
    assert hook.records == []
    del payload, kw_payload, function
    assert payload_ref() is None
    assert kw_payload_ref() is None
    assert function_ref() is None
    assert _xthread._count() == before


# A stack no 64-bit address space can hold: pthread_create refuses it.
@pytest.mark.skipif(sys.maxsize < 2**61, reason="needs a 64-bit build")
@pytest.mark.parametrize("failure", ["bad arguments", "OS refusal"])
def test_failed_start_releases_the_sentinel_given(failure,
                                                 restore_stack_size):
    """A held sentinel given to a start that fails is released, waking
    whoever waits on it already: no join waits for a thread that never
    ran."""
    sentinel = _xthread.allocate_lock()
    sentinel.acquire()
    woke = []
    waiter = threading.Thread(
        target=lambda: woke.append(sentinel.acquire(timeout=JOIN_TIMEOUT)))
    waiter.start()
    args = ("not a tuple" if failure == "bad arguments" else ())
    with stack_size(2**61 if failure == "OS refusal" else 0):
        with pytest.raises((TypeError, RuntimeError)):
            _xthread._start_joinable_thread(print, args, None, sentinel)
    waiter.join(JOIN_TIMEOUT)
    assert woke == [True]


# (Not probed with _thread: a failed _thread start leaves a stale thread
# state behind on 3.9-3.13, which would then take exceptions sent with
# set_async_exc to the main thread's ident, or to ident 0 on 3.12+.)
HUGE_STACK = 2**61


@pytest.mark.parametrize("start", ALL_STARTERS)
@pytest.mark.skipif(sys.maxsize < HUGE_STACK, reason="needs a 64-bit build")
def test_os_refusal_raises_error(start, restore_stack_size):
    size = HUGE_STACK
    payload = Payload()
    ref = weakref.ref(payload)
    ran = threading.Event()

    def function(obj):
        ran.set()

    before = _xthread._count()
    with stack_size(size):
        with pytest.raises(_xthread.error) as info:
            start(function, (payload,))
    assert type(info.value) is RuntimeError
    assert "can't start new thread" in str(info.value)
    assert _xthread._count() == before
    del payload
    assert ref() is None
    # The stack size is back to normal: threads start again.
    start_and_wait(start, function, (None,))
    assert ran.is_set()


def _thread_stack_size():
    """The stack size of the calling thread as the C library reports it."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.pthread_self.restype = ctypes.c_ulong
    libc.pthread_getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
    libc.pthread_attr_getstacksize.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    libc.pthread_attr_destroy.argtypes = [ctypes.c_void_p]
    attr = ctypes.create_string_buffer(256)    # >= sizeof(pthread_attr_t)
    assert libc.pthread_getattr_np(libc.pthread_self(), attr) == 0
    size = ctypes.c_size_t()
    try:
        assert libc.pthread_attr_getstacksize(attr, ctypes.byref(size)) == 0
    finally:
        libc.pthread_attr_destroy(attr)
    return size.value


def _measure_stack(start):
    box = []
    done = threading.Event()

    def function():
        box.append(_thread_stack_size())
        done.set()

    if start is _thread.start_new_thread:
        start(function, ())
        assert done.wait(JOIN_TIMEOUT)
    else:
        start_and_wait(start, function, ())
    return box[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="pthread_getattr_np is a glibc extension")
@pytest.mark.parametrize("start", ALL_STARTERS)
def test_stack_size_applies_to_new_threads(start, restore_stack_size):
    """stack_size(n) is the size of the next threads' stacks, as for
    _thread's threads (same setting, same size)."""
    # glibc reuses a cached stack up to 4 times larger than asked for, so
    # ask for more than 4 times the default size, and measure the thread
    # under test first: a stack freed by _thread's thread could be reused.
    default = _measure_stack(_thread.start_new_thread)
    size = 4 * default + 16 * 4096
    with stack_size(size):
        got = _measure_stack(start)
        expected = _measure_stack(_thread.start_new_thread)
    assert expected >= size > default
    assert got == expected


# _start_joinable_thread


def test_joinable_returns_ident_sentinel_generation():
    seen = {}
    go = threading.Event()

    def function():
        seen["ident"] = _xthread.get_ident()
        seen["native_id"] = _xthread.get_native_id()
        seen["threading_native_id"] = threading.get_native_id()
        go.wait(JOIN_TIMEOUT)

    result = _xthread._start_joinable_thread(function, ())
    try:
        assert type(result) is tuple and len(result) == 3
        ident, sentinel, generation = result
        assert type(ident) is int
        assert type(generation) is int and generation > 0
        assert isinstance(sentinel, _xthread.LockType)
        assert sentinel.locked()
        assert not sentinel.acquire(blocking=False)
        # Known at once, though the thread may not have run yet.
        native_id = _xthread._native_id(ident, generation)
        assert type(native_id) is int
    finally:
        go.set()
    assert sentinel.acquire(timeout=JOIN_TIMEOUT)
    assert seen["ident"] == ident
    assert seen["native_id"] == native_id == seen["threading_native_id"]
    assert native_id != _xthread.get_native_id()
    # Ended: no longer known.
    assert _xthread._native_id(ident, generation) is None


def test_native_id_of_unknown_thread_or_generation():
    assert _xthread._native_id(0) is None
    with joined(threading.Event().wait, 0) as t:
        pass
    assert _xthread._native_id(t.ident, t.generation) is None
    go = threading.Event()
    with joined(go.wait, JOIN_TIMEOUT) as t:
        try:
            assert _xthread._native_id(t.ident, t.generation + 1) is None
            assert type(_xthread._native_id(t.ident)) is int
        finally:
            go.set()
    with pytest.raises(TypeError):
        _xthread._native_id("1")
    with pytest.raises(ValueError):
        _xthread._native_id(-1)


@pytest.mark.skipif(not getattr(sys, "_is_gil_enabled", lambda: True)(),
                    reason="with the GIL off the new thread may run its "
                    "function before the delivery: only the GIL keeps it out")
def test_new_thread_reachable_at_once():
    """start_new_thread returns before the thread has run, even before it
    has a thread state: an exception sent through _deliver at once is held
    until the thread runs, and raised there in place of its function."""
    class Stop(Exception):
        pass

    ran = []
    _xthread._deliver(0, Stop)      # its first call imports; not below
    count = _xthread._count()
    with catch_unraisable() as hook:
        # With a stack size set the thread is made with the GIL held, and
        # with no forced switches this thread keeps the GIL from the start
        # call to the delivery: the new thread cannot have run.
        with stack_size(1 << 20), switch_interval(60):
            ident = _xthread.start_new_thread(ran.append, (1,))
            assert _xthread._deliver(ident, Stop, handoff=False) is True
        deadline = time.monotonic() + JOIN_TIMEOUT
        while _xthread._count() > count and time.monotonic() < deadline:
            xthread.sleep(0.001)
    assert ran == []
    assert [r.exc_type for r in hook.records] == [Stop]


@pytest.mark.skipif(not getattr(sys, "_is_gil_enabled", lambda: True)(),
                    reason="with the GIL off both threads run at once: "
                    "which goes first is not the handshake's to say")
def test_joinable_thread_runs_before_the_caller_goes_on():
    """_start_joinable_thread returns once the thread runs: it goes on into
    its function before the caller gets the GIL back."""
    ran = []
    go = threading.Event()

    def function():
        ran.append(True)
        go.wait(JOIN_TIMEOUT)

    with switch_interval(60):
        t = start_joinable(function)
        assert ran == [True]
    go.set()
    t.join()


def test_set_async_exc_reaches_a_thread_once_it_runs():
    """set_async_exc is PyThreadState_SetAsyncExc, as _thread's: it reaches
    a thread that has its thread state (here: one that has run)."""
    class Stop(Exception):
        pass

    started = threading.Event()
    go = threading.Event()

    def function():
        started.set()
        go.wait(JOIN_TIMEOUT)

    with catch_unraisable() as hook:
        t = start_joinable(function)
        try:
            assert started.wait(JOIN_TIMEOUT)
            assert _xthread.set_async_exc(t.ident, Stop) == 1
        finally:
            go.set()
            t.join()
    assert [r.exc_type for r in hook.records] == [Stop]


# get_ident / get_native_id


def test_get_ident_main_thread():
    ident = _xthread.get_ident()
    assert type(ident) is int
    assert ident != 0
    assert ident == _thread.get_ident() == threading.get_ident()
    assert ident == threading.main_thread().ident


def test_get_native_id():
    native_id = _xthread.get_native_id()
    assert type(native_id) is int
    assert native_id == threading.get_native_id()


def test_idents_differ_between_live_threads():
    go = threading.Event()
    idents = []

    def function():
        idents.append((_xthread.get_ident(), _xthread.get_native_id()))
        go.wait(JOIN_TIMEOUT)

    threads = [start_joinable(function) for _ in range(5)]
    try:
        assert sorted(t.ident for t in threads) == sorted(
            set(t.ident for t in threads))
        expected = [(t.ident, t.native_id) for t in threads]
        assert len({native_id for _, native_id in expected}) == 5
    finally:
        go.set()
        for t in threads:
            t.join()
    assert sorted(idents) == sorted(expected)


# _count


def test_count_follows_running_threads():
    go = threading.Event()
    started = threading.Semaphore(0)

    def function():
        started.release()
        go.wait(JOIN_TIMEOUT)

    before = _xthread._count()
    threads = []
    try:
        for n in range(1, 6):
            threads.append(start_joinable(function))
            assert _xthread._count() == before + n
        for _ in threads:
            assert started.acquire(timeout=JOIN_TIMEOUT)
        assert _xthread._count() == before + 5
    finally:
        go.set()
        for t in threads:
            t.join()
    assert _xthread._count() == before


def test_count_ignores_other_threads():
    before = _xthread._count()
    go = threading.Event()
    started = threading.Event()

    def function():
        started.set()
        go.wait(JOIN_TIMEOUT)

    t = threading.Thread(target=function)
    t.start()
    try:
        assert started.wait(JOIN_TIMEOUT)
        assert _xthread._count() == before
    finally:
        go.set()
        t.join(JOIN_TIMEOUT)


def test_many_threads_start_and_join():
    before = _xthread._count()
    results = []
    for i in range(200):
        with joined(results.append, i):
            pass
    assert results == list(range(200))
    assert _xthread._count() == before


# stack_size


def test_stack_size_get_set_restore(restore_stack_size):
    assert _xthread.stack_size(0) == restore_stack_size
    assert _xthread.stack_size() == 0
    assert _xthread.stack_size(1 << 20) == 0
    # Shared with _thread: the same process-wide setting.
    assert _thread.stack_size(1 << 20) == 1 << 20
    assert _xthread.stack_size(256 * 1024) == 1 << 20
    assert _xthread.stack_size(0) == 256 * 1024
    assert _xthread.stack_size() == 0


@pytest.mark.parametrize("size", [1, 4096, 32767])
def test_stack_size_too_small(size, restore_stack_size):
    _xthread.stack_size(1 << 20)
    with pytest.raises(ValueError):
        _xthread.stack_size(size)
    assert _xthread.stack_size(0) == 1 << 20


@pytest.mark.parametrize("size", [-1, -(2**20)])
def test_stack_size_negative(size, restore_stack_size):
    with pytest.raises(ValueError, match="size must be 0 or a positive value"):
        _xthread.stack_size(size)


@pytest.mark.parametrize("size", ["1", 1.5, None])
def test_stack_size_type_error(size, restore_stack_size):
    with pytest.raises(TypeError):
        _xthread.stack_size(size)


def test_stack_size_too_many_arguments():
    with pytest.raises(TypeError):
        _xthread.stack_size(0, 0)


# constants, exit


def test_timeout_max():
    assert type(_xthread.TIMEOUT_MAX) is float
    assert _xthread.TIMEOUT_MAX == _thread.TIMEOUT_MAX
    assert _xthread.TIMEOUT_MAX > 0


def test_error_is_runtime_error():
    assert _xthread.error is RuntimeError
    assert _xthread.error is _thread.error


@pytest.mark.parametrize("name", ["exit", "exit_thread"])
def test_exit_raises_system_exit(name):
    with pytest.raises(SystemExit) as info:
        getattr(_xthread, name)()
    assert info.value.code is None
    with pytest.raises(TypeError):
        getattr(_xthread, name)(1)


def test_threads_survive_gc_of_their_starter():
    """The thread holds its function; dropping every other reference and
    collecting garbage does not disturb it."""
    go = threading.Event()
    out = []

    def make():
        def function():
            go.wait(JOIN_TIMEOUT)
            out.append("done")
        return start_joinable(function)

    t = make()
    gc.collect()
    go.set()
    t.join()
    assert out == ["done"]


# fork


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork")
@pytest.mark.parametrize("where", ["main", "xthread"])
def test_fork_resets_count(where):
    """In a child forked while _xthread threads run, _count() counts only
    the forking thread (if _xthread started it), and threads start and
    join there."""
    rc, out, err = run_script(f"""
        import os, threading, warnings, _xthread

        warnings.simplefilter("ignore", DeprecationWarning)   # fork + threads
        go = threading.Event()
        running = threading.Semaphore(0)

        def park():
            running.release()
            go.wait(60)

        parked = [_xthread._start_joinable_thread(park, ()) for _ in range(3)]
        # Forked once they run: a thread still being made is inside the C
        # library's allocator, which not every allocator (AddressSanitizer's,
        # among others) makes safe to fork around.
        for _ in parked:
            assert running.acquire(timeout=30)

        def fork_and_report():
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    # Threads of the parent process are unknown here.
                    assert [_xthread._native_id(ident, generation)
                            for ident, _, generation in parked] == [None] * 3
                    # ...but for the forking thread, if _xthread started it.
                    assert _xthread._native_id(_xthread.get_ident()) == (
                        _xthread.get_native_id() if {where!r} == "xthread"
                        else None)
                    report = [_xthread._count()]
                    hold = _xthread.allocate_lock()
                    hold.acquire()
                    t = _xthread._start_joinable_thread(hold.acquire, ())
                    report.append(_xthread._count())
                    hold.release()
                    report.append(t[1].acquire(timeout=30))
                    report.append(_xthread._count())
                    os.write(w, repr(report).encode())
                finally:
                    os._exit(0)
            os.close(w)
            data = os.read(r, 1000).decode()
            os.waitpid(pid, 0)
            print(data)

        if {where!r} == "main":
            fork_and_report()
        else:
            t = _xthread._start_joinable_thread(fork_and_report, ())
            assert t[1].acquire(timeout=30)
        go.set()
        for ident, sentinel, generation in parked:
            assert sentinel.acquire(timeout=30)
    """)
    assert_clean_exit(rc, out, err)
    base = 0 if where == "main" else 1
    assert out.strip() == repr([base, base + 1, True, base])
