"""dramatiq's own worker and middleware tests, run against xthread.

dramatiq's ``WorkerThread`` sets ``running`` at the top of ``run()`` and
its ``stop()`` clears it; its time limits and shutdown raise exceptions in
worker threads with ``PyThreadState_SetAsyncExc``. Its own tests (from its
published sdist) are run here twice, each in a subprocess with pytest: as
published, and with its threads made ``xthread.Thread``\\ s and its
``raise_thread_exception`` made ``xthread.raise_in_thread``, and its
``TimeLimit`` and ``ShutdownNotifications`` replaced by
``xthread.contrib.dramatiq``'s (see
``dramatiq_harness/dramatiq_conftest.py``, which also gives the fixtures
the sdist's tests ask for). Every test that passes as published must
pass with xthread too.

Where it runs: ``XTHREAD_DRAMATIQ_SDIST`` names dramatiq's sdist (a
``.tar.gz`` or an unpacked folder) and dramatiq is installed; ``.ci/run``
sets both up in one of its jobs. Elsewhere the test is skipped, saying
why.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET

import pytest

HERE = pathlib.Path(__file__).resolve().parent
HARNESS = HERE / "dramatiq_harness"
SDIST_ENV = "XTHREAD_DRAMATIQ_SDIST"

#: dramatiq's test modules that run workers on the stub broker: the worker
#: itself, actors with every middleware (time limits, retries, age limits,
#: callbacks, shutdown), the stub broker.
MODULES = ["test_worker.py", "test_actors.py", "test_callbacks.py",
           "test_generic_actors.py", "test_stub_broker.py"]

#: Seconds for one implementation's run (both run one after the other).
RUN_BUDGET = 300
#: Seconds one dramatiq test may take (pytest-timeout in the subprocess).
TEST_TIMEOUT = 60


def _sdist_tests(tmp_path):
    where = os.environ.get(SDIST_ENV)
    if not where:
        pytest.skip(f"{SDIST_ENV} is not set: .ci/run sets it, with dramatiq "
                    f"installed, in one of its jobs")
    path = pathlib.Path(where)
    if path.is_file():
        with tarfile.open(path) as tar:
            if hasattr(tarfile, "data_filter"):     # (3.12; some backports)
                tar.extractall(tmp_path / "sdist", filter="data")
            else:
                tar.extractall(tmp_path / "sdist")
        found = sorted((tmp_path / "sdist").glob("*/tests"))
    else:
        found = [path / "tests"] if (path / "tests").is_dir() else []
    if not found:
        pytest.fail(f"{SDIST_ENV}={where}: no tests folder in it")
    return found[0]


def _workdir(tests, tmp_path):
    """dramatiq's test modules, with this harness as their conftest."""
    work = tmp_path / "run" / "tests"
    work.mkdir(parents=True)
    for name in MODULES:
        shutil.copy(tests / name, work / name)
    (work / "__init__.py").write_text("")
    shutil.copy(HARNESS / "dramatiq_conftest.py", work / "conftest.py")
    shutil.copy(HARNESS / "common.py", work / "common.py")
    # Its own pytest configuration, not this project's (whose warnings
    # filter would judge dramatiq's code).
    (work.parent / "pytest.ini").write_text(
        "[pytest]\ntimeout = %d\n" % TEST_TIMEOUT)
    return work


def _run(mode, work, out):
    """Run dramatiq's tests; return (outcomes by test id, checks,
    failure texts by test id)."""
    junit = out / f"{mode}.xml"
    checks = out / f"{mode}-checks.json"
    env = dict(os.environ, XTHREAD_DRAMATIQ=mode,
               XTHREAD_DRAMATIQ_CHECKS=str(checks))
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(work.parent), f"--junitxml={junit}",
         str(work)],
        cwd=work.parent, env=env, capture_output=True, text=True,
        timeout=RUN_BUDGET)
    if not junit.exists():
        pytest.fail(f"dramatiq's tests ({mode}) did not run:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    outcomes, failures = {}, {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test = "%s::%s" % (case.get("classname"), case.get("name"))
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                failures[test] = (child.get("message") or "") + "\n" + (
                    child.text or "")[-2000:]
            elif child.tag == "skipped":
                outcome = "skipped"
        outcomes[test] = outcome
    return outcomes, json.loads(checks.read_text()), failures


def _counts(outcomes):
    values = list(outcomes.values())
    return ", ".join("%d %s" % (values.count(o), o)
                     for o in ("passed", "failed", "skipped"))


def test_dramatiq_suite_passes_with_xthread(tmp_path):
    pytest.importorskip("dramatiq", reason="dramatiq is not installed "
                        "(.ci/run installs it in one of its jobs)")
    work = _workdir(_sdist_tests(tmp_path), tmp_path)
    stock, stock_checks, _ = _run("stdlib", work, tmp_path)
    ours, our_checks, our_failures = _run("xthread", work, tmp_path)

    # Nothing passes vacuously: both ran the same tests, and the patch
    # took effect in the xthread run only.
    assert sum(o == "passed" for o in stock.values()) >= 20, stock
    assert set(stock) == set(ours)
    assert "xthread._thread.Thread" in our_checks["worker_thread"]
    assert "xthread._thread.Thread" in our_checks["consumer_thread"]
    assert "_raise_thread_exception" in our_checks["raise_thread_exception"]
    assert "xthread._thread.Thread" not in stock_checks["worker_thread"]
    assert ("xthread.contrib.dramatiq.TimeLimit"
            in our_checks["default_middleware"])
    assert ("dramatiq.middleware.time_limit.TimeLimit"
            in stock_checks["default_middleware"])

    print("dramatiq %s: as published %s; with xthread %s" % (
        our_checks["dramatiq"], _counts(stock), _counts(ours)))
    broken = sorted(t for t, o in stock.items()
                    if o == "passed" and ours[t] != "passed")
    assert not broken, (
        f"{len(broken)} of dramatiq {our_checks['dramatiq']}'s tests pass "
        f"as published but not with xthread:\n" + "\n".join(
            f"--- {t}: {ours[t]}\n{our_failures.get(t, '')}"
            for t in broken))
