/* landing.c: raising a sent exception where the frame's handlers apply:
 * the verdict, sys.monitoring (3.12+) and trace-function (3.9-3.11)
 * arming, and the callbacks that raise. What each offers and who may call
 * it: landing.h. */
#include "xthread.h"
#include "deliver.h"
#include "record.h"
#include "wake.h"
#include "landing.h"

// Landing: raising a sent exception where the frame's handlers apply

/* Plain delivery (PyThreadState_SetAsyncExc) makes the target raise at its
 * next eval-breaker check, and some checks sit where the frame's handlers
 * do not apply: a loop's back edge that the exception table leaves
 * uncovered (3.11+), the end of a `with` body before its __exit__ (3.9,
 * 3.10). The frame's except/finally/with exits are then skipped
 * (XTHREAD_LANDING in compat.h says which versions, and why). A thread
 * with no record (one that never used xthread) gets plain delivery.
 *
 * There, a delivery to a thread with a record is *armed* instead: the
 * exception is stored on the record as outstanding, as before, but not
 * handed to the interpreter loop. Instruction events are enabled for
 * the target thread's code, and at each instruction the target runs,
 * xthread._landing.verdict says whether to raise there: where the
 * interpreter itself would check (after a call, at a backward jump), moved
 * one instruction on while that instruction is one the exception table
 * leaves uncovered by mistake. raise_outstanding raises it and disarms.
 *
 *   - sys.monitoring (3.12+): INSTRUCTION events on the code of every
 *     frame of the target's stack, set with set_local_events, plus
 *     PY_START and PY_RESUME, which arm the code of a frame that the
 *     target enters later. Other threads running armed code get a
 *     callback that returns at once, for the window only. The tool id is
 *     taken when the first delivery is armed and freed when the last one
 *     is disarmed; a free one is picked (4, 3, 5, 2, 1, 0), never one
 *     another tool holds.
 *   - a C trace function (3.9-3.11): set on the target's thread state only,
 *     with opcode events on its frames (f_trace_opcodes, set on the
 *     current ones and, at their call event, on new ones).
 *
 * A delivery that cannot be armed (no free tool id, a trace function of
 * someone else up to 3.11, the landing module missing) goes plain
 * and marks the record `unguarded`. Kill's re-deliveries arm again, for
 * frames entered since. Everything here runs with the GIL held. */

/* Whether to raise now, the target thread being at `offset` (bytes) of
 * `code`: asks xthread._landing.verdict, which may also say "at the next
 * instruction" (noted in rec->land_next). -1, with an exception set,
 * when the verdict's own run raised one (a signal handler's, or the
 * outstanding exception's plain copy): the caller lets it go on. */
#define VERDICT_LAND 1
#define VERDICT_NEXT 2

static int
landing_here(xthread_state *state, recordobject *rec, PyObject *code,
             PyObject *offset)
{
    rec->judging++;
    PyObject *res = PyObject_CallFunctionObjArgs(
        state->landing_verdict, code, offset,
        rec->land_next ? Py_True : Py_False, NULL);
    rec->judging--;
    long verdict = res != NULL ? PyLong_AsLong(res) : -1;
    Py_XDECREF(res);
    if (verdict == -1 && PyErr_Occurred()) {
        /* Raised while the verdict ran: a signal handler's exception
         * (Ctrl-C), or the outstanding exception itself, landed after
         * all (a plain copy sent before the verdict began). Either is
         * this thread's own and goes on from here, never reported and
         * dropped; what is still outstanding stays armed. */
        return -1;
    }
    if (!record_has_outstanding(rec)) {
        return 0;       /* withdrawn meanwhile: nothing to raise */
    }
    if (verdict == VERDICT_NEXT) {
        rec->land_next = 1;
        return 0;
    }
    return verdict == VERDICT_LAND;
}

/* Under the landing lock: fills in the landing fields from
 * xthread._landing (`mod`), unless another thread did first, and
 * publishes them. Returns 1, or 0 when landing is unavailable (said once,
 * as unraisable). */
static int
landing_publish(xthread_state *state, PyObject *mod)
{
    if (atomic_load(&state->landing_ready)) {
        return 1;
    }
    if (atomic_load(&state->landing_failed)) {
        return 0;
    }
    PyObject *safe = mod != NULL ? PyObject_GetAttrString(mod, "verdict")
                                 : NULL;
    if (safe == NULL) {
        goto failed;
    }
    if (XTHREAD_LANDING == 1) {
        state->landing_table = PyObject_GetAttrString(mod, "table");
        state->plain_nop = PyObject_GetAttrString(mod, "_nop");
        state->signal_clearer = PyErr_NewException(
            "_xthread.SignalClearer", PyExc_BaseException, NULL);
        state->trace_maps = PyDict_New();
        if (state->landing_table == NULL || state->trace_maps == NULL
            || state->plain_nop == NULL || state->signal_clearer == NULL) {
            Py_CLEAR(state->landing_table);
            Py_CLEAR(state->plain_nop);
            Py_CLEAR(state->signal_clearer);
            Py_CLEAR(state->trace_maps);
            Py_DECREF(safe);
            goto failed;
        }
    }
    if (XTHREAD_LANDING == 2) {
        PyObject *mon = PySys_GetObject("monitoring");      /* borrowed */
        if (mon == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "no sys.monitoring");
        }
        PyObject *events = mon != NULL
            ? PyObject_GetAttrString(mon, "events") : NULL;
        if (events == NULL) {
            Py_DECREF(safe);
            goto failed;
        }
        static const char *names[] = {"INSTRUCTION", "PY_START", "PY_RESUME"};
        long *bits[] = {&state->ev_instruction, &state->ev_py_start,
                        &state->ev_py_resume};
        for (size_t i = 0; i < 3; i++) {
            PyObject *v = PyObject_GetAttrString(events, names[i]);
            *bits[i] = v != NULL ? PyLong_AsLong(v) : -1;
            Py_XDECREF(v);
        }
        /* Those a thread running bytecode meets within a few
         * instructions (XTHREAD_SELF_ARM), calls included (C_RETURN and
         * C_RAISE come with CALL, never set by themselves). A call under
         * way when the request came was not instrumented as it began, so
         * its own return is not seen: a thread asked inside a C call
         * answers only at its next jump, call, return or yield (the gap
         * that docs/free-threading.md describes). Names that a version
         * lacks are left out. */
        static const char *progress[] = {"JUMP", "BRANCH_LEFT",
                                         "BRANCH_RIGHT", "BRANCH",
                                         "PY_RETURN", "PY_YIELD", "CALL",
                                         "C_RETURN", "C_RAISE"};
        state->ev_progress = state->ev_progress_seen = 0;
        for (size_t i = 0; XTHREAD_SELF_ARM && !PyErr_Occurred()
                           && i < sizeof(progress) / sizeof(*progress); i++) {
            PyObject *v = PyObject_GetAttrString(events, progress[i]);
            if (v == NULL) {
                PyErr_Clear();
                continue;
            }
            long bit = PyLong_AsLong(v);
            Py_DECREF(v);
            state->ev_progress_seen |= bit;
            if (strncmp(progress[i], "C_", 2) != 0) {
                state->ev_progress |= bit;
            }
        }
        Py_DECREF(events);
        if (PyErr_Occurred()) {
            Py_DECREF(safe);
            goto failed;
        }
        state->monitoring = Py_NewRef(mon);
    }
    if (XTHREAD_LANDING == 2 && plain_load_opcodes(state) < 0) {
        Py_DECREF(safe);
        goto failed;
    }
    /* A set that the module keeps; it only grows. Without it, no code
     * is xthread's own. */
    state->not_here = PyObject_GetAttrString(mod, "_not_here");
    if (state->not_here == NULL || !PySet_Check(state->not_here)) {
        Py_CLEAR(state->not_here);
        PyErr_Clear();
    }
    state->landing_verdict = safe;
    atomic_store_explicit(&state->landing_ready, 1, memory_order_release);
    return 1;

failed:
    /* Plain delivery from now on; say why once. */
    xthread_unraisable(NULL);
    atomic_store(&state->landing_failed, 1);
    return 0;
}

/* Imports what landing needs, once. Runs Python code: call it before a
 * delivery's checks. Returns 1 when landing is available. Any thread:
 * the first to get the lock publishes, the others find it done. */
int
landing_load(xthread_state *state)
{
    if (XTHREAD_LANDING == 0 || atomic_load(&state->landing_failed)) {
        return 0;
    }
    if (landing_ready(state)) {
        return 1;
    }
    /* Imported before the lock is taken, so that no import lock is ever
     * waited for under it; `opcode` for plain_load_opcodes. */
    PyObject *mod = PyImport_ImportModule("xthread._landing");
    PyObject *opcode = mod != NULL && XTHREAD_LANDING == 2
        ? PyImport_ImportModule("opcode") : NULL;
    if (mod != NULL && XTHREAD_LANDING == 2 && opcode == NULL) {
        Py_CLEAR(mod);
    }
    ft_lock_acquire(&state->landing_lock);
    int rc = landing_publish(state, mod);
    ft_lock_release(&state->landing_lock);
    Py_XDECREF(opcode);
    Py_XDECREF(mod);
    return rc;
}

// sys.monitoring (3.12+)

/* Registers xthread's callbacks for tool `id` (`on`), or None. Returns
 * None, or NULL with an exception set. */
static PyObject *
mon_register(xthread_state *state, int id, int on)
{
    long evs[] = {state->ev_instruction, state->ev_py_start,
                  state->ev_py_resume};
    PyObject *cbs[] = {state->cb_instruction, state->cb_py_start,
                       state->cb_py_resume};
    for (size_t j = 0; j < 3; j++) {
        PyObject *r = PyObject_CallMethod(state->monitoring,
                                          "register_callback", "ilO", id,
                                          evs[j], on ? cbs[j] : Py_None);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    /* One call per event: register_callback takes a single one. */
    for (long bit = 1; bit > 0 && bit <= state->ev_progress_seen;
         bit <<= 1) {
        if (!(state->ev_progress_seen & bit)) {
            continue;
        }
        PyObject *r = PyObject_CallMethod(state->monitoring,
                                          "register_callback", "ilO", id,
                                          bit, on ? state->cb_progress
                                                  : Py_None);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

/* Gives the tool id back: no events, no callbacks. Keeps any exception
 * that is set; its own errors are reported. */
static void
mon_release(xthread_state *state)
{
    int id = state->mon_tool;
    if (id < 0) {
        return;
    }
    state->mon_tool = -1;
    state->arm_requests = 0;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *r = PyObject_CallMethod(state->monitoring, "set_events", "ii",
                                      id, 0);
    Py_XDECREF(r);
    if (r != NULL) {
        r = mon_register(state, id, 0);
    }
    if (r != NULL) {
        r = PyObject_CallMethod(state->monitoring, "free_tool_id", "i", id);
        Py_XDECREF(r);
    }
    if (r == NULL) {
        xthread_unraisable(state->monitoring);
    }
    PyErr_Restore(et, ev, tb);
}

/* Takes a free tool id and registers the callbacks, if not held yet.
 * Returns 1, 0 when every id is taken by other tools, -1 on error. */
static int
mon_acquire(xthread_state *state)
{
    if (state->mon_tool >= 0) {
        return 1;
    }
    static const int order[] = {4, 3, 5, 2, 1, 0};
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        int id = order[i];
        PyObject *r = PyObject_CallMethod(state->monitoring, "get_tool", "i",
                                          id);
        if (r == NULL) {
            return -1;
        }
        int taken = r != Py_None;
        Py_DECREF(r);
        if (taken) {
            continue;
        }
        r = PyObject_CallMethod(state->monitoring, "use_tool_id", "is", id,
                                "xthread");
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
        state->mon_tool = id;
        r = mon_register(state, id, 1);
        if (r == NULL) {
            mon_release(state);
            return -1;
        }
        Py_DECREF(r);
        r = PyObject_CallMethod(state->monitoring, "set_events", "il", id,
                                state->ev_py_start | state->ev_py_resume);
        if (r == NULL) {
            mon_release(state);
            return -1;
        }
        Py_DECREF(r);
        return 1;
    }
    return 0;
}

/* mon_counts is keyed by the code object's address: hashing a code
 * object reads all of its bytecode, which another thread may be
 * instrumenting meanwhile on a free-threaded build (ThreadSanitizer
 * reported it), and costs a pass over the code each time. The code is
 * alive while counted: rec->armed_objs holds it. */
static PyObject *
mon_key(PyObject *code)
{
    return PyLong_FromVoidPtr(code);
}

/* Enables instruction events on `code` for `rec` (counted: several
 * records may arm one code object). */
static int
mon_arm_code(xthread_state *state, recordobject *rec, PyObject *code)
{
    PyObject *key = mon_key(code);
    if (key == NULL) {
        return -1;
    }
    PyObject *n = PyDict_GetItemWithError(state->mon_counts, key);
    if (n == NULL && PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    }
    long count = n != NULL ? PyLong_AsLong(n) : 0;
    if (count == 0) {
        PyObject *r = PyObject_CallMethod(state->monitoring,
                                          "set_local_events", "iOl",
                                          state->mon_tool, code,
                                          state->ev_instruction);
        if (r == NULL) {
            Py_DECREF(key);
            return -1;
        }
        Py_DECREF(r);
    }
    PyObject *c = PyLong_FromLong(count + 1);
    int rc = c != NULL ? PyDict_SetItem(state->mon_counts, key, c) : -1;
    Py_XDECREF(c);
    Py_DECREF(key);
    if (rc < 0) {
        return -1;
    }
    return PyList_Append(rec->armed_objs, code);
}

/* Undoes mon_arm_code for everything in rec->armed_objs. */
static int
mon_disarm_codes(xthread_state *state, recordobject *rec)
{
    int rc = 0;
    Py_ssize_t n = rec->armed_objs != NULL ? PyList_GET_SIZE(rec->armed_objs)
                                           : 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *code = PyList_GET_ITEM(rec->armed_objs, i);
        PyObject *key = mon_key(code);
        PyObject *v = key != NULL
                      ? PyDict_GetItemWithError(state->mon_counts, key) : NULL;
        if (v == NULL) {
            Py_XDECREF(key);
            PyErr_Clear();
            continue;
        }
        long count = PyLong_AsLong(v) - 1;
        if (count > 0) {
            PyObject *c = PyLong_FromLong(count);
            if (c == NULL || PyDict_SetItem(state->mon_counts, key, c) < 0) {
                rc = -1;
                PyErr_Clear();
            }
            Py_XDECREF(c);
            Py_DECREF(key);
            continue;
        }
        if (PyDict_DelItem(state->mon_counts, key) < 0) {
            PyErr_Clear();
        }
        Py_DECREF(key);
        if (state->mon_tool >= 0) {
            PyObject *r = PyObject_CallMethod(state->monitoring,
                                              "set_local_events", "iOi",
                                              state->mon_tool, code, 0);
            if (r == NULL) {
                rc = -1;
                PyErr_Clear();
            }
            Py_XDECREF(r);
        }
    }
    if (n > 0 && PyList_SetSlice(rec->armed_objs, 0, n, NULL) < 0) {
        PyErr_Clear();
    }
    return rc;
}

// Trace function (3.11)

/* The answers of xthread._landing.table for `code` (borrowed), made now
 * if needed (Python code: not from the trace function), or NULL. */
static PyObject *
trace_map(xthread_state *state, PyObject *code, int make)
{
    PyObject *map = PyDict_GetItemWithError(state->trace_maps, code);
    if (map != NULL || PyErr_Occurred() || !make) {
        return map;
    }
    if (PyDict_GET_SIZE(state->trace_maps) >= 512) {
        PyDict_Clear(state->trace_maps);
    }
    map = PyObject_CallOneArg(state->landing_table, code);
    if (map == NULL) {
        return NULL;
    }
    int rc = PyBytes_Check(map)
             ? PyDict_SetItem(state->trace_maps, code, map) : -1;
    Py_DECREF(map);     /* the dict holds it */
    if (rc < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "table() must return bytes");
        }
        return NULL;
    }
    return map;
}

/* The trace function of a thread with an armed delivery. At an opcode
 * event, raises where xthread._landing.table says (read here, in C; a
 * frame without a table is a resumed generator: raises at once); at the
 * call event of a new frame, raises at once: the exception reaches the
 * caller at its call instruction, where the caller's handlers apply.
 * Not in an __exit__, which must run. */

static int
landing_trace(PyObject *obj, PyFrameObject *frame, int what,
              PyObject *Py_UNUSED(arg))
{
    recordobject *rec = (recordobject *)obj;
    if (!rec->armed || rec->outstanding == NULL || rec->judging) {
        /* judging: the thread runs the landing's own code (the table,
         * when it arms itself); never a landing point. */
        return 0;
    }
    xthread_state *state = PyType_GetModuleState(Py_TYPE(rec));
    if (state == NULL || state->trace_maps == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyCodeObject *code = PyFrame_GetCode(frame);
    int land = 0;
    int resumable = (code->co_flags & (CO_GENERATOR | CO_COROUTINE
                                       | CO_ASYNC_GENERATOR)) != 0;
    if (what == PyTrace_CALL && resumable && xthread_frame_lasti(frame) > 0) {
        /* A generator resumed: raise at its first instruction, where its
         * handlers apply (3.9/3.10 would skip them from a call event).
         * (A function's first call event comes after its prologue on
         * 3.11, past offset 0 when it makes cells: not a resume.) */
        if (PyObject_SetAttrString((PyObject *)frame, "f_trace_opcodes",
                                   Py_True) < 0
            || PyList_Append(rec->armed_objs, (PyObject *)frame) < 0) {
            xthread_unraisable((PyObject *)rec);
        }
    }
    else if (what == PyTrace_CALL) {
        /* Not at the start of an __exit__, which must run, nor of one of
         * xthread's own primitives (_landing.not_here): it lands in the
         * frame that called them, once they return. */
        land = !code_is_own(state, code)
               && PyUnicode_CompareWithASCIIString(code->co_name,
                                                   "__exit__") != 0
               && PyUnicode_CompareWithASCIIString(code->co_name,
                                                   "__aexit__") != 0;
    }
    else if (what == PyTrace_OPCODE) {
        rec->judging++;
        PyObject *map = trace_map(state, (PyObject *)code, 0);
        rec->judging--;
        Py_ssize_t unit = xthread_frame_lasti(frame) / 2;
        if (map == NULL && PyErr_Occurred()) {
            /* Raised while the table's code ran: a signal handler's
             * exception, or a plain copy of the outstanding one. It is
             * this thread's, and goes on from here. */
            Py_DECREF(code);
            return -1;
        }
        if (rec->outstanding == NULL) {
            Py_DECREF(code);
            return 0;       /* withdrawn meanwhile */
        }
        if (map == NULL || unit < 0 || unit >= PyBytes_GET_SIZE(map)) {
            PyErr_Clear();
            land = 1;       /* cannot tell */
        }
        else {
            unsigned char flags = (unsigned char)PyBytes_AS_STRING(map)[unit];
            if ((flags & 1) || rec->land_next) {
                if (flags & 2) {
                    rec->land_next = 1;
                }
                else {
                    land = 1;
                }
            }
        }
    }
    Py_DECREF(code);
    if (!land) {
        return 0;
    }
    raise_outstanding(rec);
    return -1;
}

/* Calls fn(state, rec, frame) for each frame of `tstate`'s stack,
 * innermost first; stops at the first that fails (-1).
 *
 * The stack is taken whole first, with the collector off if it is
 * another thread's, then visited.
 * Taking a frame of another thread makes its frame object, and up to 3.11
 * an allocation may run a collection, whose finalizers may let that
 * thread run: the frame it was made for may return meanwhile, and its
 * slot be taken by another frame, whose fields are then read as the new
 * frame object's (seen on 3.11: a "frame" that was the builtins dict, and
 * a crash in test_cleanup's pool cancel). A visit runs Python code, so
 * none runs while the stack is taken. */
typedef int (*frame_visitor)(xthread_state *, recordobject *,
                             PyFrameObject *);

static int
for_each_frame(xthread_state *state, recordobject *rec,
               PyThreadState *tstate, frame_visitor fn)
{
    PyObject *stack = PyList_New(0);
    if (stack == NULL) {
        return -1;
    }
    /* The calling thread's own frames cannot return under it. */
    int other = tstate != PyThreadState_Get();
    int gc_was_on = other ? PyGC_Disable() : 0;
    if (gc_was_on < 0) {
        Py_DECREF(stack);
        return -1;
    }
    int rc = 0;
    PyFrameObject *frame = PyThreadState_GetFrame(tstate);
    while (frame != NULL) {
        if (PyList_Append(stack, (PyObject *)frame) < 0) {
            Py_DECREF(frame);
            rc = -1;
            break;
        }
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    if (gc_was_on && PyGC_Enable() < 0) {
        rc = -1;
    }
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(stack); i++) {
        rc = fn(state, rec, (PyFrameObject *)PyList_GET_ITEM(stack, i));
    }
    Py_DECREF(stack);
    return rc < 0 ? -1 : 0;
}

/* Sets f_trace_opcodes on a frame that does not have it, noting it in
 * rec->armed_objs, and makes its code's map. */
static int
trace_arm_frame(xthread_state *state, recordobject *rec,
                PyFrameObject *frame)
{
    PyObject *code = (PyObject *)PyFrame_GetCode(frame);
    /* A thread arming itself runs the table under its own trace
     * function: the table's frames are no landing points. */
    int self = rec->ident == PyThread_get_thread_ident();
    rec->judging += self;
    PyObject *map = trace_map(state, code, 1);
    rec->judging -= self;
    Py_DECREF(code);
    PyObject *on = map != NULL
        ? PyObject_GetAttrString((PyObject *)frame, "f_trace_opcodes")
        : NULL;
    int is_on = on != NULL ? PyObject_IsTrue(on) : -1;
    Py_XDECREF(on);
    if (is_on < 0
        || (!is_on && (PyObject_SetAttrString((PyObject *)frame,
                                              "f_trace_opcodes",
                                              Py_True) < 0
                       || PyList_Append(rec->armed_objs,
                                        (PyObject *)frame) < 0))) {
        return -1;
    }
    return 0;
}

/* Arms instruction events on a frame's code. */
static int
mon_arm_frame(xthread_state *state, recordobject *rec, PyFrameObject *frame)
{
    PyObject *code = (PyObject *)PyFrame_GetCode(frame);
    int rc = mon_arm_code(state, rec, code);
    Py_DECREF(code);
    return rc < 0 ? -1 : 0;
}

// Arming

/* Arms the outstanding delivery of `rec` (already stored as outstanding)
 * on the target's current stack; again on a re-delivery, for frames
 * entered since. Returns 1 when armed, 0 when it cannot be (plain
 * delivery must be used), -1 with an exception set. */
static int record_arm_locked(xthread_state *state, recordobject *rec);

int
record_arm(xthread_state *state, recordobject *rec)
{
    if (XTHREAD_LANDING == 0 || !landing_ready(state)) {
        return 0;
    }
    ft_lock_acquire(&state->landing_lock);
    int rc = record_arm_locked(state, rec);
    ft_lock_release(&state->landing_lock);
    return rc;
}

/* XTHREAD_SELF_ARM: asks the thread of `rec` to arm its own frames,
 * with the global events on that it will meet. Under the landing lock,
 * the tool held. 0, or -1 with an exception set. */
static int
arm_request(xthread_state *state, recordobject *rec)
{
    if (rec->arm_requested) {
        return 0;
    }
    if (state->arm_requests == 0) {
        PyObject *r = PyObject_CallMethod(
            state->monitoring, "set_events", "il", state->mon_tool,
            state->ev_py_start | state->ev_py_resume | state->ev_progress);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    rec->arm_requested = 1;
    state->arm_requests++;
    return 0;
}

/* The request for `rec` is answered or dropped: when it was the last,
 * the global events go back to calls and resumptions. Under the landing
 * lock; keeps any exception that is set, reports its own. */
static void
arm_request_done(xthread_state *state, recordobject *rec)
{
    if (!rec->arm_requested) {
        return;
    }
    rec->arm_requested = 0;
    if (--state->arm_requests > 0) {
        return;
    }
    state->arm_requests = 0;
    if (state->mon_tool < 0) {
        return;
    }
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *r = PyObject_CallMethod(state->monitoring, "set_events", "il",
                                      state->mon_tool,
                                      state->ev_py_start
                                      | state->ev_py_resume);
    if (r == NULL) {
        xthread_unraisable(state->monitoring);
    }
    Py_XDECREF(r);
    PyErr_Restore(et, ev, tb);
}

/* The calling thread answers the request for its record: arms its own
 * frames, which nothing else changes meanwhile. Under the landing
 * lock. */
static void
arm_self(xthread_state *state, recordobject *rec)
{
    arm_request_done(state, rec);
    if (rec->armed && rec->outstanding != NULL && state->mon_tool >= 0
        && for_each_frame(state, rec, PyThreadState_Get(),
                          mon_arm_frame) < 0) {
        xthread_unraisable((PyObject *)rec);
    }
}

/* Whether this thread may read another thread's frames now: on a GIL
 * build always (the GIL keeps them still); on a free-threaded build
 * while the GIL is enabled there (PYTHON_GIL=1, or a module that needs
 * it was imported), asked each time, since it can be switched on later,
 * and during an import only for a while. */
int
frames_readable(void)
{
    if (!XTHREAD_SELF_ARM) {
        return 1;
    }
    /* Keeps an exception that is set: its own failure only says no. */
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *is_on = PySys_GetObject("_is_gil_enabled");      /* borrowed */
    PyObject *r = is_on != NULL ? PyObject_CallNoArgs(is_on) : NULL;
    int on = r != NULL ? PyObject_IsTrue(r) : 0;
    Py_XDECREF(r);
    if (on < 0 || r == NULL) {
        PyErr_Clear();
        on = 0;
    }
    PyErr_Restore(et, ev, tb);
    return on;
}

static int
record_arm_locked(xthread_state *state, recordobject *rec)
{
    /* Another thread's frames are read only where the GIL keeps them
     * still (compat.h: XTHREAD_SELF_ARM). */
    int ask = rec->ident != PyThread_get_thread_ident() && !frames_readable();
    PyThreadState *tstate = ask ? NULL : find_tstate(rec->ident);
    if (tstate == NULL && !ask) {
        return 0;
    }
    if (rec->armed_objs == NULL) {
        rec->armed_objs = PyList_New(0);
        if (rec->armed_objs == NULL) {
            return -1;
        }
    }
    if (XTHREAD_LANDING == 1) {
        Py_tracefunc current = xthread_get_trace(tstate);
        if (current != NULL && current != landing_trace) {
            return 0;       /* a debugger's or a profiler's: leave it */
        }
        if (!rec->armed) {
            if (xthread_set_trace(tstate, landing_trace, (PyObject *)rec) < 0) {
                return -1;
            }
            rec->armed = 1;
        }
        return for_each_frame(state, rec, tstate, trace_arm_frame) < 0
               ? -1 : 1;
    }
    int got = mon_acquire(state);
    if (got <= 0) {
        return got;
    }
    if (!rec->armed) {
        rec->armed = 1;
        state->mon_armed++;
    }
    if (ask) {
        /* Also on a re-delivery (kill's): frames entered since get armed
         * by the next answer. */
        return arm_request(state, rec) < 0 ? -1 : 1;
    }
    return for_each_frame(state, rec, tstate, mon_arm_frame) < 0 ? -1 : 1;
}

static void record_disarm_locked(xthread_state *state, recordobject *rec);

/* Undoes record_arm. GIL held, any thread; keeps any exception that is
 * set and reports its own. */
void
record_disarm(recordobject *rec)
{
    rec->land_next = 0;
    if (!rec->armed) {
        return;
    }
    xthread_state *state = PyType_GetModuleState(Py_TYPE(rec));
    if (state == NULL) {
        return;
    }
    ft_lock_acquire(&state->landing_lock);
    if (rec->armed) {
        rec->armed = 0;
        record_disarm_locked(state, rec);
    }
    ft_lock_release(&state->landing_lock);
}

static void
record_disarm_locked(xthread_state *state, recordobject *rec)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (XTHREAD_LANDING == 1) {
        PyThreadState *tstate = find_tstate(rec->ident);
        if (tstate != NULL && xthread_get_trace(tstate) == landing_trace
            && xthread_set_trace(tstate, NULL, NULL) < 0) {
            xthread_unraisable((PyObject *)rec);
        }
        Py_ssize_t n = rec->armed_objs != NULL
                       ? PyList_GET_SIZE(rec->armed_objs) : 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (PyObject_SetAttrString(PyList_GET_ITEM(rec->armed_objs, i),
                                       "f_trace_opcodes", Py_False) < 0) {
                PyErr_Clear();
            }
        }
        if (n > 0 && PyList_SetSlice(rec->armed_objs, 0, n, NULL) < 0) {
            PyErr_Clear();
        }
    }
    else if (XTHREAD_LANDING == 2) {
        arm_request_done(state, rec);
        if (mon_disarm_codes(state, rec) < 0) {
            xthread_unraisable((PyObject *)rec);
        }
        if (--state->mon_armed <= 0) {
            state->mon_armed = 0;
            mon_release(state);
        }
    }
    PyErr_Restore(et, ev, tb);
}

/* sys.monitoring callbacks: (code, offset) for each; they return None
 * (never DISABLE, which would disable the event for every thread). */
static PyObject *
landing_on_instruction(PyObject *module, PyObject *const *args,
                       Py_ssize_t nargs)
{
    xthread_state *state = get_xthread_state(module);
    recordobject *rec = current_record_if_any(state);
    if (rec == NULL || !rec->armed || rec->outstanding == NULL || nargs < 2) {
        Py_RETURN_NONE;     /* (looked again under the lock below) */
    }
    if (ft_lock_held(&state->landing_lock)) {
        /* Python code run by the arming itself (an unraisable hook):
         * never a landing point, and the record's lock, which a sender
         * may hold while it waits for the landing lock, must not be
         * taken here. */
        Py_RETURN_NONE;
    }
    record_lock(rec);
    int pending = rec->outstanding != NULL;
    if (pending && rec->plain) {
        /* This thread runs bytecode again: withdraw the plain copy sent to
         * reach it inside a call (wake_thread, kill's overdue fallback).
         * Left pending, it would be raised at the start of the verdict's
         * own Python code and lost there; the armed delivery lands it
         * where the frame's handlers apply. (Something is pending, so the
         * withdrawal clears the eval breaker's signal too.) */
        PyThreadState_SetAsyncExc(rec->ident, NULL);
        rec->plain = 0;
    }
    record_unlock(rec);
    if (!pending) {
        Py_RETURN_NONE;
    }
    Py_INCREF(rec);
    int here = landing_here(state, rec, args[0], args[1]);
    PyObject *res = here < 0 ? NULL
                    : here > 0 ? raise_outstanding(rec) : Py_NewRef(Py_None);
    Py_DECREF(rec);
    return res;
}

static PyObject *
landing_on_py_start(PyObject *module, PyObject *const *args,
                    Py_ssize_t nargs)
{
    /* A call, or a generator or coroutine resumed: arm its code. (Not
     * raised here: a frame's start may be an __exit__ that must run.) */
    xthread_state *state = get_xthread_state(module);
    recordobject *rec = current_record_if_any(state);
    if (rec == NULL || !rec->armed || rec->outstanding == NULL || nargs < 1) {
        Py_RETURN_NONE;
    }
    Py_INCREF(rec);
    ft_lock_acquire(&state->landing_lock);
    if (rec->arm_requested) {
        arm_self(state, rec);
    }
    if (rec->armed && state->mon_tool >= 0
        && mon_arm_code(state, rec, args[0]) < 0) {
        xthread_unraisable((PyObject *)rec);
    }
    ft_lock_release(&state->landing_lock);
    Py_DECREF(rec);
    Py_RETURN_NONE;
}

/* XTHREAD_SELF_ARM: a jump, branch, return or yield, in any thread while
 * some thread is asked to arm itself. Never raises here. */
static PyObject *
landing_on_progress(PyObject *module, PyObject *const *Py_UNUSED(args),
                    Py_ssize_t Py_UNUSED(nargs))
{
    xthread_state *state = get_xthread_state(module);
    recordobject *rec = current_record_if_any(state);
    if (rec == NULL || !rec->arm_requested) {
        Py_RETURN_NONE;
    }
    Py_INCREF(rec);
    ft_lock_acquire(&state->landing_lock);
    if (rec->arm_requested) {
        arm_self(state, rec);
    }
    ft_lock_release(&state->landing_lock);
    Py_DECREF(rec);
    Py_RETURN_NONE;
}

static PyMethodDef landing_callbacks[] = {
    {"_landing_on_instruction", (PyCFunction)(void (*)(void))landing_on_instruction,
     METH_FASTCALL, NULL},
    {"_landing_on_py_start", (PyCFunction)(void (*)(void))landing_on_py_start,
     METH_FASTCALL, NULL},
    {"_landing_on_py_resume", (PyCFunction)(void (*)(void))landing_on_py_start,
     METH_FASTCALL, NULL},
    {"_landing_on_progress", (PyCFunction)(void (*)(void))landing_on_progress,
     METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL}
};

/* Makes the sys.monitoring callbacks, bound to `module`, and the armed
 * code counts (module exec). */
int
landing_init(PyObject *module, xthread_state *state)
{
    state->mon_counts = PyDict_New();
    if (state->mon_counts == NULL) {
        return -1;
    }
    PyObject **cbs[] = {&state->cb_instruction, &state->cb_py_start,
                        &state->cb_py_resume, &state->cb_progress};
    for (size_t i = 0; i < 4; i++) {
        *cbs[i] = PyCFunction_NewEx(&landing_callbacks[i], module, NULL);
        if (*cbs[i] == NULL) {
            return -1;
        }
    }
    return 0;
}

/* After record_arm, if the delivery was disarmed meanwhile (Python code
 * ran: a finalizer, and the target landed or left the scope), undo what
 * the rest of record_arm armed. */
void
record_arm_settle(xthread_state *state, recordobject *rec)
{
    ft_lock_acquire(&state->landing_lock);
    if (!rec->armed && rec->armed_objs != NULL
        && PyList_GET_SIZE(rec->armed_objs) > 0) {
        rec->armed = 1;
        if (XTHREAD_LANDING == 2) {
            state->mon_armed++;
        }
        record_disarm(rec);
    }
    ft_lock_release(&state->landing_lock);
}

// fork()

/* A child process must not inherit the arming state half changed (a code
 * counted but not instrumented, the tool half given back): fork() waits
 * for the landing lock, and holds it until the child exists. Run by
 * os.fork()'s `before` hook, before the world is stopped for the fork,
 * and its parent's `after` hook; the child takes the lock afresh (the
 * fork renewal of ft_lock_acquire). Nothing on a GIL build, where no
 * arming is under way while the forking thread holds the GIL. */
static PyObject *
landing_fork_hold(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    ft_lock_acquire(&get_xthread_state(module)->landing_lock);
    Py_RETURN_NONE;
}

static PyObject *
landing_fork_release(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    ft_lock_release(&get_xthread_state(module)->landing_lock);
    Py_RETURN_NONE;
}

PyMethodDef xthread_landing_methods[] = {
    {"_fork_hold", landing_fork_hold, METH_NOARGS,
     "_fork_hold($module, /)\n--\n\n"
     "os.fork()'s before hook: waits until no delivery is being armed."},
    {"_fork_release", landing_fork_release, METH_NOARGS,
     "_fork_release($module, /)\n--\n\n"
     "os.fork()'s after hook in the parent: undoes _fork_hold."},
    {NULL, NULL, 0, NULL}
};
