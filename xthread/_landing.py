"""Where a sent exception may be raised so that the frame's handlers run.

``_xthread`` imports this module on its first armed delivery (see
``XTHREAD_LANDING`` in ``compat.h`` and "Landing" in the C source), and
asks :func:`verdict` at each instruction the target thread runs while the
delivery is armed (3.12+), or reads :func:`table` (3.9-3.11, from a C
trace function, which must not run Python code).

Raising at an instruction runs the handler that the code's exception table
gives for that instruction's offset. The compiler leaves a few
instructions inside ``try`` bodies and ``with`` blocks uncovered: the
backward jump that closes a loop (python/cpython#130279), and ``NOP``
instructions that only carry a line number (a ``try:`` line, a ``pass``).
Raised there, an exception skips the frame's ``except``, ``finally`` and
``with`` exits. And between the end of a ``with`` body and the call of
its ``__exit__``, no handler of the ``with`` applies at all.

So xthread raises only where the interpreter itself checks for pending
exceptions (right after a call returns, and at a loop's backward jump),
and, when that instruction is an uncovered jump or ``NOP``, one
instruction further on (the loop's head, the ``try`` body), until it
reaches a covered instruction or one that no handler of the frame
encloses. A backward jump is final when nothing in the loop it closes is
covered (a loop outside any ``try``, ``while True: pass`` on its own).

3.9 and 3.10 have no exception table (handlers are a block stack that the
frame keeps at run time): there every such check is final, and what
matters is only that a ``with`` body's end is not one (see compat.h).
"""
import dis as _dis

__all__ = ["verdict", "table", "not_here", "NO", "LAND", "NEXT"]

# code object -> _Code
_cache = {}

_CACHE_MAX = 512

# verdict() answers
NO, LAND, NEXT = 0, 1, 2

# Code that an armed exception never lands in: xthread's primitives, whose
# change of state and return must not be split (a permit taken, an item
# got, a waiter woken). The exception lands in the caller instead, once
# the call has returned. (A killable wait inside them still raises at
# once: that is not a landing.)
_not_here = set()


def not_here(*functions):
    """Mark *functions* (Python functions, or methods' functions) as code
    where an armed exception never lands."""
    for func in functions:
        _not_here.add(func.__code__)


def _mark_own():
    from . import _pool, _stop, _sync, _thread
    not_here(*_sync._NOT_HERE)
    # The hooks that Scoped's C __enter__/__exit__ call: what they record
    # (a watchdog entry, a Scope's claim, a task's scope) must not be
    # split from the scope they were called for; an exception lands in
    # the caller's block once they return.
    for cls in (_stop.time_limit, _stop.Scope, _pool._Task):
        not_here(cls._scope_entered, cls._scope_exited)
    # xthread's registry of started threads: its weakref callback runs
    # in whatever thread drops the last reference to a Thread.
    not_here(_thread._started_threads._remove)


def _nop():
    """Does nothing; called from C, up to 3.11, so that the interpreter
    loop raises what is pending in the calling thread at its start: a
    plain copy of a stop, taken out of the loop (plain_take in deliver.c),
    or a throwaway exception that clears a stale async-exception signal
    (signal_clear)."""


def _varint(it, first):
    value = first & 63
    while first & 64:
        first = next(it)
        value = (value << 6) | (first & 63)
    return value


def _entries(table):
    """The exception table as (start, end, handler, depth_lasti), byte
    offsets, end excluded (the format of CPython's exception_handling
    notes: each entry is four varints, 6 bits a byte, bit 6 says "more",
    and bit 7 marks an entry's first byte)."""
    entries = []
    it = iter(table)
    for first in it:
        start = _varint(it, first)
        length = _varint(it, next(it))
        handler = _varint(it, next(it))
        depth_lasti = _varint(it, next(it))
        entries.append((start * 2, (start + length) * 2, handler * 2,
                        depth_lasti))
    return entries


class _Code:
    __slots__ = ("entries", "checks", "jumps", "nops")

    def __init__(self, code):
        # 3.9/3.10 have no table (handlers are a run-time block stack).
        self.entries = _entries(getattr(code, "co_exceptiontable", b""))
        ins = list(_dis.get_instructions(code))
        offsets = [i.offset for i in ins]
        # Where the interpreter checks for a pending exception: after a
        # call returns (the instruction that follows it) and at backward
        # jumps. A jump maps to whether anything in its loop is covered.
        self.checks = set()
        self.jumps = {}
        self.nops = set()
        # 3.14+ call a with's __enter__ with CALL (after LOAD_SPECIAL):
        # the check right after it comes before the with's handler covers
        # anything, and an exception raised there leaves what __enter__
        # took (a lock) held for good. Not a landing point: the exception
        # lands at the next check, as on 3.11-3.13 (BEFORE_WITH).
        enter = False
        for n, i in enumerate(ins):
            if i.opname == "LOAD_SPECIAL":
                enter = i.arg in (0, 2)     # __enter__, __aenter__
            if i.opname == "NOP":
                self.nops.add(i.offset)
            if (i.opname.startswith("CALL")
                    and not i.opname.startswith("CALL_INTRINSIC")
                    and n + 1 < len(ins)):
                if not enter:
                    self.checks.add(ins[n + 1].offset)
                enter = False
            if ("JUMP" in i.opname and isinstance(i.argval, int)
                    and i.argval <= i.offset):
                self.checks.add(i.offset)
                self.jumps[i.offset] = any(
                    _handler(self.entries, o) is not None
                    for o in offsets if i.argval <= o < i.offset)


def _info(code):
    info = _cache.get(code)
    if info is None:
        info = _Code(code)
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[code] = info
    return info


def _handler(entries, offset):
    for start, end, handler, depth_lasti in entries:
        if start <= offset < end:
            return handler, depth_lasti
    return None


def verdict(code, offset, pending):
    """What to do at byte *offset* of *code*: ``NO`` (go on), ``LAND``
    (raise here) or ``NEXT`` (raise at the next instruction the thread
    runs, asked again with *pending* true)."""
    if code in _not_here:
        return NO
    info = _info(code)
    if not pending and offset not in info.checks:
        return NO
    if _handler(info.entries, offset) is not None:
        return LAND
    loop_covered = info.jumps.get(offset)
    if loop_covered or (loop_covered is None and offset in info.nops):
        return NEXT
    return LAND


def table(code):
    """:func:`verdict` for every instruction of *code*, as bytes indexed by
    offset // 2: bit 0 set where the interpreter checks (else ``NO``
    unless pending), bit 1 set where the answer is ``NEXT`` (else
    ``LAND``). For a caller that must not run Python code at each
    instruction (a C trace function on 3.11)."""
    out = bytearray(len(code.co_code) // 2)
    if code in _not_here:
        return bytes(out)
    info = _info(code)
    for unit in range(len(out)):
        offset = unit * 2
        flags = 1 if offset in info.checks else 0
        if verdict(code, offset, True) == NEXT:
            flags |= 2
        out[unit] = flags
    return bytes(out)


_mark_own()
