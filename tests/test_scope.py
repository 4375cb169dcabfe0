"""The public scope API for libraries built on xthread: ``xthread.Scope``
and ``time_limit(seconds, exception=...)``."""
import threading
import time

import pytest

import xthread

from helpers import JOIN_TIMEOUT, join_or_fail


class Soft(Exception):
    """A library's own exception (as Celery's SoftTimeLimitExceeded)."""


def spin_until_stopped(entered):
    entered.set()
    while True:
        pass


class InThread:
    """Runs ``body(scope, entered)`` inside ``with Scope() as scope`` in an
    xthread; records what ended the block and what reached the thread
    after it."""

    def __init__(self, body, after=None):
        self.scope = xthread.Scope()
        self.entered = threading.Event()
        self.left = threading.Event()
        self.go_on = threading.Event()
        self.caught = None
        self.after_caught = None
        self.body = body
        self.after = after
        self.thread = xthread.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            with self.scope:
                self.body(self.scope, self.entered)
        except BaseException as exc:
            self.caught = exc
        self.left.set()
        if self.after is not None:
            try:
                self.after(self)
            except BaseException as exc:
                self.after_caught = exc


def test_raise_exc_reaches_the_open_block():
    t = InThread(lambda scope, entered: spin_until_stopped(entered))
    assert t.entered.wait(JOIN_TIMEOUT)
    assert t.scope.active
    assert t.scope.ident == t.thread.ident
    sent = Soft("soft limit")
    assert t.scope.raise_exc(sent) is True
    join_or_fail(t.thread)
    assert t.caught is sent
    assert not t.scope.active


def test_raise_exc_after_the_block_is_false_and_never_lands():
    def after(t):
        t.go_on.wait(JOIN_TIMEOUT)
        # Past the block: bytecode runs, nothing is raised here.
        for _ in range(10000):
            pass

    t = InThread(lambda scope, entered: entered.set(), after)
    assert t.left.wait(JOIN_TIMEOUT)
    assert t.scope.raise_exc(Soft) is False
    t.go_on.set()
    join_or_fail(t.thread)
    assert t.caught is None
    assert t.after_caught is None


def test_sent_but_not_landed_is_withdrawn_at_exit():
    """Sent while a shield outside the block holds it back, then the block
    ends inside the shield: the exception goes with the scope, and the
    shield's exit raises nothing."""
    scope = xthread.Scope()
    entered, sent = threading.Event(), threading.Event()
    out = []

    def run():
        try:
            with xthread.shield():
                with scope:
                    entered.set()
                    sent.wait(JOIN_TIMEOUT)
                for _ in range(10000):
                    pass
            for _ in range(10000):
                pass
            out.append("nothing raised")
        except BaseException as exc:
            out.append(exc)

    t = xthread.Thread(target=run)
    t.start()
    assert entered.wait(JOIN_TIMEOUT)
    assert scope.raise_exc(Soft("held, then withdrawn"))
    sent.set()
    join_or_fail(t)
    assert out == ["nothing raised"]


def test_before_the_block_is_false():
    assert xthread.Scope().raise_exc(Soft) is False
    assert not xthread.Scope().active


def test_nested_scopes_each_get_their_own():
    outer, inner = xthread.Scope(), xthread.Scope()
    entered = threading.Event()
    log = []

    def run():
        try:
            with outer:
                try:
                    with inner:
                        entered.set()
                        while True:
                            pass
                except Soft as exc:
                    log.append(("inner", exc))
                entered2.set()
                while True:
                    pass
        except Soft as exc:
            log.append(("outer", exc))

    entered2 = threading.Event()
    t = xthread.Thread(target=run)
    t.start()
    assert entered.wait(JOIN_TIMEOUT)
    first = Soft("inner")
    assert inner.raise_exc(first)
    assert entered2.wait(JOIN_TIMEOUT)
    assert inner.raise_exc(Soft("late")) is False
    second = Soft("outer")
    assert outer.raise_exc(second)
    join_or_fail(t)
    assert log == [("inner", first), ("outer", second)]


def test_scope_with_a_time_limit_inside():
    scope = xthread.Scope()
    out = []

    def run():
        with scope:
            try:
                with xthread.time_limit(0.05):
                    while True:
                        pass
            except xthread.TimeLimitExceeded:
                out.append("limit")

    t = xthread.Thread(target=run)
    t.start()
    join_or_fail(t)
    assert out == ["limit"]


def test_one_scope_one_block_at_a_time():
    scope = xthread.Scope()
    with scope:
        with pytest.raises(RuntimeError, match="open already"):
            with scope:
                pass
        assert scope.active
    assert not scope.active
    with scope:             # reusable once closed
        assert scope.active


def test_two_threads_entering_one_scope_never_both_get_in():
    scope = xthread.Scope()
    rounds = 300
    ready = [[False] * rounds, [False] * rounds]
    tried = threading.Barrier(2, timeout=JOIN_TIMEOUT)
    inside = []
    refused = []

    def enter(n):
        for r in range(rounds):
            # Both set off together: a blocking barrier would wake the
            # second one long after the first got in. (A bounded spin;
            # with the GIL, the spinner gives way at its switch interval.)
            ready[n][r] = True
            deadline = time.monotonic() + JOIN_TIMEOUT
            while not ready[1 - n][r] and time.monotonic() < deadline:
                pass
            try:
                with scope:
                    inside.append(r)
                    # Stay open until the other one has tried.
                    tried.wait()
            except RuntimeError:
                refused.append(r)
                tried.wait()

    threads = [xthread.Thread(target=enter, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        join_or_fail(t)
    # Every round: exactly one got in, the other was refused.
    assert sorted(inside) == list(range(rounds))
    assert sorted(refused) == list(range(rounds))
    assert not scope.active


def test_an_entry_that_fails_after_claiming_gives_the_scope_back():
    """An exception after _scope_entered did its work (here its own; an
    outer limit's could land there too) leaves the Scope closed and free
    to enter again, and the error reaches the caller unchanged."""
    class Failing(xthread.Scope):
        fail = True

        def _scope_entered(self, scope):
            super()._scope_entered(scope)
            if self.fail:
                raise KeyError("after the claim")

    scope = Failing()
    with pytest.raises(KeyError, match="after the claim"):
        with scope:
            pass
    assert not scope.active
    scope.fail = False
    with scope:
        assert scope.active
    assert not scope.active


def test_raise_exc_bad_input():
    scope = xthread.Scope()
    with pytest.raises(TypeError, match="BaseException"):
        scope.raise_exc(42)
    with pytest.raises(TypeError, match="BaseException"):
        scope.raise_exc(int)


def _nop():
    pass


def test_scope_in_the_calling_thread():
    """raise_exc from the block's own thread raises at its next check."""
    scope = xthread.Scope()
    with pytest.raises(Soft):
        with scope:
            assert scope.raise_exc(Soft)
            for _ in range(1000):
                _nop()


# time_limit(exception=...)


def test_time_limit_raises_a_class_made_anew():
    limit = xthread.time_limit(0.05, exception=Soft)
    caught = []
    for _ in range(2):
        try:
            with limit:
                while True:
                    pass
        except Soft as exc:
            caught.append(exc)
    assert len(caught) == 2 and caught[0] is not caught[1]
    assert "0.05 s" in str(caught[0])


def test_time_limit_raises_an_instance_as_itself():
    sent = Soft("the very object")
    with pytest.raises(Soft) as info:
        with xthread.time_limit(0.05, exception=sent):
            while True:
                pass
    assert info.value is sent


def test_time_limit_exception_as_decorator():
    @xthread.time_limit(0.05, exception=Soft)
    def slow():
        while True:
            pass

    with pytest.raises(Soft):
        slow()
    assert "exception=" in repr(xthread.time_limit(1, exception=Soft))
    assert repr(xthread.time_limit(1)) == "time_limit(1)"


@pytest.mark.parametrize("bad", [42, "Soft", int, None])
def test_time_limit_exception_bad_input(bad):
    with pytest.raises(TypeError, match="exception must be"):
        xthread.time_limit(1, exception=bad)
