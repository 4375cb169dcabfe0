"""What dramatiq's tests import from their ``common`` module (not in its
published sdist), as far as the tests run here need it."""
import contextlib
import os
import platform

import pytest

import dramatiq

skip_on_pypy = pytest.mark.skipif(
    platform.python_implementation() == "PyPy", reason="not on PyPy")
skip_on_windows = pytest.mark.skipif(
    platform.system() == "Windows", reason="not on Windows")
skip_in_ci = pytest.mark.skipif(
    os.environ.get("CI") == "true", reason="not in CI")


@contextlib.contextmanager
def worker(*args, **kwargs):
    """A started dramatiq.Worker for the block; stopped after."""
    w = dramatiq.Worker(*args, **kwargs)
    try:
        w.start()
        yield w
    finally:
        w.stop()
