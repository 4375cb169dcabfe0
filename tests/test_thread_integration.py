"""xthread.Thread inside the rest of ``threading`` and the stdlib:
current_thread(), enumerate(), active_count(), logging's threadName,
threading.local, threading.excepthook, settrace/setprofile hooks, the
moment join() returns, and code written for threading.Thread run with
``from xthread import Thread``.

Behaviour tests take ``thread_cls`` and run once with stdlib's
``threading.Thread`` and once with ``xthread.Thread``.
"""
import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest

import _xthread
import xthread
from helpers import JOIN_TIMEOUT, join_or_fail

#: Upper bound for any wait on a thread, lock or event.
JOIN_TIMEOUT = 30.0
#: Upper bound for a whole subprocess script.
SCRIPT_TIMEOUT = 60.0

PY312 = sys.version_info >= (3, 12)

def run_script(code, timeout=SCRIPT_TIMEOUT):
    """Run ``code`` (dedented) in ``sys.executable -c``; return
    ``(returncode, stdout, stderr)``. A hang fails the test."""
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c",
             textwrap.dedent(code)],
            capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"script did not finish in {timeout} s\n"
                             f"stdout: {exc.stdout!r}\n"
                             f"stderr: {exc.stderr!r}") from None
    return proc.returncode, proc.stdout, proc.stderr


class Parked:
    """A thread of ``cls`` that runs ``before()`` (if given), reports
    ``started`` and waits until released; ``with`` releases and joins it."""

    def __init__(self, cls, before=None, **kwargs):
        self.before = before
        self.result = None
        self.started = threading.Event()
        self.release = threading.Event()
        self.thread = cls(target=self._park, **kwargs)

    def _park(self):
        if self.before is not None:
            self.result = self.before()
        self.started.set()
        self.release.wait(JOIN_TIMEOUT)

    def __enter__(self):
        self.thread.start()
        assert self.started.wait(JOIN_TIMEOUT)
        return self.thread

    def __exit__(self, *exc):
        self.release.set()
        join_or_fail(self.thread)


# current_thread(), enumerate(), active_count()


def test_current_thread_is_the_thread_object(thread_cls):
    p = Parked(thread_cls, before=lambda: (threading.current_thread(),
                                           threading.main_thread()))
    with p as t:
        current, main = p.result
        assert current is t
        assert main is threading.main_thread()
        assert current is not main


def test_current_thread_in_subclass_run(thread_cls):
    seen = []

    class Worker(thread_cls):
        def run(self):
            seen.append(threading.current_thread())

    w = Worker()
    w.start()
    join_or_fail(w)
    assert seen == [w]


def test_enumerate_while_alive_only(thread_cls):
    p = Parked(thread_cls, before=lambda: threading.current_thread()
               in threading.enumerate())
    t = p.thread
    assert t not in threading.enumerate()
    with p:
        assert p.result is True
        assert t in threading.enumerate()
    assert t not in threading.enumerate()


def test_active_count(thread_cls):
    before = threading.active_count()
    p1, p2 = Parked(thread_cls), Parked(thread_cls)
    with p1:
        assert threading.active_count() == before + 1
        with p2:
            assert threading.active_count() == before + 2
        assert threading.active_count() == before + 1
    assert threading.active_count() == before


def test_thread_from_xthread_sees_its_parent():
    # A stdlib thread started inside an xthread, and the other way round.
    box = {}

    def inner():
        box["inner"] = threading.current_thread()

    def outer():
        box["outer"] = threading.current_thread()
        for cls in (threading.Thread, xthread.Thread):
            t = cls(target=inner)
            t.start()
            join_or_fail(t)
            box[cls] = (t, box.pop("inner"))

    for outer_cls in (threading.Thread, xthread.Thread):
        o = outer_cls(target=outer)
        o.start()
        join_or_fail(o)
        assert box.pop("outer") is o
        for cls in (threading.Thread, xthread.Thread):
            t, seen = box.pop(cls)
            assert seen is t


# logging


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []
        self.lines = []
        self.setFormatter(logging.Formatter("%(threadName)s|%(message)s"))

    def emit(self, record):
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def log_recorder():
    logger = logging.getLogger("xthread-tests.integration")
    handler = Recorder()
    logger.addHandler(handler)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def test_logging_thread_name(thread_cls, log_recorder):
    logger, handler = log_recorder
    t = thread_cls(target=lambda: logger.info("hello"), name="log-worker")
    t.start()
    join_or_fail(t)
    logger.info("from main")
    assert handler.lines == ["log-worker|hello", "MainThread|from main"]
    assert handler.records[0].thread == t.ident


def test_logging_thread_name_after_rename(thread_cls, log_recorder):
    logger, handler = log_recorder

    def target():
        threading.current_thread().name = "renamed"
        logger.info("x")

    t = thread_cls(target=target, name="before")
    t.start()
    join_or_fail(t)
    assert handler.lines == ["renamed|x"]


# threading.local


def test_threading_local_per_thread(thread_cls):
    local = threading.local()
    local.value = "main"
    seen = {}

    def target(n):
        seen[n] = [getattr(local, "value", None)]
        local.value = n
        seen[n].append(local.value)

    threads = [thread_cls(target=target, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        join_or_fail(t)
    assert seen == {n: [None, n] for n in range(4)}
    assert local.value == "main"


def test_threading_local_subclass_init_per_thread(thread_cls):
    calls = []

    class MyLocal(threading.local):
        def __init__(self, tag):
            calls.append((tag, threading.current_thread().name))
            self.tag = tag

    local = MyLocal("t")
    t = thread_cls(target=lambda: local.tag, name="loc")
    t.start()
    join_or_fail(t)
    assert calls == [("t", "MainThread"), ("t", "loc")]


def test_threading_local_values_released_at_thread_end(thread_cls):
    import weakref

    class Value:
        pass

    local = threading.local()
    refs = []

    def target():
        v = Value()
        refs.append(weakref.ref(v))
        local.v = v

    t = thread_cls(target=target)
    t.start()
    join_or_fail(t)
    assert refs[0]() is None


# threading.excepthook


@pytest.fixture
def hook_calls(monkeypatch):
    """Replace threading.excepthook by a recorder."""
    calls = []

    def hook(args):
        calls.append((args.exc_type, args.exc_value, args.exc_traceback,
                      args.thread, threading.current_thread()))

    monkeypatch.setattr(threading, "excepthook", hook)
    return calls


def test_excepthook_receives_uncaught_exception(thread_cls, hook_calls):
    error = ValueError("boom")

    def target():
        raise error

    t = thread_cls(target=target)
    t.start()
    join_or_fail(t)
    assert len(hook_calls) == 1
    exc_type, exc_value, tb, thread, current = hook_calls[0]
    assert exc_type is ValueError
    assert exc_value is error
    assert tb is not None and tb.tb_frame is not None
    assert thread is t
    # Called in the failing thread itself.
    assert current is t


def test_excepthook_for_subclass_run(thread_cls, hook_calls):
    class Failing(thread_cls):
        def run(self):
            raise KeyError("k")

    t = Failing()
    t.start()
    join_or_fail(t)
    assert [(c[0], c[3]) for c in hook_calls] == [(KeyError, t)]


def test_excepthook_receives_system_exit(thread_cls, hook_calls):
    t = thread_cls(target=sys.exit, args=(3,))
    t.start()
    join_or_fail(t)
    assert len(hook_calls) == 1
    assert hook_calls[0][0] is SystemExit
    assert hook_calls[0][1].code == 3
    assert hook_calls[0][3] is t


def test_excepthook_set_after_start_applies(thread_cls, monkeypatch):
    go = threading.Event()
    calls = []

    def target():
        go.wait(JOIN_TIMEOUT)
        raise ValueError

    t = thread_cls(target=target)
    t.start()
    try:
        monkeypatch.setattr(threading, "excepthook",
                            lambda args: calls.append(args.thread))
    finally:
        go.set()
        join_or_fail(t)
    assert calls == [t]


@pytest.fixture
def default_excepthook(monkeypatch):
    """threading's own default hook (pytest replaces it while a test runs;
    3.9 has no threading.__excepthook__)."""
    default = getattr(threading, "__excepthook__", None)
    if default is None:
        import _thread
        default = _thread._excepthook
    monkeypatch.setattr(threading, "excepthook", default)


def test_default_excepthook_output(thread_cls, default_excepthook, capfd):
    # The reference for the SystemExit test below: an error is printed.
    def target():
        raise ValueError("visible")

    t = thread_cls(target=target, name="printer")
    t.start()
    join_or_fail(t)
    err = capfd.readouterr().err
    assert "Exception in thread printer:" in err
    assert "Traceback (most recent call last):" in err
    assert "ValueError: visible" in err


def test_default_excepthook_silent_on_system_exit(thread_cls,
                                                  default_excepthook, capfd):
    reached = []

    def target():
        reached.append(True)
        raise SystemExit(5)

    t = thread_cls(target=target)
    t.start()
    join_or_fail(t)
    assert reached == [True]
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_failing_excepthook_falls_back_to_sys_excepthook(thread_cls,
                                                         monkeypatch):
    sys_calls = []
    hook_error = RuntimeError("hook failed")

    def bad_hook(args):
        raise hook_error

    monkeypatch.setattr(threading, "excepthook", bad_hook)
    monkeypatch.setattr(sys, "excepthook",
                        lambda *exc: sys_calls.append(exc))

    def target():
        raise ValueError("original")

    t = thread_cls(target=target)
    t.start()
    join_or_fail(t)
    assert len(sys_calls) == 1
    exc_type, exc_value, tb = sys_calls[0]
    # stdlib hands sys.excepthook the hook's own error.
    assert exc_type is RuntimeError
    assert exc_value is hook_error
    assert exc_value.__suppress_context__ is True


def test_failing_excepthook_says_so_first(thread_cls, monkeypatch, capfd):
    """stdlib writes one line before handing the hook's error on."""
    def bad_hook(args):
        raise RuntimeError("hook failed")

    monkeypatch.setattr(threading, "excepthook", bad_hook)
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)

    def target():
        raise ValueError("original")

    t = thread_cls(target=target)
    t.start()
    join_or_fail(t)
    err = capfd.readouterr().err
    assert err.startswith("Exception in threading.excepthook:\n"), err
    assert "RuntimeError: hook failed" in err


def test_excepthook_when_sys_stderr_is_none():
    # The default hook, with sys.stderr None while the thread fails, prints
    # to the stderr that was current when the thread was created.
    code = """
        import sys, threading, xthread
        Thread = %s
        def target():
            raise ValueError("to the creation stderr")
        t = Thread(target=target, name="orphan")
        saved = sys.stderr
        sys.stderr = None
        try:
            t.start()
            t.join(30)
        finally:
            sys.stderr = saved
        print("alive:", t.is_alive())
    """
    results = {}
    for cls in ("threading.Thread", "xthread.Thread"):
        rc, out, err = run_script(code % cls)
        results[cls] = (rc, out, err)
    for cls, (rc, out, err) in results.items():
        # The traceback's inner lines differ (threading.py or xthread's
        # bootstrap); the head and the last line must be there.
        assert rc == 0 and out == "alive: False\n", results
        assert err.startswith("Exception in thread orphan:\n"
                              "Traceback (most recent call last):\n"), results
        assert err.endswith("\nValueError: to the creation stderr\n"), results


# settrace / setprofile


def traced_target(seen):
    seen.append("body")


@pytest.fixture
def clear_hooks():
    yield
    threading.settrace(None)
    threading.setprofile(None)
    if PY312:
        threading.settrace_all_threads(None)
        threading.setprofile_all_threads(None)
    sys.settrace(None)
    sys.setprofile(None)


def make_tracer(events):
    def tracer(frame, event, arg):
        if frame.f_code is traced_target.__code__:
            events.append((event, threading.get_ident()))
        return tracer
    return tracer


def make_profiler(events):
    def profiler(frame, event, arg):
        # c_call / c_return of list.append are left out.
        if (frame.f_code is traced_target.__code__
                and event in ("call", "return")):
            events.append((event, threading.get_ident()))
    return profiler


def run_traced(cls):
    seen = []
    t = cls(target=traced_target, args=(seen,))
    t.start()
    join_or_fail(t)
    assert seen == ["body"]
    return t


def test_settrace_applies_in_thread(thread_cls, clear_hooks):
    events = []
    threading.settrace(make_tracer(events))
    t = run_traced(thread_cls)
    threading.settrace(None)
    kinds = [e for e, ident in events]
    assert kinds[0] == "call" and "line" in kinds and kinds[-1] == "return"
    assert {ident for e, ident in events} == {t.ident}


def test_setprofile_applies_in_thread(thread_cls, clear_hooks):
    events = []
    threading.setprofile(make_profiler(events))
    t = run_traced(thread_cls)
    threading.setprofile(None)
    assert [e for e, ident in events] == ["call", "return"]
    assert {ident for e, ident in events} == {t.ident}


def test_no_trace_when_unset(thread_cls, clear_hooks):
    events = []
    threading.settrace(make_tracer(events))
    threading.settrace(None)
    run_traced(thread_cls)
    assert events == []


@pytest.mark.skipif(not PY312, reason="settrace_all_threads is 3.12+")
def test_settrace_all_threads(thread_cls, clear_hooks):
    events = []
    threading.settrace_all_threads(make_tracer(events))
    try:
        t = run_traced(thread_cls)
    finally:
        threading.settrace_all_threads(None)
    assert [e for e, _ in events][0] == "call"
    assert {ident for e, ident in events} == {t.ident}


@pytest.mark.skipif(not PY312, reason="setprofile_all_threads is 3.12+")
def test_setprofile_all_threads(thread_cls, clear_hooks):
    events = []
    threading.setprofile_all_threads(make_profiler(events))
    try:
        t = run_traced(thread_cls)
    finally:
        threading.setprofile_all_threads(None)
    assert [e for e, _ in events] == ["call", "return"]
    assert {ident for e, ident in events} == {t.ident}


@pytest.mark.skipif(not PY312, reason="settrace_all_threads is 3.12+")
def test_settrace_all_threads_reaches_running_thread(thread_cls, clear_hooks):
    # Set while the thread already runs: it is traced from then on.
    go = threading.Event()
    seen = []

    def target():
        go.wait(JOIN_TIMEOUT)
        traced_target(seen)

    events = []
    t = thread_cls(target=target)
    t.start()
    try:
        threading.settrace_all_threads(make_tracer(events))
    finally:
        go.set()
        join_or_fail(t)
        threading.settrace_all_threads(None)
    assert seen == ["body"]
    assert events and {ident for e, ident in events} == {t.ident}


# join() and the thread state


def test_join_returns_after_thread_state_is_gone(thread_cls):
    # The thread state is cleared after run() returns: a thread-local value
    # whose __del__ is slow keeps the state alive a while. join() must not
    # return before the state is deleted.
    local = threading.local()
    deleted = []

    class SlowToDie:
        def __del__(self):
            threading.Event().wait(0.2)
            deleted.append(True)

    def target():
        local.v = SlowToDie()

    t = thread_cls(target=target)
    t.start()
    join_or_fail(t)
    assert deleted == [True]
    assert t.ident not in sys._current_frames()
    # No thread state with that ident is left in the interpreter.
    assert _xthread.set_async_exc(t.ident, None) == 0


def test_join_many_threads_states_gone(thread_cls):
    threads = [thread_cls(target=lambda: None) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        join_or_fail(t)
    frames = sys._current_frames()
    for t in threads:
        assert t.ident not in frames
        assert _xthread.set_async_exc(t.ident, None) == 0


# Drop-in: code written for threading.Thread, with xthread's Thread


DROP_IN = """
import logging
import queue
import sys
import threading
{import_line}

logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                    format="%(threadName)s: %(message)s")
log = logging.getLogger("app")


class Counter(Thread):
    def __init__(self, n):
        super().__init__(name=f"counter-{{n}}")
        self.n = n
        self.total = None

    def run(self):
        self.total = sum(range(self.n))
        log.info("counted to %d", self.n)


def work(items, out):
    while True:
        item = items.get()
        if item is None:
            items.task_done()
            return
        out.append(item * item)
        log.info("squared %d", item)
        items.task_done()


items = queue.Queue()
out = []
worker = Thread(target=work, args=(items, out), name="worker", daemon=True)
worker.start()
for i in range(5):
    items.put(i)
items.put(None)
items.join()
worker.join(30)

counters = [Counter(n) for n in (10, 100)]
for c in counters:
    c.start()
for c in counters:
    c.join(30)

results = {{}}
t = Thread(target=lambda: results.update(
    name=threading.current_thread().name,
    is_self=threading.current_thread() is t), name="plain")
t.start()
t.join(30)

print("out", out)
print("totals", [c.total for c in counters])
print("results", sorted(results.items()))
print("alive", [x.is_alive() for x in [worker, t, *counters]])
print("isinstance", all(isinstance(x, threading.Thread)
                        for x in [worker, t, *counters]))
print("left", sorted(x.name for x in threading.enumerate()))
"""


def test_drop_in_replacement():
    outputs = {}
    for import_line in ("from threading import Thread",
                        "from xthread import Thread"):
        rc, out, err = run_script(DROP_IN.format(import_line=import_line))
        assert rc == 0, err
        assert err == ""
        # The two counters log concurrently: order the lines.
        outputs[import_line] = sorted(out.splitlines())
    ref = outputs["from threading import Thread"]
    assert len(ref) == 13, ref
    assert "worker: squared 4" in ref
    assert "counter-100: counted to 100" in ref
    assert "out [0, 1, 4, 9, 16]" in ref
    assert "totals [45, 4950]" in ref
    assert "results [('is_self', True), ('name', 'plain')]" in ref
    assert "left ['MainThread']" in ref
    assert outputs["from xthread import Thread"] == ref


def test_a_join_that_saw_the_end_before_start_returned_is_kept(monkeypatch):
    # Another thread joins the new thread, which has already ended, while
    # start() is still finishing its bookkeeping: start() must not make it
    # look alive again (is_alive() True for ever, kill() spinning on it).
    real_start = xthread._thread._start_joinable_thread
    box = {}

    def start_then_join_from_elsewhere(*args):
        result = real_start(*args)
        joiner = threading.Thread(target=box["thread"].join,
                                  args=(JOIN_TIMEOUT,))
        joiner.start()
        joiner.join(JOIN_TIMEOUT)
        box["joined"] = not joiner.is_alive()
        return result

    monkeypatch.setattr(xthread._thread, "_start_joinable_thread",
                        start_then_join_from_elsewhere)
    t = box["thread"] = xthread.Thread(target=int, name="short")
    t.start()
    assert box["joined"]
    assert not t.is_alive()
    assert repr(t) == "<Thread(short, stopped %s)>" % t.ident
    join_or_fail(t)
