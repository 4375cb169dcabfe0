"""Interpreter exit with _xthread threads still running.

Each case runs a script in a subprocess (``run_script``: a timeout turns a
hang into a failure) and checks that the process exits with the expected
code, without "Fatal Python error" or any other crash report. The scripts
print "ready" once their threads are where the case needs them, so a case
cannot pass without having been set up.

Once finalization has begun, a thread that asks for the GIL ends inside
that request (3.9-3.13), so nothing can be observed from those threads;
where a case needs them to wake *during* finalization, an object's
``__del__``, run when finalization empties ``sys.modules``, holds
finalization open for a moment (a bounded sleep: there is nothing left to
wait on).
"""
import sys

import pytest

from helpers import assert_clean_exit, run_script

PRELUDE = """
import os, sys, threading, time, _xthread

def say(text, write=os.write):
    # Works even when sys.stdout is gone (late in finalization).
    write(1, (text + "\\n").encode())

class AtTeardown:
    '''Runs ``action`` while the main module is torn down, then holds
    finalization open for ``hold`` seconds. Module globals may be None by
    then: everything it uses is bound here, and so must the action's.'''
    def __init__(self, action, hold, say=say, sys=sys, sleep=time.sleep):
        self.action, self.hold = action, hold
        self.say, self.sys, self.sleep = say, sys, sleep
    def __del__(self):
        self.say("teardown finalizing=%s" % self.sys.is_finalizing())
        self.action()
        self.sleep(self.hold)

def at_teardown(action, hold):
    # Kept only by sys.modules, which finalization empties after it has
    # begun. (A global of __main__ would not do: the frames of threads
    # still running keep __main__'s dict alive, so it is never cleared.)
    sys.modules["_xthread_test_teardown"] = AtTeardown(action, hold)
"""


def run(body, expected_rc=0, ready=True):
    rc, out, err = run_script(PRELUDE + body)
    assert_clean_exit(rc, out, err, expected_rc)
    lines = out.split("\n")
    if ready:
        assert "ready" in lines, out
    if "at_teardown(" in body:
        assert "teardown finalizing=True" in lines, out
    return out, err


SPIN = """
started = threading.Semaphore(0)

def spin():
    started.release()
    x = 0
    while True:
        x += 1
        len(())

for _ in range(4):
    _xthread.start_new_thread(spin, ())
for _ in range(4):
    assert started.acquire(timeout=30)
say("ready")
"""


def test_exit_while_threads_spin():
    run(SPIN)


def test_sys_exit_while_threads_spin():
    run(SPIN + "sys.exit(3)\n", expected_rc=3)


def test_uncaught_exception_while_threads_spin():
    out, err = run(SPIN + "raise ValueError('main fails')\n", expected_rc=1)
    assert "ValueError: main fails" in err


def test_exit_while_joinable_threads_spin_in_try_finally():
    run("""
started = threading.Semaphore(0)

def spin():
    try:
        started.release()
        while True:
            len(())
    finally:
        pass

for _ in range(4):
    _xthread._start_joinable_thread(spin, ())
for _ in range(4):
    assert started.acquire(timeout=30)
say("ready")
""")


def test_exit_while_threads_sleep():
    run("""
started = threading.Semaphore(0)

def sleeper():
    started.release()
    time.sleep(0.3)

for _ in range(4):
    _xthread.start_new_thread(sleeper, ())
for _ in range(4):
    assert started.acquire(timeout=30)
say("ready")
# The sleeps end while finalization is held open.
at_teardown(lambda: None, hold=1.0)
""")


def test_exit_while_threads_sleep_long():
    run("""
started = threading.Semaphore(0)

def sleeper():
    started.release()
    time.sleep(60)

for _ in range(4):
    _xthread.start_new_thread(sleeper, ())
for _ in range(4):
    assert started.acquire(timeout=30)
say("ready")
""")


@pytest.mark.parametrize("call", ["lock.acquire()",
                                  "lock.acquire(timeout=0.3)",
                                  "lock.acquire(True, 60)"])
def test_lock_released_after_finalization_began(call):
    out, err = run(f"""
locks = [_xthread.allocate_lock() for _ in range(4)]
waiting = threading.Semaphore(0)

def waiter(lock):
    lock.acquire()
    waiting.release()
    {call}
    # No thread runs Python once finalization has begun (it ends when it
    # asks for the GIL back).
    say("after wait finalizing=%s" % sys.is_finalizing())

for lock in locks:
    _xthread.start_new_thread(waiter, (lock,))
for _ in locks:
    assert waiting.acquire(timeout=30)
say("ready")

def release_all(locks=locks):
    for lock in locks:
        lock.release()

at_teardown(release_all, hold=0.5)
""")
    assert "after wait finalizing=True" not in out


def test_lock_released_by_other_thread_during_exit():
    """A thread that releases a lock another thread waits on keeps running
    as the main thread exits."""
    run("""
lock = _xthread.allocate_lock()
lock.acquire()
started = threading.Semaphore(0)

def waiter():
    started.release()
    lock.acquire()

def releaser():
    started.release()
    while True:
        time.sleep(0.001)
        try:
            lock.release()
        except RuntimeError:
            pass

for f in (waiter, waiter, releaser):
    _xthread.start_new_thread(f, ())
for _ in range(3):
    assert started.acquire(timeout=30)
say("ready")
""")


def test_exit_while_waiting_on_sentinel():
    run("""
go = threading.Event()
ident, sentinel, _ = _xthread._start_joinable_thread(go.wait, ())
waiting = threading.Event()

def joiner():
    waiting.set()
    sentinel.acquire()

_xthread.start_new_thread(joiner, ())
assert waiting.wait(30)
say("ready")
""")


def test_sentinel_thread_ends_during_finalization():
    run("""
def short():
    time.sleep(0.2)

ident, sentinel, _ = _xthread._start_joinable_thread(short, ())
waiting = threading.Event()

def joiner():
    waiting.set()
    sentinel.acquire()
    say("joined during finalization")

_xthread.start_new_thread(joiner, ())
assert waiting.wait(30)
say("ready")
at_teardown(lambda: None, hold=0.6)
""")


def test_main_thread_waits_on_sentinel_in_teardown():
    """The main thread joins an _xthread thread while finalizing: the
    thread cannot run any more, so the join may time out; it must neither
    hang nor crash. The thread waits on an _xthread lock, parked before
    exit begins: a threading.Event's wait holds the Event's own lock for
    a moment, and with the GIL off finalization could stop the thread
    for good right then, so that set() at teardown waited for ever."""
    out, err = run("""
gate = _xthread.allocate_lock()
gate.acquire()
ident, sentinel, _ = _xthread._start_joinable_thread(gate.acquire,
                                                     (True, 60))
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    record = _xthread._find_record(ident)
    if record is not None and record.parked:
        break
    time.sleep(0.001)
else:
    raise AssertionError("the thread never parked")
del record
say("ready")

def join(gate=gate, sentinel=sentinel, say=say):
    gate.release()
    say("joined=%s" % sentinel.acquire(timeout=0.5))

at_teardown(join, hold=0)
""")
    assert [line for line in out.split("\n")
            if line.startswith("joined=")] in (["joined=False"],
                                               ["joined=True"])


ATEXIT_START = """
import atexit

def start_at_exit():
    ran = threading.Event()
    try:
        {start}
    except RuntimeError as exc:
        say("refused: %s" % exc)
    else:
        say("started: %s" % ran.wait(30))

{register}(start_at_exit)
say("ready")
"""


@pytest.mark.parametrize("start", [
    "_xthread.start_new_thread(ran.set, ())",
    "_xthread._start_joinable_thread(ran.set, ())",
])
@pytest.mark.parametrize("register", ["atexit.register",
                                      "threading._register_atexit"])
def test_start_thread_in_atexit_callback(start, register):
    out, err = run(ATEXIT_START.format(start=start, register=register))
    lines = out.split("\n")
    outcome = [line for line in lines
               if line.startswith(("refused", "started"))]
    # 3.12+ refuse (as _thread does: "can't create new thread at
    # interpreter shutdown"); older versions start it. Either way no crash
    # and no hang.
    assert outcome in (
        ["started: True"],
        ["refused: can't create new thread at interpreter shutdown"],
    ), out


def test_start_long_thread_in_atexit_callback():
    run("""
import atexit

def forever():
    while True:
        len(())

def start_at_exit():
    try:
        _xthread.start_new_thread(forever, ())
    except RuntimeError:
        pass

atexit.register(start_at_exit)
say("ready")
""")


def test_start_thread_during_finalization_refused():
    out, err = run("""
def start(start_new_thread=_xthread.start_new_thread, say=say):
    try:
        start_new_thread(len, ((),))
    except RuntimeError as exc:
        say("refused: %s" % exc)
    else:
        say("started")

at_teardown(start, hold=0)
say("ready")
""")
    assert ("refused: can't create new thread at interpreter shutdown"
            in out.split("\n")), out


def test_threads_starting_threads_during_exit():
    run("""
started = threading.Semaphore(0)

def noop():
    pass

def spawner():
    started.release()
    while True:
        try:
            _xthread._start_joinable_thread(noop, ())
        except RuntimeError:
            return

for _ in range(4):
    _xthread.start_new_thread(spawner, ())
for _ in range(4):
    assert started.acquire(timeout=30)
say("ready")
""")


def test_pending_async_exception_at_exit():
    run("""
started = threading.Semaphore(0)

def blocked(lock):
    started.release()
    lock.acquire()

locks = []
for _ in range(4):
    lock = _xthread.allocate_lock()
    lock.acquire()
    locks.append(lock)
    ident = _xthread.start_new_thread(blocked, (lock,))
    assert started.acquire(timeout=30)
    assert _xthread.set_async_exc(ident, KeyboardInterrupt("late")) == 1
say("ready")

def release_all(locks=locks):
    for lock in locks:
        lock.release()

at_teardown(release_all, hold=0.3)
""")


def test_many_threads_still_running():
    run("""
N = 50
started = threading.Semaphore(0)
go = threading.Event()
lock = _xthread.allocate_lock()
lock.acquire()
joinables = []

def spin():
    started.release()
    while True:
        len(())

def parked():
    started.release()
    go.wait()

def blocked():
    started.release()
    lock.acquire()

def sleeper():
    started.release()
    time.sleep(0.2)

def sentinel_waiter(sentinel):
    started.release()
    sentinel.acquire()

kinds = [spin, parked, blocked, sleeper]
for i in range(N):
    if i % 5 == 4 and joinables:
        _xthread.start_new_thread(sentinel_waiter, (joinables[-1],))
    else:
        joinables.append(_xthread._start_joinable_thread(
            kinds[i % 4], ())[1])
for _ in range(N):
    assert started.acquire(timeout=30)
say("ready")
at_teardown(lock.release, hold=0.5)
""")


@pytest.mark.skipif(not hasattr(sys, "getswitchinterval"),
                    reason="needs sys.getswitchinterval")
def test_exit_with_short_switch_interval():
    """Many forced GIL hand-overs while the main thread finalizes."""
    run("sys.setswitchinterval(1e-6)\n" + SPIN)
