"""CPython's own tests of ThreadPoolExecutor and asyncio.to_thread, pointed
at ``xthread.ThreadPoolExecutor`` and ``xthread.to_thread``.

Two suites of the installed CPython test package are run, where that
Python ships them (each is skipped, with the reason, where it does not):

- ``concurrent.futures``: the thread-pool test classes of
  ``test.test_concurrent_futures`` (one module up to 3.11, a package from
  3.12: ``test_thread_pool``, ``test_shutdown``, ``test_wait``,
  ``test_as_completed``, ``test_init``, ``executor``, ...), that is the
  classes whose ``executor_type`` is ``concurrent.futures.ThreadPoolExecutor``:
  ``ThreadPoolExecutorTest``, ``ThreadPoolShutdownTest``,
  ``ThreadPoolWaitTest(s)``, ``ThreadPoolAsCompletedTest``,
  ``ThreadPoolInitializerTest``, ``ThreadPoolFailingInitializerTest``. The
  process-pool classes and the tests of the bare ``Future`` are not run.
- ``asyncio.to_thread``: ``test.test_asyncio.test_threads``.

How they are pointed at xthread: each suite runs in a subprocess of its
own (this file, run as a script, is the runner), which executes
``POINT_AT_XTHREAD`` before it imports the test modules::

    concurrent.futures.ThreadPoolExecutor = xthread.ThreadPoolExecutor
    asyncio.to_thread = asyncio.threads.to_thread = xthread.to_thread

The test modules bind ``executor_type = futures.ThreadPoolExecutor`` at
import, after that, and look up ``futures.ThreadPoolExecutor`` and
``asyncio.to_thread`` when they run, so every pool they make and every
``to_thread`` they await is xthread's. The tests that start a new
interpreter (``assert_python_ok('-c', code)``: interpreter shutdown,
``cancel_futures`` with ``wait=False``...) get the same lines put in front
of their code. As in ``test_cpython_thread.py``, test.support's thread
helpers (``threading_setup``/``threading_cleanup``) count _xthread's
threads too, so that a test that leaves an xthread thread running is
caught as it would be with stdlib's (xthread's time-limit watchdog
aside: it is no thread of the user's, started by the first stop and
ended once idle). The threads that xthread keeps for the life of the
process are started before the tests, so that those helpers count them
from the start instead of blaming the first test that needs them: for the
``to_thread`` suite, every worker of ``xthread.to_thread``'s shared pool
(stdlib's ``to_thread`` uses the loop's default executor, which goes
with the loop).

Each suite is also run, the same way but unpatched, against stdlib (the
two runs side by side), and the test asserts that every test that passes
on stdlib passes on xthread too. A test skipped on xthread but run on
stdlib, or one after which test.support found the environment changed
(threads left behind) on xthread only, counts as failing. The failure
message gives each such test with its traceback.

The runner makes sure that the patch took effect, so that nothing passes
vacuously: ``concurrent.futures.ThreadPoolExecutor is
xthread.ThreadPoolExecutor`` and ``asyncio.to_thread is xthread.to_thread``;
every ``ThreadPool*`` class's ``executor_type`` is xthread's; a probe task
and a probe ``to_thread`` call run in an ``xthread.Thread``; every test
that ran made at least one xthread pool (``to_thread`` tests: sent at least
one task to xthread's shared pool); every worker thread that the pools
started is an ``xthread.Thread``; some tests started an interpreter with
the patch. The stdlib run checks the same of stdlib's classes.

Both runs use ``test.support.SHORT_TIMEOUT = SHORT_TIMEOUT`` (10 s instead
of 30 s: the bound of waits for what takes milliseconds). A test that
makes no progress for ``HANG_TIMEOUT`` seconds counts as hung: faulthandler
dumps every thread's stack (the failure message shows it) and the runner
starts again after that test. ``SKIPS`` lists the tests skipped on both
implementations alike, with the reason: on 3.9-3.11, one test that races
``submit()`` against ``shutdown(cancel_futures=True)``. None is skipped for
time: the slowest, ``test_map_timeout``, takes 6 s.
"""
import concurrent.futures
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

#: The lines that point a process at xthread (run by the runner before it
#: imports the CPython test modules, and put in front of the code of every
#: ``-c`` interpreter that those tests start). ``{path}``: the directory
#: that holds the xthread package under test.
POINT_AT_XTHREAD = """\
import sys; sys.path.insert(0, {path!r})
import asyncio, asyncio.threads, concurrent.futures
import xthread
concurrent.futures.ThreadPoolExecutor = xthread.ThreadPoolExecutor
asyncio.to_thread = asyncio.threads.to_thread = xthread.to_thread
"""

#: suite -> the CPython test module (or package) it runs.
SUITES = {
    "concurrent.futures": "test.test_concurrent_futures",
    "asyncio.to_thread": "test.test_asyncio.test_threads",
}

#: ``Class.method`` -> reason: tests not run, on stdlib and xthread alike.
SKIPS = {
}
if sys.version_info < (3, 12):
    # submit() then shutdown(wait=False, cancel_futures=True) at once: the
    # test expects the task to have started first, which is a race (3.12
    # accepts either outcome, python/cpython#116682); it is lost now and
    # then with stdlib's pool and xthread's alike.
    SKIPS["ThreadPoolShutdownTest.test_cancel_futures_wait_false"] = (
        "races submit() against shutdown(cancel_futures=True); "
        "python/cpython#116682")

#: ``test.support.SHORT_TIMEOUT`` in the runner (CPython's default is 30 s):
#: the bound of the suites' waits for what should take milliseconds (a
#: reference collected, an initializer run), so that such a test fails with
#: its own message well before it would count as hung.
SHORT_TIMEOUT = 10.0
#: Seconds one CPython test may take before it counts as hung (the slowest
#: thread-pool test takes about 6 s: test_map_timeout sleeps that long).
HANG_TIMEOUT = 20.0
#: Seconds for one implementation's run of a suite, restarts after hangs
#: included (a passing run takes about 30 s). The two implementations run
#: side by side.
RUN_BUDGET = 150.0
#: How many times a run is resumed after a hung or crashed test.
MAX_RESTARTS = 3

_STDLIB_WORKER = "threading.Thread"
_XTHREAD_WORKER = "xthread._thread.Thread"
_OK = ("passed", "skipped", "expected_failure")


# --------------------------------------------------------------------------
# The runner (this file run as a script, in a subprocess per suite and
# implementation). It writes one JSON object a line to the events file:
# "checks" (what it verified at start), "start" and "result" per test, and
# "done" at the end.
# --------------------------------------------------------------------------

def _qualname(obj):
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _require(condition, message):
    if not condition:
        raise RuntimeError(f"not pointed as it should be: {message}")


def _runner_main(config_path):
    import faulthandler
    import functools
    import importlib
    import pkgutil
    import threading
    import unittest

    with open(config_path) as f:
        config = json.load(f)
    impl = config["impl"]
    suite = config["suite"]
    events = open(config["events"], "a", buffering=1)
    hang_file = open(config["hang_file"], "w")
    hang_timeout = config["hang_timeout"]

    def emit(event, **fields):
        events.write(json.dumps(dict(fields, event=event)) + "\n")
        events.flush()

    def watchdog():
        # No progress for hang_timeout seconds: dump every thread's stack
        # and exit; the parent resumes after the test that hung.
        hang_file.seek(0)
        hang_file.truncate()
        faulthandler.dump_traceback_later(hang_timeout, exit=True,
                                          file=hang_file)

    faulthandler.enable()
    watchdog()
    checks = {"impl": impl, "python": sys.version.split()[0]}

    if impl == "xthread":
        exec(POINT_AT_XTHREAD.format(path=config["xthread_path"]), {})
    import asyncio
    import asyncio.threads
    import concurrent.futures
    import concurrent.futures.thread
    from test import support
    from test.support import script_helper
    try:
        from test.support import threading_helper
    except ImportError:         # 3.9: the helpers are in test.support
        threading_helper = support
    support.verbose = 0         # ExecutorMixin prints timings when verbose
    support.SHORT_TIMEOUT = config["short_timeout"]
    # What test.support warns about (threads left behind...), per test.
    warnings_seen = []
    print_warning = support.print_warning

    def recording_print_warning(msg):
        warnings_seen.append(msg)
        print_warning(msg)

    # (3.12+ keeps the real stderr as an attribute of the function.)
    functools.update_wrapper(recording_print_warning, print_warning)
    support.print_warning = recording_print_warning

    pool_cls = concurrent.futures.ThreadPoolExecutor
    counters = {"pools": 0, "children": 0}
    default_pool = None

    if impl == "xthread":
        import _xthread
        import _thread
        import xthread
        import xthread._pool
        _require(pool_cls is xthread.ThreadPoolExecutor,
                 f"concurrent.futures.ThreadPoolExecutor is {pool_cls}")
        _require(asyncio.to_thread is xthread.to_thread,
                 f"asyncio.to_thread is {asyncio.to_thread}")
        checks["xthread"] = xthread.__file__
        checks["_xthread"] = _xthread.__file__

        class CountingThreadModule:
            """_thread as test.support's thread helpers see it:
            ``_count()`` also counts the threads that _xthread started,
            but for xthread's time-limit watchdog, which is no thread of
            the user's (it is started by the first stop and ends once
            idle)."""

            def __getattr__(self, name):
                return getattr(_thread, name)

            @staticmethod
            def _count():
                return (_thread._count() + _xthread._count()
                        - xthread._stop._watchdog.running())

        threading_helper._thread = CountingThreadModule()
        if threading_helper is not support and hasattr(support, "_thread"):
            support._thread = CountingThreadModule()

        # Interpreters that the tests start get the same patch.
        prelude = POINT_AT_XTHREAD.format(path=config["xthread_path"])
        run_python_until_end = script_helper.run_python_until_end

        def patched_run_python_until_end(*args, **env_vars):
            args = list(args)
            if "-c" in args:
                i = args.index("-c") + 1
                args[i] = prelude + args[i]
                counters["children"] += 1
            return run_python_until_end(*args, **env_vars)

        script_helper.run_python_until_end = patched_run_python_until_end

        checks["threads_before"] = sorted(
            t.name for t in threading.enumerate())
        if suite == "asyncio.to_thread":
            default_pool = xthread._pool._get_default_pool
    else:
        _require(pool_cls is concurrent.futures.thread.ThreadPoolExecutor,
                 f"concurrent.futures.ThreadPoolExecutor is {pool_cls}")
        _require(asyncio.to_thread is asyncio.threads.to_thread,
                 f"asyncio.to_thread is {asyncio.to_thread}")
        _require("xthread" not in sys.modules, "xthread imported")

    # Count the pools that the tests make (no reference kept: some tests
    # check that a pool is collected).
    original_init = pool_cls.__init__

    def counting_init(self, *args, **kwargs):
        counters["pools"] += 1
        original_init(self, *args, **kwargs)

    pool_cls.__init__ = counting_init

    # And the kinds of thread that their workers are (the pool may be gone
    # by the end of the test).
    workers = set()
    original_adjust = pool_cls._adjust_thread_count

    def recording_adjust(self):
        original_adjust(self)
        workers.update(_qualname(t) for t in list(self._threads))

    pool_cls._adjust_thread_count = recording_adjust

    # The probe: a task of the pool under test, and a to_thread call, run
    # in a thread of the expected kind.
    with pool_cls(1) as probe_pool:
        worker = probe_pool.submit(threading.current_thread).result(30)
    checks["pool_type"] = f"{pool_cls.__module__}.{pool_cls.__qualname__}"
    checks["probe_worker"] = _qualname(worker)
    del worker, probe_pool
    if suite == "asyncio.to_thread":
        worker = asyncio.run(asyncio.wait_for(
            asyncio.to_thread(threading.current_thread), 30))
        checks["to_thread_worker"] = _qualname(worker)
        del worker
        if default_pool is not None:
            # xthread.to_thread runs calls in one pool for the process,
            # whose idle workers stay (stdlib's runs them in the loop's
            # default executor, shut down with the loop). Start all of its
            # workers now, so that test.support counts them from the start
            # instead of blaming the first test that needs one more.
            size = default_pool().health().max_workers
            barrier = threading.Barrier(size)

            async def fill():
                await asyncio.gather(*(asyncio.to_thread(barrier.wait, 30)
                                       for _ in range(size)))

            asyncio.run(asyncio.wait_for(fill(), 60))
            checks["to_thread_workers"] = default_pool().health().workers
        asyncio.set_event_loop_policy(None)
    counters["pools"] = 0

    # The test classes.
    loader = unittest.TestLoader()
    skips = config["skips"]
    exclude = set(config["exclude"])
    only = config.get("only")       # id substrings: to run a few by hand
    try:
        top = importlib.import_module(SUITES[suite])
    except unittest.SkipTest as exc:
        emit("checks", **checks)
        emit("suite_skipped", reason=str(exc))
        emit("done")
        return
    modules = [top]
    checks["modules_skipped"] = {}
    if hasattr(top, "__path__"):
        for info in sorted(pkgutil.iter_modules(top.__path__),
                           key=lambda info: info.name):
            name = f"{top.__name__}.{info.name}"
            try:
                modules.append(importlib.import_module(name))
            except unittest.SkipTest as exc:
                checks["modules_skipped"][name] = str(exc)
    classes = []
    for module in modules:
        for name, obj in sorted(vars(module).items()):
            if not (isinstance(obj, type)
                    and issubclass(obj, unittest.TestCase)
                    and obj.__module__ == module.__name__):
                continue
            if suite == "concurrent.futures":
                if name.startswith("ThreadPool"):
                    # The patch reached the class (bound at import).
                    _require(obj.executor_type is pool_cls,
                             f"{name}.executor_type is {obj.executor_type}")
                if getattr(obj, "executor_type", None) is not pool_cls:
                    continue
            classes.append(obj)
    checks["classes"] = [f"{c.__module__}.{c.__qualname__}" for c in classes]
    test_suite = unittest.TestSuite()
    for cls in classes:
        for method in loader.getTestCaseNames(cls):
            case = cls(method)
            test_id = case.id()
            if test_id in exclude or (only and not any(
                    part in test_id for part in only)):
                continue
            key = f"{cls.__name__}.{method}"
            if key in skips:
                setattr(case, method,
                        unittest.skip(skips[key])(lambda: None))
            test_suite.addTest(case)
    emit("checks", **checks)

    def submitted():
        if default_pool is None:
            return None
        return default_pool().health().submitted

    class Recorder(unittest.TestResult):
        current = None

        def startTest(self, test):
            super().startTest(test)
            watchdog()
            emit("start", id=test.id())
            self.current = test
            self.outcome = "passed"
            self.details = []
            self.t0 = time.monotonic()
            self.pools0 = counters["pools"]
            self.children0 = counters["children"]
            self.submitted0 = submitted()
            support.environment_altered = False
            warnings_seen.clear()
            workers.clear()

        def stopTest(self, test):
            super().stopTest(test)
            after = submitted()
            emit("result", id=test.id(), outcome=self.outcome,
                 detail="\n".join(self.details),
                 warnings="\n".join(warnings_seen),
                 duration=round(time.monotonic() - self.t0, 3),
                 env_changed=bool(support.environment_altered),
                 pools=counters["pools"] - self.pools0,
                 children=counters["children"] - self.children0,
                 to_thread_tasks=(None if after is None
                                  else after - self.submitted0),
                 workers=sorted(workers))
            workers.clear()
            self.current = None
            watchdog()

        def _set(self, test, outcome, detail):
            if test is not self.current:
                # A class or module fixture (setUpModule, tearDownClass...)
                emit("result", id=test.id(), outcome=outcome, detail=detail,
                     duration=0, env_changed=False, pools=0, children=0,
                     to_thread_tasks=None, workers=[])
                return
            if self.outcome in _OK or outcome not in _OK:
                self.outcome = outcome
            if detail:
                self.details.append(detail)

        def addError(self, test, err):
            super().addError(test, err)
            self._set(test, "error", self.errors[-1][1])

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._set(test, "failed", self.failures[-1][1])

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._set(test, "skipped", reason)

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            self._set(test, "expected_failure", "")

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._set(test, "unexpected_success", "")

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                text = self._exc_info_to_string(err, test)
                failed = issubclass(err[0], test.failureException)
                self._set(test, "failed" if failed else "error",
                          f"{subtest}:\n{text}")

    test_suite.run(Recorder())
    faulthandler.cancel_dump_traceback_later()
    emit("done")
    events.close()


# --------------------------------------------------------------------------
# The pytest side.
# --------------------------------------------------------------------------

def _available(suite):
    """The reason why the suite cannot run here, or None."""
    try:
        if importlib.util.find_spec("test.support") is None:
            return "CPython's test suite is not installed"
        if importlib.util.find_spec(SUITES[suite]) is None:
            return f"{SUITES[suite]} is not installed with this Python"
    except ImportError as exc:
        return f"CPython's test suite is not importable: {exc}"
    return None


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_events(path):
    events = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    events.append(json.loads(line))
    except FileNotFoundError:
        pass
    return events


def _tail(text, limit=4000):
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _run(suite, impl, workdir):
    """Run one suite on one implementation (resuming after a hung or
    crashed test); return ``{"checks", "results", "skipped", "problems",
    "duration"}``."""
    import xthread
    xthread_path = os.path.dirname(os.path.dirname(
        os.path.abspath(xthread.__file__)))
    deadline = time.monotonic() + RUN_BUDGET
    t0 = time.monotonic()
    results = {}
    checks = None
    problems = []
    suite_skipped = None
    for attempt in range(MAX_RESTARTS + 1):
        base = os.path.join(workdir, f"{impl}-{attempt}")
        config = {
            "impl": impl, "suite": suite, "xthread_path": xthread_path,
            "skips": SKIPS, "exclude": sorted(results),
            "events": base + ".events", "hang_file": base + ".hang",
            "hang_timeout": HANG_TIMEOUT, "short_timeout": SHORT_TIMEOUT,
        }
        with open(base + ".json", "w") as f:
            json.dump(config, f)
        env = dict(os.environ)
        env.pop("PYTHONWARNINGS", None)
        with open(base + ".out", "w+") as out:
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), base + ".json"],
                stdout=out, stderr=subprocess.STDOUT, env=env,
                cwd=workdir, start_new_session=True)
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            finally:
                _kill_group(proc)
                proc.wait()
            out.seek(0)
            output = out.read()
        started = None
        done = False
        for event in _read_events(config["events"]):
            kind = event.pop("event")
            if kind == "checks":
                checks = checks or event
            elif kind == "start":
                started = event["id"]
            elif kind == "result":
                results[event["id"]] = event
                if event["id"] == started:
                    started = None
            elif kind == "suite_skipped":
                suite_skipped = event["reason"]
            elif kind == "done":
                done = True
        if done:
            break
        try:
            with open(config["hang_file"]) as f:
                dump = f.read()
        except FileNotFoundError:
            dump = ""
        timed_out = time.monotonic() >= deadline
        how = ("still running when the run's budget of "
               f"{RUN_BUDGET:.0f} s ran out" if timed_out else
               f"hung (no progress in {HANG_TIMEOUT:.0f} s)" if dump else
               f"crashed the runner (exit code {proc.returncode})")
        if started is None:
            problems.append(f"{impl} runner {how} outside any test:\n"
                            f"{_tail(dump)}\n{_tail(output)}")
            break
        results[started] = {
            "id": started, "outcome": "hung", "duration": None,
            "detail": f"{how}\n{_tail(dump, 12000)}\n"
                      f"runner output:\n{_tail(output)}",
            "env_changed": False, "pools": 0, "children": 0,
            "to_thread_tasks": None, "workers": []}
        if timed_out:
            break
    else:
        problems.append(f"{impl} runner: gave up after {MAX_RESTARTS} "
                        "restarts")
    if checks is None and not problems:
        problems.append(f"{impl} runner did not start:\n{_tail(output)}")
    return {"checks": checks, "results": results, "skipped": suite_skipped,
            "problems": problems, "duration": time.monotonic() - t0}


def _summary(run):
    counts = {}
    for result in run["results"].values():
        counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
    return (f"{len(run['results'])} tests "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + f" in {run['duration']:.1f} s")


def _check_patch(suite, impl, run):
    """Failures of the runner's own checks: the suite ran the implementation
    it should have, and was not vacuous."""
    import xthread
    import _xthread
    checks = run["checks"]
    expected_pool = ("xthread._pool.ThreadPoolExecutor" if impl == "xthread"
                     else "concurrent.futures.thread.ThreadPoolExecutor")
    worker = _XTHREAD_WORKER if impl == "xthread" else _STDLIB_WORKER
    errors = []
    if checks["pool_type"] != expected_pool:
        errors.append(f"pool type {checks['pool_type']}")
    if checks["probe_worker"] != worker:
        errors.append(f"probe task ran in a {checks['probe_worker']}")
    if impl == "xthread":
        if checks["xthread"] != os.path.abspath(xthread.__file__):
            errors.append(f"runner imported {checks['xthread']}")
        if checks["_xthread"] != os.path.abspath(_xthread.__file__):
            errors.append(f"runner imported {checks['_xthread']}")
    if suite == "asyncio.to_thread":
        if checks["to_thread_worker"] != worker:
            errors.append("probe to_thread ran in a "
                          f"{checks['to_thread_worker']}")
    elif not checks["classes"]:
        errors.append("no thread-pool test class found")
    ran = [r for r in run["results"].values()
           if r["outcome"] in ("passed", "failed", "error")
           and " " not in r["id"]]        # not a fixture ("setUpModule (m)")
    if not ran:
        errors.append("no test ran")
    workers = set()
    for r in ran:
        workers.update(r["workers"])
        if suite == "concurrent.futures" and r["pools"] < 1:
            errors.append(f"{r['id']} made no {expected_pool}")
        if (suite == "asyncio.to_thread" and impl == "xthread"
                and not r["to_thread_tasks"]):
            errors.append(f"{r['id']} sent no task to xthread.to_thread's "
                          "pool")
    if suite == "concurrent.futures":
        if workers != {worker}:
            errors.append(f"worker threads seen: {sorted(workers)}")
        if impl == "xthread" and not any(r["children"] for r in ran):
            errors.append("no test started an interpreter pointed at "
                          "xthread (assert_python_ok)")
    return errors


@pytest.mark.timeout(RUN_BUDGET + 60)
@pytest.mark.parametrize("suite", SUITES)
def test_cpython_suite(suite, tmp_path):
    reason = _available(suite)
    if reason:
        pytest.skip(reason)
    # Both implementations side by side (the suites mostly sleep).
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {impl: pool.submit(_run, suite, impl,
                                     str(tmp_path))
                   for impl in ("stdlib", "xthread")}
        runs = {impl: f.result() for impl, f in futures.items()}
    stdlib, xthread_run = runs["stdlib"], runs["xthread"]
    print(f"{suite}: stdlib: {_summary(stdlib)}; "
          f"xthread: {_summary(xthread_run)}")

    problems = stdlib["problems"] + xthread_run["problems"]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
    if stdlib["skipped"] is not None or xthread_run["skipped"] is not None:
        assert stdlib["skipped"] == xthread_run["skipped"]
        pytest.skip(f"skipped by the suite: {stdlib['skipped']}")

    errors = []
    for impl, run in runs.items():
        errors += [f"{impl}: {e}" for e in _check_patch(suite, impl, run)]
    if errors:
        pytest.fail("the suite did not run as it should:\n"
                    + "\n".join(errors), pytrace=False)

    failures = []
    std_results = stdlib["results"]
    x_results = xthread_run["results"]
    for test_id in sorted(set(std_results) | set(x_results)):
        s = std_results.get(test_id)
        x = x_results.get(test_id)
        if s is None:
            failures.append((test_id, "ran on xthread only", ""))
            continue
        if x is None:
            failures.append((test_id, "did not run on xthread", ""))
            continue
        if s["outcome"] not in _OK:
            continue        # fails on stdlib too: not xthread's doing
        if x["outcome"] not in _OK:
            failures.append((test_id, x["outcome"], x["detail"]))
        elif x["outcome"] != s["outcome"]:
            failures.append((test_id, f"{x['outcome']} on xthread, "
                             f"{s['outcome']} on stdlib", x["detail"]))
        elif x["env_changed"] and not s["env_changed"]:
            failures.append((test_id, "changed the environment (test."
                             "support's check after the test)",
                             x.get("warnings", "")))
    if failures:
        pytest.fail(
            f"{len(failures)} test(s) pass on stdlib but not on xthread "
            f"(stdlib: {_summary(stdlib)}; xthread: {_summary(xthread_run)})"
            "\n\n" + "\n\n".join(
                f"{test_id}: {what}\n{detail}".rstrip()
                for test_id, what, detail in failures),
            pytrace=False)


if __name__ == "__main__":
    _runner_main(sys.argv[1])
