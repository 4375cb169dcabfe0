"""set_async_exc: exceptions raised in other threads.

Where the exception lands: a target loop's own ``except`` can be skipped on
some versions (an exception raised at a loop's back edge, see
CPYTHON-INTERNALS.md), so every handler here is in a *calling* frame:
``Target.run`` calls ``Target.spin``, and the loop is in ``spin``.
"""
import ctypes
import gc
import sys
import threading
import time
import weakref

import pytest

import _xthread
from helpers import (JOIN_TIMEOUT, catch_unraisable, joined,
                     start_joinable, switch_interval)


class Stop(Exception):
    pass


class Other(Exception):
    pass


class Target:
    """A thread body that spins, calling a function at each turn, until it
    is told to stop or its deadline passes; the exception it catches (in
    ``run``, the frame that calls the loop) is kept in ``caught``."""

    def __init__(self):
        self.entered = threading.Event()
        self.stop = threading.Event()
        self.done = threading.Event()
        self.caught = None
        self.result = None
        self.ident = None

    def spin(self):
        self.entered.set()
        deadline = time.monotonic() + JOIN_TIMEOUT
        while not self.stop.is_set():
            if time.monotonic() > deadline:
                return "deadline"
        return "stopped"

    def run(self):
        self.ident = _xthread.get_ident()
        try:
            self.result = self.spin()
        except BaseException as exc:
            self.caught = exc
        finally:
            self.done.set()

    def wait_entered(self):
        assert self.entered.wait(JOIN_TIMEOUT)

    def wait_done(self):
        assert self.done.wait(JOIN_TIMEOUT)


def run_xthread(target):
    return start_joinable(target.run)


class ThreadingRunner:
    def __init__(self, target):
        self.thread = threading.Thread(target=target.run)
        self.thread.start()
        self.ident = self.thread.ident

    def join(self):
        self.thread.join(JOIN_TIMEOUT)
        assert not self.thread.is_alive()


RUNNERS = [pytest.param(run_xthread, id="xthread"),
           pytest.param(ThreadingRunner, id="threading")]


def deliver(runner, exc):
    """Start a Target with ``runner``, send ``exc`` once it spins, and
    return the Target after its end."""
    target = Target()
    t = runner(target)
    try:
        target.wait_entered()
        assert _xthread.set_async_exc(t.ident, exc) == 1
        target.wait_done()
    finally:
        target.stop.set()
        t.join()
    return target


# classes and instances


@pytest.mark.parametrize("runner", RUNNERS)
def test_class(runner):
    target = deliver(runner, Stop)
    assert type(target.caught) is Stop
    assert target.caught.args == ()
    assert target.result is None


@pytest.mark.parametrize("runner", RUNNERS)
def test_instance_is_raised_as_itself(runner):
    sent = Stop("message", 42)
    cause = KeyError("cause")
    sent.__cause__ = cause
    sent.attribute = marker = object()
    target = deliver(runner, sent)
    assert target.caught is sent
    assert type(target.caught) is Stop
    assert target.caught.args == ("message", 42)
    assert target.caught.__cause__ is cause
    assert target.caught.attribute is marker
    assert target.caught.__traceback__ is not None


class NeedsArguments(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)
        self.a = a
        self.b = b


class CustomNew(Exception):
    created = 0

    def __new__(cls, *args):
        CustomNew.created += 1
        return super().__new__(cls, *args)


class Meta(type):
    pass


class WithMetaclass(Exception, metaclass=Meta):
    pass


class WithSlots(Exception):
    __slots__ = ("value",)


@pytest.mark.parametrize("make", [
    lambda: NeedsArguments(1, b=2),
    lambda: CustomNew("x"),
    lambda: WithMetaclass("m"),
    lambda: WithSlots("s"),
    lambda: ValueError("builtin"),
    lambda: OSError(2, "No such file"),    # OSError.__new__ picks a subclass
    lambda: KeyboardInterrupt(),
    lambda: BaseException("base"),
], ids=["needs-arguments", "custom-new", "metaclass", "slots", "ValueError",
        "OSError", "KeyboardInterrupt", "BaseException"])
def test_instances_of_many_kinds(make):
    sent = make()
    created = CustomNew.created
    target = deliver(run_xthread, sent)
    assert target.caught is sent
    assert type(target.caught) is type(sent)
    assert target.caught.args == sent.args
    # The instance was not made again.
    assert CustomNew.created == created


def test_handler_sees_instance_in_exc_info():
    sent = Stop("info")
    seen = []

    class InfoTarget(Target):
        def run(self):
            try:
                self.spin()
            except Stop:
                seen.append(sys.exc_info())
            finally:
                self.done.set()

    target = InfoTarget()
    t = start_joinable(target.run)
    try:
        target.wait_entered()
        assert _xthread.set_async_exc(t.ident, sent) == 1
        target.wait_done()
    finally:
        target.stop.set()
        t.join()
    exc_type, exc_value, exc_tb = seen[0]
    assert exc_value is sent
    assert exc_tb is not None
    assert issubclass(exc_type, Stop)
    if sys.version_info >= (3, 11):
        assert exc_type is Stop
    # 3.9/3.10 keep the type apart from the value: there it is the
    # carrier class that _xthread sends, a subclass of Stop with the
    # same name.
    assert exc_type.__name__ == "Stop"
    assert exc_type.__qualname__ == Stop.__qualname__
    assert exc_type.__module__ == Stop.__module__


def test_instance_attributes_of_needs_arguments():
    sent = NeedsArguments(1, b=2)
    target = deliver(run_xthread, sent)
    assert target.caught is sent
    assert (target.caught.a, target.caught.b) == (1, 2)


@pytest.mark.parametrize("exc", [Stop, KeyboardInterrupt, BaseException,
                                 GeneratorExit])
def test_base_exception_classes(exc):
    target = deliver(run_xthread, exc)
    assert type(target.caught) is exc


def test_same_instance_twice():
    sent = Stop("again")
    for _ in range(2):
        target = deliver(run_xthread, sent)
        assert target.caught is sent


def test_instance_not_kept_alive():
    sent = Stop("gone")
    ref = weakref.ref(sent)
    target = deliver(run_xthread, sent)
    assert target.caught is sent
    del sent, target
    gc.collect()
    assert ref() is None


# None withdraws a pending exception


def _checkpoint():
    pass


class Blocked:
    """A thread blocked in a C wait (an _xthread lock held by the test);
    the handler is in the calling frame. ``outcome`` says how the wait
    ended: ("returned", value) or ("raised", exception)."""

    def __init__(self):
        self.lock = _xthread.allocate_lock()
        self.lock.acquire()
        self.waiting = threading.Event()
        self.outcome = []

    def blocked(self):
        self.waiting.set()
        return self.lock.acquire(timeout=JOIN_TIMEOUT)

    def run(self):
        try:
            value = self.blocked()
            # A pending exception is raised at the thread's next
            # eval-breaker check. Up to 3.13 the call that returned from
            # the wait makes one; 3.14 has none there, nor at the return
            # or the list append below, and would raise it only after run()
            # returned. A call to a Python function checks on every
            # version, inside this handler.
            _checkpoint()
        except BaseException as exc:
            self.outcome.append(("raised", exc))
        else:
            self.outcome.append(("returned", value))


def with_blocked_thread(action):
    """Start a Blocked thread, call ``action(ident)`` while it is in the
    C wait, then let the wait end; return the outcome."""
    b = Blocked()
    with catch_unraisable() as hook:
        # A long switch interval: this thread gets the GIL back only when
        # the other one has dropped it to block in the lock, and keeps it
        # across ``action``, so the other cannot run in between.
        with switch_interval(1.0):
            t = start_joinable(b.run)
            try:
                assert b.waiting.wait(JOIN_TIMEOUT)
                action(t.ident)
            finally:
                b.lock.release()
                t.join()
    assert hook.records == []
    return b.outcome


def test_pending_exception_lands_after_the_c_wait():
    """The counterpart of the next test: without withdrawal, the exception
    is raised as soon as the wait returns."""
    sent = Stop("late")

    def action(ident):
        assert _xthread.set_async_exc(ident, sent) == 1

    assert with_blocked_thread(action) == [("raised", sent)]


def test_none_withdraws_pending_exception():
    def action(ident):
        assert _xthread.set_async_exc(ident, Stop) == 1
        assert _xthread.set_async_exc(ident, None) == 1

    assert with_blocked_thread(action) == [("returned", True)]


def test_none_withdraws_pending_instance():
    sent = Stop("withdrawn")
    ref = weakref.ref(sent)

    def action(ident):
        assert _xthread.set_async_exc(ident, sent) == 1
        assert _xthread.set_async_exc(ident, None) == 1

    assert with_blocked_thread(action) == [("returned", True)]
    del sent
    gc.collect()
    assert ref() is None


def test_later_exception_replaces_pending_one():
    second = Other("second")

    def action(ident):
        assert _xthread.set_async_exc(ident, Stop("first")) == 1
        assert _xthread.set_async_exc(ident, second) == 1

    assert with_blocked_thread(action) == [("raised", second)]


def test_none_when_nothing_pending():
    def action(ident):
        assert _xthread.set_async_exc(ident, None) == 1

    assert with_blocked_thread(action) == [("returned", True)]


# which threads


def ended_thread_ident():
    t = start_joinable(lambda: None)
    t.join()
    return t.ident


def test_no_such_thread():
    assert _xthread.set_async_exc(ended_thread_ident(), Stop) == 0
    assert _xthread.set_async_exc(1, Stop) == 0
    assert _xthread.set_async_exc(2**64 - 1, Stop("x")) == 0
    assert _xthread.set_async_exc(1, None) == 0


def test_int_subclass_ident():
    class Ident(int):
        pass

    assert _xthread.set_async_exc(Ident(1), Stop) == 0


def test_main_thread():
    """An exception sent from another thread to the main thread is raised
    there (and caught here, in the frame that calls the loop)."""
    target = Target()
    sent = []

    def sender():
        target.wait_entered()
        sent.append(_xthread.set_async_exc(main_ident, Stop("to main")))

    main_ident = threading.main_thread().ident
    assert _xthread.get_ident() == main_ident, "pytest runs in the main thread"
    with joined(sender):
        target.run()
    assert sent == [1]
    assert type(target.caught) is Stop
    assert target.caught.args == ("to main",)


def test_calling_thread_itself():
    def send_to_self():
        assert _xthread.set_async_exc(_xthread.get_ident(), Stop) == 1
        # Raised at the next check, before this loop ends.
        for _ in range(10**6):
            len(())
        return "not raised"

    with pytest.raises(Stop):
        send_to_self()


@pytest.mark.parametrize("exc", [Stop, Stop("instance")],
                         ids=["class", "instance"])
@pytest.mark.parametrize("where", ["at-start", "in-plain-loop"])
def test_uncaught_in_xthread_goes_to_unraisablehook(exc, where):
    go = threading.Event()
    running = threading.Event()
    spinning = threading.Event()

    def function():
        running.set()
        if where == "at-start":
            go.wait(JOIN_TIMEOUT)
        spinning.set()
        # No try/finally anywhere on the way out: the exception leaves the
        # thread exactly as it was raised.
        deadline = time.monotonic() + JOIN_TIMEOUT
        while time.monotonic() < deadline:
            len(())
        return "not raised"

    with catch_unraisable() as hook:
        t = start_joinable(function)
        try:
            # set_async_exc, as _thread's, reaches a thread once it has its
            # thread state.
            assert running.wait(JOIN_TIMEOUT)
            if where == "in-plain-loop":
                assert spinning.wait(JOIN_TIMEOUT)
            assert _xthread.set_async_exc(t.ident, exc) == 1
        finally:
            go.set()
            t.join()
    assert len(hook.records) == 1
    record = hook.records[0]
    # The report names the instance's own class, not _xthread's carrier.
    assert record.exc_type is Stop
    assert type(record.exc_value) is Stop
    if isinstance(exc, Stop):
        assert record.exc_value is exc


@pytest.mark.parametrize("exc", [SystemExit, SystemExit(5)])
def test_system_exit_ends_xthread_silently(exc):
    go = threading.Event()
    running = threading.Event()
    after = []

    def function():
        running.set()
        go.wait(JOIN_TIMEOUT)
        after.append("ran on")

    with catch_unraisable() as hook:
        t = start_joinable(function)
        try:
            assert running.wait(JOIN_TIMEOUT)
            assert _xthread.set_async_exc(t.ident, exc) == 1
        finally:
            go.set()
            t.join()
    assert hook.records == []
    assert after == []


# bad arguments


@pytest.mark.parametrize("exc", [1, "Stop", object(), int, type, Stop.__init__,
                                 [Stop], (Stop,), True])
def test_non_exception_is_type_error(exc):
    with pytest.raises(TypeError, match="BaseException subclass or instance"):
        _xthread.set_async_exc(_xthread.get_ident(), exc)


@pytest.mark.parametrize("ident", ["1", 1.0, None, True, False, [1], 1j])
def test_non_int_ident_is_type_error(ident):
    with pytest.raises(TypeError, match="thread ident must be an int"):
        _xthread.set_async_exc(ident, Stop)


@pytest.mark.parametrize("ident", [-1, -2**70])
def test_negative_ident_is_value_error(ident):
    with pytest.raises(ValueError, match="must not be negative"):
        _xthread.set_async_exc(ident, Stop)


@pytest.mark.parametrize("ident", [2**64, 2**200])
def test_huge_ident_is_overflow_error(ident):
    with pytest.raises(OverflowError):
        _xthread.set_async_exc(ident, Stop)


@pytest.mark.parametrize("args", [(), (1,), (1, Stop, None)])
def test_wrong_number_of_arguments(args):
    with pytest.raises(TypeError):
        _xthread.set_async_exc(*args)


def test_bad_arguments_send_nothing():
    """A refused call leaves nothing pending in the target."""
    def action(ident):
        with pytest.raises(TypeError):
            _xthread.set_async_exc(ident, "not an exception")
        with pytest.raises(TypeError):
            _xthread.set_async_exc(float(ident), Stop)

    assert with_blocked_thread(action) == [("returned", True)]


# classes that refuse subclasses


class NoSubclasses(Exception):
    def __init_subclass__(cls, **kwargs):
        raise TypeError("NoSubclasses cannot be subclassed")


def test_instance_of_class_refusing_subclasses_in_python():
    # The carrier is built from a C type spec: no __init_subclass__ (nor a
    # metaclass) of the instance's class runs, so it goes through as itself.
    sent = NoSubclasses("x")
    target = deliver(run_xthread, sent)
    assert target.caught is sent


def test_class_refusing_subclasses_can_be_sent_as_class():
    target = deliver(run_xthread, NoSubclasses)
    assert type(target.caught) is NoSubclasses


Py_TPFLAGS_BASETYPE = 1 << 10


def make_final(cls):
    """Clear Py_TPFLAGS_BASETYPE on the heap type ``cls`` with ctypes,
    the way a C extension's final exception type would look; return a
    function that restores it, or skip if the layout is not the expected
    one. No Python-level class lacks the flag, and no exception type of
    the standard library does either."""
    if hasattr(sys, "getobjects") or not hasattr(sys, "getrefcount"):
        pytest.skip("unusual object layout (Py_TRACE_REFS build)")
    # PyTypeObject: PyVarObject header, then 18 pointer-sized slots
    # (tp_name ... tp_as_buffer), then tp_flags (unsigned long).
    offset = object.__basicsize__ + ctypes.sizeof(ctypes.c_ssize_t) + (
        18 * ctypes.sizeof(ctypes.c_void_p))
    field = ctypes.c_ulong.from_address(id(cls) + offset)
    if field.value != cls.__flags__:
        pytest.skip("cannot find tp_flags: a class that forbids subclassing "
                    "cannot be made here")
    original = field.value
    field.value = original & ~Py_TPFLAGS_BASETYPE
    assert not cls.__flags__ & Py_TPFLAGS_BASETYPE

    def restore():
        field.value = original

    return restore


def test_instance_of_final_class_is_type_error():
    class Final(Exception):
        pass

    restore = make_final(Final)
    try:
        with pytest.raises(TypeError):
            class Sub(Final):
                pass

        if sys.version_info >= (3, 12):
            # The carrier need not subclass the instance's class there.
            sent = Final("x")
            assert deliver(run_xthread, sent).caught is sent
        else:
            def action(ident):
                with pytest.raises(TypeError,
                                   match="does not allow subclasses"):
                    _xthread.set_async_exc(ident, Final("x"))

            assert with_blocked_thread(action) == [("returned", True)]
        # The class itself can still be sent.
        target = deliver(run_xthread, Final)
        assert type(target.caught) is Final
    finally:
        restore()
