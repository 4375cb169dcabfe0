/* park.h: parking and the lock core (park.c). A killable wait parks the
 * thread on its record's semaphore; whoever grants what it waits for, and
 * a sender that gives it an exception, posts it. The lock core is the
 * state of a lock (Lock, RLock, a thread's sentinel): a flag and a FIFO
 * of parked waiters. Also the timeouts that waits take.
 *
 * Callers: lock.c (Lock, RLock), thread.c (sentinels, released by an
 * ending thread without the GIL and without a thread state), deliver.c
 * (unpark a thread sent an exception). Each function says what it needs.
 */
#ifndef XTHREAD_PARK_H
#define XTHREAD_PARK_H

#include "xthread.h"

/* The state of a lock, kept apart from the Python object and
 * reference-counted with atomics, because a thread releases its sentinels
 * after its thread state is gone: it may then use neither the GIL nor
 * Py_DECREF, and the lock object may already have been freed by then.
 *
 * A lock is a flag and a FIFO of parked waiters. The queue is guarded by
 * a short OS mutex (never held while blocking). A free lock is taken by an
 * atomic exchange on the flag, without the mutex, so that taking it
 * never waits for a thread that has just freed it and still holds the
 * mutex (a joiner, and the exiting thread that releases its sentinel);
 * only a holder of the mutex turns the flag back to free or keeps it set
 * to hand the lock over. release() hands the lock to the first waiter, which
 * wakes owning it; a waiter whose thread is sent an exception leaves the
 * queue and returns, so the exception is raised as soon as the wait's
 * caller resumes.
 *
 * Owners: the lock object (one reference) and each thread that will
 * release the lock at its exit (one reference each).
 *
 * `ends_with_thread` is set while the lock is the sentinel of a running
 * thread, which releases it as the last thing it does: a joiner then
 * spins a little before it parks (see lock_core_spin). */
typedef struct waiter {
    struct waiter *next;
    recordobject *rec;      /* borrowed: the waiting thread is alive */
    int granted;
} waiter;

typedef struct {
    PyThread_type_lock mutex;
    atomic_int pid;             /* the process the mutex is for */
    atomic_int locked;
    atomic_int ends_with_thread;
    waiter *head;
    waiter *tail;
    atomic_long refs;
} lock_core;

typedef enum {
    WAIT_DONE,          /* acquired, or the park ended */
    WAIT_TIMEOUT,
    WAIT_INTERRUPTED,   /* an exception was sent to the thread */
    WAIT_ERROR,         /* a signal handler raised; exception set */
} wait_status;

/* A record's semaphores (`park`, `landed`) are PyThread locks held while
 * not posted. A post releases one only if it is not posted already: a
 * second release in a row would release an unlocked lock, which 3.15,
 * whose PyThread locks are PyMutexes, treats as a fatal error (earlier
 * versions' POSIX semaphores counted it). Posters may run at once and
 * without the GIL; the flag lets exactly one of them release. A waiter
 * clears it once it has the lock, and then looks at its own condition
 * again (every wait loops on it), so a post merged into the one it took
 * is not lost. */
static inline void
sem_post(PyThread_type_lock sem, atomic_int *posted)
{
    if (atomic_exchange(posted, 1) == 0) {
        PyThread_release_lock(sem);
    }
}

static inline PyLockStatus
sem_wait_for(PyThread_type_lock sem, atomic_int *posted, long long timeout_us,
             int intr_flag)
{
    PyLockStatus r = xthread_acquire_timed(sem, timeout_us, intr_flag);
    if (r == PY_LOCK_ACQUIRED) {
        atomic_store(posted, 0);
    }
    return r;
}

static inline void
unpark(recordobject *rec)
{
    sem_post(rec->park, &rec->park_posted);
}

/* A sender, after storing `outstanding`: whether the thread is in a
 * killable wait (then unpark it). The waiter's side: park_begin, before
 * it looks at `outstanding`. */
static inline int
record_parked(recordobject *rec)
{
    atomic_thread_fence(memory_order_seq_cst);
    return atomic_load(&rec->parked) > 0;
}

static inline void
park_begin(recordobject *rec)
{
    atomic_fetch_add(&rec->parked, 1);
    atomic_thread_fence(memory_order_seq_cst);
}

/* Timeouts: the largest accepted, in seconds (TIMEOUT_MAX); a float or an
 * integer of seconds, as CPython's time functions take it. */
double timeout_max_seconds(void);
int seconds_from_object(PyObject *obj, double *seconds);

/* The lock core. new/incref/decref/mutex/pass_on/release are safe without
 * the GIL and without a thread state (pass_on with core->mutex held);
 * release returns -1 if the lock was not held. acquire holds the GIL,
 * dropping it only while it spins or parks, and returns WAIT_INTERRUPTED
 * as soon as the thread is sent an exception through xthread. */
lock_core *lock_core_new(void);
void lock_core_incref(lock_core *core);
void lock_core_decref(lock_core *core);
PyThread_type_lock lock_core_mutex(lock_core *core);
void lock_core_pass_on(lock_core *core);
int lock_core_release(lock_core *core);
wait_status lock_core_acquire(xthread_state *state, lock_core *core,
                              long long timeout_us);

/* sleep. */
extern PyMethodDef xthread_park_methods[];

#endif /* XTHREAD_PARK_H */
