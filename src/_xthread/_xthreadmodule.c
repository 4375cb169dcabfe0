/* _xthread: CPython's _thread machinery rebuilt on the public thread-state
 * API.
 *
 * Layout, in order: module state; the lock and the shared "core" it wraps;
 * the bootstate and the C bootstrap that runs a new thread; sentinels;
 * set_async_exc; the small module functions; module init.
 *
 * Thread life cycle, as seen from the bootstrap (thread_run):
 *
 *     parent (GIL held)                      child (new OS thread)
 *     -----------------                      ---------------------
 *     bootstate + refs
 *     PyThread_start_new_thread  ------->    native id, PyThreadState_New
 *     wait (GIL dropped)        <-------     handshake: tstate exists
 *     return ident                           PyEval_AcquireThread (GIL)
 *                                            function(*args, **kwargs)
 *                                            drop refs, _count -= 1
 *                                            PyThreadState_Clear
 *                                            PyThreadState_DeleteCurrent
 *                                            ---- no Python API below ----
 *                                            release sentinels, free boot
 *
 * Version differences live in compat.h only.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <math.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "compat.h"

// Module state

typedef struct {
    PyTypeObject *lock_type;
    /* Threads started by this module that have not finished their Python
     * part. Only touched with the GIL held. */
    Py_ssize_t count;
} xthread_state;

static inline xthread_state *
get_xthread_state(PyObject *module)
{
    void *state = PyModule_GetState(module);
    assert(state != NULL);
    return (xthread_state *)state;
}

/* Monotonic clock in microseconds; Linux-only project, so no fallback. */
static long long
monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}


// Lock core

/* The OS lock behind a lock object, kept apart from the Python object and
 * reference-counted with atomics, because a thread releases its sentinels
 * after its thread state is gone: it may then use neither the GIL nor
 * Py_DECREF, and the lock object may already have been freed by then.
 *
 * Owners: the lock object (one reference) and each thread that will
 * release the lock at its exit (one reference each). */
typedef struct {
    PyThread_type_lock handle;
    atomic_int locked;
    atomic_long refs;
} lock_core;

static lock_core *
lock_core_new(void)
{
    lock_core *core = PyMem_RawMalloc(sizeof(lock_core));
    if (core == NULL) {
        return NULL;
    }
    core->handle = PyThread_allocate_lock();
    if (core->handle == NULL) {
        PyMem_RawFree(core);
        return NULL;
    }
    atomic_init(&core->locked, 0);
    atomic_init(&core->refs, 1);
    return core;
}

static inline void
lock_core_incref(lock_core *core)
{
    atomic_fetch_add(&core->refs, 1);
}

/* Safe without the GIL and without a thread state. */
static void
lock_core_decref(lock_core *core)
{
    if (atomic_fetch_sub(&core->refs, 1) == 1) {
        PyThread_free_lock(core->handle);
        PyMem_RawFree(core);
    }
}

/* Releases the core if it is held. Safe without the GIL and without a
 * thread state: this is how a sentinel is released at thread exit. */
static void
lock_core_release_if_locked(lock_core *core)
{
    if (atomic_exchange(&core->locked, 0)) {
        PyThread_release_lock(core->handle);
    }
}

/* Waits for `handle` for up to `timeout_us` microseconds (-1: for ever,
 * 0: do not wait). Called with the GIL held; drops it only while blocked.
 * A signal that interrupts the wait runs the Python signal handlers
 * (main thread only): if one raises (Ctrl-C), this returns PY_LOCK_INTR
 * with the exception set; otherwise the wait resumes with the time left. */
static PyLockStatus
acquire_timed(PyThread_type_lock handle, long long timeout_us)
{
    /* First a non-blocking try without dropping the GIL: the common,
     * uncontended case costs no GIL round trip. */
    PyLockStatus r = PyThread_acquire_lock_timed(handle, 0, 0);
    if (r == PY_LOCK_ACQUIRED || timeout_us == 0) {
        return r;
    }
    long long deadline = timeout_us > 0 ? monotonic_us() + timeout_us : 0;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        r = PyThread_acquire_lock_timed(handle, timeout_us, 1);
        Py_END_ALLOW_THREADS
        if (r != PY_LOCK_INTR) {
            return r;
        }
        if (Py_MakePendingCalls() < 0) {
            return PY_LOCK_INTR;
        }
        if (timeout_us > 0) {
            timeout_us = deadline - monotonic_us();
            if (timeout_us <= 0) {
                return PyThread_acquire_lock_timed(handle, 0, 0);
            }
        }
    }
}


// Lock

typedef struct {
    PyObject_HEAD
    lock_core *core;
    PyObject *weakreflist;
} lockobject;

/* The largest timeout accepted, in seconds: the smaller of what
 * PyThread_acquire_lock_timed takes (PY_TIMEOUT_MAX microseconds) and what
 * CPython's own time type holds (int64 nanoseconds), floored, as _thread
 * computes TIMEOUT_MAX. */
static double
timeout_max_seconds(void)
{
    double lock_max = (double)PY_TIMEOUT_MAX * 1e-6;
    double time_max = (double)LLONG_MAX * 1e-9;
    return floor(lock_max < time_max ? lock_max : time_max);
}

/* Parses acquire()'s arguments into a timeout in microseconds (-1: for
 * ever). Returns -1 with an exception set on bad input. */
static int
lock_acquire_parse_args(PyObject *args, PyObject *kwds, long long *timeout_us)
{
    static char *kwlist[] = {"blocking", "timeout", NULL};
    int blocking = 1;
    PyObject *timeout_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|pO:acquire", kwlist,
                                     &blocking, &timeout_obj)) {
        return -1;
    }
    double timeout = -1.0;
    if (timeout_obj != NULL) {
        if (!PyFloat_Check(timeout_obj) && !PyLong_Check(timeout_obj)) {
            PyErr_Format(PyExc_TypeError,
                         "timeout must be a number, not %.200s",
                         Py_TYPE(timeout_obj)->tp_name);
            return -1;
        }
        timeout = PyFloat_AsDouble(timeout_obj);
        if (timeout == -1.0 && PyErr_Occurred()) {
            return -1;
        }
        if (isnan(timeout)) {
            PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
            return -1;
        }
    }
    if (!blocking && timeout != -1.0) {
        PyErr_SetString(PyExc_ValueError,
                        "can't specify a timeout for a non-blocking call");
        return -1;
    }
    if (timeout < 0 && timeout != -1.0) {
        PyErr_SetString(PyExc_ValueError,
                        "timeout value must be a non-negative number");
        return -1;
    }
    if (!blocking) {
        *timeout_us = 0;
    }
    else if (timeout == -1.0) {
        *timeout_us = -1;
    }
    else {
        if (timeout > timeout_max_seconds()) {
            PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
            return -1;
        }
        double us = ceil(timeout * 1e6);
        *timeout_us = us > (double)PY_TIMEOUT_MAX ? (long long)PY_TIMEOUT_MAX
                                                  : (long long)us;
    }
    return 0;
}

static PyObject *
lock_acquire(lockobject *self, PyObject *args, PyObject *kwds)
{
    long long timeout_us;
    if (lock_acquire_parse_args(args, kwds, &timeout_us) < 0) {
        return NULL;
    }
    PyLockStatus r = acquire_timed(self->core->handle, timeout_us);
    if (r == PY_LOCK_INTR) {
        return NULL;
    }
    if (r == PY_LOCK_ACQUIRED) {
        atomic_store(&self->core->locked, 1);
    }
    return PyBool_FromLong(r == PY_LOCK_ACQUIRED);
}

PyDoc_STRVAR(lock_acquire_doc,
"acquire($self, /, blocking=True, timeout=-1)\n--\n\n"
"Lock the lock. Without arguments, wait until it is free, then take it and\n"
"return True. With blocking=False, return False at once if it is held.\n"
"With a timeout (seconds), wait at most that long and return whether the\n"
"lock was taken. In the main thread, a signal handler that raises (Ctrl-C)\n"
"interrupts the wait.");

static PyObject *
lock_release(lockobject *self, PyObject *Py_UNUSED(ignored))
{
    if (!atomic_exchange(&self->core->locked, 0)) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    PyThread_release_lock(self->core->handle);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(lock_release_doc,
"release($self, /)\n--\n\n"
"Release the lock, letting one waiting thread take it. Any thread may\n"
"release it. Releasing an unlocked lock raises RuntimeError.");

static PyObject *
lock_exit(lockobject *self, PyObject *Py_UNUSED(args))
{
    return lock_release(self, NULL);
}

static PyObject *
lock_locked(lockobject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(atomic_load(&self->core->locked));
}

PyDoc_STRVAR(lock_locked_doc,
"locked($self, /)\n--\n\n"
"Return whether the lock is held.");

/* After fork(), the OS lock may have been in any state in a thread that
 * does not exist in the child: give the object a fresh, unlocked one. The
 * old core is dropped, not freed, if a vanished thread still owns it. */
static PyObject *
lock_at_fork_reinit(lockobject *self, PyObject *Py_UNUSED(ignored))
{
    lock_core *fresh = lock_core_new();
    if (fresh == NULL) {
        return PyErr_NoMemory();
    }
    lock_core_decref(self->core);
    self->core = fresh;
    Py_RETURN_NONE;
}

static PyObject *
lock_repr(lockobject *self)
{
    return PyUnicode_FromFormat("<%s %s object at %p>",
        atomic_load(&self->core->locked) ? "locked" : "unlocked",
        Py_TYPE(self)->tp_name, (void *)self);
}

static lockobject *
lock_from_core(PyTypeObject *type, lock_core *core)
{
    lockobject *self = (lockobject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->core = core;
    self->weakreflist = NULL;
    return self;
}

static lockobject *
newlockobject(PyTypeObject *type)
{
    lock_core *core = lock_core_new();
    if (core == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    lockobject *self = lock_from_core(type, core);
    if (self == NULL) {
        lock_core_decref(core);
    }
    return self;
}

static PyObject *
lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if ((kwds != NULL && PyDict_GET_SIZE(kwds) != 0)
        || PyTuple_GET_SIZE(args) != 0) {
        PyErr_SetString(PyExc_TypeError, "lock() takes no arguments");
        return NULL;
    }
    return (PyObject *)newlockobject(type);
}

static void
lock_dealloc(lockobject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    /* A thread that still holds the core as a sentinel keeps it alive. */
    if (self->core != NULL) {
        lock_core_decref(self->core);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))lock_acquire,
     METH_VARARGS | METH_KEYWORDS, lock_acquire_doc},
    {"acquire_lock", (PyCFunction)(void (*)(void))lock_acquire,
     METH_VARARGS | METH_KEYWORDS, lock_acquire_doc},
    {"release", (PyCFunction)lock_release, METH_NOARGS, lock_release_doc},
    {"release_lock", (PyCFunction)lock_release, METH_NOARGS, lock_release_doc},
    {"locked", (PyCFunction)lock_locked, METH_NOARGS, lock_locked_doc},
    {"locked_lock", (PyCFunction)lock_locked, METH_NOARGS, lock_locked_doc},
    {"__enter__", (PyCFunction)(void (*)(void))lock_acquire,
     METH_VARARGS | METH_KEYWORDS, lock_acquire_doc},
    {"__exit__", (PyCFunction)lock_exit, METH_VARARGS, lock_release_doc},
    {"_at_fork_reinit", (PyCFunction)lock_at_fork_reinit, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}
};

static PyMemberDef lock_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(lockobject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL}
};

PyDoc_STRVAR(lock_doc,
"A lock object is a synchronization primitive. To create a lock,\n"
"call allocate_lock(). Methods: acquire(), release(), locked().");

static PyType_Slot lock_type_slots[] = {
    {Py_tp_dealloc, (destructor)lock_dealloc},
    {Py_tp_repr, (reprfunc)lock_repr},
    {Py_tp_doc, (void *)lock_doc},
    {Py_tp_methods, lock_methods},
    {Py_tp_members, lock_members},
    {Py_tp_new, lock_new},
    {0, NULL}
};

static PyType_Spec lock_type_spec = {
    .name = "_xthread.lock",
    .basicsize = sizeof(lockobject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = lock_type_slots,
};


// Bootstate and the C bootstrap

/* Filled in by the child before the parent's start call returns; lives on
 * the parent's stack. */
typedef struct {
    PyThread_type_lock done;
    unsigned long native_id;
    enum { HS_OK, HS_NO_TSTATE, HS_FINALIZING } status;
} handshake;

/* Everything a new thread needs. Allocated with PyMem_RawMalloc because the
 * child frees it after its thread state is gone, without the GIL.
 *
 * Ownership: the parent fills it and holds it until the handshake; if the
 * child could not make a thread state, the parent frees it. Otherwise the
 * child owns it from the handshake on. */
typedef struct {
    PyInterpreterState *interp;
    PyObject *module;       /* strong: keeps the module state alive */
    PyObject *func;         /* strong */
    PyObject *args;         /* strong */
    PyObject *kwargs;       /* strong or NULL */
    handshake *hs;          /* NULL once the handshake is done */
    /* Locks released after the thread state is deleted. Touched only by
     * the thread itself (and the parent before start); each holds a
     * core reference. */
    lock_core **sentinels;
    Py_ssize_t nsentinels;
    Py_ssize_t sentinels_cap;
} bootstate;

/* The bootstate of the thread running here, or NULL for a thread that
 * _xthread did not start. Per OS thread, not per module: an OS thread runs
 * at most one bootstrap, whatever interpreter it serves. */
static _Thread_local bootstate *current_boot = NULL;

/* Adds `core` (with a new reference) to the locks released at exit.
 * Called with the GIL held. Returns -1 with MemoryError set on failure. */
static int
bootstate_add_sentinel(bootstate *boot, lock_core *core)
{
    if (boot->nsentinels == boot->sentinels_cap) {
        Py_ssize_t cap = boot->sentinels_cap ? boot->sentinels_cap * 2 : 2;
        lock_core **grown = PyMem_RawRealloc(boot->sentinels,
                                             (size_t)cap * sizeof(lock_core *));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        boot->sentinels = grown;
        boot->sentinels_cap = cap;
    }
    lock_core_incref(core);
    boot->sentinels[boot->nsentinels++] = core;
    return 0;
}

/* Runs after the thread state is deleted, or when it was never made: no
 * GIL, no Python API, only PyThread_* and PyMem_Raw*. */
static void
bootstate_release_sentinels_and_free(bootstate *boot)
{
    for (Py_ssize_t i = 0; i < boot->nsentinels; i++) {
        lock_core_release_if_locked(boot->sentinels[i]);
        lock_core_decref(boot->sentinels[i]);
    }
    PyMem_RawFree(boot->sentinels);
    PyMem_RawFree(boot);
}

/* Called with the GIL held, by the parent when the thread never ran. */
static void
bootstate_discard(bootstate *boot)
{
    Py_DECREF(boot->func);
    Py_DECREF(boot->args);
    Py_XDECREF(boot->kwargs);
    Py_DECREF(boot->module);
    bootstate_release_sentinels_and_free(boot);
}

/* The OS thread's entry point. Starts without the GIL and without a thread
 * state.
 *
 * Tricky: at interpreter exit, CPython 3.9-3.13 end an OS thread that asks
 * for the GIL inside PyEval_AcquireThread (or any GIL re-acquire), and
 * 3.14 blocks it there for ever (gh-87135). So nothing after a GIL acquire
 * is sure to run, and this function holds no lock of its own while it
 * asks for the GIL: at worst its bootstate and sentinels leak at exit. */
static void
thread_run(void *arg)
{
    bootstate *boot = (bootstate *)arg;
    handshake *hs = boot->hs;

    hs->native_id = PyThread_get_thread_native_id();
    if (Py_IsFinalizing()) {
        hs->status = HS_FINALIZING;
        PyThread_release_lock(hs->done);
        return;         /* the parent frees the bootstate */
    }
    /* Made here, in the thread it serves: a thread state records the OS
     * thread that creates it, and PyThreadState_SetAsyncExc finds threads
     * by that record. No GIL is needed to make one. */
    PyThreadState *tstate = PyThreadState_New(boot->interp);
    if (tstate == NULL) {
        hs->status = HS_NO_TSTATE;
        PyThread_release_lock(hs->done);
        return;         /* the parent frees the bootstate */
    }
    boot->hs = NULL;
    hs->status = HS_OK;
    PyThread_release_lock(hs->done);   /* hs is gone from here on */

    current_boot = boot;
    PyEval_AcquireThread(tstate);

    PyObject *res = PyObject_Call(boot->func, boot->args, boot->kwargs);
    if (res == NULL) {
        if (PyErr_ExceptionMatches(PyExc_SystemExit)) {
            PyErr_Clear();
        }
        else {
            XTHREAD_WRITE_UNRAISABLE("in thread started by", boot->func);
        }
    }
    else {
        Py_DECREF(res);
    }
    Py_CLEAR(boot->func);
    Py_CLEAR(boot->args);
    Py_CLEAR(boot->kwargs);
    get_xthread_state(boot->module)->count--;
    Py_CLEAR(boot->module);

    PyThreadState_Clear(tstate);
    PyThreadState_DeleteCurrent();     /* drops the GIL */
    current_boot = NULL;

    /* The thread state is gone: joiners may wake now. */
    bootstate_release_sentinels_and_free(boot);
}

/* Starts a thread running func(*args, **kwargs) and waits until it has a
 * thread state. On success returns 0 with *ident and *native_id set; the
 * thread owns `boot`. On failure returns -1 with an exception set; `boot`
 * has been discarded. Called with the GIL held. */
static int
start_thread(PyObject *module, bootstate *boot,
             unsigned long *ident, unsigned long *native_id)
{
    xthread_state *state = get_xthread_state(module);
    handshake hs = {.done = NULL, .native_id = 0, .status = HS_OK};

    if (Py_IsFinalizing()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "can't create new thread at interpreter shutdown");
        goto error;
    }
    hs.done = PyThread_allocate_lock();
    if (hs.done == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    PyThread_acquire_lock(hs.done, WAIT_LOCK);
    boot->hs = &hs;

    state->count++;
    unsigned long id;
    Py_BEGIN_ALLOW_THREADS
    id = PyThread_start_new_thread(thread_run, boot);
    if (id != PYTHREAD_INVALID_THREAD_ID) {
        PyThread_acquire_lock(hs.done, WAIT_LOCK);
    }
    Py_END_ALLOW_THREADS
    PyThread_free_lock(hs.done);

    if (id == PYTHREAD_INVALID_THREAD_ID) {
        state->count--;
        PyErr_SetString(PyExc_RuntimeError, "can't start new thread");
        goto error;
    }
    if (hs.status != HS_OK) {
        state->count--;
        if (hs.status == HS_FINALIZING) {
            PyErr_SetString(PyExc_RuntimeError,
                            "can't create new thread at interpreter shutdown");
        }
        else {
            PyErr_SetString(PyExc_MemoryError,
                            "can't allocate a thread state for the new thread");
        }
        goto error;
    }
    *ident = id;
    *native_id = hs.native_id;
    return 0;

error:
    bootstate_discard(boot);
    return -1;
}

/* Checks start_new_thread's arguments and fills a new bootstate, or
 * returns NULL with TypeError or MemoryError set. */
static bootstate *
bootstate_new(PyObject *module, PyObject *fargs)
{
    PyObject *func, *args, *kwargs = NULL;
    if (!PyArg_UnpackTuple(fargs, "start_new_thread", 2, 3,
                           &func, &args, &kwargs)) {
        return NULL;
    }
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "first arg must be callable");
        return NULL;
    }
    if (!PyTuple_Check(args)) {
        PyErr_SetString(PyExc_TypeError, "2nd arg must be a tuple");
        return NULL;
    }
    if (kwargs == Py_None) {
        kwargs = NULL;
    }
    if (kwargs != NULL && !PyDict_Check(kwargs)) {
        PyErr_SetString(PyExc_TypeError,
                        "optional 3rd arg must be a dictionary");
        return NULL;
    }
    bootstate *boot = PyMem_RawMalloc(sizeof(bootstate));
    if (boot == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    boot->interp = PyThreadState_GetInterpreter(PyThreadState_Get());
    boot->module = Py_NewRef(module);
    boot->func = Py_NewRef(func);
    boot->args = Py_NewRef(args);
    boot->kwargs = Py_XNewRef(kwargs);
    boot->hs = NULL;
    boot->sentinels = NULL;
    boot->nsentinels = 0;
    boot->sentinels_cap = 0;
    return boot;
}

static PyObject *
xthread_start_new_thread(PyObject *module, PyObject *fargs)
{
    bootstate *boot = bootstate_new(module, fargs);
    if (boot == NULL) {
        return NULL;
    }
    unsigned long ident, native_id;
    if (start_thread(module, boot, &ident, &native_id) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(ident);
}

PyDoc_STRVAR(start_new_thread_doc,
"start_new_thread($module, function, args, kwargs=None, /)\n--\n\n"
"Start a new thread that calls function(*args, **kwargs) and return its\n"
"identifier. The thread has its own thread state, made in that thread.\n"
"It exits when the function returns; SystemExit ends it silently, any\n"
"other exception is reported to sys.unraisablehook.");

static PyObject *
xthread_start_joinable_thread(PyObject *module, PyObject *fargs)
{
    xthread_state *state = get_xthread_state(module);
    bootstate *boot = bootstate_new(module, fargs);
    if (boot == NULL) {
        return NULL;
    }
    lockobject *sentinel = newlockobject(state->lock_type);
    if (sentinel == NULL) {
        bootstate_discard(boot);
        return NULL;
    }
    /* Held now, by the thread to be: released when its state is gone. */
    PyThread_acquire_lock(sentinel->core->handle, WAIT_LOCK);
    atomic_store(&sentinel->core->locked, 1);
    if (bootstate_add_sentinel(boot, sentinel->core) < 0) {
        bootstate_discard(boot);
        Py_DECREF(sentinel);
        return NULL;
    }
    unsigned long ident, native_id;
    if (start_thread(module, boot, &ident, &native_id) < 0) {
        /* The discarded bootstate released the sentinel: join on a
         * thread that never ran must not hang. */
        Py_DECREF(sentinel);
        return NULL;
    }
    return Py_BuildValue("kkN", ident, native_id, (PyObject *)sentinel);
}

PyDoc_STRVAR(start_joinable_thread_doc,
"_start_joinable_thread($module, function, args, kwargs=None, /)\n--\n\n"
"Like start_new_thread(), but return (ident, native_id, sentinel): the\n"
"sentinel is a held lock that the thread releases after its thread state\n"
"is deleted, so acquiring it waits for the thread's end. The call returns\n"
"once the thread exists with its thread state, so that exceptions can\n"
"be sent to it at once.");


// Sentinel

static PyObject *
xthread_set_sentinel(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    bootstate *boot = current_boot;
    if (boot == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "_set_sentinel() must be called in a thread started "
                        "by _xthread; this thread's exit is not under "
                        "_xthread's control, so nothing would release the "
                        "lock");
        return NULL;
    }
    lockobject *lock = newlockobject(get_xthread_state(module)->lock_type);
    if (lock == NULL) {
        return NULL;
    }
    if (bootstate_add_sentinel(boot, lock->core) < 0) {
        Py_DECREF(lock);
        return NULL;
    }
    return (PyObject *)lock;
}

PyDoc_STRVAR(set_sentinel_doc,
"_set_sentinel($module, /)\n--\n\n"
"Return a new, unlocked lock bound to the calling thread, which must have\n"
"been started by _xthread. If the lock is held when the thread ends, the\n"
"thread releases it after its thread state has been deleted. Called in\n"
"any other thread, raises RuntimeError.");


// set_async_exc

/* __new__ of a carrier class: returns the instance the carrier was made
 * for, whatever it is called with. It may be called more than once per
 * delivery on 3.9/3.10, so it hands out the same object each time. */
static PyObject *
carrier_new(PyObject *instance, PyObject *Py_UNUSED(args),
            PyObject *Py_UNUSED(kwargs))
{
    return Py_NewRef(instance);
}

static PyMethodDef carrier_new_def = {
    "__new__", (PyCFunction)(void (*)(void))carrier_new,
    METH_VARARGS | METH_KEYWORDS, NULL
};

/* PyThreadState_SetAsyncExc raises a class by calling it with no
 * arguments. To raise a given instance, send a subclass of the instance's
 * class whose constructor returns that instance: the target's `except`
 * clauses then match the instance's class, and `as e` binds the very
 * object (arguments, __cause__ and attributes intact). Returns a new
 * reference, or NULL with an exception set. */
static PyObject *
make_carrier(PyObject *instance)
{
    PyTypeObject *cls = Py_TYPE(instance);
    PyObject *fn = NULL, *sm = NULL, *dict = NULL, *attr = NULL;
    PyObject *carrier = NULL;

    if (!(PyType_GetFlags(cls) & Py_TPFLAGS_BASETYPE)) {
        PyErr_Format(PyExc_TypeError,
                     "cannot send an instance of %.200s: the class does "
                     "not allow subclasses; send the class instead",
                     cls->tp_name);
        return NULL;
    }
    fn = PyCFunction_NewEx(&carrier_new_def, instance, NULL);
    if (fn == NULL) {
        goto done;
    }
    sm = PyStaticMethod_New(fn);
    if (sm == NULL) {
        goto done;
    }
    dict = PyDict_New();
    if (dict == NULL || PyDict_SetItemString(dict, "__new__", sm) < 0) {
        goto done;
    }
    static const char *copied[] = {"__module__", "__qualname__"};
    for (size_t i = 0; i < sizeof(copied) / sizeof(copied[0]); i++) {
        attr = PyObject_GetAttrString((PyObject *)cls, copied[i]);
        if (attr == NULL) {
            PyErr_Clear();
            continue;
        }
        if (PyUnicode_Check(attr)
            && PyDict_SetItemString(dict, copied[i], attr) < 0) {
            goto done;
        }
        Py_CLEAR(attr);
    }
    const char *name = strrchr(cls->tp_name, '.');
    name = name != NULL ? name + 1 : cls->tp_name;
    carrier = PyObject_CallFunction((PyObject *)Py_TYPE(cls), "s(O)O",
                                    name, (PyObject *)cls, dict);
done:
    Py_XDECREF(attr);
    Py_XDECREF(dict);
    Py_XDECREF(sm);
    Py_XDECREF(fn);
    return carrier;
}

/* Parses a thread identifier: a non-negative int. */
static int
parse_ident(PyObject *obj, unsigned long *ident)
{
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "thread ident must be an int, not %.200s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) {
        return -1;
    }
    int negative = PyObject_RichCompareBool(obj, zero, Py_LT);
    Py_DECREF(zero);
    if (negative < 0) {
        return -1;
    }
    if (negative) {
        PyErr_SetString(PyExc_ValueError,
                        "thread ident must not be negative");
        return -1;
    }
    *ident = PyLong_AsUnsignedLong(obj);
    if (*ident == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

/* Turns what the caller passed into what PyThreadState_SetAsyncExc takes:
 * NULL (clear), a BaseException subclass, or a carrier for an instance.
 * Returns 0 and sets *out (new reference or NULL), or -1 with TypeError. */
static int
prepare_exception(PyObject *exc, PyObject **out)
{
    if (exc == Py_None) {
        *out = NULL;
        return 0;
    }
    if (PyExceptionClass_Check(exc)) {
        *out = Py_NewRef(exc);
        return 0;
    }
    if (PyExceptionInstance_Check(exc)) {
        *out = make_carrier(exc);
        return *out == NULL ? -1 : 0;
    }
    PyErr_Format(PyExc_TypeError,
                 "exception must be a BaseException subclass or instance, "
                 "or None to clear, not %.200s", Py_TYPE(exc)->tp_name);
    return -1;
}

static PyObject *
xthread_set_async_exc(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *ident_obj, *exc;
    if (!PyArg_UnpackTuple(args, "set_async_exc", 2, 2, &ident_obj, &exc)) {
        return NULL;
    }
    unsigned long ident;
    if (parse_ident(ident_obj, &ident) < 0) {
        return NULL;
    }
    PyObject *to_send;
    if (prepare_exception(exc, &to_send) < 0) {
        return NULL;
    }
    int n = PyThreadState_SetAsyncExc(ident, to_send);
    Py_XDECREF(to_send);
    if (n > 1) {
        /* Two thread states with one ident: cannot happen in a sane
         * interpreter. Undo, so that no thread gets it. */
        PyThreadState_SetAsyncExc(ident, NULL);
        PyErr_Format(PyExc_SystemError,
                     "set_async_exc: %d threads have ident %lu; undone",
                     n, ident);
        return NULL;
    }
    return PyLong_FromLong(n);
}

PyDoc_STRVAR(set_async_exc_doc,
"set_async_exc($module, ident, exc, /)\n--\n\n"
"Schedule exc to be raised in the thread with this ident at its next\n"
"bytecode boundary, and return how many threads took it (0: no such\n"
"thread). exc is a BaseException subclass or instance (an instance is\n"
"raised as itself), or None to withdraw a pending one. Works for every\n"
"thread of the interpreter. A thread blocked inside a C call (sleep, I/O,\n"
"a lock) raises only when that call returns.");


// Module functions

static PyObject *
xthread_allocate_lock(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return (PyObject *)newlockobject(get_xthread_state(module)->lock_type);
}

PyDoc_STRVAR(allocate_lock_doc,
"allocate_lock($module, /)\n--\n\n"
"Create a new, unlocked lock object.");

static PyObject *
xthread_get_ident(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLong(PyThread_get_thread_ident());
}

PyDoc_STRVAR(get_ident_doc,
"get_ident($module, /)\n--\n\n"
"Return a non-zero integer that identifies the current thread among the\n"
"threads alive now. It may be reused once the thread has ended.");

static PyObject *
xthread_get_native_id(PyObject *Py_UNUSED(module),
                      PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLong(PyThread_get_thread_native_id());
}

PyDoc_STRVAR(get_native_id_doc,
"get_native_id($module, /)\n--\n\n"
"Return the operating system's id of the current thread.");

static PyObject *
xthread_count(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(get_xthread_state(module)->count);
}

PyDoc_STRVAR(count_doc,
"_count($module, /)\n--\n\n"
"Return how many threads started by this module are still running their\n"
"function.");

static PyObject *
xthread_stack_size(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_ssize_t new_size = 0;
    if (!PyArg_ParseTuple(args, "|n:stack_size", &new_size)) {
        return NULL;
    }
    if (new_size < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "size must be 0 or a positive value");
        return NULL;
    }
    size_t old_size = PyThread_get_stacksize();
    int rc = PyThread_set_stacksize((size_t)new_size);
    if (rc == -1) {
        PyErr_Format(PyExc_ValueError, "size not valid: %zd bytes", new_size);
        return NULL;
    }
    if (rc == -2) {
        PyErr_SetString(PyExc_RuntimeError, "setting stack size not supported");
        return NULL;
    }
    return PyLong_FromSize_t(old_size);
}

PyDoc_STRVAR(stack_size_doc,
"stack_size($module, size=0, /)\n--\n\n"
"Return the stack size used for new threads, and set it to size (0: the\n"
"platform default; otherwise at least 32 KiB). Shared with _thread.");

static PyObject *
xthread_exit(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    PyErr_SetNone(PyExc_SystemExit);
    return NULL;
}

PyDoc_STRVAR(exit_doc,
"exit($module, /)\n--\n\n"
"Raise SystemExit, which ends the current thread silently.");

/* After fork(), only the forking thread exists in the child. */
static PyObject *
xthread_after_fork_child(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    get_xthread_state(module)->count = current_boot != NULL ? 1 : 0;
    Py_RETURN_NONE;
}

static PyMethodDef xthread_methods[] = {
    {"start_new_thread", xthread_start_new_thread, METH_VARARGS,
     start_new_thread_doc},
    {"start_new", xthread_start_new_thread, METH_VARARGS,
     start_new_thread_doc},
    {"_start_joinable_thread", xthread_start_joinable_thread, METH_VARARGS,
     start_joinable_thread_doc},
    {"allocate_lock", xthread_allocate_lock, METH_NOARGS, allocate_lock_doc},
    {"allocate", xthread_allocate_lock, METH_NOARGS, allocate_lock_doc},
    {"_set_sentinel", xthread_set_sentinel, METH_NOARGS, set_sentinel_doc},
    {"set_async_exc", xthread_set_async_exc, METH_VARARGS,
     set_async_exc_doc},
    {"get_ident", xthread_get_ident, METH_NOARGS, get_ident_doc},
    {"get_native_id", xthread_get_native_id, METH_NOARGS, get_native_id_doc},
    {"_count", xthread_count, METH_NOARGS, count_doc},
    {"stack_size", xthread_stack_size, METH_VARARGS, stack_size_doc},
    {"exit", xthread_exit, METH_NOARGS, exit_doc},
    {"exit_thread", xthread_exit, METH_NOARGS, exit_doc},
    {"_after_fork_child", xthread_after_fork_child, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}
};


// Module init

/* Registers _after_fork_child with os.register_at_fork, so that _count is
 * right in a forked child. */
static int
register_fork_hook(PyObject *module)
{
    int rc = -1;
    PyObject *os = NULL, *reg = NULL, *hook = NULL, *kwargs = NULL, *res = NULL;
    os = PyImport_ImportModule("os");
    if (os == NULL) {
        goto done;
    }
    reg = PyObject_GetAttrString(os, "register_at_fork");
    if (reg == NULL) {
        goto done;
    }
    hook = PyObject_GetAttrString(module, "_after_fork_child");
    if (hook == NULL) {
        goto done;
    }
    kwargs = Py_BuildValue("{sO}", "after_in_child", hook);
    if (kwargs == NULL) {
        goto done;
    }
    PyObject *empty = PyTuple_New(0);
    if (empty == NULL) {
        goto done;
    }
    res = PyObject_Call(reg, empty, kwargs);
    Py_DECREF(empty);
    rc = res == NULL ? -1 : 0;
done:
    Py_XDECREF(res);
    Py_XDECREF(kwargs);
    Py_XDECREF(hook);
    Py_XDECREF(reg);
    Py_XDECREF(os);
    return rc;
}

static int
xthread_exec(PyObject *module)
{
    xthread_state *state = get_xthread_state(module);
    state->count = 0;

    // Lock
    state->lock_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &lock_type_spec, NULL);
    if (state->lock_type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "LockType",
                              (PyObject *)state->lock_type) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "lock",
                              (PyObject *)state->lock_type) < 0) {
        return -1;
    }

    // Constants
    if (PyModule_AddObjectRef(module, "error", PyExc_RuntimeError) < 0) {
        return -1;
    }
    PyObject *timeout_max = PyFloat_FromDouble(timeout_max_seconds());
    if (timeout_max == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(module, "TIMEOUT_MAX", timeout_max);
    Py_DECREF(timeout_max);
    if (rc < 0) {
        return -1;
    }
    return register_fork_hook(module);
}

static int
xthread_traverse(PyObject *module, visitproc visit, void *arg)
{
    xthread_state *state = get_xthread_state(module);
    Py_VISIT(state->lock_type);
    return 0;
}

static int
xthread_clear(PyObject *module)
{
    xthread_state *state = get_xthread_state(module);
    Py_CLEAR(state->lock_type);
    return 0;
}

static void
xthread_free(void *module)
{
    xthread_clear((PyObject *)module);
}

static PyModuleDef_Slot xthread_slots[] = {
    {Py_mod_exec, xthread_exec},
#ifdef Py_mod_multiple_interpreters
    /* Only the thread-local bootstate pointer is process-wide, and it is
     * per OS thread; everything else is in module state. But nothing here
     * has been tested under a per-interpreter GIL, so claim only support
     * for subinterpreters that share the main GIL. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED},
#endif
    /* No Py_mod_gil slot: the module state (count) and bootstates are
     * guarded by the GIL, not audited for free threading. The free-threaded
     * build re-enables the GIL when this module is imported. */
    {0, NULL}
};

PyDoc_STRVAR(xthread_doc,
"CPython's _thread machinery rebuilt on the public thread-state API:\n"
"threads with their own thread state, locks, sentinels released after a\n"
"thread state is deleted, and exceptions raised in other threads.");

static struct PyModuleDef xthread_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_xthread",
    .m_doc = xthread_doc,
    .m_size = sizeof(xthread_state),
    .m_methods = xthread_methods,
    .m_slots = xthread_slots,
    .m_traverse = xthread_traverse,
    .m_clear = xthread_clear,
    .m_free = xthread_free,
};

PyMODINIT_FUNC
PyInit__xthread(void)
{
    return PyModuleDef_Init(&xthread_module);
}
