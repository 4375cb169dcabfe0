"""Stopping threads across process boundaries: interpreter exit with the
time-limit watchdog and threads parked in killable waits, time_limit in a
script's main thread, and fork() with a limit active.

Each scenario runs in a subprocess (``helpers.run_script``), bounded.
"""
import pytest

from helpers import assert_clean_exit, run_script

#: Each script must finish well inside helpers.SCRIPT_TIMEOUT.
PARKED_WAITS = """
    import queue, sys, threading, time
    import xthread

    ready = threading.Semaphore(0)
    waits = []

    def park(name, wait):
        def body():
            ready.release()
            wait()
        t = xthread.Thread(target=body, name=name, daemon=True)
        t.start()
        waits.append(t)

    held = xthread.Lock(); held.acquire()
    rheld = xthread.RLock()
    cond = xthread.Condition()
    sem = xthread.Semaphore(0)
    q = xthread.Queue()
    full = xthread.Queue(1); full.put(0)
    never = xthread.Event()

    def limited_sleep():
        with xthread.time_limit(600):
            xthread.sleep(3600)

    def rlock_holder():
        with rheld:
            ready.release()
            never.wait()

    def in_cond():
        with cond:
            cond.wait()

    t = xthread.Thread(target=rlock_holder, daemon=True); t.start()
    ready.acquire()
    park("sleep", lambda: xthread.sleep(3600))
    park("sleep-none", lambda: xthread.sleep(None))
    park("event", never.wait)
    park("lock", held.acquire)
    park("rlock", rheld.acquire)
    park("cond", in_cond)
    park("sem", sem.acquire)
    park("get", q.get)
    park("put", lambda: full.put(1))
    park("join", t.join)
    park("limited", limited_sleep)
    for _ in waits:
        assert ready.acquire(timeout=30)

    import _xthread
    deadline = time.monotonic() + 30
    while not all(_xthread._find_record(w.ident).parked for w in waits):
        assert time.monotonic() < deadline, "threads did not park"
        time.sleep(0.001)
    names = [t.name for t in threading.enumerate()]
    # The watchdog runs (a limit is open) but is not listed by threading.
    assert xthread._stop._watchdog.running()
    assert "xthread-watchdog" not in names, names
    print("parked", len(waits))
    sys.stdout.flush()
"""


@pytest.mark.parametrize("run", range(3))
def test_exit_with_watchdog_and_parked_daemon_threads(run):
    rc, out, err = run_script(PARKED_WAITS)
    assert_clean_exit(rc, out, err)
    assert "parked 11" in out
    assert err == ""


def test_exit_with_a_limit_open_in_main():
    # The main thread leaves (sys.exit) from inside a limit, while another
    # thread's limit is about to fire.
    rc, out, err = run_script("""
        import sys, threading, time
        import xthread

        def worker():
            try:
                with xthread.time_limit(0.05):
                    xthread.sleep(3600)
            except xthread.TimeLimitExceeded:
                pass
            xthread.sleep(3600)

        xthread.Thread(target=worker, daemon=True).start()
        with xthread.time_limit(600):
            print("leaving")
            sys.exit(0)
    """)
    assert_clean_exit(rc, out, err)
    assert out == "leaving\n"


def test_exit_after_killing_a_non_daemon_thread():
    # A non-daemon thread in a killable wait, killed by the main thread
    # just before the script ends: exit does not wait for it, nor crash.
    rc, out, err = run_script("""
        import threading
        import xthread

        ev = xthread.Event()
        t = xthread.Thread(target=ev.wait)
        t.start()
        result = t.kill(timeout=30)
        print("ended", result.ended)
    """)
    assert_clean_exit(rc, out, err)
    assert out == "ended True\n"


def test_time_limit_in_a_script_main_thread():
    rc, out, err = run_script("""
        import time
        import xthread

        def busy():
            while True:
                time.monotonic()

        def limited(seconds):
            with xthread.time_limit(seconds):
                busy()

        start = time.monotonic()
        try:
            limited(0.2)
        except xthread.TimeLimitExceeded as exc:
            took = time.monotonic() - start
            print("fired", type(exc).__name__, took >= 0.19, took < 10)

        @xthread.time_limit(0.1)
        def decorated():
            xthread.sleep(3600)

        try:
            decorated()
        except xthread.TimeLimitExceeded:
            print("fired again")

        # Uncaught: the script ends with the exception's traceback.
        limited(0.1)
    """)
    assert rc == 1, (rc, out, err)
    assert out == "fired TimeLimitExceeded True True\nfired again\n"
    assert "TimeLimitExceeded" in err.splitlines()[-1]
    for marker in ("Fatal Python error", "Segmentation fault"):
        assert marker not in err


FORK = """
    import os, sys, threading, time, warnings
    import _xthread, xthread

    # 3.12+ warns that fork() in a multi-threaded process may deadlock.
    warnings.simplefilter("ignore", DeprecationWarning)

    def busy():
        while True:
            time.monotonic()

    def limited(seconds):
        with xthread.time_limit(seconds):
            busy()

    def watchdog():
        # (ident, sentinel, generation, native id) of the running one.
        return xthread._stop._watchdog._thread

    with xthread.time_limit(600):
        parent_dog = watchdog()
        # Forked once the watchdog waits: a thread still being made is
        # inside the C library's allocator, which not every allocator
        # (AddressSanitizer's, among others) makes safe to fork around.
        record = _xthread._find_record(parent_dog[0])
        deadline = time.monotonic() + 30
        while not record.parked:
            assert time.monotonic() < deadline, "the watchdog never waited"
            xthread.sleep(0.001)
        pid = os.fork()
        if pid == 0:
            # The child: the parent's watchdog does not exist here; a new
            # one serves the child's limits.
            ok = True
            try:
                limited(0.1)
                ok = False
            except xthread.TimeLimitExceeded:
                pass
            dog = watchdog()
            ok = ok and dog is not None and dog[2] != parent_dog[2]
            ok = ok and "xthread-watchdog" not in [
                t.name for t in threading.enumerate()]
            try:
                limited(0.05)
                ok = False
            except xthread.TimeLimitExceeded:
                pass
            print("child", ok)
            sys.stdout.flush()
            sys.exit(0 if ok else 3)
        # The parent: its own limits still work.
        try:
            limited(0.1)
        except xthread.TimeLimitExceeded:
            print("parent fired")
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                # Not left behind, spinning, once this test has failed.
                os.kill(pid, 9)
                raise AssertionError("child hung")
            xthread.sleep(0.01)
    print("child status", os.waitstatus_to_exitcode(status)
          if hasattr(os, "waitstatus_to_exitcode") else status >> 8)
"""


def test_fork_with_a_limit_active():
    rc, out, err = run_script(FORK)
    assert_clean_exit(rc, out, err)
    lines = out.splitlines()
    assert "child True" in lines
    assert "parent fired" in lines
    assert lines[-1] == "child status 0"


def test_far_deadline_leaves_the_watchdog_working():
    # A limit longer than a lock wait can take (TIMEOUT_MAX, about 292
    # years) must not end the shared watchdog: later limits still fire.
    rc, out, err = run_script("""
        import threading, time
        import _xthread, xthread

        def busy(seconds):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pass

        def limited():
            with xthread.time_limit(0.2):
                busy(5)

        for far in (_xthread.TIMEOUT_MAX * 10, 1e12, float("inf")):
            with xthread.time_limit(far):
                pass
            # Past the watchdog's first look at the far deadline.
            xthread.sleep(0.05)
            try:
                limited()
                print("not fired", far)
            except xthread.TimeLimitExceeded:
                print("fired")
        print("watchdog running", xthread._stop._watchdog.running())
    """)
    assert_clean_exit(rc, out, err)
    assert out == "fired\nfired\nfired\nwatchdog running True\n", out + err
    assert "Exception in thread" not in err, err


NO_WATCHDOG_AFTER_LIMITS = """
    import os, sys, threading, warnings, _thread
    import xthread

    warnings.simplefilter("error", DeprecationWarning)

    def fires():
        try:
            with xthread.time_limit(0.05):
                while True:
                    pass
        except xthread.TimeLimitExceeded:
            return True

    before = (threading.active_count(), _thread._count(),
              sorted(t.name for t in threading.enumerate()))
    with xthread.time_limit(5):
        during = (threading.active_count(), _thread._count(),
                  sorted(t.name for t in threading.enumerate()))
        assert xthread._stop._watchdog.running()
    assert before == during, (before, during)
    # No limit open: a fork gets no warning about threads (3.12+ warns
    # when a multi-threaded process forks; -W error makes it fail).
    pid = os.fork()
    if pid == 0:
        # The child's limits work.
        os._exit(0 if fires() else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    # And the parent's still do.
    if fires():
        print("parent fired")
    print("ok")
"""


def test_watchdog_is_not_a_user_thread_and_never_blocks_a_fork():
    rc, out, err = run_script(NO_WATCHDOG_AFTER_LIMITS)
    assert_clean_exit(rc, out, err)
    assert out.splitlines() == ["parent fired", "ok"]
