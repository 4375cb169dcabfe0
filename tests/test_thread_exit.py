"""Interpreter exit with xthreads running: non-daemon ones are joined where
stdlib joins its own (before ``atexit`` callbacks), daemon ones neither
delay exit nor crash it, Ctrl-C interrupts a join and the exit wait as it
does for stdlib threads, and a thread started once exit has begun gets
what stdlib gives on the running version.

Every test runs a script in a subprocess (bounded by a timeout). Most run
the same script with ``Thread = threading.Thread`` and ``Thread =
xthread.Thread`` and assert the same outcome.
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

#: Upper bound for a whole subprocess script.
SCRIPT_TIMEOUT = 60.0

PY310_ONLY = sys.version_info[:2] == (3, 10)
PY313 = sys.version_info >= (3, 13)
# 3.12.0-3.12.2 refuse to start a thread once shutdown has begun
# (gh-104690); 3.12.3+ and 3.13 start it until finalization proper
# (gh-113964).
REFUSES_START_AT_SHUTDOWN = (3, 12) <= sys.version_info[:3] < (3, 12, 3)

CRASH_MARKERS = ("Fatal Python error", "Segmentation fault", "Aborted",
                 "core dumped", "Current thread 0x")

CLASSES = [
    pytest.param("threading.Thread", id="threading"),
    pytest.param("xthread.Thread", id="xthread"),
]


@pytest.fixture(params=CLASSES)
def thread_cls(request):
    """The name of the class under test, for a script."""
    return request.param


# What every script starts with: `Thread` is the class under test;
# `main_in(*names)` tells whether the main thread is inside a function of
# one of those names (e.g. threading._shutdown: the exit wait);
# `wait_until` polls a predicate, bounded.
PRELUDE = """\
import signal, sys, threading, time
import _xthread, xthread
Thread = {cls}

def main_in(*names):
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        if frame.f_code.co_name in names:
            return True
        frame = frame.f_back
    return False

def wait_until(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.002)
    return True
"""


def run_script(code, cls, timeout=SCRIPT_TIMEOUT):
    """Run PRELUDE + ``code`` (dedented) with ``Thread = cls`` in
    ``sys.executable -c``; return ``(returncode, stdout, stderr, seconds)``.
    A hang fails the test (the child is killed)."""
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    source = PRELUDE.format(cls=cls) + textwrap.dedent(code)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", source],
            capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{cls}: script did not finish in {timeout} s\n"
                             f"stdout: {exc.stdout!r}\n"
                             f"stderr: {exc.stderr!r}") from None
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


def run_daemon_script(code, cls, timeout=SCRIPT_TIMEOUT):
    """``run_script`` for scripts that leave daemon threads running in
    Python at exit, where CPython itself is known to crash now and then:

    - 3.10, any class: a silent SIGSEGV (take_gil() resets a GIL drop
      request on the freed interpreter as the thread exits during
      finalization; seen here 2 runs in 40 with stdlib threads);
    - before 3.12, stdlib threads only: ``_thread``'s bootstrap binds a
      thread state that its parent made, and a thread started just as
      finalization frees every thread state binds a freed one (the crash is
      in CPython's ``thread_run``; 3.12 checks for finalization there,
      python/cpython#109795, and 3.14 reference-counts thread states,
      python/cpython#124878). xthread's bootstrap makes its thread state in
      the new thread, so the xthread runs get no such retry.

    Such a crash is retried, twice at most; any other outcome is returned
    as it is.
    """
    stdlib_reference = cls == "threading.Thread"
    for _ in range(3):
        result = run_script(code, cls, timeout)
        rc, out, err, _ = result
        known = (rc == -11 and (
            (PY310_ONLY and not err)
            or (stdlib_reference and sys.version_info < (3, 12))))
        if not known:
            break
    return result


def assert_no_crash(rc, out, err):
    for marker in CRASH_MARKERS:
        assert marker not in err, f"crash ({marker!r}), rc {rc}:\n{err}"


def assert_clean(result, expected_rc=0):
    rc, out, err, _ = result
    assert_no_crash(rc, out, err)
    assert "Traceback" not in err, err
    assert rc == expected_rc, f"exit code {rc}\nstdout:\n{out}\nstderr:\n{err}"


# Non-daemon threads are joined before atexit callbacks


JOINED_BEFORE_ATEXIT = """
import atexit
atexit.register(lambda: print("atexit", flush=True))

def work():
    # Finish only once the main thread has returned and waits at exit.
    print("main waits at exit:", wait_until(lambda: main_in("_shutdown")),
          flush=True)
    print("thread done", flush=True)

Thread(target=work).start()
print("main returns", flush=True)
"""


def test_non_daemon_joined_before_atexit(thread_cls):
    result = run_script(JOINED_BEFORE_ATEXIT, thread_cls)
    assert_clean(result)
    assert result[1] == ("main returns\nmain waits at exit: True\n"
                         "thread done\natexit\n")


def test_several_non_daemon_joined_before_atexit(thread_cls):
    code = """
    import atexit
    atexit.register(lambda: print("atexit", flush=True))
    done = []

    def work(n):
        wait_until(lambda: main_in("_shutdown"))
        done.append(n)

    for n in range(8):
        Thread(target=work, args=(n,)).start()
    atexit.register(lambda: print("done", sorted(done), flush=True))
    """
    result = run_script(code, thread_cls)
    assert_clean(result)
    assert result[1] == "done [0, 1, 2, 3, 4, 5, 6, 7]\natexit\n"


def test_exit_code_kept_while_joining(thread_cls):
    code = """
    def work():
        wait_until(lambda: main_in("_shutdown"))
        print("thread done", flush=True)

    Thread(target=work).start()
    sys.exit(3)
    """
    result = run_script(code, thread_cls)
    assert_clean(result, expected_rc=3)
    assert result[1] == "thread done\n"


def test_non_daemon_thread_started_by_thread_during_exit_wait(thread_cls):
    # A non-daemon thread that starts another one while the main thread
    # waits at exit: the new thread is joined too (3.12.0-3.12.2: start()
    # is refused).
    code = """
    import atexit
    events = []
    atexit.register(lambda: print(events, flush=True))

    def second():
        wait_until(lambda: "first done" in events)
        events.append("second done")

    def first():
        wait_until(lambda: main_in("_shutdown"))
        try:
            Thread(target=second).start()
        except RuntimeError as exc:
            events.append(f"RuntimeError: {exc}")
        events.append("first done")

    Thread(target=first).start()
    """
    result = run_script(code, thread_cls)
    assert_clean(result)
    if REFUSES_START_AT_SHUTDOWN:
        assert result[1] == ('["RuntimeError: can\'t create new thread at '
                             'interpreter shutdown", \'first done\']\n')
    else:
        assert result[1] == "['first done', 'second done']\n"


# Daemon threads neither delay nor crash exit


DAEMONS = """
ready = []

def spin(ev):
    ev.set()
    n = 0
    while True:
        n += 1

def busy_python(ev):
    ev.set()
    data = []
    while True:
        data.append(str(len(data)))
        if len(data) > 1000:
            data.clear()

def sleeper(ev):
    ev.set()
    time.sleep(3600)

held = _xthread.allocate_lock()
held.acquire()

def lock_waiter(ev):
    ev.set()
    held.acquire()

def event_waiter(ev):
    ev.set()
    threading.Event().wait()

for function in (spin, busy_python, sleeper, lock_waiter, event_waiter):
    ev = threading.Event()
    ready.append(ev)
    Thread(target=function, args=(ev,), daemon=True).start()
assert all(ev.wait(30) for ev in ready)
print("main returns", flush=True)
"""


def test_daemon_threads_do_not_delay_exit(thread_cls):
    result = run_daemon_script(DAEMONS, thread_cls)
    assert_clean(result)
    assert result[1] == "main returns\n"
    assert result[3] < 30, f"exit took {result[3]:.1f} s"


def test_daemon_threads_with_exit_code(thread_cls):
    result = run_daemon_script(DAEMONS + "sys.exit(7)\n", thread_cls)
    assert_clean(result, expected_rc=7)


def test_daemon_threads_and_non_daemon_thread(thread_cls):
    # Daemon threads run on while exit joins a non-daemon one.
    code = DAEMONS + """
def last():
    wait_until(lambda: main_in("_shutdown"))
    print("non-daemon done", flush=True)

Thread(target=last).start()
"""
    result = run_script(code, thread_cls)
    assert_clean(result)
    assert result[1] == "main returns\nnon-daemon done\n"


def test_many_daemon_threads_do_not_crash_exit(thread_cls):
    code = """
    ready = []

    def work(ev, n):
        ev.set()
        total = 0
        while True:
            total += n
            if total > 10 ** 6:
                total = 0

    for n in range(12):
        ev = threading.Event()
        ready.append(ev)
        Thread(target=work, args=(ev, n), daemon=True).start()
    assert all(ev.wait(30) for ev in ready)
    print("main returns", flush=True)
    """
    for _ in range(3):
        result = run_daemon_script(code, thread_cls)
        assert_clean(result)
        assert result[1] == "main returns\n"


def test_daemon_thread_starting_threads_at_exit(thread_cls):
    # A daemon thread that keeps starting (and joining) threads while the
    # interpreter exits: a refused start is a RuntimeError, never a crash.
    code = """
    started = threading.Event()

    def starter():
        n = 0
        while True:
            try:
                t = Thread(target=lambda: None, daemon=True)
                t.start()
            except RuntimeError:
                return
            t.join()
            n += 1
            if n == 20:
                started.set()

    Thread(target=starter, daemon=True).start()
    assert started.wait(30)
    print("main returns", flush=True)
    """
    for _ in range(3):
        result = run_daemon_script(code, thread_cls)
        assert_clean(result)
        assert result[1] == "main returns\n"


# Ctrl-C


CTRL_C_IN_JOIN = """
forever = threading.Event()
started = threading.Event()

def work():
    started.set()
    forever.wait()

t = Thread(target=work)
t.start()
assert started.wait(30)
main = threading.main_thread().ident

def interrupter():
    # SIGINT only once the main thread is inside join().
    if wait_until(lambda: main_in("join")):
        signal.pthread_kill(main, signal.SIGINT)
    else:
        print("main never joined", flush=True)

threading.Thread(target=interrupter, daemon=True).start()
try:
    t.join()
    print("join returned", flush=True)
except KeyboardInterrupt as exc:
    import traceback
    names = [f.name for f in traceback.extract_tb(exc.__traceback__)]
    print("KeyboardInterrupt in join:", "join" in names, flush=True)
    print("alive:", t.is_alive(), flush=True)
finally:
    forever.set()
t.join(30)
print("alive after:", t.is_alive(), flush=True)
"""


# After a join interrupted by Ctrl-C the thread still runs. stdlib 3.9-3.12
# then says is_alive() False all the same (python/cpython#90882: the
# bpo-45274 clean-up in _wait_for_tstate_lock sees the lock held, by the
# running thread, and marks the thread stopped); 3.13 and xthread say True.
INTERRUPTED_JOIN = ("KeyboardInterrupt in join: True\nalive: True\n"
                    "alive after: False\n")
STDLIB_INTERRUPTED_JOIN = (INTERRUPTED_JOIN if PY313 else
                           INTERRUPTED_JOIN.replace("alive: True",
                                                    "alive: False"))


def test_ctrl_c_interrupts_join():
    results = {cls: run_script(CTRL_C_IN_JOIN, cls)
               for cls in ("threading.Thread", "xthread.Thread")}
    ref = results["threading.Thread"]
    assert_clean(ref)
    assert ref[1] == STDLIB_INTERRUPTED_JOIN, ref
    got = results["xthread.Thread"]
    assert_clean(got)
    assert got[1] == INTERRUPTED_JOIN, got


CTRL_C_IN_JOIN_TIMEOUT = CTRL_C_IN_JOIN.replace("t.join()\n", "t.join(600)\n",
                                                1)


def test_ctrl_c_interrupts_join_with_timeout():
    assert CTRL_C_IN_JOIN_TIMEOUT != CTRL_C_IN_JOIN
    results = {cls: run_script(CTRL_C_IN_JOIN_TIMEOUT, cls)
               for cls in ("threading.Thread", "xthread.Thread")}
    ref = results["threading.Thread"]
    assert_clean(ref)
    assert ref[1] == STDLIB_INTERRUPTED_JOIN, ref
    got = results["xthread.Thread"]
    assert_clean(got)
    assert got[1] == INTERRUPTED_JOIN, got


# A signal whose handler raises, sent to the main thread as it begins to
# join a running thread (a few tens of microseconds in: xthread's join is
# still spinning then, or parked): the join raises at once, every time,
# while the thread still runs. (Only xthread's join is held to that:
# stdlib's is not, on any version: a signal in the same window is now and
# then handled only once the thread has ended.)
SIGNAL_AS_JOIN_BEGINS = """
class Interrupted(Exception):
    pass

def handler(signum, frame):
    raise Interrupted

signal.signal(signal.SIGALRM, handler)
outcomes = []
for delay in [20e-6, 50e-6, 80e-6, 150e-6, 500e-6] * 6:
    go = threading.Event()
    started = threading.Event()
    finished = []

    def work():
        # The timer's signal goes to any thread that takes it: only the
        # main thread does.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        started.set()
        go.wait(2)      # bounds a join the signal failed to interrupt
        finished.append(True)

    t = Thread(target=work)
    t.start()
    assert started.wait(30)
    try:
        signal.setitimer(signal.ITIMER_REAL, delay)
        t.join()
        outcomes.append("joined")
    except Interrupted:
        outcomes.append("late" if finished else "interrupted")
    signal.setitimer(signal.ITIMER_REAL, 0)
    go.set()
    t.join()
print(sorted(set(outcomes)))
"""


def test_signal_as_join_begins_is_handled_at_once():
    result = run_script(SIGNAL_AS_JOIN_BEGINS, "xthread.Thread")
    assert_clean(result)
    assert result[1] == "['interrupted']\n", result


# A start that fails (the OS refuses the thread: a stack size no system
# gives) leaves nothing behind: the thread is not alive, not started (join
# says so), and exit does not wait for it. (Whether it can be started
# again differs: 3.13's stdlib says "thread already started".)
FAILED_START = """
t = Thread(target=print, args=("ran",))
threading.stack_size(2**61)
try:
    t.start()
except RuntimeError as exc:
    print("refused:", exc)
threading.stack_size(0)
print("alive:", t.is_alive())
try:
    t.join()
except RuntimeError as exc:
    print("join:", exc)
"""


@pytest.mark.skipif(sys.maxsize < 2**61, reason="needs a 64-bit build")
def test_failed_start_leaves_nothing_behind(thread_cls):
    result = run_script(FAILED_START, thread_cls)
    assert_clean(result)
    assert result[1] == ("refused: can't start new thread\nalive: False\n"
                         "join: cannot join thread before it is started\n"
                         ), result


CTRL_C_AT_EXIT = """
started = threading.Event()

def work():
    started.set()
    threading.Event().wait()      # for ever: only Ctrl-C ends the exit wait
    print("thread done", flush=True)

Thread(target=work).start()
assert started.wait(30)
main = threading.main_thread().ident

def interrupter():
    if wait_until(lambda: main_in("_shutdown")):
        signal.pthread_kill(main, signal.SIGINT)
    else:
        print("main never waited at exit", flush=True)

threading.Thread(target=interrupter, daemon=True).start()
print("main returns", flush=True)
"""


def outcome_class(result):
    """What a test can compare between stdlib and xthread: the exit code,
    the output, and whether a KeyboardInterrupt was reported."""
    rc, out, err, _ = result
    return rc, out, "KeyboardInterrupt" in err


def test_ctrl_c_during_exit_wait():
    results = {cls: run_script(CTRL_C_AT_EXIT, cls, timeout=30)
               for cls in ("threading.Thread", "xthread.Thread")}
    for cls, (rc, out, err, _) in results.items():
        assert_no_crash(rc, out, err)
        assert out == "main returns\n", (cls, out, err)
    ref = outcome_class(results["threading.Thread"])
    # stdlib: the KeyboardInterrupt ends the exit wait and is reported
    # (exit code 0 on 3.9-3.13); the thread is left behind.
    assert ref[2], results
    assert outcome_class(results["xthread.Thread"]) == ref, results


# Starting a thread once exit has begun


def test_start_in_atexit_handler():
    code = """
    import atexit

    def handler():
        ran = []
        t = Thread(target=lambda: ran.append(1))
        try:
            t.start()
        except RuntimeError as exc:
            print("RuntimeError:", exc, flush=True)
        else:
            t.join(30)
            print("started, ran:", ran, flush=True)

    atexit.register(handler)
    """
    results = {cls: run_script(code, cls)
               for cls in ("threading.Thread", "xthread.Thread")}
    ref = results["threading.Thread"]
    assert_clean(ref)
    if REFUSES_START_AT_SHUTDOWN:
        assert ref[1] == ("RuntimeError: can't create new thread at "
                          "interpreter shutdown\n"), ref
    else:
        assert ref[1] == "started, ran: [1]\n", ref
    got = results["xthread.Thread"]
    assert_clean(got)
    assert got[1] == ref[1]


def test_start_in_atexit_handler_daemon():
    code = """
    import atexit

    def handler():
        done = threading.Event()
        t = Thread(target=done.set, daemon=True)
        try:
            t.start()
        except RuntimeError as exc:
            print("RuntimeError:", exc, flush=True)
        else:
            print("started, ran:", done.wait(30), flush=True)

    atexit.register(handler)
    """
    results = {cls: run_script(code, cls)
               for cls in ("threading.Thread", "xthread.Thread")}
    ref = results["threading.Thread"]
    assert_clean(ref)
    if REFUSES_START_AT_SHUTDOWN:
        assert ref[1].startswith("RuntimeError"), ref
    else:
        assert ref[1] == "started, ran: True\n", ref
    got = results["xthread.Thread"]
    assert_clean(got)
    assert got[1] == ref[1]
