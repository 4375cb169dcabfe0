/* record.h: the registry of the threads that xthread knows, their
 * records, and the process id kept across fork() (record.c).
 *
 * Callers: every other part. All of it runs with the GIL held, except
 * where a comment says otherwise; which thread calls is said per
 * function.
 */
#ifndef XTHREAD_RECORD_H
#define XTHREAD_RECORD_H

#include "xthread.h"

/* Fork. The process id, kept by a pthread_atfork handler that
 * xthread_pid_init (module exec, once per process) installs. No GIL
 * needed. */
void xthread_pid_init(void);
int current_pid(void);
/* `*mutex`, made anew first if it was made in another process (`*pid`
 * tells); `renew(arg)` then runs too. Any thread, no GIL needed. */
PyThread_type_lock fork_safe_mutex(PyThread_type_lock *mutex, atomic_int *pid,
                                   void (*renew)(void *), void *arg);

/* The lock of state that the GIL guards on a GIL build: a no-op there.
 * Recursive; any thread, with a thread state; after fork() the child
 * takes it afresh. */
void ft_lock_init(xthread_ft_lock *lock);
void ft_lock_acquire(xthread_ft_lock *lock);
void ft_lock_release(xthread_ft_lock *lock);
/* Whether the calling thread holds it (never, on a GIL build). */
int ft_lock_held(xthread_ft_lock *lock);
/* PyErr_WriteUnraisable(obj) for xthread's own failures: with the GIL
 * off, while the calling thread holds one of these locks, the report
 * waits until it has let go of the last (its hook runs Python code).
 * Takes the exception that is set, as PyErr_WriteUnraisable does. */
void xthread_unraisable(PyObject *obj);

/* The record's lock (xthread.h, recordobject): taken by the thread and
 * by its senders around each read-decide-write of the delivery state.
 * Order: a record's lock before the landing lock and the registry's
 * mutex, never the other way; two records' locks are never held at once
 * by xthread's own code. Held across calls into the interpreter that may
 * run Python code (a carrier is made, arming calls sys.monitoring, an
 * unraisable is reported), never across a wait of xthread's own. */
static inline void
record_lock(recordobject *rec)
{
    if (XTHREAD_FREE_THREADED) {    /* no call at all on a GIL build */
        ft_lock_acquire(&rec->lock);
    }
}

static inline void
record_unlock(recordobject *rec)
{
    if (XTHREAD_FREE_THREADED) {
        ft_lock_release(&rec->lock);
    }
}

/* Whether an exception sent through xthread waits to land in the thread
 * of `rec`: read under its lock, so that what a sender stores only for a
 * moment (an arming that failed, then sent plain) is never seen. */
int record_has_outstanding(recordobject *rec);
/* In the thread of `rec`, as it ends, before its thread state is
 * cleared (or in whoever clears it at exit): no sender delivers to it
 * from here on. A sender hands the interpreter an exception under the
 * record's lock, so none is doing so once this has taken it, while the
 * thread state still exists (CPython writes it after it has let go of
 * its own list lock, so a thread state freed meanwhile would be written
 * to). Disarms too. */
void record_end(recordobject *rec);

/* The registry: a hash table of entries by ident, under its own mutex.
 * registry_mutex may be taken without the GIL (thread_abandon,
 * xthread_free); linking and unlinking are done with the GIL held, by the
 * starting parent or the ending thread. */
int registry_init(xthread_registry *reg);
void registry_free(xthread_registry *reg);
PyThread_type_lock registry_mutex(xthread_registry *reg);
void registry_link(xthread_registry *reg, reg_entry *e);
void registry_unlink(reg_entry *e);
void entry_init(reg_entry *e, unsigned long long generation);
/* The interpreter's thread state with this ident, or NULL. Another
 * thread's only where frames_readable() (landing.h): it walks the
 * interpreter's list of thread states, which threads that start or end
 * change under a reader when the GIL is off. The calling thread's own
 * always. */
PyThreadState *find_tstate(unsigned long ident);

/* Records. An entry is used only under the registry's mutex (its thread
 * may end and free it as soon as the mutex is let go), so another thread's
 * record is got as a new reference: registry_record (made on first use
 * if `make`; NULL and no exception when no live thread has the ident).
 * The calling thread's own: current_record (made on first use; borrowed;
 * NULL with an exception set) and current_record_if_any (never makes
 * one, never fails). entry_start_shield_add changes the start shield of
 * the calling thread, started by _xthread, while it has no record. */
recordobject *registry_record(xthread_state *state, unsigned long ident,
                              int make);
recordobject *current_record(xthread_state *state);
recordobject *current_record_if_any(xthread_state *state);
int entry_start_shield_add(xthread_state *state, reg_entry *e, int delta);
/* Makes a record's semaphore (`park`, `landed`) on first use. */
int record_semaphore(PyThread_type_lock *sem);
extern PyType_Spec record_type_spec;

/* _record, _find_record, _native_id. */
extern PyMethodDef xthread_record_methods[];

#endif /* XTHREAD_RECORD_H */
