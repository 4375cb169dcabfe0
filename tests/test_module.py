"""The _xthread module as a whole: its names, multi-phase init (a fresh
import is a distinct, working module), text signatures, the type stubs,
subinterpreters, and reference leaks (debug builds only)."""
import ast
import gc
import importlib.util
import inspect
import os
import pathlib
import subprocess
import sys
import sysconfig
import threading

import pytest

import _xthread
from helpers import JOIN_TIMEOUT, catch_unraisable, start_joinable

STUBS = (pathlib.Path(__file__).resolve().parent.parent
         / "src" / "_xthread-stubs" / "__init__.pyi")

# Every name the SPEC gives the module, plus the names _thread has for
# the same things.
SPEC_NAMES = {
    "start_new_thread", "start_new", "_start_joinable_thread",
    "allocate_lock", "allocate", "LockType", "lock",
    "_set_sentinel", "set_async_exc",
    "get_ident", "get_native_id", "_count", "stack_size",
    "TIMEOUT_MAX", "error", "exit", "exit_thread",
    # start_new_thread() returns before the thread has run: its OS id,
    # once it has.
    "_native_id",
}

LOCK_METHODS = {
    "acquire", "release", "locked", "acquire_lock", "release_lock",
    "locked_lock", "__enter__", "__exit__", "_at_fork_reinit",
    "_wait_released",
}


def public_names(obj):
    return {name for name in dir(obj)
            if not (name.startswith("__") and name.endswith("__"))}


def test_spec_names_present():
    missing = SPEC_NAMES - public_names(_xthread)
    assert not missing


# What the stopping machinery (xthread's kill, time limits, shields and
# killable waits) adds: one delivery path with records, scopes and shields.
STOP_NAMES = {
    "ThreadRecord", "_deliver", "_record", "_find_record", "_scope_enter",
    "_scope_exit", "_shield_enter", "_shield_exit", "sleep", "Scoped",
    "_call_unshielded", "_nudge", "_wake_signal", "_SIGNAL_WAKES",
    "_handling",
    # fork() waits until no delivery is half armed.
    "_fork_hold", "_fork_release",
    # Killable waits: the reentrant lock, its bookkeeping in C.
    "RLock",
}


def test_no_unexpected_names():
    assert public_names(_xthread) - SPEC_NAMES == STOP_NAMES


def test_lock_methods_present():
    assert LOCK_METHODS <= set(dir(_xthread.LockType))


def test_module_attributes():
    assert _xthread.__name__ == "_xthread"
    assert _xthread.__doc__
    assert _xthread.__spec__.origin == _xthread.__file__


# multi-phase init


def load_fresh():
    """A second, independent instance of the extension module."""
    spec = importlib.util.spec_from_file_location("_xthread",
                                                  _xthread.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fresh_import_is_distinct_module():
    fresh = load_fresh()
    assert fresh is not _xthread
    assert fresh.LockType is not _xthread.LockType
    assert type(fresh.allocate_lock()) is fresh.LockType
    assert type(_xthread.allocate_lock()) is _xthread.LockType
    assert not isinstance(fresh.allocate_lock(), _xthread.LockType)
    assert fresh.error is RuntimeError
    assert fresh.TIMEOUT_MAX == _xthread.TIMEOUT_MAX
    assert public_names(fresh) == public_names(_xthread)


def test_fresh_module_works_with_its_own_state():
    fresh = load_fresh()
    go = threading.Event()
    seen = []

    def function():
        seen.append(fresh.get_ident())
        go.wait(JOIN_TIMEOUT)

    before_old = _xthread._count()
    ident, sentinel, _ = fresh._start_joinable_thread(function, ())
    try:
        assert type(sentinel) is fresh.LockType
        # _count is per module instance.
        assert fresh._count() == 1
        assert _xthread._count() == before_old
    finally:
        go.set()
    assert sentinel.acquire(timeout=JOIN_TIMEOUT)
    assert seen == [ident]
    assert fresh._count() == 0


def test_fresh_module_dropped_while_its_thread_runs():
    fresh = load_fresh()
    go = threading.Event()
    done = []

    def function():
        go.wait(JOIN_TIMEOUT)
        done.append(True)

    lock = fresh.allocate_lock()
    ident, sentinel, _ = fresh._start_joinable_thread(function, ())
    del fresh
    gc.collect()
    go.set()
    assert sentinel.acquire(timeout=JOIN_TIMEOUT)
    assert done == [True]
    # Objects of the dropped module keep working.
    assert lock.acquire(False)
    lock.release()
    del lock, sentinel
    gc.collect()
    # And the original module is unaffected.
    t = start_joinable(len, ())
    t.join()


def test_subinterpreter():
    testcapi = pytest.importorskip("_testcapi")
    if not hasattr(testcapi, "run_in_subinterp"):
        pytest.skip("_testcapi.run_in_subinterp is missing")
    code = """if 1:
        import _xthread, threading
        ran = threading.Event()
        ident, sentinel, _ = _xthread._start_joinable_thread(
            ran.set, ())
        assert sentinel.acquire(timeout=30)
        assert ran.is_set()
        assert _xthread._count() == 0
        lock = _xthread.allocate_lock()
        assert lock.acquire() and not lock.acquire(False)
        lock.release()
    """
    assert testcapi.run_in_subinterp(code) == 0


# signatures and docs


MODULE_SIGNATURES = {
    "start_new_thread": "(function, args, kwargs=None, /)",
    "start_new": "(function, args, kwargs=None, /)",
    "_start_joinable_thread":
        "(function, args, kwargs=None, sentinel=None, shielded=False, "
        "started=None, /)",
    "allocate_lock": "()",
    "allocate": "()",
    "_set_sentinel": "()",
    "set_async_exc": "(ident, exc, /)",
    "get_ident": "()",
    "get_native_id": "()",
    "_native_id": "(ident, generation=0)",
    "_count": "()",
    "stack_size": "(size=0, /)",
    "exit": "()",
    "exit_thread": "()",
}

LOCK_SIGNATURES = {
    "acquire": "(self, /, blocking=True, timeout=-1)",
    "acquire_lock": "(self, /, blocking=True, timeout=-1)",
    "release": "(self, /)",
    "release_lock": "(self, /)",
    "locked": "(self, /)",
    "locked_lock": "(self, /)",
}


@pytest.mark.parametrize("name", sorted(MODULE_SIGNATURES))
def test_module_function_signature(name):
    function = getattr(_xthread, name)
    assert str(inspect.signature(function)) == MODULE_SIGNATURES[name]


@pytest.mark.parametrize("name", sorted(LOCK_SIGNATURES))
def test_lock_method_signature(name):
    method = getattr(_xthread.LockType, name)
    assert str(inspect.signature(method)) == LOCK_SIGNATURES[name]


def documented():
    for name in sorted(MODULE_SIGNATURES):
        yield pytest.param(getattr(_xthread, name), id=name)
    for name in sorted(LOCK_SIGNATURES) + ["__enter__", "__exit__"]:
        yield pytest.param(getattr(_xthread.LockType, name), id="lock." + name)


@pytest.mark.parametrize("obj", list(documented()))
def test_docstring_has_no_raw_signature_header(obj):
    """A docstring whose "name(...)\\n--\\n\\n" header names another
    function is not parsed as a signature and shows up raw in help()."""
    assert obj.__doc__
    assert "\n--\n\n" not in obj.__doc__
    assert "$module" not in obj.__doc__ and "$self" not in obj.__doc__


# stubs


def stub_tree():
    return ast.parse(STUBS.read_text(encoding="utf-8"), filename=str(STUBS))


def stub_top_level_names(tree):
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target,
                                                           ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
    return names


def test_stubs_list_every_public_name():
    names = stub_top_level_names(stub_tree())
    assert public_names(_xthread) - set(names) == set()
    # And nothing the module lacks (imports and private helpers aside).
    extra = {n for n in names if not n.startswith("_")} - public_names(
        _xthread)
    assert extra == set()


def test_stubs_lock_type_methods():
    names = stub_top_level_names(stub_tree())
    lock_class = names["LockType"]
    assert isinstance(lock_class, ast.ClassDef)
    methods = {node.name for node in lock_class.body
               if isinstance(node, ast.FunctionDef)}
    assert LOCK_METHODS <= methods


def test_stubs_aliases_and_constants():
    names = stub_top_level_names(stub_tree())
    for alias, target in [("error", "RuntimeError"), ("lock", "LockType")]:
        node = names[alias]
        assert isinstance(node, ast.Assign)
        assert isinstance(node.value, ast.Name) and node.value.id == target
    timeout_max = names["TIMEOUT_MAX"]
    assert isinstance(timeout_max, ast.AnnAssign)
    assert ast.unparse(timeout_max.annotation) == "float"


def _stub_parameters(node):
    args = node.args
    result = [(a.arg, "POSITIONAL_ONLY") for a in args.posonlyargs]
    result += [(a.arg, "POSITIONAL_OR_KEYWORD") for a in args.args]
    if args.vararg:
        result.append((args.vararg.arg, "VAR_POSITIONAL"))
    result += [(a.arg, "KEYWORD_ONLY") for a in args.kwonlyargs]
    if args.kwarg:
        result.append((args.kwarg.arg, "VAR_KEYWORD"))
    return result


@pytest.mark.parametrize("name", sorted(MODULE_SIGNATURES))
def test_stub_functions_match_runtime_parameters(name):
    node = stub_top_level_names(stub_tree())[name]
    assert isinstance(node, ast.FunctionDef)
    assert _stub_parameters(node) == _parameters_of(MODULE_SIGNATURES[name])


@pytest.mark.parametrize("name", sorted(LOCK_SIGNATURES))
def test_stub_lock_methods_match_runtime_parameters(name):
    lock_class = stub_top_level_names(stub_tree())["LockType"]
    node = next(n for n in lock_class.body
                if isinstance(n, ast.FunctionDef) and n.name == name)
    assert _stub_parameters(node) == _parameters_of(LOCK_SIGNATURES[name])


def _parameters_of(text):
    """[(name, kind)] of a text signature such as "(a, /, b=1)"."""
    namespace = {}
    exec(f"def f{text}: pass", namespace)
    return [(p.name, p.kind.name)
            for p in inspect.signature(namespace["f"]).parameters.values()]


# reference leaks (debug builds only)


class Stop(Exception):
    pass


def _workload():
    # start and join, with args and kwargs
    t = start_joinable(dict, a=[1])
    t.join()
    ready = threading.Event()
    box = []

    def with_sentinels():
        for _ in range(3):
            s = _xthread._set_sentinel()
            s.acquire()
            box.append(s)
        ready.set()

    _xthread.start_new_thread(with_sentinels, ())
    assert ready.wait(JOIN_TIMEOUT)
    for s in box:
        assert s.acquire(timeout=JOIN_TIMEOUT)
    # lock operations
    lock = _xthread.allocate_lock()
    with lock:
        lock.acquire(False)
        lock.acquire(timeout=0.001)
    repr(lock)
    lock._at_fork_reinit()
    for bad in ({"timeout": -2}, {"timeout": "x"}, {"blocking": False,
                                                    "timeout": 1}):
        try:
            lock.acquire(**bad)
        except (ValueError, TypeError):
            pass
    try:
        lock.release()
    except RuntimeError:
        pass
    # set_async_exc with an instance, a class, and withdrawal
    go = threading.Event()
    entered = threading.Event()
    caught = []

    def spin():
        entered.set()
        go.wait(JOIN_TIMEOUT)
        while True:
            len(())

    def outer():
        # The handler is in the calling frame (see test_async_exc.py).
        try:
            spin()
        except Stop as exc:
            caught.append(exc)

    t = start_joinable(outer)
    assert entered.wait(JOIN_TIMEOUT)
    assert _xthread.set_async_exc(t.ident, Stop("x", 1)) == 1
    assert _xthread.set_async_exc(t.ident, None) == 1
    assert _xthread.set_async_exc(t.ident, Stop) == 1
    assert _xthread.set_async_exc(t.ident, Stop("y")) == 1
    go.set()
    t.join()
    assert len(caught) == 1
    # errors
    for args in [(None, ()), (print, []), (print, (), [])]:
        try:
            _xthread.start_new_thread(*args)
        except TypeError:
            pass
    for args in [(-1, Stop), ("1", Stop), (1, 1)]:
        try:
            _xthread.set_async_exc(*args)
        except (TypeError, ValueError):
            pass
    _xthread.set_async_exc(1, Stop("nobody"))
    # an exception reported to the unraisable hook
    with catch_unraisable() as hook:
        t = start_joinable(int, "not a number")
        t.join()
    assert len(hook.records) == 1
    hook.records.clear()
    _xthread.stack_size(_xthread.stack_size(0))
    _xthread.get_ident()
    _xthread.get_native_id()
    _xthread._count()


def _stops_workload():
    """One pass over xthread's stopping paths and their error paths: kill,
    raise_exc into a killable wait, a limit that fires, a scope and a
    shield in the calling thread, the primitives, the pool, and the entry
    points' refusals."""
    import xthread

    class Stop(Exception):
        pass

    def spin():
        while True:
            len(())

    t = xthread.Thread(target=spin, daemon=True)
    t.start()
    assert t.kill(timeout=JOIN_TIMEOUT).ended
    t.join(JOIN_TIMEOUT)

    caught = []

    def sleeper(ready):
        try:
            ready.set()
            xthread.sleep(JOIN_TIMEOUT)
        except Stop as exc:
            caught.append(exc)

    ready = xthread.Event()
    t = xthread.Thread(target=sleeper, args=(ready,))
    t.start()
    assert ready.wait(JOIN_TIMEOUT)
    t.raise_exc(Stop("wake"))
    t.join(JOIN_TIMEOUT)
    assert len(caught) == 1

    try:
        with xthread.time_limit(0.005):
            spin()
    except xthread.TimeLimitExceeded:
        pass
    try:
        with xthread.Scope() as scope:
            scope.raise_exc(Stop)
            for _ in range(100):
                len(())
    except Stop:
        pass
    try:
        with xthread.shield():
            xthread.raise_in_thread(xthread.get_ident(), Stop)
    except Stop:
        pass

    rlock, cond = xthread.RLock(), xthread.Condition()
    with rlock, rlock:
        pass
    with cond:
        cond.wait(0.001)
        cond.notify_all()
    sem, q = xthread.BoundedSemaphore(1), xthread.Queue()
    with sem:
        q.put(1)
        q.get(timeout=JOIN_TIMEOUT)

    # (Not a running task's cancel: its resend timers keep the task for
    # the pool's grace period, which reads as growth here.)
    with xthread.ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(len, ()).result(JOIN_TIMEOUT) == 0

    ident = xthread.get_ident()
    _xthread._find_record(ident)
    _xthread._handling(ident, Stop)
    _xthread._nudge(ident)
    for call in (lambda: xthread.raise_in_thread("1", Stop),
                 lambda: xthread.raise_in_thread(-1, Stop),
                 lambda: xthread.raise_in_thread(ident, 42),
                 lambda: xthread.time_limit(-1).__enter__(),
                 lambda: xthread.sleep(float("nan")),
                 lambda: rlock.release()):
        try:
            call()
        except (TypeError, ValueError, RuntimeError):
            pass


def _growth(measure, windows=5, runs=20, workload=_workload):
    """How much ``measure()`` grows over each of ``windows`` windows of
    ``runs`` workloads, after a warm-up (caches, free lists, interned
    strings, thread stacks)."""
    for _ in range(5):
        workload()
    deltas = []
    for _ in range(windows):
        gc.collect()
        before = measure()
        for _ in range(runs):
            workload()
        gc.collect()
        deltas.append(measure() - before)
    return deltas


needs_debug_build = pytest.mark.skipif(
    not hasattr(sys, "gettotalrefcount"),
    reason="needs a debug build (sys.gettotalrefcount)")


@needs_debug_build
def test_no_reference_leaks():
    deltas = _growth(sys.gettotalrefcount)
    # A leak of one reference per workload shows in every window; noise
    # is a few references in some windows.
    assert min(deltas) < 20, f"references gained per 20 runs: {deltas}"


@needs_debug_build
def test_no_memory_block_leaks():
    deltas = _growth(sys.getallocatedblocks)
    assert min(deltas) < 20, f"memory blocks gained per 20 runs: {deltas}"


@needs_debug_build
def test_no_reference_leaks_in_stops():
    deltas = _growth(sys.gettotalrefcount, workload=_stops_workload)
    assert min(deltas) < 20, f"references gained per 20 runs: {deltas}"


@needs_debug_build
def test_no_memory_block_leaks_in_stops():
    deltas = _growth(sys.getallocatedblocks, workload=_stops_workload)
    assert min(deltas) < 20, f"memory blocks gained per 20 runs: {deltas}"


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"),
                    reason="the free-threaded build only")
def test_importing_xthread_keeps_the_gil_off():
    # A module that does not declare Py_mod_gil turns the GIL on for the
    # whole process, with a RuntimeWarning (an error under -W error).
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c",
         "import sys, xthread; print(sys._is_gil_enabled())"],
        capture_output=True, text=True, timeout=JOIN_TIMEOUT, env=env)
    assert (proc.returncode, proc.stdout.strip()) == (0, "False"), proc.stderr
