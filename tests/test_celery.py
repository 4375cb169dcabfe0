"""Celery's own tests of its ``threads`` pool
(``t/unit/concurrency/test_thread.py`` from its published sdist), run with
``celery.concurrency.thread.TaskPool`` made ``xthread.contrib.celery``'s:
every one must pass. In a subprocess with pytest, with a conftest that
makes the swap and records that it did.

Where it runs: ``XTHREAD_CELERY_SDIST`` names Celery's sdist and Celery
is installed (``.ci/run`` sets both up in one of its jobs); elsewhere the
test is skipped, saying why.
"""
import json
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET

import pytest

SDIST_ENV = "XTHREAD_CELERY_SDIST"
MEMBER = "t/unit/concurrency/test_thread.py"

CONFTEST = '''
import json, os
import celery.concurrency.thread as thread
from xthread.contrib.celery import TaskPool
thread.TaskPool = TaskPool
with open(os.environ["XTHREAD_CELERY_CHECKS"], "w") as f:
    json.dump({"pool": thread.TaskPool.__module__}, f)
'''


def test_celerys_thread_pool_tests_pass_with_xthreads_pool(tmp_path):
    pytest.importorskip("celery", reason="Celery is not installed "
                        "(.ci/run installs it in one of its jobs)")
    where = os.environ.get(SDIST_ENV)
    if not where:
        pytest.skip(f"{SDIST_ENV} is not set: .ci/run sets it, with Celery "
                    f"installed, in one of its jobs")
    work = tmp_path / "celery_tests"
    work.mkdir()
    with tarfile.open(where) as tar:
        member = next((m for m in tar.getmembers()
                       if m.name.endswith("/" + MEMBER)), None)
        assert member is not None, f"{where}: no {MEMBER}"
        (work / "test_thread.py").write_bytes(
            tar.extractfile(member).read())
    (work / "conftest.py").write_text(CONFTEST)
    # Celery names its test classes test_* (its own pytest setting).
    (work / "pytest.ini").write_text(
        "[pytest]\ntimeout = 60\npython_classes = test_*\n")
    junit, checks = tmp_path / "junit.xml", tmp_path / "checks.json"
    env = dict(os.environ, XTHREAD_CELERY_CHECKS=str(checks))
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(work), f"--junitxml={junit}", str(work)],
        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert junit.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(checks.read_text())["pool"] == "xthread.contrib.celery"
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    failed = [c.get("name") for c in cases
              if any(ch.tag in ("failure", "error", "skipped") for ch in c)]
    assert len(cases) >= 4, proc.stdout[-3000:]
    assert not failed, proc.stdout[-5000:]
