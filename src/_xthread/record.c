/* record.c: the registry of the threads that xthread knows (a hash table
 * by ident, safe across fork()), their records (the ThreadRecord type),
 * and the functions that find a thread's entry, record or thread state.
 * What each offers and who may call it: record.h. */
#include "xthread.h"
#include "deliver.h"
#include "landing.h"
#include "thread.h"
#include "record.h"

// Fork

/* The process's id, kept by a fork handler. A mutex taken without the
 * GIL (the registry's, a lock's) may be held at fork() by a thread that
 * does not exist in the child: each remembers the process it was made for,
 * and the first use in another process gives it a fresh one (the old one
 * is leaked, as CPython's _PyThread_at_fork_reinit does). */
static atomic_int xthread_pid;
static unsigned long xthread_forked_by;     /* the only thread in a child */
static unsigned long xthread_forked_native; /* its OS id there */

static void
xthread_pid_after_fork(void)
{
    xthread_forked_by = PyThread_get_thread_ident();
    xthread_forked_native = PyThread_get_thread_native_id();
    atomic_store(&xthread_pid, (int)getpid());
}

void
xthread_pid_init(void)
{
    atomic_store(&xthread_pid, (int)getpid());
    (void)pthread_atfork(NULL, NULL, xthread_pid_after_fork);
}

int
current_pid(void)
{
    return atomic_load(&xthread_pid);
}

#define PID_RENEWING (-1)

/* If `*pid` is not this process, runs `renew(arg)` and then marks it
 * this process's. Safe without the GIL: one caller renews, any other
 * waits for it. */
static void
fork_renew(atomic_int *pid, void (*renew)(void *), void *arg)
{
    int now = current_pid();
    int seen = atomic_load(pid);
    while (seen != now) {
        if (seen != PID_RENEWING
            && atomic_compare_exchange_weak(pid, &seen, PID_RENEWING)) {
            renew(arg);
            atomic_store(pid, now);
            break;
        }
        sched_yield();
        seen = atomic_load(pid);
    }
}

struct mutex_renewal {
    PyThread_type_lock *mutex;
    void (*renew)(void *);
    void *arg;
};

static void
renew_mutex(void *arg)
{
    struct mutex_renewal *r = arg;
    PyThread_type_lock fresh = PyThread_allocate_lock();
    if (fresh != NULL) {
        *r->mutex = fresh;      /* else keep the old one: no better */
    }
    if (r->renew != NULL) {
        r->renew(r->arg);
    }
}

/* Returns `*mutex`, first made anew if it was made in another process
 * (`*pid` tells): then `renew(arg)` runs too, with the new mutex not yet
 * published, for what else the parent's threads left behind. */
PyThread_type_lock
fork_safe_mutex(PyThread_type_lock *mutex, atomic_int *pid,
                void (*renew)(void *), void *arg)
{
    struct mutex_renewal r = {mutex, renew, arg};
    fork_renew(pid, renew_mutex, &r);
    return *mutex;
}

// The lock that only a free-threaded build needs

/* Unraisables met while the calling thread holds xthread_ft_locks (the
 * landing lock, a record's lock) wait until it holds none: reporting
 * runs Python code (sys.unraisablehook, which may wait), and other
 * threads must not be kept out of the lock meanwhile. Per thread; the
 * count of the locks held (with their recursion) starts again at zero in
 * a forked child, and reports left waiting there are dropped. A report
 * beyond the few that wait is made at once. */
#define FT_DEFERRED_MAX 4
typedef struct {
    PyObject *type, *value, *tb, *obj;
} ft_deferred_report;
static _Thread_local int ft_held;
static _Thread_local int ft_held_pid;
static _Thread_local int ft_n_deferred;
static _Thread_local ft_deferred_report ft_deferred[FT_DEFERRED_MAX];

static int *
ft_held_count(void)
{
    int now = current_pid();
    if (ft_held_pid != now) {
        ft_held_pid = now;
        ft_held = 0;
        ft_n_deferred = 0;
    }
    return &ft_held;
}

/* Reports what waited, in order, keeping any exception that is set. */
static void
report_deferred(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    for (int i = 0; i < ft_n_deferred; i++) {
        ft_deferred_report d = ft_deferred[i];
        PyErr_Restore(d.type, d.value, d.tb);
        PyErr_WriteUnraisable(d.obj);
        Py_XDECREF(d.obj);
    }
    ft_n_deferred = 0;
    PyErr_Restore(type, value, tb);
}

void
ft_lock_init(xthread_ft_lock *lock)
{
    memset(&lock->mutex, 0, sizeof(lock->mutex));
    atomic_init(&lock->owner, 0);
    lock->depth = 0;
    atomic_init(&lock->pid, current_pid());
}

/* In a forked child: free, whoever held it in the parent. */
static void
ft_lock_renew(void *arg)
{
    xthread_ft_lock *lock = arg;
    memset(&lock->mutex, 0, sizeof(lock->mutex));
    atomic_store(&lock->owner, 0);
    lock->depth = 0;
}

void
ft_lock_acquire(xthread_ft_lock *lock)
{
    if (!XTHREAD_FREE_THREADED) {
        return;
    }
    fork_renew(&lock->pid, ft_lock_renew, lock);
    unsigned long me = PyThread_get_thread_ident();
    /* Only the holder stores its own ident, so reading it back is
     * reliable whatever other threads do meanwhile. */
    *ft_held_count() += 1;
    if (atomic_load_explicit(&lock->owner, memory_order_relaxed) == me) {
        lock->depth++;
        return;
    }
    xthread_mutex_lock(&lock->mutex);
    atomic_store_explicit(&lock->owner, me, memory_order_relaxed);
    lock->depth = 1;
}

int
ft_lock_held(xthread_ft_lock *lock)
{
    return XTHREAD_FREE_THREADED
           && atomic_load_explicit(&lock->owner, memory_order_relaxed)
              == PyThread_get_thread_ident();
}

void
ft_lock_release(xthread_ft_lock *lock)
{
    if (!XTHREAD_FREE_THREADED) {
        return;
    }
    if (--lock->depth == 0) {
        atomic_store_explicit(&lock->owner, 0, memory_order_relaxed);
        xthread_mutex_unlock(&lock->mutex);
    }
    int *held = ft_held_count();
    if (*held > 0 && --*held == 0 && ft_n_deferred > 0) {
        report_deferred();
    }
}

void
xthread_unraisable(PyObject *obj)
{
    if (!XTHREAD_FREE_THREADED || *ft_held_count() == 0
        || ft_n_deferred == FT_DEFERRED_MAX) {
        PyErr_WriteUnraisable(obj);
        return;
    }
    ft_deferred_report *d = &ft_deferred[ft_n_deferred++];
    PyErr_Fetch(&d->type, &d->value, &d->tb);
    d->obj = Py_XNewRef(obj);
}

static void registry_drop_stale(void *reg);

PyThread_type_lock
registry_mutex(struct xthread_registry *reg)
{
    return fork_safe_mutex(&reg->mutex, &reg->pid, registry_drop_stale,
                           reg);
}

/* Idents are addresses of thread control blocks, aligned and a stack
 * apart: mix the high bits in. */
static inline size_t
registry_chain(const xthread_registry *reg, unsigned long ident)
{
    unsigned long long h = (unsigned long long)ident * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 32) & (reg->nchains - 1);
}

static void
registry_push(xthread_registry *reg, reg_entry *e)
{
    reg_entry **chain = &reg->chains[registry_chain(reg, e->ident)];
    e->prev = NULL;
    e->next = *chain;
    if (*chain != NULL) {
        (*chain)->prev = e;
    }
    *chain = e;
}

/* Doubles the table, keeping each chain's order (newest first). With the
 * mutex held; no GIL needed. On allocation failure the chains just grow
 * longer. */
static void
registry_grow(xthread_registry *reg)
{
    size_t old_n = reg->nchains;
    reg_entry **old = reg->chains;
    reg_entry **grown = PyMem_RawCalloc(old_n * 2, sizeof(reg_entry *));
    if (grown == NULL) {
        return;
    }
    reg->chains = grown;
    reg->nchains = old_n * 2;
    for (size_t i = 0; i < old_n; i++) {
        reg_entry *e = old[i];
        reg_entry *last = NULL;
        while (e != NULL && e->next != NULL) {
            e = e->next;
        }
        /* Oldest first, so that pushing keeps the newest in front. */
        for (; e != NULL; e = last) {
            last = e->prev;
            registry_push(reg, e);
        }
    }
    PyMem_RawFree(old);
}

void
registry_link(xthread_registry *reg, reg_entry *e)
{
    e->pid = current_pid();
    PyThread_acquire_lock(registry_mutex(reg), WAIT_LOCK);
    if (reg->count >= 2 * reg->nchains) {
        registry_grow(reg);
    }
    e->registry = reg;
    registry_push(reg, e);
    reg->count++;
    PyThread_release_lock(reg->mutex);
}

/* With the mutex held (or while it is renewed). */
static void
registry_remove(xthread_registry *reg, reg_entry *e)
{
    if (e->prev != NULL) {
        e->prev->next = e->next;
    }
    else {
        reg->chains[registry_chain(reg, e->ident)] = e->next;
    }
    if (e->next != NULL) {
        e->next->prev = e->prev;
    }
    e->prev = e->next = NULL;
    e->registry = NULL;
    reg->count--;
}

/* Takes `e` out of its registry if it is in one. Two threads may unlink
 * one entry at once (its thread ending, a sender dropping it as stale):
 * whether it is still linked is decided under the mutex, so that only one
 * of them removes it. */
void
registry_unlink(reg_entry *e)
{
    xthread_registry *reg = e->registry;
    if (reg == NULL) {
        return;
    }
    PyThread_acquire_lock(registry_mutex(reg), WAIT_LOCK);
    if (e->registry == reg) {
        registry_remove(reg, e);
    }
    PyThread_release_lock(reg->mutex);
}

/* In a child process, first thing: the entries of the parent's threads
 * go (none of them exists here, and a new thread may get one's ident);
 * the forking thread's stay, now of this process. Their memory is left
 * alone: a record frees its own later, a bootstate's is leaked. */
static void
registry_drop_stale(void *arg)
{
    xthread_registry *reg = arg;
    unsigned long me = xthread_forked_by;
    int now = current_pid();
    for (size_t i = 0; i < reg->nchains; i++) {
        reg_entry *e = reg->chains[i];
        while (e != NULL) {
            reg_entry *next = e->next;
            if (e->ident == me) {
                e->pid = now;
                atomic_store(&e->native_id, xthread_forked_native);
            }
            else {
                registry_remove(reg, e);
            }
            e = next;
        }
    }
}

/* Makes an empty registry (module exec). GIL held. */
int
registry_init(xthread_registry *reg)
{
    reg->count = 0;
    reg->nchains = REGISTRY_MIN_CHAINS;
    reg->chains = PyMem_RawCalloc(REGISTRY_MIN_CHAINS, sizeof(reg_entry *));
    reg->mutex = PyThread_allocate_lock();
    atomic_init(&reg->pid, current_pid());
    if (reg->chains == NULL || reg->mutex == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Frees the registry (module free). */
void
registry_free(xthread_registry *reg)
{
    /* Records still alive (threads still running) keep a pointer to the
     * registry: detach them before its mutex goes. */
    if (reg->mutex != NULL) {
        PyThread_acquire_lock(registry_mutex(reg), WAIT_LOCK);
        for (size_t i = 0; reg->chains != NULL && i < reg->nchains; i++) {
            for (reg_entry *e = reg->chains[i]; e != NULL;) {
                reg_entry *next = e->next;
                e->registry = NULL;
                e->prev = e->next = NULL;
                e = next;
            }
        }
        reg->count = 0;
        PyThread_release_lock(reg->mutex);
        PyThread_free_lock(reg->mutex);
        reg->mutex = NULL;
    }
    PyMem_RawFree(reg->chains);
    reg->chains = NULL;
}

/* With the mutex held: the entry of the live thread with this ident, or
 * NULL. Valid only until the mutex is let go: the thread may end then,
 * and free its entry. The newest wins. An entry whose thread has ended is
 * dropped on the way: a thread that is not _xthread's gets its record on
 * first use, owned by its thread-state dict, and one made while that dict
 * was being cleared (by a __del__ run then, a threading.local value's) is
 * never freed; its entry would take deliveries meant for a later thread
 * with the same ident. GIL held (find_tstate); with the GIL off only
 * the calling thread's own entry is checked so. */
static reg_entry *
registry_find_locked(xthread_registry *reg, unsigned long ident)
{
    for (;;) {
        reg_entry *found = NULL;
        for (reg_entry *e = reg->chains[registry_chain(reg, ident)];
             e != NULL; e = e->next) {
            if (e->ident == ident) {
                found = e;
                break;
            }
        }
        if (found == NULL || found->tstate_id == 0) {
            return found;
        }
        /* Another thread's state may be read only where the GIL keeps
         * the list still (find_tstate); with it off, an entry is taken
         * as it is: the stale ones above are a rare leftover. */
        if (ident != PyThread_get_thread_ident() && !frames_readable()) {
            return found;
        }
        PyThreadState *t = find_tstate(ident);
        if (t != NULL && PyThreadState_GetID(t) == found->tstate_id) {
            return found;
        }
        registry_remove(reg, found);
    }
}

void
entry_init(reg_entry *e, unsigned long long generation)
{
    e->prev = e->next = NULL;
    e->registry = NULL;
    e->ident = 0;
    atomic_init(&e->native_id, 0);
    e->pid = 0;
    e->tstate_id = 0;
    e->generation = generation;
    e->record = NULL;
    e->start_shield = 0;
}

static recordobject *
record_new(xthread_state *state, unsigned long long generation)
{
    recordobject *rec = PyObject_GC_New(recordobject, state->record_type);
    if (rec == NULL) {
        return NULL;
    }
    entry_init(&rec->own, generation);
    ft_lock_init(&rec->lock);
    rec->ident = 0;
    rec->generation = generation;
    rec->parked = 0;
    rec->shield_depth = 0;
    rec->outstanding = NULL;
    rec->outstanding_scope = 0;
    rec->outstanding_token = 0;
    rec->deferred = NULL;
    rec->deferred_scope = 0;
    rec->queue = NULL;
    rec->scopes = NULL;
    rec->nscopes = rec->scopes_cap = 0;
    rec->sent_at_us = rec->landed_at_us = 0;
    rec->armed = 0;
    rec->arm_requested = 0;
    rec->arm_deferred = 0;
    rec->judging = 0;
    atomic_init(&rec->land_next, 0);
    rec->plain = 0;
    rec->armed_objs = NULL;
    rec->unguarded = 0;
    rec->ended = 0;
    /* Made on first use (record_semaphore): most threads never park nor
     * are sent anything, and thread start should not pay for them. */
    rec->park = NULL;
    rec->landed = NULL;
    atomic_init(&rec->park_posted, 0);
    atomic_init(&rec->landed_posted, 0);
    PyObject_GC_Track(rec);
    return rec;
}

static int
record_traverse(recordobject *rec, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(rec));
    Py_VISIT(rec->outstanding);
    Py_VISIT(rec->deferred);
    Py_VISIT(rec->queue);
    Py_VISIT(rec->armed_objs);
    return 0;
}

static int
record_clear(recordobject *rec)
{
    Py_CLEAR(rec->outstanding);
    Py_CLEAR(rec->deferred);
    Py_CLEAR(rec->queue);
    Py_CLEAR(rec->armed_objs);
    return 0;
}

static void
record_dealloc(recordobject *rec)
{
    PyTypeObject *tp = Py_TYPE(rec);
    PyObject_GC_UnTrack(rec);
    registry_unlink(&rec->own);
    record_clear(rec);
    if (rec->park != NULL) {
        PyThread_free_lock(rec->park);
    }
    if (rec->landed != NULL) {
        PyThread_free_lock(rec->landed);
    }
    PyMem_RawFree(rec->scopes);
    tp->tp_free((PyObject *)rec);
    Py_DECREF(tp);
}

/* Makes *sem, held (a semaphore at zero), if it does not exist yet.
 * GIL held. Returns -1 with MemoryError set on failure. */
int
record_semaphore(PyThread_type_lock *sem)
{
    if (*sem == NULL) {
        PyThread_type_lock lock = PyThread_allocate_lock();
        if (lock == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        PyThread_acquire_lock(lock, WAIT_LOCK);
        *sem = lock;
    }
    return 0;
}



static PyObject *
record_get_ident(recordobject *rec, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(rec->ident);
}

static PyObject *
record_get_generation(recordobject *rec, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(rec->generation);
}

static PyObject *
us_or_none(long long us)
{
    if (us == 0) {
        Py_RETURN_NONE;
    }
    return PyFloat_FromDouble((double)us * 1e-6);
}

static PyObject *
record_get_sent_at(recordobject *rec, void *Py_UNUSED(closure))
{
    record_lock(rec);
    long long us = rec->sent_at_us;
    record_unlock(rec);
    return us_or_none(us);
}

static PyObject *
record_get_landed_at(recordobject *rec, void *Py_UNUSED(closure))
{
    record_lock(rec);
    long long us = rec->landed_at_us;
    record_unlock(rec);
    return us_or_none(us);
}

static PyObject *
record_get_parked(recordobject *rec, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(atomic_load(&rec->parked) > 0);
}

void
record_end(recordobject *rec)
{
    /* At exit, whoever clears a daemon thread's state must not wait for
     * its lock: the daemon may have been stopped for good holding it.
     * No sender delivers then (the other threads are stopped too). */
    if (Py_IsFinalizing() && rec->ident != PyThread_get_thread_ident()) {
        atomic_store(&rec->ended, 1);
    }
    else {
        record_lock(rec);
        atomic_store(&rec->ended, 1);
        record_unlock(rec);
    }
    record_disarm(rec);
}

int
record_has_outstanding(recordobject *rec)
{
    record_lock(rec);
    int has = rec->outstanding != NULL;
    record_unlock(rec);
    return has;
}

static PyObject *
record_get_shield_depth(recordobject *rec, void *Py_UNUSED(closure))
{
    record_lock(rec);
    int depth = rec->shield_depth;
    record_unlock(rec);
    return PyLong_FromLong(depth);
}

static PyObject *
record_get_pending(recordobject *rec, void *Py_UNUSED(closure))
{
    record_lock(rec);
    int pending = rec->outstanding != NULL || rec->deferred != NULL
                  || (rec->queue != NULL && PyList_GET_SIZE(rec->queue) > 0);
    record_unlock(rec);
    return PyBool_FromLong(pending);
}

static PyObject *
record_get_unguarded(recordobject *rec, void *Py_UNUSED(closure))
{
    record_lock(rec);
    int unguarded = rec->unguarded;
    record_unlock(rec);
    return PyBool_FromLong(unguarded);
}

static PyGetSetDef record_getset[] = {
    {"ident", (getter)record_get_ident, NULL, "the thread's ident", NULL},
    {"generation", (getter)record_get_generation, NULL,
     "unique per thread, unlike the ident", NULL},
    {"sent_at", (getter)record_get_sent_at, NULL,
     "time.monotonic() when an exception was last sent, or None", NULL},
    {"landed_at", (getter)record_get_landed_at, NULL,
     "time.monotonic() when the last one was raised in the thread", NULL},
    {"parked", (getter)record_get_parked, NULL,
     "whether the thread is in a killable wait", NULL},
    {"shield_depth", (getter)record_get_shield_depth, NULL,
     "how many shields the thread is in", NULL},
    {"pending", (getter)record_get_pending, NULL,
     "whether an exception sent through xthread has not landed yet", NULL},
    {"unguarded", (getter)record_get_unguarded, NULL,
     "whether the last exception was sent by plain delivery on a version "
     "where the handlers of the frame it lands in may be skipped", NULL},
    {NULL, NULL, NULL, NULL, NULL}
};

static PyType_Slot record_type_slots[] = {
    {Py_tp_dealloc, (destructor)record_dealloc},
    {Py_tp_traverse, (traverseproc)record_traverse},
    {Py_tp_clear, (inquiry)record_clear},
    {Py_tp_getset, record_getset},
    {Py_tp_doc, (void *)"What xthread knows of one thread."},
    {0, NULL}
};

PyType_Spec record_type_spec = {
    .name = "_xthread.ThreadRecord",
    .basicsize = sizeof(recordobject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = record_type_slots,
};

#define RECORD_CAPSULE "_xthread.record"


/* Runs when the thread state's dict is cleared (the thread is ending),
 * with the GIL held. */
static void
record_capsule_destructor(PyObject *capsule)
{
    recordobject *rec = PyCapsule_GetPointer(capsule, RECORD_CAPSULE);
    if (rec == NULL) {
        PyErr_Clear();
        return;
    }
    record_end(rec);
    registry_unlink(&rec->own);
    Py_DECREF(rec);
}


/* Attaches `made`, a record not yet anyone's, to the boot entry `e`, which
 * has none. With the mutex held: the record starts from the entry's start
 * shield, which the thread changes under the mutex too. Takes over the
 * reference to `made` (the entry's). */
static void
entry_attach(reg_entry *e, recordobject *made)
{
    made->ident = e->ident;
    made->shield_depth = e->start_shield;
    e->record = made;
}

/* The record of the live thread with this ident, as a new reference; if
 * it has none yet (a thread that _xthread started and that no one has
 * looked at), one is made when `make`. NULL with no exception set when no
 * live thread has the ident (or it has no record and `make` is 0); NULL
 * with an exception set on failure. The entry is used only under the
 * mutex, so its thread may end at any time; the record is allocated
 * outside it (a collection may run) and attached only if the entry found
 * then is of the same generation. GIL held. */
recordobject *
registry_record(xthread_state *state, unsigned long ident, int make)
{
    xthread_registry *reg = &state->registry;
    recordobject *made = NULL, *rec = NULL;
    for (;;) {
        PyThread_acquire_lock(registry_mutex(reg), WAIT_LOCK);
        reg_entry *e = registry_find_locked(reg, ident);
        unsigned long long generation = 0;
        if (e != NULL) {
            generation = e->generation;
            if (e->record == NULL && made != NULL
                && made->generation == generation) {
                entry_attach(e, made);
                made = NULL;
            }
            rec = (recordobject *)Py_XNewRef((PyObject *)e->record);
        }
        PyThread_release_lock(reg->mutex);
        if (e == NULL || rec != NULL || !make) {
            break;
        }
        Py_XDECREF(made);
        made = record_new(state, generation);
        if (made == NULL) {
            return NULL;
        }
    }
    Py_XDECREF(made);       /* not needed after all */
    return rec;
}

/* The record of the calling thread, which _xthread started (`e` is its
 * own boot entry, which no other thread frees), made now if it has none.
 * Borrowed (the entry holds it until the thread's function has returned);
 * NULL with an exception set, or NULL and none once the entry is unlinked
 * (the thread is ending). GIL held. */
static recordobject *
own_entry_record(xthread_state *state, reg_entry *e)
{
    xthread_registry *reg = &state->registry;
    recordobject *made = NULL;
    for (;;) {
        PyThread_acquire_lock(registry_mutex(reg), WAIT_LOCK);
        int linked = e->registry != NULL;
        if (linked && e->record == NULL && made != NULL) {
            entry_attach(e, made);
            made = NULL;
        }
        recordobject *rec = e->record;
        PyThread_release_lock(reg->mutex);
        if (rec != NULL || !linked) {
            Py_XDECREF(made);
            return rec;
        }
        made = record_new(state, e->generation);
        if (made == NULL) {
            return NULL;
        }
    }
}

/* For the calling thread, which _xthread started (`e` its own boot
 * entry): if it has no record yet, adds `delta` to its start shield and
 * returns 1 (-1, changing nothing, if that would go below 0); returns 0
 * if it has one, whose shield_depth is the one to change. Under the
 * mutex, where a sender makes the record from the start shield. */
int
entry_start_shield_add(xthread_state *state, reg_entry *e, int delta)
{
    xthread_registry *reg = &state->registry;
    int done = 0;
    PyThread_acquire_lock(registry_mutex(reg), WAIT_LOCK);
    if (e->record == NULL) {
        if (e->start_shield + delta < 0) {
            done = -1;
        }
        else {
            e->start_shield += delta;
            done = 1;
        }
    }
    PyThread_release_lock(reg->mutex);
    return done;
}

/* The calling thread's entry if _xthread started it, from this module, and
 * its function has not returned yet; else NULL. GIL held. */

/* Makes `rec` the record of the calling thread, which _xthread did not
 * start: registered by its ident, owned by its thread-state dict. Takes a
 * new reference. GIL held. */
static int
record_install(xthread_state *state, recordobject *rec)
{
    PyObject *tdict = PyThreadState_GetDict();
    if (tdict == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "no thread state dict");
        return -1;
    }
    PyObject *capsule = PyCapsule_New(rec, RECORD_CAPSULE,
                                      record_capsule_destructor);
    if (capsule == NULL) {
        return -1;
    }
    Py_INCREF(rec);
    rec->ident = PyThread_get_thread_ident();
    rec->own.ident = rec->ident;
    atomic_store(&rec->own.native_id, PyThread_get_thread_native_id());
    rec->own.record = rec;
    rec->own.tstate_id = PyThreadState_GetID(PyThreadState_Get());
    registry_link(&state->registry, &rec->own);
    int rc = PyDict_SetItem(tdict, state->record_key, capsule);
    Py_DECREF(capsule);     /* on failure this unlinks and drops rec */
    return rc;
}

/* The calling thread's record, made on first use (borrowed reference), or
 * NULL with an exception set. GIL held. */
recordobject *
current_record(xthread_state *state)
{
    reg_entry *boot_entry = current_boot_entry(state);
    if (boot_entry != NULL) {
        recordobject *rec = own_entry_record(state, boot_entry);
        if (rec == NULL && !PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "the thread has ended");
        }
        return rec;
    }
    PyObject *tdict = PyThreadState_GetDict();
    if (tdict != NULL) {
        PyObject *capsule = PyDict_GetItemWithError(tdict, state->record_key);
        if (capsule != NULL) {
            return PyCapsule_GetPointer(capsule, RECORD_CAPSULE);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    recordobject *rec = record_new(state, new_generation(state));
    if (rec == NULL) {
        return NULL;
    }
    int rc = record_install(state, rec);
    Py_DECREF(rec);
    return rc < 0 ? NULL : rec;
}

/* The thread state with this ident, or NULL. Holds the GIL; the list is
 * read as sys._current_frames() and debuggers read it. */
PyThreadState *
find_tstate(unsigned long ident)
{
    PyThreadState *me = PyThreadState_Get();
    if (ident == PyThread_get_thread_ident()) {
        return me;      /* its own: no walk of a list that others change */
    }
    PyInterpreterState *interp = PyThreadState_GetInterpreter(me);
    for (PyThreadState *t = PyInterpreterState_ThreadHead(interp);
         t != NULL; t = PyThreadState_Next(t)) {
        if (t->thread_id == ident) {
            return t;
        }
    }
    return NULL;
}

/* The calling thread's record if it has one (borrowed), else NULL; never
 * makes one and never fails. */
recordobject *
current_record_if_any(xthread_state *state)
{
    reg_entry *boot_entry = current_boot_entry(state);
    if (boot_entry != NULL) {
        return boot_entry->record;      /* made on first use: may be NULL */
    }
    PyObject *tdict = PyThreadState_GetDict();
    if (tdict == NULL) {
        return NULL;
    }
    PyObject *capsule = PyDict_GetItemWithError(tdict, state->record_key);
    if (capsule == NULL) {
        PyErr_Clear();
        return NULL;
    }
    return PyCapsule_GetPointer(capsule, RECORD_CAPSULE);
}

static PyObject *
xthread_record(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    recordobject *rec = current_record(get_xthread_state(module));
    return Py_XNewRef((PyObject *)rec);
}

static PyObject *
xthread_find_record(PyObject *module, PyObject *ident_obj)
{
    unsigned long ident;
    if (parse_ident(ident_obj, &ident) < 0) {
        return NULL;
    }
    recordobject *rec = registry_record(get_xthread_state(module), ident, 1);
    if (rec == NULL && !PyErr_Occurred()) {
        Py_RETURN_NONE;     /* no such thread, or it ended meanwhile */
    }
    return (PyObject *)rec;
}

/* The OS id of a thread that xthread knows, by ident (and generation, if
 * not 0), or None once it has ended. A thread that _xthread started may
 * not have run its first instruction yet when the start call returns:
 * wait for it then, with the GIL dropped (it writes its native id before
 * it does anything else, without the GIL). The entry is looked up again
 * after every wait, since the thread may end meanwhile. */
static PyObject *
xthread_native_id(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ident", "generation", NULL};
    PyObject *ident_obj;
    unsigned long long generation = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|K:_native_id", kwlist,
                                     &ident_obj, &generation)) {
        return NULL;
    }
    unsigned long ident;
    if (parse_ident(ident_obj, &ident) < 0) {
        return NULL;
    }
    xthread_state *state = get_xthread_state(module);
    xthread_registry *reg = &state->registry;
    reg_entry *own = current_boot_entry(state);
    for (;;) {
        /* 0: none; 1: found (native_id 0 if it has not run yet). */
        int found = 0;
        unsigned long native_id = 0;
        PyThread_acquire_lock(registry_mutex(reg), WAIT_LOCK);
        reg_entry *entry = registry_find_locked(reg, ident);
        if (entry != NULL
            && (generation == 0 || entry->generation == generation)) {
            if (entry->pid == current_pid()) {
                found = 1;
                native_id = atomic_load(&entry->native_id);
            }
            else if (entry == own) {
                /* Linked before a fork(): in this child, its thread is
                 * gone, unless it is the one that forked. */
                found = 1;
                native_id = PyThread_get_thread_native_id();
            }
        }
        PyThread_release_lock(reg->mutex);
        if (!found) {
            Py_RETURN_NONE;
        }
        if (native_id != 0) {
            return PyLong_FromUnsignedLong(native_id);
        }
        Py_BEGIN_ALLOW_THREADS
        sched_yield();
        Py_END_ALLOW_THREADS
    }
}

PyDoc_STRVAR(native_id_doc,
"_native_id($module, /, ident, generation=0)\n--\n\n"
"The operating system's id of the thread with this ident (and of this\n"
"generation, if not 0) that xthread knows (started by _xthread, or with\n"
"a record), or None if there is none. A thread just started may not have\n"
"run yet: the call then waits for its first instruction.");

/* The module functions defined here; module.c adds them. */
PyMethodDef xthread_record_methods[] = {
    {"_record", xthread_record, METH_NOARGS,
     "_record($module, /)\n--\n\nThe calling thread's record."},
    {"_find_record", xthread_find_record, METH_O,
     "_find_record($module, ident, /)\n--\n\n"
     "The record of the live thread with this ident, or None."},
    {"_native_id", (PyCFunction)(void (*)(void))xthread_native_id,
     METH_VARARGS | METH_KEYWORDS, native_id_doc},
    {NULL, NULL, 0, NULL}
};
