/* deliver.c: an exception sent to another thread through xthread:
 * carriers, withdrawal and raising at a killable wait, the sender
 * (_deliver: generation, scope and shield checks, then record_send, which
 * arms it through landing.c or hands it to the interpreter), the queue of
 * deliveries behind the outstanding one, and set_async_exc. What each
 * offers and who may call it: deliver.h. */
#include "xthread.h"
#include "landing.h"
#include "park.h"
#include "record.h"
#include "wake.h"
#include "deliver.h"

/* A carrier class's attribute: see "A carrier is a class" below. */
#define CARRIER_ATTR "__xthread_delivery__"

/* Takes the plain copy of rec's exception, pending in the calling
 * thread (its target), out of the interpreter loop by letting the loop
 * raise it at the start of a no-op call: unlike a withdrawal, that clears
 * the async-exception signal (see XTHREAD_TAKE_PLAIN). The carrier is
 * dropped unraised (its tp_new never runs: it lands nothing). Keeps any
 * exception that is set. The GIL may be handed over meanwhile, so a
 * sender may have sent another plain copy: rec->plain tells. */
static void
plain_take(recordobject *rec)
{
    if (!XTHREAD_TAKE_PLAIN || !xthread_can_take_plain()
        || rec->ident != PyThread_get_thread_ident()) {
        return;
    }
    xthread_state *state = PyType_GetModuleState(Py_TYPE(rec));
    if (state == NULL || state->plain_nop == NULL) {
        PyErr_Clear();
        return;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    for (int tries = 0; rec->plain && tries < 2; tries++) {
        PyObject *res = PyObject_CallNoArgs(state->plain_nop);
        if (res != NULL) {
            Py_DECREF(res);
            break;      /* nothing was pending: the copy landed already */
        }
        PyObject *t, *v, *b;
        PyErr_Fetch(&t, &v, &b);
        /* A carrier is ours (the thread's one pending exception); else a
         * RecursionError or MemoryError of the call itself: the copy is
         * still pending and gets withdrawn. */
        int ours = t != NULL && PyType_Check(t)
                   && PyObject_HasAttrString(t, CARRIER_ATTR);
        Py_XDECREF(t);
        Py_XDECREF(v);
        Py_XDECREF(b);
        if (!ours) {
            break;
        }
        rec->plain = 0;
    }
    PyErr_Restore(type, value, tb);
}

/* Clears the async-exception signal that a withdrawal may have left set
 * (see XTHREAD_TAKE_PLAIN) before the caller arms a delivery: raises a
 * throwaway exception in the calling thread at the start of a no-op call.
 * Not when the caller has an exception of its own pending (it clears the
 * signal when it lands) or an armed delivery of its own (which would
 * land in the call). Returns 0, or -1 with the exception that the call
 * raised instead (a signal handler's, in the main thread). */

static int
signal_clear(xthread_state *state)
{
    if (!XTHREAD_TAKE_PLAIN || state->signal_clearer == NULL
        || xthread_own_async_pending()) {
        return 0;
    }
    recordobject *own = current_record_if_any(state);
    if (own != NULL && own->armed) {
        return 0;
    }
    unsigned long me = PyThread_get_thread_ident();
    if (PyThreadState_SetAsyncExc(me, state->signal_clearer) != 1) {
        return 0;
    }
    PyObject *res = PyObject_CallNoArgs(state->plain_nop);
    if (res != NULL) {
        /* Not raised there (cannot happen): take it back. */
        Py_DECREF(res);
        PyThreadState_SetAsyncExc(me, NULL);
        return 0;
    }
    if (PyErr_ExceptionMatches(state->signal_clearer)) {
        PyErr_Clear();
        return 0;
    }
    /* Raised before ours (a signal handler's): ours is still pending. */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyThreadState_SetAsyncExc(me, NULL);
    PyErr_Restore(type, value, tb);
    return -1;
}

/* Withdraws an exception sent through xthread that has not landed yet,
 * and whatever was armed for it. GIL held; takes the record's lock. */
void
record_withdraw(recordobject *rec)
{
    record_lock(rec);
    record_disarm(rec);
    if (rec->outstanding != NULL) {
        if (rec->plain) {
            plain_take(rec);
        }
        if (rec->plain) {
            PyThreadState_SetAsyncExc(rec->ident, NULL);
        }
        Py_CLEAR(rec->outstanding);
    }
    rec->plain = 0;
    record_unlock(rec);
}

/* Raises, in the calling thread and now, the exception sent to it (what
 * interrupted a killable wait, or an armed delivery at a covered
 * instruction), withdrawing it from the interpreter loop and disarming,
 * so that it is raised once. Always returns NULL. */
PyObject *
raise_outstanding(recordobject *rec)
{
    if (rec == NULL) {
        return NULL;    /* current_record() failed: its error is set */
    }
    record_lock(rec);
    PyObject *exc = rec->outstanding;
    if (exc == NULL) {
        record_unlock(rec);
        PyErr_SetString(PyExc_SystemError, "no exception was sent");
        return NULL;
    }
    Py_INCREF(exc);
    record_withdraw(rec);
    rec->landed_at_us = monotonic_us();
    if (rec->landed != NULL) {
        sem_post(rec->landed, &rec->landed_posted);     /* hand_over_gil */
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    record_send_next(rec);
    record_unlock(rec);
    return NULL;
}


/* Leaves one level of the calling thread's shields; at the outermost,
 * raises what was held back (returns -1 with it set). GIL held; takes
 * the record's lock. */
int
record_shield_exit(recordobject *rec)
{
    int rc = 0;
    record_lock(rec);
    if (--rec->shield_depth == 0 && rec->deferred != NULL) {
        PyObject *exc = rec->deferred;
        rec->deferred = NULL;
        rec->landed_at_us = monotonic_us();
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        rc = -1;
    }
    record_send_next(rec);
    record_unlock(rec);
    return rc;
}

// Delivery: exceptions sent through xthread

/* A carrier is a class made for one delivery. PyThreadState_SetAsyncExc
 * raises a class by calling it with no arguments; the carrier's tp_new
 * returns the instance it was made for, whatever it is called with (3.9-3.11
 * may call it more than once per delivery), and notes on the target's
 * record that the exception has landed: it runs in the target thread when
 * the interpreter instantiates the exception.
 *
 * It is made from a PyType_Spec with `type` as its metaclass, so that no
 * code of the instance's class runs (no metaclass, no __init_subclass__).
 * Which base it needs differs by version: see XTHREAD_CARRIER_BASE in
 * compat.h. The class attribute CARRIER_ATTR (defined above) holds a
 * tuple (instance, record or None, token). */

static PyObject *
carrier_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
            PyObject *Py_UNUSED(kwds))
{
    PyObject *delivery = PyObject_GetAttrString((PyObject *)type,
                                                CARRIER_ATTR);
    if (delivery == NULL) {
        return NULL;
    }
    if (!PyTuple_Check(delivery) || PyTuple_GET_SIZE(delivery) != 3) {
        Py_DECREF(delivery);
        PyErr_SetString(PyExc_SystemError, "broken exception carrier");
        return NULL;
    }
    PyObject *instance = Py_NewRef(PyTuple_GET_ITEM(delivery, 0));
    PyObject *rec_obj = PyTuple_GET_ITEM(delivery, 1);
    if (rec_obj != Py_None) {
        recordobject *rec = (recordobject *)rec_obj;
        unsigned long long token =
            PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(delivery, 2));
        record_lock(rec);
        if (rec->outstanding != NULL && rec->outstanding_token == token) {
            record_disarm(rec);
            rec->plain = 0;
            Py_CLEAR(rec->outstanding);
            rec->landed_at_us = monotonic_us();
            if (rec->landed != NULL) {
                sem_post(rec->landed, &rec->landed_posted);
            }
            record_send_next(rec);
        }
        record_unlock(rec);
    }
    Py_DECREF(delivery);
    return instance;
}

static PyType_Slot carrier_slots[] = {
    {Py_tp_new, carrier_new},
    {0, NULL}
};

static PyType_Spec carrier_spec = {
    .name = "_xthread.carrier",
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = carrier_slots,
};

/* Returns a new reference to a carrier for `instance`, told to `rec`
 * (may be NULL) under `token`, or NULL with an exception set. */
PyObject *
make_carrier(PyObject *instance, recordobject *rec, unsigned long long token)
{
    PyTypeObject *cls = Py_TYPE(instance);
    if (XTHREAD_CARRIER_SUBCLASSES && !(PyType_GetFlags(cls) & Py_TPFLAGS_BASETYPE)) {
        PyErr_Format(PyExc_TypeError,
                     "cannot send an instance of %.200s on this Python: the "
                     "class does not allow subclasses; send the class "
                     "instead", cls->tp_name);
        return NULL;
    }
    PyObject *bases = PyTuple_Pack(1, XTHREAD_CARRIER_BASE(cls));
    if (bases == NULL) {
        return NULL;
    }
    PyObject *carrier = PyType_FromSpecWithBases(&carrier_spec, bases);
    Py_DECREF(bases);
    if (carrier == NULL) {
        return NULL;
    }
    PyObject *delivery = Py_BuildValue(
        "(OOK)", instance, rec != NULL ? (PyObject *)rec : Py_None, token);
    if (delivery == NULL
        || PyObject_SetAttrString(carrier, CARRIER_ATTR, delivery) < 0) {
        Py_XDECREF(delivery);
        goto error;
    }
    Py_DECREF(delivery);
    /* Named as the instance's class: on 3.9/3.10 sys.exc_info()[0] in the
     * target's handler is the carrier. */
    static const char *copied[] = {"__name__", "__qualname__", "__module__"};
    for (size_t i = 0; i < sizeof(copied) / sizeof(copied[0]); i++) {
        PyObject *attr = PyObject_GetAttrString((PyObject *)cls, copied[i]);
        if (attr == NULL) {
            goto error;
        }
        int rc = PyUnicode_Check(attr)
                 ? PyObject_SetAttrString(carrier, copied[i], attr) : 0;
        Py_DECREF(attr);
        if (rc < 0) {
            goto error;
        }
    }
    return carrier;

error:
    Py_DECREF(carrier);
    return NULL;
}

/* Parses a thread identifier: a non-negative int. */
int
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

/* Turns an exception class or instance into an instance (new reference);
 * NULL with TypeError for anything else. A class is called with no
 * arguments here, in the sender, so that a class that needs arguments
 * fails where it can be reported. */
static PyObject *
exception_instance(PyObject *exc)
{
    if (PyExceptionInstance_Check(exc)) {
        return Py_NewRef(exc);
    }
    if (PyExceptionClass_Check(exc)) {
        PyObject *inst = PyObject_CallNoArgs(exc);
        if (inst != NULL && !PyExceptionInstance_Check(inst)) {
            PyErr_Format(PyExc_TypeError,
                         "calling %R should have returned an instance of "
                         "BaseException, not %.200s",
                         exc, Py_TYPE(inst)->tp_name);
            Py_CLEAR(inst);
        }
        return inst;
    }
    PyErr_Format(PyExc_TypeError,
                 "exception must be a BaseException subclass or instance, "
                 "not %.200s", Py_TYPE(exc)->tp_name);
    return NULL;
}

/* Hands `instance` to the target's interpreter loop. GIL held; no Python
 * code runs between the caller's checks and this. Returns the number of
 * thread states that took it (0 or 1), or -1 with SystemError set. */
int
set_async(unsigned long ident, PyObject *carrier)
{
    int n = PyThreadState_SetAsyncExc(ident, carrier);
    if (n > 1) {
        /* Two thread states with one ident: cannot happen in a sane
         * interpreter. Undo, so that no thread gets it. */
        PyThreadState_SetAsyncExc(ident, NULL);
        PyErr_Format(PyExc_SystemError,
                     "%d threads have ident %lu; the exception was "
                     "withdrawn", n, ident);
        return -1;
    }
    return n;
}

/* Hands `instance` to the thread of `rec` and stores it as outstanding:
 * armed where landing is needed, otherwise (or when it cannot be armed)
 * plain, through `carrier` (made here when NULL). A parked thread is
 * not armed (the caller unparks it): its wait raises the outstanding
 * exception, and if the wait ends otherwise (the lock was granted first)
 * the thread arms it as it leaves (record_arm_deferred). Not plain:
 * withdrawing a plain exception that the wait raised itself would leave
 * every thread's eval breaker
 * signalled on 3.11, which livelocks a traced frame at its RESUME.
 * Returns 1 if the thread took it, 0 if no thread has the ident, -1 with
 * an exception set. GIL held, and the record's lock. */
static int
record_send(xthread_state *state, recordobject *rec, PyObject *instance,
            PyObject *carrier, unsigned long long scope,
            unsigned long long token)
{
    int needs_landing = XTHREAD_LANDING != 0;
    if (needs_landing && landing_ready(state)) {
        Py_XSETREF(rec->outstanding, Py_NewRef(instance));
        rec->outstanding_scope = scope;
        rec->outstanding_token = token;
        rec->sent_at_us = monotonic_us();
        rec->landed_at_us = 0;
        rec->unguarded = 0;
        rec->land_next = 0;
        /* A thread in a killable wait raises it from the wait: no arming
         * (each one switches sys.monitoring events on and off, and stops
         * the world on a free-threaded build). If the wait ends otherwise,
         * the thread arms it as it leaves (park_end); the count of parked
         * threads is read after the store, and the thread reads
         * `outstanding` after leaving the count, under this lock. */
        rec->arm_deferred = record_parked(rec);
        if (rec->arm_deferred) {
            return 1;
        }
        int armed = record_arm(state, rec);
        record_arm_settle(state, rec);
        if (armed > 0) {
            return 1;
        }
        if (armed < 0) {
            xthread_unraisable(instance);
        }
        if (rec->outstanding == NULL || rec->outstanding_token != token) {
            return 1;       /* landed (or withdrawn) while arming */
        }
        record_disarm(rec);
        Py_CLEAR(rec->outstanding);
    }
    PyObject *own = NULL;
    if (carrier == NULL) {
        carrier = own = make_carrier(instance, rec, token);
        if (carrier == NULL) {
            return -1;
        }
    }
    int n = set_async(rec->ident, carrier);
    Py_XDECREF(own);
    if (n == 1) {
        Py_XSETREF(rec->outstanding, Py_NewRef(instance));
        rec->outstanding_scope = scope;
        rec->outstanding_token = token;
        rec->sent_at_us = monotonic_us();
        rec->landed_at_us = 0;
        rec->unguarded = needs_landing;
        rec->plain = 1;
    }
    return n;
}

void
record_arm_deferred(recordobject *rec)
{
    record_lock(rec);
    if (!rec->arm_deferred) {
        record_unlock(rec);
        return;
    }
    rec->arm_deferred = 0;
    xthread_state *state = PyType_GetModuleState(Py_TYPE(rec));
    if (rec->outstanding == NULL || state == NULL) {
        record_unlock(rec);
        return;
    }
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    int armed = record_arm(state, rec);
    record_arm_settle(state, rec);
    if (armed < 0) {
        xthread_unraisable(rec->outstanding);
    }
    if (armed <= 0 && rec->outstanding != NULL) {
        /* Plain, as a sender falls back to: at its next check. */
        record_disarm(rec);
        PyObject *carrier = make_carrier(rec->outstanding, rec,
                                         rec->outstanding_token);
        int n = carrier != NULL ? set_async(rec->ident, carrier) : -1;
        Py_XDECREF(carrier);
        if (n < 0) {
            xthread_unraisable(rec->outstanding);
        }
        else if (n == 1) {
            rec->plain = 1;
            rec->unguarded = XTHREAD_LANDING != 0;
        }
    }
    PyErr_Restore(et, ev, tb);
    record_unlock(rec);
}

/* Removes the queued deliveries meant for `scope`. GIL held, and the
 * record's lock. */
void
record_drop_queued(recordobject *rec, unsigned long long scope)
{
    if (rec->queue == NULL) {
        return;
    }
    for (Py_ssize_t i = PyList_GET_SIZE(rec->queue) - 1; i >= 0; i--) {
        PyObject *item = PyList_GET_ITEM(rec->queue, i);
        if (PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 1)) == scope) {
            PyList_SetSlice(rec->queue, i, i + 1, NULL);
        }
    }
}

static int record_in_scope(recordobject *rec, unsigned long long scope);

/* Sends the next queued delivery once nothing is outstanding and no
 * shield holds the thread: a thread holds one pending exception in the
 * interpreter, and a second one sent before the first lands would replace
 * it (an outer limit's exception caught by the inner limit's handler).
 * GIL held; runs in the target thread or a sender; takes the record's
 * lock; keeps any exception that is set, and reports its own failures as
 * unraisable. */
void
record_send_next(recordobject *rec)
{
    record_lock(rec);
    if (rec->queue == NULL || PyList_GET_SIZE(rec->queue) == 0
        || rec->outstanding != NULL || rec->shield_depth > 0 || rec->ended) {
        record_unlock(rec);
        return;
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    while (rec->outstanding == NULL && PyList_GET_SIZE(rec->queue) > 0) {
        PyObject *item = Py_NewRef(PyList_GET_ITEM(rec->queue, 0));
        PyList_SetSlice(rec->queue, 0, 1, NULL);
        PyObject *instance = PyTuple_GET_ITEM(item, 0);
        unsigned long long scope =
            PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 1));
        unsigned long long token =
            PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 2));
        if (scope != 0 && !record_in_scope(rec, scope)) {
            Py_DECREF(item);
            continue;
        }
        xthread_state *state = PyType_GetModuleState(Py_TYPE(rec));
        int n = state != NULL
                ? record_send(state, rec, instance, NULL, scope, token) : -1;
        if (n < 0) {
            xthread_unraisable(instance);
        }
        else if (n == 1 && record_parked(rec)) {
            unpark(rec);
        }
        Py_DECREF(item);
    }
    PyErr_Restore(exc_type, exc_value, exc_tb);
    record_unlock(rec);
}

/* Queues a delivery behind the one outstanding or deferred. Under the
 * record's lock. */
static int
record_enqueue(recordobject *rec, PyObject *instance,
               unsigned long long scope, unsigned long long token)
{
    if (rec->queue == NULL) {
        rec->queue = PyList_New(0);
        if (rec->queue == NULL) {
            return -1;
        }
    }
    PyObject *item = Py_BuildValue("(OKK)", instance, scope, token);
    if (item == NULL) {
        return -1;
    }
    int rc = PyList_Append(rec->queue, item);
    Py_DECREF(item);
    return rc;
}

static int
record_in_scope(recordobject *rec, unsigned long long scope)
{
    for (Py_ssize_t i = 0; i < rec->nscopes; i++) {
        if (rec->scopes[i].token == scope) {
            return 1;
        }
    }
    return 0;
}

/* The sender holds the GIL after PyThreadState_SetAsyncExc, and a sender
 * that goes on running Python would keep the target waiting for the
 * switch interval (5 ms by default) before it can raise. Drop the GIL
 * until the exception lands (the carrier posts `landed`), at most
 * HANDOFF_US: the target takes the GIL at once. A target stuck in a C
 * call never lands; the cap bounds what that costs the sender. */
#define HANDOFF_US 2000

/* How long an armed delivery may go without landing before a
 * re-delivery also sends it plain (see xthread_deliver). */
#define PLAIN_AFTER_US 50000

static void
hand_over_gil(xthread_state *state, recordobject *rec, int woken)
{
    record_lock(rec);       /* two senders may make it at once */
    int made = record_semaphore(&rec->landed);
    record_unlock(rec);
    if (made < 0) {
        PyErr_Clear();      /* no hand-over, no harm */
        return;
    }
    /* Drop a stale post of an earlier delivery first. */
    sem_wait_for(rec->landed, &rec->landed_posted, 0, 0);
    if (!record_has_outstanding(rec)) {
        return;
    }
    if (woken) {
        /* The thread was signalled out of a call: the signal may have come
         * just before it entered its system call; send it again. */
        wake_until_landed(state, rec->ident, rec, HANDOFF_US);
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    sem_wait_for(rec->landed, &rec->landed_posted, HANDOFF_US, 0);
    Py_END_ALLOW_THREADS
}

static PyObject *
xthread_deliver(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ident", "exc", "generation", "scope",
                             "handoff", NULL};
    xthread_state *state = get_xthread_state(module);
    PyObject *ident_obj, *exc;
    unsigned long long generation = 0, scope = 0;
    int handoff = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|KKp:_deliver", kwlist,
                                     &ident_obj, &exc, &generation, &scope,
                                     &handoff)) {
        return NULL;
    }
    unsigned long ident;
    if (parse_ident(ident_obj, &ident) < 0) {
        return NULL;
    }
    PyObject *instance = exception_instance(exc);
    if (instance == NULL) {
        return NULL;
    }
    /* Imports on first use: Python code, so before the checks. */
    landing_load(state);
    PyObject *result = NULL, *carrier = NULL;
    recordobject *rec = NULL;
    int locked = 0;
    if (signal_clear(state) < 0) {
        goto done;
    }
    rec = registry_record(state, ident, 1);     /* NULL: no such thread */
    if (rec == NULL && PyErr_Occurred()) {
        goto done;
    }
    unsigned long long token = new_token(state);
    carrier = make_carrier(instance, rec, token);
    if (carrier == NULL) {
        goto done;
    }
    /* From here to set_async the checks and the delivery are one step:
     * under the GIL (no Python code runs on the way) and under the
     * record's lock (held to the end but for the hand-over). The thread
     * found first has a record now, so the same thread is found with the
     * same record. */
    if (rec != NULL) {
        record_lock(rec);
        locked = 1;
    }
    recordobject *now = registry_record(state, ident, 0);
    Py_XDECREF(now);        /* compared by identity only */
    if (rec != now || (rec != NULL && rec->ended)
        || (generation != 0 && (rec == NULL || rec->generation != generation))
        || (scope != 0 && (rec == NULL || !record_in_scope(rec, scope)))) {
        result = Py_NewRef(Py_False);
        goto done;
    }
    if (rec != NULL && rec->shield_depth > 0 && rec->deferred == NULL) {
        rec->deferred = Py_NewRef(instance);
        rec->deferred_scope = scope;
        rec->sent_at_us = monotonic_us();
        result = Py_NewRef(Py_True);
        goto done;
    }
    if (rec != NULL && (rec->shield_depth > 0 || rec->outstanding != NULL)) {
        /* One is pending already. A scoped one (a time limit) follows it
         * when it has landed, so that each scope gets its own; an
         * unscoped one (kill, raise_exc) is merged into it: the thread
         * holds one pending stop, as the interpreter does. */
        if (scope != 0 && record_enqueue(rec, instance, scope, token) < 0) {
            goto done;
        }
        /* A re-delivery (kill's): arm frames entered since, too; and if
         * the armed exception has not landed for PLAIN_AFTER_US, send it
         * plain as well, so that a stop is never lost: the thread may be
         * in a C call (plain lands at the call's own check, where the
         * frame's handlers apply), or on 3.11 livelocked at a traced
         * RESUME by an async-exception signal that someone else left set
         * (PyThreadState_SetAsyncExc(ident, NULL)), which only a real
         * async exception clears. Whichever lands first withdraws the
         * other (same token). Marked unguarded: plain delivery was used. */
        if (scope == 0 && rec->armed) {
            if (record_arm(state, rec) < 0) {
                xthread_unraisable(instance);
            }
            record_arm_settle(state, rec);
            /* Not where the target arms itself: whether a plain copy
             * would split depends on its innermost frame, which only the
             * GIL lets a sender read. It lands when the call returns. */
            if (rec->armed && !rec->plain && !rec->judging
                && rec->outstanding != NULL
                && monotonic_us() - rec->sent_at_us >= PLAIN_AFTER_US
                && frames_readable()
                && !plain_would_split(state, find_tstate(rec->ident))) {
                PyObject *plain = make_carrier(rec->outstanding, rec,
                                               rec->outstanding_token);
                if (plain == NULL) {
                    xthread_unraisable(instance);
                }
                else {
                    int taken = set_async(rec->ident, plain);
                    Py_DECREF(plain);
                    if (taken < 0) {
                        goto done;
                    }
                    if (taken == 1) {
                        rec->plain = 1;
                        rec->unguarded = 1;
                    }
                }
            }
        }
        /* A thread still in the call it was signalled out of (or one that
         * has entered another since) is signalled again. */
        wake_thread(state, ident, rec);
        result = Py_NewRef(Py_True);
        goto done;
    }
    int n = rec != NULL
            ? record_send(state, rec, instance, carrier, scope, token)
            : set_async(ident, carrier);
    if (n < 0) {
        goto done;
    }
    if (n == 1 && rec != NULL) {
        if (record_parked(rec)) {
            unpark(rec);
        }
        else {
            int woken = wake_thread(state, ident, rec);
            record_unlock(rec);     /* the thread takes it to land */
            locked = 0;
            if (handoff) {
                hand_over_gil(state, rec, woken);
            }
        }
    }
    else if (n == 1 && wake_thread(state, ident, NULL) && handoff) {
        wake_until_landed(state, ident, NULL, HANDOFF_US);
    }
    result = PyBool_FromLong(n == 1);
done:
    if (locked) {
        record_unlock(rec);
    }
    Py_XDECREF(carrier);
    Py_XDECREF(rec);
    Py_DECREF(instance);
    return result;
}

PyDoc_STRVAR(deliver_doc,
"_deliver($module, /, ident, exc, generation=0, scope=0, handoff=True)\n"
"--\n\n"
"Send exc (class or instance) to the thread with this ident, the one\n"
"delivery path of xthread. Returns whether a thread took it. With a\n"
"generation, only the thread of that generation takes it (idents are\n"
"reused); with a scope, only while the thread is in that scope. A\n"
"shielded thread keeps it until its shields exit; a thread in a killable\n"
"wait wakes and raises it at once; otherwise it is raised at the next\n"
"point where the interpreter checks and the handlers of the thread's\n"
"frame apply (a thread with no record: at its next bytecode boundary).\n"
"With handoff, the caller lets go of the GIL until the exception has\n"
"landed (2 ms at most), so that the target need not wait for the switch\n"
"interval.");

/* Whether thread `ident` is raising or handling (inside an except or a
 * finally) an exception of class `cls`: for kill(), which re-sends only
 * to a thread that swallowed the first, never to one that still runs its
 * cleanup with it. GIL held; the target runs no bytecode meanwhile. */
static int
exc_is(PyObject *type, PyObject *cls)
{
    return type != NULL && type != Py_None && PyType_Check(type)
           && PyType_IsSubtype((PyTypeObject *)type, (PyTypeObject *)cls);
}

/* _handling where no GIL keeps the target still (XTHREAD_SELF_ARM with
 * the GIL off): its exception chain lives in its own frames, freed under
 * a reader. sys._current_exceptions() reads it with the world stopped,
 * but gives only the innermost exception each thread handles: a thread
 * raising one, or handling one beneath another handler, is not seen. */
static PyObject *
handling_innermost(unsigned long ident, PyObject *cls)
{
    PyObject *fn = PySys_GetObject("_current_exceptions");     /* borrowed */
    if (fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "sys._current_exceptions is missing");
        return NULL;
    }
    PyObject *current = PyObject_CallNoArgs(fn);
    if (current == NULL) {
        return NULL;
    }
    PyObject *key = PyLong_FromUnsignedLong(ident);
    if (key == NULL) {
        Py_DECREF(current);
        return NULL;
    }
    PyObject *exc = PyDict_Check(current)
                    ? PyDict_GetItemWithError(current, key) : NULL;
    Py_DECREF(key);
    int found = exc != NULL && exc != Py_None
                && exc_is((PyObject *)Py_TYPE(exc), cls);
    Py_DECREF(current);     /* after the last use of its borrowed item */
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyBool_FromLong(found);
}

static PyObject *
xthread_handling(PyObject *module, PyObject *args)
{
    PyObject *ident_obj, *cls;
    if (!PyArg_ParseTuple(args, "OO!:_handling", &ident_obj, &PyType_Type,
                          &cls)) {
        return NULL;
    }
    unsigned long ident;
    if (parse_ident(ident_obj, &ident) < 0) {
        return NULL;
    }
    (void)module;
    if (!frames_readable()) {
        return handling_innermost(ident, cls);
    }
    PyThreadState *tstate = find_tstate(ident);
    if (tstate == NULL) {
        Py_RETURN_FALSE;
    }
    if (exc_is(xthread_raising_type(tstate), cls)) {
        Py_RETURN_TRUE;
    }
    for (_PyErr_StackItem *item = tstate->exc_info; item != NULL;
         item = item->previous_item) {
        PyObject *value = item->exc_value;
        if (value != NULL && value != Py_None
            && exc_is((PyObject *)Py_TYPE(value), cls)) {
            Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE;
}

static PyObject *
xthread_nudge(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ident", "generation", "scope", NULL};
    xthread_state *state = get_xthread_state(module);
    PyObject *ident_obj;
    unsigned long long generation = 0, scope = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|KK:_nudge", kwlist,
                                     &ident_obj, &generation, &scope)) {
        return NULL;
    }
    unsigned long ident;
    if (parse_ident(ident_obj, &ident) < 0) {
        return NULL;
    }
    recordobject *rec = registry_record(state, ident, 0);
    if (rec == NULL) {
        Py_RETURN_FALSE;
    }
    record_lock(rec);
    int woken = 0;
    if (rec->outstanding != NULL
        && (generation == 0 || rec->generation == generation)
        && (scope == 0 || rec->outstanding_scope == scope)) {
        woken = wake_thread(state, ident, rec);
    }
    record_unlock(rec);
    Py_DECREF(rec);
    return PyBool_FromLong(woken);
}

PyDoc_STRVAR(nudge_doc,
"_nudge($module, /, ident, generation=0, scope=0)\n"
"--\n\n"
"Signal the thread with this ident out of the system call it is blocked\n"
"in, if an exception sent to it through xthread (of that generation, for\n"
"that scope) has not landed and it is inside a call. Returns whether a\n"
"signal was sent: always False before CPython 3.15, where a signal would\n"
"not make the call raise.");

// set_async_exc

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
    PyObject *to_send = NULL;
    if (PyExceptionInstance_Check(exc)) {
        to_send = make_carrier(exc, NULL, 0);
        if (to_send == NULL) {
            return NULL;
        }
    }
    else if (PyExceptionClass_Check(exc)) {
        to_send = Py_NewRef(exc);
    }
    else if (exc != Py_None) {
        PyErr_Format(PyExc_TypeError,
                     "exception must be a BaseException subclass or "
                     "instance, or None to clear, not %.200s",
                     Py_TYPE(exc)->tp_name);
        return NULL;
    }
    int n = set_async(ident, to_send);
    Py_XDECREF(to_send);
    return n < 0 ? NULL : PyLong_FromLong(n);
}

PyDoc_STRVAR(set_async_exc_doc,
"set_async_exc($module, ident, exc, /)\n--\n\n"
"Schedule exc to be raised in the thread with this ident at its next\n"
"bytecode boundary, and return how many threads took it (0: no such\n"
"thread). exc is a BaseException subclass or instance (an instance is\n"
"raised as itself), or None to withdraw a pending one. Works for every\n"
"thread of the interpreter. A thread blocked inside a C call (sleep, I/O,\n"
"a lock) raises only when that call returns.");

/* The module functions defined here; module.c adds them. */
PyMethodDef xthread_deliver_methods[] = {
    {"set_async_exc", xthread_set_async_exc, METH_VARARGS,
     set_async_exc_doc},
    {"_deliver", (PyCFunction)(void (*)(void))xthread_deliver,
     METH_VARARGS | METH_KEYWORDS, deliver_doc},
    {"_handling", xthread_handling, METH_VARARGS,
     "_handling($module, ident, cls, /)\n--\n\n"
     "Whether thread ident is raising, or handling in an except or a\n"
     "finally, an exception of class cls."},
    {"_nudge", (PyCFunction)(void (*)(void))xthread_nudge,
     METH_VARARGS | METH_KEYWORDS, nudge_doc},
    {NULL, NULL, 0, NULL}
};
