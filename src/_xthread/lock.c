/* lock.c: the Lock and RLock types on a lock core (park.c). What each
 * offers and who may call it: lock.h. */
#include "xthread.h"
#include "deliver.h"
#include "park.h"
#include "record.h"
#include "lock.h"

// Lock

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
        if (seconds_from_object(timeout_obj, &timeout) < 0) {
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

/* acquire() and _wait_released(): with `let_go`, a lock taken is released
 * again before the call returns. */
static PyObject *
lock_acquire_impl(lockobject *self, PyObject *args, PyObject *kwds,
                  int let_go)
{
    long long timeout_us;
    if (lock_acquire_parse_args(args, kwds, &timeout_us) < 0) {
        return NULL;
    }
    xthread_state *state = PyType_GetModuleState(Py_TYPE(self));
    switch (lock_core_acquire(state, self->core, timeout_us)) {
    case WAIT_DONE:
        if (let_go) {
            lock_core_release(self->core);
        }
        Py_RETURN_TRUE;
    case WAIT_TIMEOUT:
        Py_RETURN_FALSE;
    case WAIT_INTERRUPTED:
        return raise_outstanding(current_record(state));
    default:
        return NULL;
    }
}

static PyObject *
lock_acquire(lockobject *self, PyObject *args, PyObject *kwds)
{
    return lock_acquire_impl(self, args, kwds, 0);
}

PyDoc_STRVAR(lock_acquire_doc,
"acquire($self, /, blocking=True, timeout=-1)\n--\n\n"
"Lock the lock. Without arguments, wait until it is free, then take it and\n"
"return True. With blocking=False, return False at once if it is held.\n"
"With a timeout (seconds), wait at most that long and return whether the\n"
"lock was taken. In the main thread, a signal handler that raises (Ctrl-C)\n"
"interrupts the wait. Killable: an exception sent to the waiting thread\n"
"through xthread ends the wait at once and is raised here.");

/* Waits until the lock is free, taking it and letting it go again in one
 * C call: no Python code (a signal handler, a delivered exception) runs
 * while it is held, so an exception that ends the wait never leaves it
 * held. What a join needs of a sentinel. */
static PyObject *
lock_wait_released(lockobject *self, PyObject *args, PyObject *kwds)
{
    return lock_acquire_impl(self, args, kwds, 1);
}

PyDoc_STRVAR(lock_wait_released_doc,
"_wait_released($self, /, blocking=True, timeout=-1)\n"
"--\n\n"
"Wait, as acquire() would, until the lock is free; return True with the\n"
"lock left free (taken and let go in one step, so that no exception can\n"
"land while it is held), False on timeout.");

static PyObject *
lock_release(lockobject *self, PyObject *Py_UNUSED(ignored))
{
    if (lock_core_release(self->core) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
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

/* After fork(), the lock's mutex may have been held by a thread that
 * does not exist in the child, and its waiters are gone: give the core a
 * fresh, unlocked state. The core itself is kept, so that a thread holding
 * it as a sentinel releases the new state. The old mutex is leaked on
 * purpose, as CPython's _PyThread_at_fork_reinit does (bpo-6721,
 * bpo-40089): it may be in an inconsistent state. */
static int
lock_core_reinit(lock_core *core)
{
    PyThread_type_lock fresh = PyThread_allocate_lock();
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    core->mutex = fresh;
    atomic_store(&core->pid, current_pid());
    core->head = core->tail = NULL;
    atomic_store(&core->locked, 0);
    return 0;
}

static PyObject *
lock_at_fork_reinit(lockobject *self, PyObject *Py_UNUSED(ignored))
{
    if (lock_core_reinit(self->core) < 0) {
        return NULL;
    }
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

lockobject *
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

/* Each alias has a docstring of its own: the "name(...)\n--\n\n" header
 * is a text signature only when it names the function it documents. */
PyDoc_STRVAR(lock_acquire_lock_doc,
"acquire_lock($self, /, blocking=True, timeout=-1)\n--\n\n"
"An obsolete synonym of acquire().");

PyDoc_STRVAR(lock_release_lock_doc,
"release_lock($self, /)\n--\n\n"
"An obsolete synonym of release().");

PyDoc_STRVAR(lock_locked_lock_doc,
"locked_lock($self, /)\n--\n\n"
"An obsolete synonym of locked().");

PyDoc_STRVAR(lock_enter_doc,
"__enter__($self, /)\n--\n\n"
"Lock the lock, waiting as long as it takes (acquire()).");

PyDoc_STRVAR(lock_exit_doc,
"__exit__($self, /, *exc_info)\n--\n\n"
"Release the lock.");

static PyMethodDef lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))lock_acquire,
     METH_VARARGS | METH_KEYWORDS, lock_acquire_doc},
    {"acquire_lock", (PyCFunction)(void (*)(void))lock_acquire,
     METH_VARARGS | METH_KEYWORDS, lock_acquire_lock_doc},
    {"release", (PyCFunction)lock_release, METH_NOARGS, lock_release_doc},
    {"release_lock", (PyCFunction)lock_release, METH_NOARGS,
     lock_release_lock_doc},
    {"locked", (PyCFunction)lock_locked, METH_NOARGS, lock_locked_doc},
    {"locked_lock", (PyCFunction)lock_locked, METH_NOARGS,
     lock_locked_lock_doc},
    {"__enter__", (PyCFunction)(void (*)(void))lock_acquire,
     METH_VARARGS | METH_KEYWORDS, lock_enter_doc},
    {"__exit__", (PyCFunction)lock_exit, METH_VARARGS, lock_exit_doc},
    {"_at_fork_reinit", (PyCFunction)lock_at_fork_reinit, METH_NOARGS, NULL},
    {"_wait_released", (PyCFunction)(void (*)(void))lock_wait_released,
     METH_VARARGS | METH_KEYWORDS, lock_wait_released_doc},
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

PyType_Spec lock_type_spec = {
    .name = "_xthread.lock",
    .basicsize = sizeof(lockobject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = lock_type_slots,
};

// RLock

/* A reentrant lock on a lock core: the thread that holds it may take it
 * again, and must let go as many times. Its bookkeeping is done in the
 * same C call as the wait (acquire) or the release: no Python code runs
 * in between, so an exception sent to the thread (a stop, a time limit)
 * never lands with the lock taken and its owner not yet noted, or the
 * other way round. `owner` and `count` are written only by the thread
 * that holds the core (or has just taken it, or is letting it go; and by
 * the fork child's reinit), and read by any thread: relaxed atomics, so
 * that a thread without the GIL (3.14t) reads a whole value. A thread
 * that reads its own ident in `owner` holds the lock, and `count` is then
 * its own; any other reading of `owner` means only "not mine". */
typedef struct {
    PyObject_HEAD
    lock_core *core;
    atomic_ulong owner;         /* ident of the holder; 0 when free */
    atomic_ulong count;         /* its depth; 0 when free */
    PyObject *weakreflist;
} rlockobject;

static inline unsigned long
rlock_owner(rlockobject *self)
{
    return atomic_load_explicit(&self->owner, memory_order_relaxed);
}

static inline unsigned long
rlock_count(rlockobject *self)
{
    return atomic_load_explicit(&self->count, memory_order_relaxed);
}

/* Notes the holder and its depth: by the holder only. */
static inline void
rlock_note(rlockobject *self, unsigned long owner, unsigned long count)
{
    atomic_store_explicit(&self->count, count, memory_order_relaxed);
    atomic_store_explicit(&self->owner, owner, memory_order_relaxed);
}

/* Whether the calling thread holds the lock. */
static inline int
rlock_mine(rlockobject *self)
{
    return rlock_owner(self) == PyThread_get_thread_ident()
           && rlock_count(self) > 0;
}

static xthread_state *
rlock_state(rlockobject *self)
{
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &xthread_module);
    return module != NULL ? get_xthread_state(module) : NULL;
}

static PyObject *
rlock_acquire(rlockobject *self, PyObject *args, PyObject *kwds)
{
    long long timeout_us;
    if (lock_acquire_parse_args(args, kwds, &timeout_us) < 0) {
        return NULL;
    }
    unsigned long me = PyThread_get_thread_ident();
    if (rlock_mine(self)) {
        unsigned long count = rlock_count(self);
        if (count == ULONG_MAX) {
            PyErr_SetString(PyExc_OverflowError,
                            "internal lock count overflowed");
            return NULL;
        }
        rlock_note(self, me, count + 1);
        Py_RETURN_TRUE;
    }
    xthread_state *state = rlock_state(self);
    if (state == NULL) {
        return NULL;
    }
    switch (lock_core_acquire(state, self->core, timeout_us)) {
    case WAIT_DONE:
        rlock_note(self, me, 1);
        Py_RETURN_TRUE;
    case WAIT_TIMEOUT:
        Py_RETURN_FALSE;
    case WAIT_INTERRUPTED:
        return raise_outstanding(current_record(state));
    default:
        return NULL;
    }
}

PyDoc_STRVAR(rlock_acquire_doc,
"acquire($self, /, blocking=True, timeout=-1)\n--\n\n"
"Lock the lock, or, in the thread that holds it, add one level. Returns\n"
"whether it was taken; arguments as Lock.acquire(). Killable: an\n"
"exception sent to the waiting thread through xthread ends the wait and\n"
"is raised here, with the lock not taken.");

/* Releases one level; 0, or -1 with RuntimeError if the calling thread
 * does not hold the lock. */
static int
rlock_release_level(rlockobject *self)
{
    if (!rlock_mine(self)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot release un-acquired lock");
        return -1;
    }
    unsigned long count = rlock_count(self) - 1;
    if (count == 0) {
        rlock_note(self, 0, 0);
        lock_core_release(self->core);
    }
    else {
        rlock_note(self, PyThread_get_thread_ident(), count);
    }
    return 0;
}

static PyObject *
rlock_release(rlockobject *self, PyObject *Py_UNUSED(ignored))
{
    if (rlock_release_level(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(rlock_release_doc,
"release($self, /)\n--\n\n"
"Release one level of the lock; the last lets another thread take it.\n"
"Only the thread that holds it may release it (RuntimeError otherwise).");

static PyObject *
rlock_exit(rlockobject *self, PyObject *Py_UNUSED(args))
{
    return rlock_release(self, NULL);
}

static PyObject *
rlock_locked(rlockobject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(atomic_load(&self->core->locked));
}

static PyObject *
rlock_is_owned(rlockobject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(rlock_mine(self));
}

static PyObject *
rlock_recursion_count(rlockobject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLong(rlock_mine(self) ? rlock_count(self) : 0);
}

/* For Condition.wait: lets go of every level at once, returning them.
 * Only the holder may (as CPython's RLock from 3.13; before, any thread
 * could let go of another's hold). */
static PyObject *
rlock_release_save(rlockobject *self, PyObject *Py_UNUSED(ignored))
{
    if (!rlock_mine(self)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot release un-acquired lock");
        return NULL;
    }
    PyObject *saved = Py_BuildValue("(kk)", rlock_count(self),
                                    rlock_owner(self));
    if (saved == NULL) {
        return NULL;
    }
    rlock_note(self, 0, 0);
    lock_core_release(self->core);
    return saved;
}

/* For Condition.wait: takes the lock back with the levels saved. */
static PyObject *
rlock_acquire_restore(rlockobject *self, PyObject *saved)
{
    unsigned long count, owner;
    if (!PyTuple_Check(saved)
        || !PyArg_ParseTuple(saved, "kk:_acquire_restore", &count, &owner)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError,
                            "_acquire_restore() needs a (count, owner) tuple");
        }
        return NULL;
    }
    if (count == 0) {
        PyErr_SetString(PyExc_ValueError,
                        "_acquire_restore() needs a count of 1 or more");
        return NULL;
    }
    xthread_state *state = rlock_state(self);
    if (state == NULL) {
        return NULL;
    }
    switch (lock_core_acquire(state, self->core, -1)) {
    case WAIT_DONE:
        rlock_note(self, owner, count);
        Py_RETURN_NONE;
    case WAIT_INTERRUPTED:
        return raise_outstanding(current_record(state));
    default:
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "could not take the lock");
        }
        return NULL;
    }
}

static PyObject *
rlock_at_fork_reinit(rlockobject *self, PyObject *Py_UNUSED(ignored))
{
    if (lock_core_reinit(self->core) < 0) {
        return NULL;
    }
    rlock_note(self, 0, 0);
    Py_RETURN_NONE;
}

static PyObject *
rlock_repr(rlockobject *self)
{
    unsigned long count = rlock_count(self);
    unsigned long holder = rlock_owner(self);
    PyObject *owner = count > 0 && holder != 0
                      ? PyLong_FromUnsignedLong(holder) : Py_NewRef(Py_None);
    if (owner == NULL) {
        return NULL;
    }
    PyObject *res = PyUnicode_FromFormat(
        "<%s %s object owner=%R count=%lu at %p>",
        atomic_load(&self->core->locked) ? "locked" : "unlocked",
        Py_TYPE(self)->tp_name, owner, count, (void *)self);
    Py_DECREF(owner);
    return res;
}

static PyObject *
rlock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if ((kwds != NULL && PyDict_GET_SIZE(kwds) != 0)
        || PyTuple_GET_SIZE(args) != 0) {
        PyErr_SetString(PyExc_TypeError, "RLock() takes no arguments");
        return NULL;
    }
    lock_core *core = lock_core_new();
    if (core == NULL) {
        return PyErr_NoMemory();
    }
    rlockobject *self = (rlockobject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        lock_core_decref(core);
        return NULL;
    }
    self->core = core;
    rlock_note(self, 0, 0);
    self->weakreflist = NULL;
    return (PyObject *)self;
}

static void
rlock_dealloc(rlockobject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->core != NULL) {
        lock_core_decref(self->core);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

PyDoc_STRVAR(rlock_enter_doc,
"__enter__($self, /)\n--\n\n"
"Take the lock, waiting as long as it takes (acquire()).");

PyDoc_STRVAR(rlock_exit_doc,
"__exit__($self, /, *exc_info)\n--\n\n"
"Release one level of the lock.");

static PyMethodDef rlock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))rlock_acquire,
     METH_VARARGS | METH_KEYWORDS, rlock_acquire_doc},
    {"release", (PyCFunction)rlock_release, METH_NOARGS, rlock_release_doc},
    {"locked", (PyCFunction)rlock_locked, METH_NOARGS,
     "locked($self, /)\n--\n\nReturn whether the lock is held."},
    {"__enter__", (PyCFunction)(void (*)(void))rlock_acquire,
     METH_VARARGS | METH_KEYWORDS, rlock_enter_doc},
    {"__exit__", (PyCFunction)rlock_exit, METH_VARARGS, rlock_exit_doc},
    {"_is_owned", (PyCFunction)rlock_is_owned, METH_NOARGS, NULL},
    {"_recursion_count", (PyCFunction)rlock_recursion_count, METH_NOARGS,
     NULL},
    {"_release_save", (PyCFunction)rlock_release_save, METH_NOARGS, NULL},
    {"_acquire_restore", (PyCFunction)rlock_acquire_restore, METH_O, NULL},
    {"_at_fork_reinit", (PyCFunction)rlock_at_fork_reinit, METH_NOARGS,
     NULL},
    {NULL, NULL, 0, NULL}
};

static PyMemberDef rlock_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(rlockobject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL}
};

PyDoc_STRVAR(rlock_doc,
"RLock()\n--\n\n"
"A reentrant lock: the thread that holds it may acquire it again and must\n"
"release it as many times. Killable, as Lock.");

static PyType_Slot rlock_type_slots[] = {
    {Py_tp_dealloc, (destructor)rlock_dealloc},
    {Py_tp_repr, (reprfunc)rlock_repr},
    {Py_tp_doc, (void *)rlock_doc},
    {Py_tp_methods, rlock_methods},
    {Py_tp_members, rlock_members},
    {Py_tp_new, rlock_new},
    {0, NULL}
};

PyType_Spec rlock_type_spec = {
    .name = "xthread.RLock",
    .basicsize = sizeof(rlockobject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = rlock_type_slots,
};

static PyObject *
xthread_allocate_lock(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return (PyObject *)newlockobject(get_xthread_state(module)->lock_type);
}

PyDoc_STRVAR(allocate_lock_doc,
"allocate_lock($module, /)\n--\n\n"
"Create a new, unlocked lock object.");

PyDoc_STRVAR(allocate_doc,
"allocate($module, /)\n--\n\n"
"An obsolete synonym of allocate_lock().");

/* The module functions defined here; module.c adds them. */
PyMethodDef xthread_lock_methods[] = {
    {"allocate_lock", xthread_allocate_lock, METH_NOARGS, allocate_lock_doc},
    {"allocate", xthread_allocate_lock, METH_NOARGS, allocate_doc},
    {NULL, NULL, 0, NULL}
};
