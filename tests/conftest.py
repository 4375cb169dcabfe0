"""Shared pytest configuration. Plain helpers (timeouts, thread starters,
the subprocess runner) live in ``helpers.py`` beside this file."""
import os
import sys
import threading

import pytest

import _xthread
import xthread


def _gil_enabled():
    return getattr(sys, "_is_gil_enabled", lambda: True)()


def pytest_report_header(config):
    # Says which build is under test: an in-place build in the work tree
    # would shadow the installed one; and whether the GIL is on.
    return [f"_xthread: {_xthread.__file__}",
            f"GIL enabled: {_gil_enabled()}"]


def pytest_sessionfinish(session, exitstatus):
    # XTHREAD_EXPECT_GIL=0 (CI's free-threaded job): the whole run must
    # have kept the GIL off. A module imported on the way that does not
    # declare Py_mod_gil turns it on, and the run would test the GIL.
    want = os.environ.get("XTHREAD_EXPECT_GIL")
    if want is not None and _gil_enabled() != bool(int(want)):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(
                f"XTHREAD_EXPECT_GIL={want}, but the GIL is "
                f"{'on' if _gil_enabled() else 'off'} at the end of the run",
                red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def restore_stack_size():
    """Whatever a test does to the thread stack size, put it back."""
    old = _xthread.stack_size()
    yield old
    _xthread.stack_size(old)


@pytest.fixture(params=[
    pytest.param(threading.Thread, id="threading"),
    pytest.param(xthread.Thread, id="xthread"),
])
def thread_cls(request):
    """The class under test: the same assertions run against stdlib's
    Thread and xthread's."""
    return request.param


@pytest.fixture
def redis_url(tmp_path):
    """A redis-server of its own on a free loopback port, no persistence;
    its URL. Skips where redis-server or redis-py is missing (.ci/run
    installs both in the job that runs the task-queue tests)."""
    import shutil
    import socket
    import subprocess

    from helpers import JOIN_TIMEOUT, wait_until
    redis = pytest.importorskip("redis")
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no redis-server (.ci/run installs Debian's)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up():
        try:
            return client.ping()
        except redis.exceptions.ConnectionError:
            return False
    try:
        wait_until("redis-server to answer", up)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(JOIN_TIMEOUT)
