/* park.c: parking a thread in a killable wait, the lock core (a flag and
 * a FIFO of parked waiters) that locks and sentinels are made of, timeouts,
 * and sleep(). What each offers and who may call it: park.h. */
#include "xthread.h"
#include "deliver.h"
#include "lock.h"
#include "record.h"
#include "park.h"

// Parking

/* A killable wait parks the thread on its record's semaphore, which is
 * posted by whoever grants what it waits for and by a sender that gives it
 * an exception. Posts may be stale (a wake that came after the wait had
 * ended for another reason), so every wait loops on its own condition.
 *
 * park_once waits up to `timeout_us` (-1: no limit) with the GIL
 * dropped. Returns PY_LOCK_ACQUIRED when posted, PY_LOCK_FAILURE on
 * timeout, PY_LOCK_INTR when a signal arrived (the caller then runs the
 * handlers with Py_MakePendingCalls, with no lock of its own held). */
static PyLockStatus
park_once(recordobject *rec, long long timeout_us)
{
    PyLockStatus r;
    xthread_sanitizer_may_end_here();
    Py_BEGIN_ALLOW_THREADS
    r = sem_wait_for(rec->park, &rec->park_posted, timeout_us, 1);
    Py_END_ALLOW_THREADS
    return r;
}


/* The end of a killable wait: the thread no longer counts as parked, and
 * if the wait did not raise what was sent to it meanwhile, arms it to
 * land next (see record_send). The count is left before `outstanding`
 * is read (under the record's lock, in record_arm_deferred), so a sender
 * either sees the thread parked and leaves the arming to it, or arms
 * itself. */
static void
park_end(recordobject *rec, wait_status status)
{
    atomic_fetch_sub(&rec->parked, 1);
    if (status != WAIT_INTERRUPTED) {
        record_arm_deferred(rec);
    }
}

/* Time left until `deadline_us` (0: none) as a park timeout. */
static long long
time_left(long long deadline_us)
{
    if (deadline_us == 0) {
        return -1;
    }
    long long left = deadline_us - monotonic_us();
    return left > 0 ? left : 0;
}


// Lock core

lock_core *
lock_core_new(void)
{
    lock_core *core = PyMem_RawMalloc(sizeof(lock_core));
    if (core == NULL) {
        return NULL;
    }
    core->mutex = PyThread_allocate_lock();
    if (core->mutex == NULL) {
        PyMem_RawFree(core);
        return NULL;
    }
    atomic_init(&core->pid, current_pid());
    atomic_init(&core->locked, 0);
    atomic_init(&core->ends_with_thread, 0);
    core->head = core->tail = NULL;
    atomic_init(&core->refs, 1);
    return core;
}

void
lock_core_incref(lock_core *core)
{
    atomic_fetch_add(&core->refs, 1);
}

/* Safe without the GIL and without a thread state. */
void
lock_core_decref(lock_core *core)
{
    if (atomic_fetch_sub(&core->refs, 1) == 1) {
        PyThread_free_lock(core->mutex);
        PyMem_RawFree(core);
    }
}

/* In a child process: the waiters queued in the parent are threads that
 * do not exist here. The lock stays as it was (held, if it was), as a
 * stdlib lock does. */
static void
lock_core_drop_waiters(void *arg)
{
    lock_core *core = arg;
    core->head = core->tail = NULL;
}

/* The core's mutex; see fork_safe_mutex. */
PyThread_type_lock
lock_core_mutex(lock_core *core)
{
    return fork_safe_mutex(&core->mutex, &core->pid, lock_core_drop_waiters,
                           core);
}

/* Takes the lock if it is free; never blocks. While the lock is held only
 * a holder of core->mutex frees it, so a caller holding the mutex that
 * sees it held may rely on that until it lets go of the mutex. */
static int
lock_core_try(lock_core *core)
{
    /* An exchange, not a compare-and-swap: the same for a 0/1 flag (1
     * written over 1 changes nothing), with no address-taken local. */
    return atomic_exchange(&core->locked, 1) == 0;
}

/* Called with core->mutex held: hands the lock to the first waiter, or
 * frees it. Safe without the GIL and without a thread state: this is how
 * a sentinel is released at thread exit. */
void
lock_core_pass_on(lock_core *core)
{
    waiter *w = core->head;
    if (w == NULL) {
        atomic_store(&core->locked, 0);
        return;
    }
    core->head = w->next;
    if (core->head == NULL) {
        core->tail = NULL;
    }
    w->granted = 1;
    unpark(w->rec);
}

/* Returns 0, or -1 if the lock was not held. */
int
lock_core_release(lock_core *core)
{
    int rc = 0;
    PyThread_acquire_lock(lock_core_mutex(core), WAIT_LOCK);
    if (atomic_load(&core->locked)) {
        lock_core_pass_on(core);
    }
    else {
        rc = -1;
    }
    PyThread_release_lock(core->mutex);
    return rc;
}

static void
lock_core_remove_waiter(lock_core *core, waiter *w)
{
    waiter *prev = NULL;
    for (waiter *p = core->head; p != NULL; prev = p, p = p->next) {
        if (p == w) {
            if (prev == NULL) {
                core->head = p->next;
            }
            else {
                prev->next = p->next;
            }
            if (core->tail == p) {
                core->tail = prev;
            }
            return;
        }
    }
}

/* Enqueues `w`, or takes the lock if it is free. Returns 1 if taken. */
static int
lock_core_enqueue(lock_core *core, waiter *w)
{
    int taken = 0;
    PyThread_acquire_lock(lock_core_mutex(core), WAIT_LOCK);
    if (lock_core_try(core)) {
        taken = 1;
    }
    else {
        w->next = NULL;
        if (core->tail != NULL) {
            core->tail->next = w;
        }
        else {
            core->head = w;
        }
        core->tail = w;
    }
    PyThread_release_lock(core->mutex);
    return taken;
}

/* Parks until the lock is handed over, the thread is posted, or the
 * timeout passes. The waiter leaves the queue before the GIL is asked for
 * again, unless it was handed the lock: at interpreter exit a thread may
 * end inside that GIL request, and its stack (where `w` lives) with it. */
static PyLockStatus
park_on_core(lock_core *core, waiter *w, long long timeout_us)
{
    PyLockStatus r;
    xthread_sanitizer_may_end_here();
    Py_BEGIN_ALLOW_THREADS
    r = sem_wait_for(w->rec->park, &w->rec->park_posted, timeout_us, 1);
    PyThread_acquire_lock(lock_core_mutex(core), WAIT_LOCK);
    if (!w->granted) {
        lock_core_remove_waiter(core, w);
    }
    PyThread_release_lock(core->mutex);
    Py_END_ALLOW_THREADS
    return r;
}

/* How long a joiner spins on the sentinel of a running thread before it
 * parks. A thread that is about to end (a short task, a thread joined
 * just as it finishes) releases its sentinel within microseconds, and
 * waking a parked thread costs tens of microseconds more than that on a
 * loaded or virtual machine (the parked CPU has to be woken first). A
 * joiner of a longer-running thread pays this much CPU once, giving way
 * to any other runnable thread between polls. */
#define JOIN_SPIN_US 100

/* A join parks for at most this long at a time, and runs the handlers of
 * signals that came meanwhile between parks. A signal interrupts a park
 * it arrives during (EINTR); one that arrives between the last check and
 * the park would otherwise wait for the thread's end. */
#define JOIN_PARK_SLICE_US 20000

/* Spins, with the GIL dropped, until the lock is taken, its thread has
 * released it to someone else, or `max_us` has passed (and never past
 * `deadline_us`, if not 0). Returns 1 if it took the lock. GIL held on
 * entry and exit. */
static int
lock_core_spin(lock_core *core, long long max_us, long long deadline_us)
{
    int taken = 0;
    xthread_sanitizer_may_end_here();
    Py_BEGIN_ALLOW_THREADS
    long long until = monotonic_us() + max_us;
    if (deadline_us != 0 && deadline_us < until) {
        until = deadline_us;
    }
    do {
        sched_yield();
        taken = lock_core_try(core);
    } while (!taken && atomic_load(&core->ends_with_thread)
             && monotonic_us() < until);
    Py_END_ALLOW_THREADS
    return taken;
}

/* Waits for the lock for up to `timeout_us` (-1: no limit, 0: no wait).
 * GIL held; dropped only while spinning or parked. Killable: returns
 * WAIT_INTERRUPTED as soon as an exception is sent to the thread through
 * xthread (one sent during the short spin on a sentinel is seen as the
 * spin ends). */
wait_status
lock_core_acquire(xthread_state *state, lock_core *core, long long timeout_us)
{
    if (lock_core_try(core)) {
        return WAIT_DONE;
    }
    if (timeout_us == 0) {
        return WAIT_TIMEOUT;
    }
    long long deadline = timeout_us > 0 ? monotonic_us() + timeout_us : 0;
    if (atomic_load(&core->ends_with_thread)) {
        if (lock_core_spin(core, JOIN_SPIN_US, deadline)) {
            return WAIT_DONE;
        }
        /* A signal that came during the spin interrupts no park: run its
         * handler now (Ctrl-C during a join). */
        if (PyErr_CheckSignals() < 0) {
            return WAIT_ERROR;
        }
    }
    recordobject *rec = current_record(state);
    if (rec == NULL) {
        return WAIT_ERROR;
    }
    if (record_semaphore(&rec->park) < 0) {
        return WAIT_ERROR;
    }
    /* The record (its semaphore) must outlive the wait even if another
     * thread clears this thread's state meanwhile (interpreter exit). If
     * this thread ends inside the GIL request, the reference leaks.
     * Counted as parked before `outstanding` is looked at: a sender that
     * stores it later sees the count and posts (record_parked). */
    Py_INCREF(rec);
    park_begin(rec);
    waiter w = {.next = NULL, .rec = rec, .granted = 0};
    wait_status status;
    if (record_has_outstanding(rec)) {
        status = WAIT_INTERRUPTED;
        goto done;
    }
    if (lock_core_enqueue(core, &w)) {
        status = WAIT_DONE;
        goto done;
    }
    for (;;) {
        long long park_us = time_left(deadline);
        int sentinel = atomic_load(&core->ends_with_thread);
        if (sentinel && (park_us < 0 || park_us > JOIN_PARK_SLICE_US)) {
            park_us = JOIN_PARK_SLICE_US;
        }
        PyLockStatus r = park_on_core(core, &w, park_us);
        if (w.granted) {
            status = WAIT_DONE;
            break;
        }
        if (r == PY_LOCK_INTR && Py_MakePendingCalls() < 0) {
            status = WAIT_ERROR;
            break;
        }
        if (sentinel && PyErr_CheckSignals() < 0) {
            status = WAIT_ERROR;
            break;
        }
        if (record_has_outstanding(rec)) {
            status = WAIT_INTERRUPTED;
            break;
        }
        if (deadline != 0 && monotonic_us() >= deadline) {
            status = WAIT_TIMEOUT;
            break;
        }
        /* A stale post or a signal: queue up again, at the back. */
        if (lock_core_enqueue(core, &w)) {
            status = WAIT_DONE;
            break;
        }
    }
done:
    park_end(rec, status);
    Py_DECREF(rec);
    return status;
}

/* Sleeps up to `timeout_us`, killable. */
static wait_status
park_for(xthread_state *state, long long timeout_us)
{
    recordobject *rec = current_record(state);
    if (rec == NULL) {
        return WAIT_ERROR;
    }
    if (record_semaphore(&rec->park) < 0) {
        return WAIT_ERROR;
    }
    long long deadline = timeout_us >= 0 ? monotonic_us() + timeout_us : 0;
    wait_status status = WAIT_TIMEOUT;
    Py_INCREF(rec);         /* as in lock_core_acquire */
    park_begin(rec);
    while (!record_has_outstanding(rec)) {
        long long left = time_left(deadline);
        if (deadline != 0 && left == 0) {
            break;
        }
        PyLockStatus r = park_once(rec, left);
        if (r == PY_LOCK_INTR && Py_MakePendingCalls() < 0) {
            status = WAIT_ERROR;
            break;
        }
    }
    if (status != WAIT_ERROR && record_has_outstanding(rec)) {
        status = WAIT_INTERRUPTED;
    }
    park_end(rec, status);
    Py_DECREF(rec);
    return status;
}

/* The largest timeout accepted, in seconds: the smaller of what
 * PyThread_acquire_lock_timed takes (PY_TIMEOUT_MAX microseconds) and what
 * CPython's own time type holds (int64 nanoseconds), floored, as _thread
 * computes TIMEOUT_MAX. */
double
timeout_max_seconds(void)
{
    double lock_max = (double)PY_TIMEOUT_MAX * 1e-6;
    double time_max = (double)LLONG_MAX * 1e-9;
    return floor(lock_max < time_max ? lock_max : time_max);
}

/* As _PyTime_FromSecondsObject: a float, or an integer by __index__
 * (numpy integers included); anything else is TypeError. */
int
seconds_from_object(PyObject *obj, double *seconds)
{
    if (PyFloat_Check(obj)) {
        *seconds = PyFloat_AS_DOUBLE(obj);
        return 0;
    }
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL) {
        return -1;
    }
    *seconds = PyLong_AsDouble(index);
    Py_DECREF(index);
    return *seconds == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* Parses a wait's timeout in seconds (None: no limit) into microseconds
 * (-1: no limit). */
static int
parse_timeout(PyObject *obj, long long *timeout_us)
{
    if (obj == Py_None) {
        *timeout_us = -1;
        return 0;
    }
    double t;
    if (seconds_from_object(obj, &t) < 0) {
        return -1;
    }
    if (isnan(t) || t < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "timeout must be a non-negative number");
        return -1;
    }
    if (t > timeout_max_seconds()) {
        PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
        return -1;
    }
    *timeout_us = (long long)ceil(t * 1e6);
    return 0;
}

static PyObject *
xthread_sleep(PyObject *module, PyObject *arg)
{
    long long timeout_us;
    if (parse_timeout(arg, &timeout_us) < 0) {
        return NULL;
    }
    xthread_state *state = get_xthread_state(module);
    wait_status st = park_for(state, timeout_us);
    if (st == WAIT_ERROR) {
        return NULL;
    }
    if (st == WAIT_INTERRUPTED) {
        return raise_outstanding(current_record(state));
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(sleep_doc,
"sleep($module, seconds, /)\n--\n\n"
"Sleep for the given number of seconds (None: until interrupted). Unlike\n"
"time.sleep, an exception sent to this thread through xthread ends the\n"
"sleep at once and is raised here.");

/* The module functions defined here; module.c adds them. */
PyMethodDef xthread_park_methods[] = {
    {"sleep", xthread_sleep, METH_O, sleep_doc},
    {NULL, NULL, 0, NULL}
};
