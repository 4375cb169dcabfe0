"""Shared pytest configuration. Plain helpers (timeouts, thread starters,
the subprocess runner) live in ``helpers.py`` beside this file."""
import pytest

import _xthread


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
