"""Shared pytest configuration. Plain helpers (timeouts, thread starters,
the subprocess runner) live in ``helpers.py`` beside this file."""
import threading

import pytest

import _xthread
import xthread


def pytest_report_header(config):
    # Says which build is under test: an in-place build in the work tree
    # would shadow the installed one.
    return f"_xthread: {_xthread.__file__}"


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
