"""Type stubs for _xthread, xthread's C core: CPython's _thread machinery
rebuilt on the public thread-state API."""

from collections.abc import Callable
from types import TracebackType
from typing import Any, NoReturn, final

error = RuntimeError

TIMEOUT_MAX: float
_SIGNAL_WAKES: int

@final
class LockType:
    """A lock: allocate_lock(), LockType() and lock() make an unlocked
    one. Not subclassable; any thread may release it."""

    def __new__(cls) -> LockType: ...
    def acquire(
        self, /, blocking: bool = True, timeout: float = -1
    ) -> bool: ...
    def acquire_lock(
        self, /, blocking: bool = True, timeout: float = -1
    ) -> bool: ...
    def release(self, /) -> None: ...
    def release_lock(self, /) -> None: ...
    def locked(self, /) -> bool: ...
    def locked_lock(self, /) -> bool: ...
    def __enter__(self, /) -> bool: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...
    def _at_fork_reinit(self, /) -> None: ...
    def _wait_released(
        self, /, blocking: bool = True, timeout: float = -1
    ) -> bool: ...

lock = LockType

class RLock:
    """A reentrant lock on the same killable core as LockType: the thread
    that holds it may acquire it again and must release it as many times.
    Its bookkeeping is done in the call that waits or releases. Exported
    as xthread.RLock; subclassable."""

    def __new__(cls) -> RLock: ...
    def acquire(
        self, /, blocking: bool = True, timeout: float = -1
    ) -> bool: ...
    def release(self, /) -> None: ...
    def locked(self, /) -> bool: ...
    def __enter__(self, /) -> bool: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...
    def _is_owned(self, /) -> bool: ...
    def _recursion_count(self, /) -> int: ...
    def _release_save(self, /) -> tuple[int, int]: ...
    def _acquire_restore(self, state: tuple[int, int], /) -> None: ...
    def _at_fork_reinit(self, /) -> None: ...

def start_new_thread(
    function: Callable[..., object],
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None = None,
    /,
) -> int:
    """Start function(*args, **kwargs) in a new thread; return its ident."""

def start_new(
    function: Callable[..., object],
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None = None,
    /,
) -> int:
    """An alias of start_new_thread()."""

def _start_joinable_thread(
    function: Callable[..., object],
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None = None,
    sentinel: LockType | None = None,
    shielded: bool = False,
    started: list[Any] | None = None,
    /,
) -> tuple[int, LockType, int]:
    """Start a thread and return once it runs (it goes on into function
    before the caller gets the GIL back); return (ident, sentinel,
    generation), the sentinel (new, or the held lock given) being a held
    lock released once the thread's state is deleted, the generation
    telling this thread from a later one with the same ident. started, a
    list of one item, gets the result too, before the call returns."""

def _native_id(ident: int, generation: int = 0) -> int | None:
    """The OS id of a thread that _xthread knows (waits for a thread just
    started to run its first instruction); None if there is none."""

def allocate_lock() -> LockType: ...
def allocate() -> LockType: ...
def _set_sentinel() -> LockType:
    """A lock released when the calling thread (started by _xthread) ends;
    RuntimeError in any other thread."""

def set_async_exc(
    ident: int, exc: type[BaseException] | BaseException | None, /
) -> int:
    """Raise exc in thread ident at its next bytecode (None withdraws a
    pending one); return how many threads took it (0 or 1)."""

def get_ident() -> int: ...
def get_native_id() -> int: ...
def _count() -> int: ...
def stack_size(size: int = 0, /) -> int: ...
def exit() -> NoReturn: ...
def exit_thread() -> NoReturn: ...
def _after_fork_child() -> None: ...


# The stopping machinery: one delivery path, with thread records, scopes
# and shields, and killable waits.

@final
class ThreadRecord:
    """What xthread knows of one thread."""

    @property
    def ident(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def sent_at(self) -> float | None: ...
    @property
    def landed_at(self) -> float | None: ...
    @property
    def parked(self) -> bool: ...
    @property
    def shield_depth(self) -> int: ...
    @property
    def pending(self) -> bool: ...
    @property
    def unguarded(self) -> bool:
        """Whether the last exception went by plain delivery on a version
        where that may skip the handlers of the frame it lands in."""

class Scoped:
    """A context manager whose block is a delivery scope: __enter__ opens
    it and calls _scope_entered(token); __exit__ closes it (withdrawing
    what is pending for it) before calling _scope_exited(token)."""

    def __enter__(self) -> Scoped: ...
    def __exit__(self, *exc_info: object) -> bool: ...
    def _scope_entered(self, token: int, /) -> object: ...
    def _scope_exited(self, token: int, /) -> object: ...

# The one delivery path. Where plain delivery may skip a frame's handlers
# (every supported version, see XTHREAD_LANDING in compat.h), a delivery
# to a thread with a record is armed and raised where they apply.
def _deliver(
    ident: int,
    exc: BaseException | type[BaseException],
    generation: int = 0,
    scope: int = 0,
    handoff: bool = True,
) -> bool: ...
def _nudge(ident: int, generation: int = 0, scope: int = 0) -> bool: ...
def _wake_signal(signum: int = ..., /) -> int: ...
def _fork_hold() -> None: ...
def _fork_release() -> None: ...
def _record() -> ThreadRecord: ...
def _find_record(ident: int, /) -> ThreadRecord | None: ...
def _scope_enter() -> int: ...
def _scope_exit(scope: int, /) -> None: ...
def _handling(ident: int, cls: type[BaseException], /) -> bool:
    """Whether thread ident is raising, or handling in an except or a
    finally, an exception of class cls."""
def _shield_enter() -> None: ...
def _shield_exit() -> None: ...
def _call_unshielded(func: Callable[[], object], /) -> object:
    """Call func() with one level of the calling thread's shields lifted
    (RuntimeError without one)."""
def sleep(seconds: float | None, /) -> None:
    """Sleep, killable: an exception sent through xthread ends it."""
