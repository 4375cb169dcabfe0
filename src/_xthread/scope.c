/* scope.c: delivery scopes, shields and the Scoped type. What each offers
 * and who may call it: scope.h. */
#include "xthread.h"
#include "deliver.h"
#include "record.h"
#include "thread.h"
#include "scope.h"

/* Opens a scope in the calling thread, owned by `owner` (may be NULL);
 * returns its token, or 0 with an exception set. */
static unsigned long long
record_scope_push(xthread_state *state, recordobject *rec, const void *owner)
{
    unsigned long long token = new_token(state);
    /* Senders read the scopes (record_in_scope) under the lock. */
    record_lock(rec);
    if (rec->nscopes == rec->scopes_cap) {
        Py_ssize_t cap = rec->scopes_cap ? rec->scopes_cap * 2 : 4;
        scope_entry *grown = PyMem_RawRealloc(
            rec->scopes, (size_t)cap * sizeof(scope_entry));
        if (grown == NULL) {
            record_unlock(rec);
            PyErr_NoMemory();
            return 0;
        }
        rec->scopes = grown;
        rec->scopes_cap = cap;
    }
    rec->scopes[rec->nscopes].token = token;
    rec->scopes[rec->nscopes].owner = owner;
    rec->nscopes++;
    record_unlock(rec);
    return token;
}

/* The token of the innermost scope that `owner` opened in this thread,
 * or 0. In the thread itself, the only writer of its scopes: no lock. */
static unsigned long long
record_scope_owned(recordobject *rec, const void *owner)
{
    for (Py_ssize_t i = rec->nscopes - 1; i >= 0; i--) {
        if (rec->scopes[i].owner == owner) {
            return rec->scopes[i].token;
        }
    }
    return 0;
}

/* Closes a scope: what was sent for it and has not landed never will.
 * GIL held; takes the record's lock; keeps any exception that is set. */
static void
record_scope_close(recordobject *rec, unsigned long long scope)
{
    record_lock(rec);
    for (Py_ssize_t i = rec->nscopes - 1; i >= 0; i--) {
        if (rec->scopes[i].token == scope) {
            memmove(&rec->scopes[i], &rec->scopes[i + 1],
                    (size_t)(rec->nscopes - i - 1) * sizeof(scope_entry));
            rec->nscopes--;
            break;
        }
    }
    record_drop_queued(rec, scope);
    if (rec->deferred != NULL && rec->deferred_scope == scope) {
        Py_CLEAR(rec->deferred);
    }
    if (rec->outstanding != NULL && rec->outstanding_scope == scope) {
        record_withdraw(rec);
        record_send_next(rec);
    }
    record_unlock(rec);
}

static PyObject *
xthread_scope_enter(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    xthread_state *state = get_xthread_state(module);
    recordobject *rec = current_record(state);
    if (rec == NULL) {
        return NULL;
    }
    unsigned long long scope = record_scope_push(state, rec, NULL);
    return scope == 0 ? NULL : PyLong_FromUnsignedLongLong(scope);
}

static PyObject *
xthread_scope_exit(PyObject *module, PyObject *arg)
{
    unsigned long long scope = PyLong_AsUnsignedLongLong(arg);
    if (scope == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    recordobject *rec = current_record(get_xthread_state(module));
    if (rec == NULL) {
        return NULL;
    }
    record_scope_close(rec, scope);
    Py_RETURN_NONE;
}

/* Enters one level of the calling thread's shields. What was sent just
 * before and has not landed yet is held back too. */
static void
record_shield_enter(recordobject *rec)
{
    record_lock(rec);
    rec->shield_depth++;
    if (rec->outstanding != NULL) {
        if (rec->deferred == NULL) {
            rec->deferred = Py_NewRef(rec->outstanding);
            rec->deferred_scope = rec->outstanding_scope;
        }
        record_withdraw(rec);
    }
    record_unlock(rec);
}

static PyObject *
xthread_shield_enter(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    recordobject *rec = current_record(get_xthread_state(module));
    if (rec == NULL) {
        return NULL;
    }
    record_shield_enter(rec);
    Py_RETURN_NONE;
}

static PyObject *
xthread_shield_exit(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    recordobject *rec = current_record(get_xthread_state(module));
    if (rec == NULL) {
        return NULL;
    }
    /* Only the thread itself changes its depth once its record is made
     * (the record was published under the registry's mutex): its own
     * read needs no lock. */
    if (rec->shield_depth <= 0) {
        PyErr_SetString(PyExc_RuntimeError, "shield exited more than entered");
        return NULL;
    }
    if (record_shield_exit(rec) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Calls func() with one level of the calling thread's shields lifted, and
 * puts it back before any bytecode of the caller runs: what an xthread
 * Thread's bootstrap runs its target and excepthook with, so that a stop
 * lands inside them and never in the bootstrap's own bookkeeping, and
 * what Condition.wait waits with. If that was the last level, what was
 * held back before is raised at once instead of calling func, and what
 * was sent and has not landed when func returns is held back again; with
 * shields of the caller's own below it, func runs shielded still. */
static PyObject *
xthread_call_unshielded(PyObject *module, PyObject *func)
{
    xthread_state *state = get_xthread_state(module);
    PyObject *res = NULL;
    recordobject *rec;
    reg_entry *boot_entry = current_boot_entry(state);
    int lifted = boot_entry != NULL
                 ? entry_start_shield_add(state, boot_entry, -1) : 0;
    if (lifted < 0) {
        PyErr_SetString(PyExc_RuntimeError, "_call_unshielded needs a shield");
        return NULL;
    }
    if (lifted) {
        /* A started thread with no record yet: nothing was sent to it, so
         * nothing is held back. Its record, if func makes one, starts
         * unshielded; if it has none still, the start shield is put back
         * (one step under the mutex with the check, as a sender makes the
         * record from it), else the record's shield below. */
        res = PyObject_CallNoArgs(func);
        if (entry_start_shield_add(state, boot_entry, 1) == 1) {
            return res;
        }
        rec = (recordobject *)Py_NewRef((PyObject *)boot_entry->record);
    }
    else {
        rec = current_record(state);
        if (rec == NULL) {
            return NULL;
        }
        record_lock(rec);
        if (rec->shield_depth < 1) {
            record_unlock(rec);
            PyErr_SetString(PyExc_RuntimeError,
                            "_call_unshielded needs a shield");
            return NULL;
        }
        Py_INCREF(rec);
        PyObject *held = NULL;
        if (--rec->shield_depth == 0 && rec->deferred != NULL) {
            held = rec->deferred;
            rec->deferred = NULL;
            rec->landed_at_us = monotonic_us();
        }
        else if (rec->shield_depth == 0) {
            /* What was queued behind an earlier held-back exception goes
             * now, to land in func (a killable wait raises it at once);
             * else it would wait for some later delivery to land. */
            record_send_next(rec);
        }
        record_unlock(rec);
        if (held != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(held), held);
            Py_DECREF(held);
        }
        else {
            res = PyObject_CallNoArgs(func);
        }
    }
    record_shield_enter(rec);
    Py_DECREF(rec);
    return res;
}

// Scoped: a context manager whose block is a delivery scope

/* The base of xthread.time_limit (and anything else whose exceptions are
 * meant for one block). __enter__ opens a scope and then calls the
 * subclass's _scope_entered(token); __exit__ closes the scope *before*
 * any Python code runs, then calls _scope_exited(token). So an exception
 * sent for the block can land only inside it: once __exit__ is called,
 * the interpreter reaches no bytecode boundary before the scope is
 * closed and what is pending for it withdrawn. If _scope_entered fails,
 * _scope_exited(token) is called all the same (with the failure kept), so
 * the hooks may undo part of an entry. Reentrant: a stack of tokens per
 * object. */
typedef struct {
    PyObject_HEAD
} scopedobject;

/* The scope token goes to the hooks as an int. */
static PyObject *
scoped_enter(scopedobject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &xthread_module);
    if (module == NULL) {
        return NULL;
    }
    xthread_state *state = get_xthread_state(module);
    recordobject *rec = current_record(state);
    if (rec == NULL) {
        return NULL;
    }
    /* Scopes are kept on the thread's record, tagged with this object: one
     * object may be entered by several threads at once, and nested. */
    unsigned long long scope = record_scope_push(state, rec, self);
    if (scope == 0) {
        return NULL;
    }
    PyObject *token = PyLong_FromUnsignedLongLong(scope);
    PyObject *res = token == NULL ? NULL : PyObject_CallMethodOneArg(
        (PyObject *)self, state->str_entered, token);
    if (res == NULL) {
        /* The block will not run: close the scope again, and let the hooks
         * undo what _scope_entered did before it failed (an exception for
         * an outer scope may land in it after its work is done). */
        record_scope_close(rec, scope);
        if (token != NULL) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyObject *undo = PyObject_CallMethodOneArg(
                (PyObject *)self, state->str_exited, token);
            if (undo == NULL) {
                XTHREAD_WRITE_UNRAISABLE(
                    "while undoing a scope's entry",
                    (PyObject *)self);
            }
            Py_XDECREF(undo);
            PyErr_Restore(type, value, tb);
        }
        Py_XDECREF(token);
        return NULL;
    }
    Py_XDECREF(token);
    Py_DECREF(res);
    return Py_NewRef((PyObject *)self);
}

static PyObject *
scoped_exit(scopedobject *self, PyObject *Py_UNUSED(args))
{
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &xthread_module);
    if (module == NULL) {
        return NULL;
    }
    xthread_state *state = get_xthread_state(module);
    recordobject *rec = current_record(state);
    if (rec == NULL) {
        return NULL;
    }
    unsigned long long scope = record_scope_owned(rec, self);
    if (scope == 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "__exit__ without __enter__ in this thread");
        return NULL;
    }
    record_scope_close(rec, scope);
    PyObject *token = PyLong_FromUnsignedLongLong(scope);
    if (token == NULL) {
        return NULL;
    }
    PyObject *res = PyObject_CallMethodOneArg(
        (PyObject *)self, state->str_exited, token);
    Py_DECREF(token);
    if (res == NULL) {
        return NULL;
    }
    Py_DECREF(res);
    Py_RETURN_FALSE;
}

static void
scoped_dealloc(scopedobject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (tp->tp_clear != NULL) {
        tp->tp_clear((PyObject *)self);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int
scoped_traverse(scopedobject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static PyObject *
scoped_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
           PyObject *Py_UNUSED(kwds))
{
    return type->tp_alloc(type, 0);
}

static PyMethodDef scoped_methods[] = {
    {"__enter__", (PyCFunction)scoped_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\n"
     "Open a delivery scope, then call self._scope_entered(token)."},
    {"__exit__", (PyCFunction)scoped_exit, METH_VARARGS,
     "__exit__($self, /, *exc_info)\n--\n\n"
     "Close the scope (withdrawing what is pending for it), then call\n"
     "self._scope_exited(token)."},
    {NULL, NULL, 0, NULL}
};

static PyType_Slot scoped_type_slots[] = {
    {Py_tp_new, scoped_new},
    {Py_tp_dealloc, (destructor)scoped_dealloc},
    {Py_tp_traverse, (traverseproc)scoped_traverse},
    {Py_tp_methods, scoped_methods},
    {Py_tp_doc, (void *)"A context manager whose block is a delivery scope."},
    {0, NULL}
};

PyType_Spec scoped_type_spec = {
    .name = "_xthread.Scoped",
    .basicsize = sizeof(scopedobject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = scoped_type_slots,
};

/* The module functions defined here; module.c adds them. */
PyMethodDef xthread_scope_methods[] = {
    {"_scope_enter", xthread_scope_enter, METH_NOARGS,
     "_scope_enter($module, /)\n--\n\n"
     "Open a delivery scope in this thread; return its token."},
    {"_scope_exit", xthread_scope_exit, METH_O,
     "_scope_exit($module, scope, /)\n--\n\n"
     "Close a scope: what was sent for it and has not landed is withdrawn."},
    {"_shield_enter", xthread_shield_enter, METH_NOARGS,
     "_shield_enter($module, /)\n--\n\n"
     "Hold back exceptions sent through xthread until the shield exits."},
    {"_shield_exit", xthread_shield_exit, METH_NOARGS,
     "_shield_exit($module, /)\n--\n\n"
     "Leave a shield; at the outermost, raise what was held back."},
    {"_call_unshielded", xthread_call_unshielded, METH_O,
     "_call_unshielded($module, func, /)\n--\n\n"
     "Call func() with the thread's one shield lifted; put it back after."},
    {NULL, NULL, 0, NULL}
};
