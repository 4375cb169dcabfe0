/* _xthread: CPython's _thread machinery rebuilt on the public thread-state
 * API.
 *
 * Layout, in order: module state; the lock and the shared "core" it wraps;
 * the bootstate and the C bootstrap that runs a new thread; sentinels;
 * delivery (carriers; landing: raising where the frame's handlers
 * apply); set_async_exc; the small module functions; module init.
 *
 * Thread life cycle, as seen from the bootstrap (thread_run):
 *
 *     parent (GIL held)                      child (new OS thread)
 *     -----------------                      ---------------------
 *     bootstate + refs, GIL dropped
 *     PyThread_start_new_thread  ------->    native id into its entry
 *     GIL taken back                         waits for `ready`
 *     link the entry (ident)
 *     release `ready`            ------->    PyThreadState_New
 *     (_start_joinable_thread:               PyEval_AcquireThread (GIL)
 *      GIL dropped, waits for    <-------    release `running`
 *      `running`, then asks for              function(*args, **kwargs)
 *      the GIL back)
 *     return ident
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
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "sanitizer.h"

// Module state

static struct PyModuleDef xthread_module;

struct recordobject;
struct xthread_registry;

/* What the registry knows of one thread: its ident, its generation
 * (idents are reused, generations are not) and its record once there is
 * one. A thread that _xthread starts has its entry in its bootstate from
 * before its start call returns, and gets a record only when it first
 * needs one (a killable wait, a shield, a scope, _record()) or is sent an
 * exception, or when _find_record() asks for it: most threads never do,
 * and thread start should not pay for a Python object, a thread-state
 * dict and a capsule. Any other thread's record carries its own entry.
 *
 * `record` is a strong reference in a bootstate's entry (dropped as the
 * thread ends) and the record itself, borrowed, in a record's own entry.
 * `start_shield` is the shield depth of a started thread whose record is
 * not made yet; the record starts from it. Links are guarded by the
 * registry's mutex; `native_id` is written once, by the thread itself and
 * without the GIL (0 until then); the other fields are read and written
 * with the GIL held, except `ident` and `pid`, set as the entry is
 * linked. */
typedef struct reg_entry {
    struct reg_entry *prev, *next;      /* registry links */
    struct xthread_registry *registry;  /* NULL when not linked */
    unsigned long ident;
    atomic_ulong native_id;
    pid_t pid;                          /* the process it was linked in */
    /* A record's own entry: the id of the thread state it was made in
     * (0 in a bootstate's entry, which leaves with its thread). */
    uint64_t tstate_id;
    unsigned long long generation;
    struct recordobject *record;
    int start_shield;
} reg_entry;

/* The entries of the threads that xthread knows, by ident: a hash table
 * of doubly linked chains, so that finding a thread and removing one cost
 * the same with thousands alive as with one. Guarded by its own OS mutex,
 * because a thread that cannot run (thread_abandon) leaves it without the
 * GIL. Every other use holds the GIL as well, so that none is under way
 * when a thread calls fork(), which holds the GIL: a child process never
 * inherits the mutex held. The table doubles when it holds twice as many
 * entries as chains. */
typedef struct xthread_registry {
    PyThread_type_lock mutex;
    atomic_int pid;             /* the process the mutex is for */
    reg_entry **chains;
    size_t nchains;             /* a power of two */
    size_t count;
} xthread_registry;

#define REGISTRY_MIN_CHAINS 64

typedef struct {
    PyTypeObject *lock_type;
    PyTypeObject *rlock_type;
    PyTypeObject *record_type;
    PyTypeObject *scoped_type;
    PyObject *record_key;       /* key of the record in a thread-state dict */
    PyObject *str_entered;      /* "_scope_entered" */
    PyObject *str_exited;       /* "_scope_exited" */
    xthread_registry registry;
    /* Threads started by this module that have not finished their Python
     * part. Atomic: a thread that cannot run takes itself off without the
     * GIL. The counters below are only touched with the GIL held. */
    atomic_long count;
    pid_t pid;                  /* the process `count` is about */
    unsigned long long next_generation;
    unsigned long long next_token;      /* deliveries and scopes */
    /* Landing (see "Landing" below): xthread._landing.verdict, imported by
     * the first delivery that needs it; whether that import failed. */
    PyObject *landing_verdict;
    PyObject *not_here;         /* xthread._landing._not_here, a set */
    int landing_failed;
    /* Trace-function landing: xthread._landing.table, and its answers by
     * code object (a trace function must not run Python code: on 3.11,
     * Python code run from a C trace function at a call instruction
     * leaves the callee untraced). */
    PyObject *landing_table;
    PyObject *trace_maps;
    /* xthread._landing._nop: a thread calls it to take a plain copy
     * pending in itself (plain_take, XTHREAD_TAKE_PLAIN), or a throwaway
     * exception of class signal_clearer (signal_clear). */
    PyObject *plain_nop;
    PyObject *signal_clearer;
    /* sys.monitoring landing: the module, the tool id held while some
     * delivery is armed (-1: none), how many records are armed, the code
     * objects armed and by how many records, the event bits, and the
     * callbacks (C functions bound to this module). */
    PyObject *monitoring;
    int mon_tool;
    Py_ssize_t mon_armed;
    PyObject *mon_counts;
    long ev_instruction, ev_py_start, ev_py_resume;
    PyObject *cb_instruction, *cb_py_start, *cb_py_resume;
    /* Waking (XTHREAD_SIGNAL_WAKES): the opcodes of the call instructions
     * (CALL, CALL_KW, CALL_FUNCTION_EX; -1 where unknown), loaded with
     * the landing module. */
    int call_ops[3];
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


// Thread records

/* A record of one thread, made for every thread that waits in xthread or
 * is sent an exception through it: the semaphore it parks on in a killable
 * wait, its generation, its shield depth, the scopes it is in, and the
 * exception it was last sent.
 *
 * Owners: for a thread that _xthread starts, its bootstate's registry
 * entry, until the thread's function has returned; for any other thread,
 * its own state dict (through a capsule, so the record goes when the
 * thread state is cleared), while the record's own entry, which the
 * registry holds, names it borrowed: that entry leaves the registry
 * before the record is freed. Fields other than the entry's links are
 * read and written with the GIL held. */
/* A delivery scope open in a thread, and the object that opened it (for
 * identity only: a Scoped finds its own innermost scope in this thread). */
typedef struct {
    unsigned long long token;
    const void *owner;
} scope_entry;

typedef struct recordobject {
    PyObject_HEAD
    reg_entry own;              /* a thread not started by _xthread */
    unsigned long ident;
    unsigned long long generation;
    PyThread_type_lock park;    /* posted to wake the thread from a wait */
    PyThread_type_lock landed;  /* posted when a sent exception lands */
    atomic_int park_posted, landed_posted;      /* see sem_post */
    int parked;                 /* in a killable wait now */
    int shield_depth;
    /* Sent through xthread, not landed yet: raised by the interpreter at
     * the thread's next bytecode boundary (outstanding), or held back by
     * a shield (deferred). */
    PyObject *outstanding;      /* the instance sent, or NULL */
    unsigned long long outstanding_scope;
    unsigned long long outstanding_token;
    PyObject *deferred;
    unsigned long long deferred_scope;
    /* Sent while another was outstanding or deferred: a list of
     * (instance, scope, token), sent one at a time as each lands. */
    PyObject *queue;
    /* Active scopes, innermost last. */
    scope_entry *scopes;
    Py_ssize_t nscopes;
    Py_ssize_t scopes_cap;
    /* When the last exception was sent and landed (monotonic us; 0: not). */
    long long sent_at_us;
    long long landed_at_us;
    /* The outstanding exception waits to be raised at an instruction
     * where the frame's handlers apply (see "Landing"); `armed_objs`
     * holds what was armed for it: code objects (sys.monitoring) or
     * frames whose f_trace_opcodes was set (trace function). */
    int armed;
    int land_next;              /* raise at the next instruction it runs */
    /* The outstanding exception was handed to the interpreter loop
     * (PyThreadState_SetAsyncExc), so withdrawing it must clear it there.
     * Not otherwise: on 3.11 clearing signals every thread's eval breaker,
     * and nothing unsignals it until the next real async exception. */
    int plain;
    /* The thread runs the landing's own Python code (the verdict, a
     * trace table) for the outstanding exception. No plain copy is sent
     * meanwhile (wake_thread, kill's fallback): it would land inside that
     * code and be lost there. The thread runs bytecode, so the armed
     * delivery reaches it anyway. */
    int judging;
    PyObject *armed_objs;
    /* The last exception went by plain delivery on a version where a
     * frame's handlers may then be skipped. */
    int unguarded;
} recordobject;

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

static void
xthread_pid_init(void)
{
    atomic_store(&xthread_pid, (int)getpid());
    (void)pthread_atfork(NULL, NULL, xthread_pid_after_fork);
}

static inline int
current_pid(void)
{
    return atomic_load(&xthread_pid);
}

#define PID_RENEWING (-1)

/* Returns `*mutex`, first made anew if it was made in another process
 * (`*pid` tells): then `renew(arg)` runs too, with the new mutex not yet
 * published, for what else the parent's threads left behind. Safe
 * without the GIL: one caller renews, any other waits for it. */
static PyThread_type_lock
fork_safe_mutex(PyThread_type_lock *mutex, atomic_int *pid,
                void (*renew)(void *), void *arg)
{
    int now = current_pid();
    int seen = atomic_load(pid);
    while (seen != now) {
        if (seen != PID_RENEWING
            && atomic_compare_exchange_weak(pid, &seen, PID_RENEWING)) {
            PyThread_type_lock fresh = PyThread_allocate_lock();
            if (fresh != NULL) {
                *mutex = fresh;     /* else keep the old one: no better */
            }
            if (renew != NULL) {
                renew(arg);
            }
            atomic_store(pid, now);
            break;
        }
        sched_yield();
        seen = atomic_load(pid);
    }
    return *mutex;
}

static void registry_drop_stale(void *reg);

static inline PyThread_type_lock
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

static void
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

static void
registry_unlink(reg_entry *e)
{
    xthread_registry *reg = e->registry;
    if (reg == NULL) {
        return;
    }
    PyThread_acquire_lock(registry_mutex(reg), WAIT_LOCK);
    registry_remove(reg, e);
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

/* The entry of the live thread with this ident, or NULL (borrowed; valid
 * while the GIL is held, since entries leave the table only with it, or,
 * in thread_abandon, without it but with their memory kept). The newest
 * wins if a dead thread's entry lingers. */
static reg_entry *
registry_find(xthread_registry *reg, unsigned long ident)
{
    reg_entry *found = NULL;
    PyThread_acquire_lock(registry_mutex(reg), WAIT_LOCK);
    for (reg_entry *e = reg->chains[registry_chain(reg, ident)]; e != NULL;
         e = e->next) {
        if (e->ident == ident) {
            found = e;
            break;
        }
    }
    PyThread_release_lock(reg->mutex);
    return found;
}

static void
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
    rec->judging = 0;
    rec->land_next = 0;
    rec->plain = 0;
    rec->armed_objs = NULL;
    rec->unguarded = 0;
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
static int
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
    PyLockStatus r = PyThread_acquire_lock_timed(sem, timeout_us, intr_flag);
    if (r == PY_LOCK_ACQUIRED) {
        atomic_store(posted, 0);
    }
    return r;
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
    return us_or_none(rec->sent_at_us);
}

static PyObject *
record_get_landed_at(recordobject *rec, void *Py_UNUSED(closure))
{
    return us_or_none(rec->landed_at_us);
}

static PyObject *
record_get_parked(recordobject *rec, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(rec->parked);
}

static PyObject *
record_get_shield_depth(recordobject *rec, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(rec->shield_depth);
}

static PyObject *
record_get_pending(recordobject *rec, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(rec->outstanding != NULL || rec->deferred != NULL
                           || (rec->queue != NULL
                               && PyList_GET_SIZE(rec->queue) > 0));
}

static PyObject *
record_get_unguarded(recordobject *rec, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(rec->unguarded);
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

static PyType_Spec record_type_spec = {
    .name = "_xthread.ThreadRecord",
    .basicsize = sizeof(recordobject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = record_type_slots,
};

#define RECORD_CAPSULE "_xthread.record"

static void record_disarm(recordobject *rec);

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
    record_disarm(rec);
    registry_unlink(&rec->own);
    Py_DECREF(rec);
}

static reg_entry *registry_find_live(xthread_state *state,
                                     unsigned long ident);

/* The record of the thread that `e` names, made now if it has none
 * (borrowed reference); NULL with MemoryError set, or NULL with no error
 * when that thread ended while the record was made. GIL held. */
static recordobject *
entry_record(xthread_state *state, reg_entry *e)
{
    if (e->record == NULL) {
        unsigned long ident = e->ident;
        unsigned long long generation = e->generation;
        recordobject *rec = record_new(state, generation);
        if (rec == NULL) {
            return NULL;
        }
        /* The allocation may have run a collection whose finalizers let
         * the GIL go: another thread's entry may be gone now, and its
         * memory freed (or reused). Trust it only if it is still linked
         * under the same ident and generation. */
        reg_entry *again = registry_find_live(state, ident);
        if (again != e || again->generation != generation) {
            Py_DECREF(rec);
            return NULL;
        }
        if (e->record != NULL) {
            Py_DECREF(rec);     /* made meanwhile, by another thread */
            return e->record;
        }
        rec->ident = ident;
        rec->shield_depth = e->start_shield;
        e->record = rec;
    }
    return e->record;
}

/* The calling thread's entry if _xthread started it, from this module, and
 * its function has not returned yet; else NULL. GIL held. */
static reg_entry *current_boot_entry(xthread_state *state);

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
static recordobject *
current_record(xthread_state *state)
{
    reg_entry *boot_entry = current_boot_entry(state);
    if (boot_entry != NULL) {
        recordobject *rec = entry_record(state, boot_entry);
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
    recordobject *rec = record_new(state, ++state->next_generation);
    if (rec == NULL) {
        return NULL;
    }
    int rc = record_install(state, rec);
    Py_DECREF(rec);
    return rc < 0 ? NULL : rec;
}


static void record_send_next(recordobject *rec);
static void record_drop_queued(recordobject *rec, unsigned long long scope);

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
static recordobject *current_record_if_any(xthread_state *state);

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
 * and whatever was armed for it. GIL held. */
static void
record_withdraw(recordobject *rec)
{
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
}

/* Raises, in the calling thread and now, the exception sent to it (what
 * interrupted a killable wait, or an armed delivery at a covered
 * instruction), withdrawing it from the interpreter loop and disarming,
 * so that it is raised once. Always returns NULL. */
static PyObject *
raise_outstanding(recordobject *rec)
{
    if (rec == NULL) {
        return NULL;    /* current_record() failed: its error is set */
    }
    PyObject *exc = rec->outstanding;
    if (exc == NULL) {
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
    return NULL;
}


/* Leaves one level of the calling thread's shields; at the outermost,
 * raises what was held back (returns -1 with it set). GIL held. */
static int
record_shield_exit(recordobject *rec)
{
    if (--rec->shield_depth == 0 && rec->deferred != NULL) {
        PyObject *exc = rec->deferred;
        rec->deferred = NULL;
        rec->landed_at_us = monotonic_us();
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        record_send_next(rec);
        return -1;
    }
    record_send_next(rec);
    return 0;
}


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

static inline void
unpark(recordobject *rec)
{
    sem_post(rec->park, &rec->park_posted);
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

static lock_core *
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
static inline PyThread_type_lock
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
static void
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
static int
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

typedef enum {
    WAIT_DONE,          /* acquired, or the park ended */
    WAIT_TIMEOUT,
    WAIT_INTERRUPTED,   /* an exception was sent to the thread */
    WAIT_ERROR,         /* a signal handler raised; exception set */
} wait_status;

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
static wait_status
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
    if (rec->outstanding != NULL) {
        return WAIT_INTERRUPTED;
    }
    if (record_semaphore(&rec->park) < 0) {
        return WAIT_ERROR;
    }
    waiter w = {.next = NULL, .rec = rec, .granted = 0};
    if (lock_core_enqueue(core, &w)) {
        return WAIT_DONE;
    }
    /* The record (its semaphore) must outlive the wait even if another
     * thread clears this thread's state meanwhile (interpreter exit). If
     * this thread ends inside the GIL request, the reference leaks. */
    Py_INCREF(rec);
    rec->parked++;
    wait_status status;
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
        if (rec->outstanding != NULL) {
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
    rec->parked--;
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
    rec->parked++;
    while (rec->outstanding == NULL) {
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
    if (status != WAIT_ERROR && rec->outstanding != NULL) {
        status = WAIT_INTERRUPTED;
    }
    rec->parked--;
    Py_DECREF(rec);
    return status;
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

/* As _PyTime_FromSecondsObject: a float, or an integer by __index__
 * (numpy integers included); anything else is TypeError. */
static int
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

static PyType_Spec lock_type_spec = {
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
 * other way round. `owner` and `count` are read and written with the GIL
 * held (the core's `locked` flag is what other threads test). */
typedef struct {
    PyObject_HEAD
    lock_core *core;
    unsigned long owner;        /* ident of the holder; 0 when free */
    unsigned long count;        /* its depth; 0 when free */
    PyObject *weakreflist;
} rlockobject;

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
    if (self->count > 0 && self->owner == me) {
        if (self->count == ULONG_MAX) {
            PyErr_SetString(PyExc_OverflowError,
                            "internal lock count overflowed");
            return NULL;
        }
        self->count++;
        Py_RETURN_TRUE;
    }
    xthread_state *state = rlock_state(self);
    if (state == NULL) {
        return NULL;
    }
    switch (lock_core_acquire(state, self->core, timeout_us)) {
    case WAIT_DONE:
        self->owner = me;
        self->count = 1;
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
    if (self->count == 0 || self->owner != PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot release un-acquired lock");
        return -1;
    }
    if (--self->count == 0) {
        self->owner = 0;
        lock_core_release(self->core);
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
    return PyBool_FromLong(self->count > 0
                           && self->owner == PyThread_get_thread_ident());
}

static PyObject *
rlock_recursion_count(rlockobject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLong(
        self->owner == PyThread_get_thread_ident() ? self->count : 0);
}

/* For Condition.wait: lets go of every level at once, returning them. */
static PyObject *
rlock_release_save(rlockobject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->count == 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot release un-acquired lock");
        return NULL;
    }
    PyObject *saved = Py_BuildValue("(kk)", self->count, self->owner);
    if (saved == NULL) {
        return NULL;
    }
    self->count = 0;
    self->owner = 0;
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
        self->owner = owner;
        self->count = count;
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
    self->owner = 0;
    self->count = 0;
    Py_RETURN_NONE;
}

static PyObject *
rlock_repr(rlockobject *self)
{
    unsigned long count = self->count;
    PyObject *owner = count > 0 ? PyLong_FromUnsignedLong(self->owner)
                                : Py_NewRef(Py_None);
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
    self->owner = 0;
    self->count = 0;
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

static PyType_Spec rlock_type_spec = {
    .name = "xthread.RLock",
    .basicsize = sizeof(rlockobject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = rlock_type_slots,
};


// Bootstate and the C bootstrap

/* Everything a new thread needs. Allocated with PyMem_RawMalloc because the
 * child frees it after its thread state is gone, without the GIL.
 *
 * Ownership: the parent fills it and holds it until the OS thread exists
 * and `ready` is released; if the OS thread could not be made, the parent
 * frees it. Otherwise the child owns it from `ready` on, and the parent
 * never touches it again. */
typedef struct {
    PyInterpreterState *interp;
    xthread_state *state;   /* of `module` */
    PyObject *module;       /* strong: keeps the module state alive */
    PyObject *func;         /* strong */
    PyObject *args;         /* strong */
    PyObject *kwargs;       /* strong or NULL */
    /* Held by the parent until it has linked `entry`; the child waits for
     * it (rarely: the parent links it as soon as the OS thread exists)
     * before it runs anything that reads its entry, and frees it. */
    PyThread_type_lock ready;
    /* The start handshake, for a caller that waits until the thread runs
     * (_start_joinable_thread, as threading.Thread.start waits for its
     * `_started` event): made held by the parent, released once by the
     * child as it has the GIL and is about to call its function (or as it
     * gives up), then freed by the parent, which keeps its own copy of the
     * pointer and never reads it from here after `ready`. NULL: nobody
     * waits. */
    PyThread_type_lock running;
    /* Who decides what becomes of the bootstate once the OS thread
     * exists: the parent publishes it (BOOT_PUBLISHED), or the thread,
     * finding that finalization has begun while its parent has not come
     * back for it, abandons it (BOOT_ABANDONED) and the parent must not
     * touch it. Each sets its bit with one fetch-or; whoever finds the
     * other's bit clear has won. (Not a compare-and-swap: its `expected`
     * would be an address-taken local, whose AddressSanitizer redzone
     * stays poisoned when CPython ends the thread inside a GIL request.) */
    atomic_int phase;
    /* The thread's registry entry: its generation is given by the parent
     * (so that it is known when start returns), the entry is linked by the
     * parent as soon as the ident is known, so that an exception can be
     * sent before the thread has run, and unlinked by the thread once its
     * function has returned; the record in it is made on first use. */
    reg_entry entry;
    /* Locks released after the thread state is deleted. Touched only by
     * the thread itself (and the parent before start); each holds a
     * core reference. */
    lock_core **sentinels;
    Py_ssize_t nsentinels;
    Py_ssize_t sentinels_cap;
} bootstate;

enum { BOOT_STARTING = 0, BOOT_PUBLISHED = 1, BOOT_ABANDONED = 2 };

/* How often a new thread whose parent has not published it yet looks
 * whether finalization has begun (see thread_run). */
#define READY_POLL_US 10000

/* The bootstate of the thread running here, or NULL for a thread that
 * _xthread did not start. Per OS thread, not per module: an OS thread runs
 * at most one bootstrap, whatever interpreter it serves. */
static _Thread_local bootstate *current_boot = NULL;

static reg_entry *
current_boot_entry(xthread_state *state)
{
    bootstate *boot = current_boot;
    if (boot != NULL && boot->entry.registry == &state->registry) {
        return &boot->entry;
    }
    return NULL;
}

/* The thread count, reset after fork() (only the forking thread exists in
 * the child). Checked on use rather than by an os.register_at_fork hook,
 * which would keep the module alive for ever. */
static atomic_long *
xthread_count_ref(xthread_state *state)
{
    pid_t pid = current_pid();
    if (state->pid != pid) {
        state->pid = pid;
        atomic_store(&state->count, current_boot != NULL ? 1 : 0);
    }
    return &state->count;
}

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
    atomic_store(&core->ends_with_thread, 1);
    boot->sentinels[boot->nsentinels++] = core;
    return 0;
}

/* Runs after the thread state is deleted, or when it was never made: no
 * GIL, no Python API, only PyThread_* and PyMem_Raw*. */
static void
bootstate_release_sentinels(bootstate *boot)
{
    for (Py_ssize_t i = 0; i < boot->nsentinels; i++) {
        lock_core *core = boot->sentinels[i];
        PyThread_acquire_lock(lock_core_mutex(core), WAIT_LOCK);
        if (atomic_load(&core->locked)) {
            lock_core_pass_on(core);
        }
        PyThread_release_lock(core->mutex);
        /* After the release, so that a spinning joiner sees it. */
        atomic_store(&core->ends_with_thread, 0);
        lock_core_decref(core);
    }
    PyMem_RawFree(boot->sentinels);
    boot->sentinels = NULL;
    boot->nsentinels = boot->sentinels_cap = 0;
}

/* Called with the GIL held, by the parent when the OS thread was not
 * made. */
static void
bootstate_discard(bootstate *boot)
{
    Py_DECREF(boot->func);
    Py_DECREF(boot->args);
    Py_XDECREF(boot->kwargs);
    Py_XDECREF(boot->entry.record);
    Py_DECREF(boot->module);
    if (boot->ready != NULL) {
        PyThread_free_lock(boot->ready);
    }
    if (boot->running != NULL) {
        PyThread_free_lock(boot->running);  /* no thread: nobody else has it */
    }
    bootstate_release_sentinels(boot);
    PyMem_RawFree(boot);
}

/* The thread cannot run its function: finalization has begun (`why` is
 * NULL), or no thread state could be made. No GIL and no thread state, so
 * no Py_DECREF: the bootstate and its references are leaked on purpose,
 * as CPython's own bootstrap does at finalization (gh-108987). The entry
 * leaves the registry, though its memory stays: a thread holding the GIL
 * may have found it a moment ago. Its sentinels are released, so that
 * joins return. */
/* The child's side of the start handshake: the parent may go on. Called
 * once the thread has the GIL (so that it goes on into its function
 * before the parent gets the GIL back, as a stdlib thread does), or as it
 * gives up. The lock is the parent's to free from then on. */
static void
thread_say_running(bootstate *boot)
{
    PyThread_type_lock running = boot->running;
    if (running != NULL) {
        boot->running = NULL;
        PyThread_release_lock(running);
    }
}

static void
thread_abandon(bootstate *boot, const char *why)
{
    thread_say_running(boot);       /* the parent must not wait for ever */
    registry_unlink(&boot->entry);
    atomic_fetch_sub(&boot->state->count, 1);
    bootstate_release_sentinels(boot);
    if (why != NULL) {
        /* Nothing else can report it: there is no thread state to raise
         * with, and start() returned long ago. */
        fprintf(stderr, "_xthread: a new thread did not run: %s\n", why);
    }
}

/* Lifts the shield that every thread starts in until it runs (its
 * entry's start_shield is 1 more than the caller asked for). What was
 * sent to the thread before it could take it (the start call returns
 * before the thread runs) was held back, and is raised now, in place of
 * its function: returns -1 with it set, else 0. GIL held, in the thread. */
static int
thread_lift_start_shield(bootstate *boot)
{
    if (boot->entry.record == NULL) {
        boot->entry.start_shield--;     /* nothing was sent */
        return 0;
    }
    return record_shield_exit(boot->entry.record);
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

    /* First, so that _native_id() never waits on anything but this. */
    atomic_store(&boot->entry.native_id, PyThread_get_thread_native_id());
    /* The parent links the entry once the OS thread exists; until then
     * nothing here may read it (current_boot_entry() tells a linked one).
     * It does so once it has the GIL back, so it never does if
     * finalization begins meanwhile: CPython 3.9-3.13 end it inside that
     * GIL request, 3.14 blocks it there. Then this thread gives up, unless
     * the parent has published it after all (`phase` tells). From `ready`
     * on, the parent never touches the bootstate. */
    while (PyThread_acquire_lock_timed(boot->ready, READY_POLL_US, 0)
           != PY_LOCK_ACQUIRED) {
        if (Py_IsFinalizing()
            && !(atomic_fetch_or(&boot->phase, BOOT_ABANDONED)
                 & BOOT_PUBLISHED)) {
            thread_abandon(boot, NULL);     /* `ready` leaks with it */
            return;
        }
    }
    PyThread_free_lock(boot->ready);
    boot->ready = NULL;

    if (Py_IsFinalizing()) {
        thread_abandon(boot, NULL);
        return;
    }
    /* Made here, in the thread it serves: a thread state records the OS
     * thread that creates it, and PyThreadState_SetAsyncExc finds threads
     * by that record. No GIL is needed to make one. */
    PyThreadState *tstate = PyThreadState_New(boot->interp);
    if (tstate == NULL) {
        thread_abandon(boot, "no memory for its thread state");
        return;
    }

    current_boot = boot;
    xthread_sanitizer_may_end_here();
    PyEval_AcquireThread(tstate);
    thread_say_running(boot);

    PyObject *res = NULL;
    if (thread_lift_start_shield(boot) == 0) {
        res = PyObject_Call(boot->func, boot->args, boot->kwargs);
    }
    if (res == NULL) {
        XTHREAD_REPORT_OWN_CLASS();
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
    atomic_fetch_sub(xthread_count_ref(boot->state), 1);
    /* Ended: no longer findable, and no longer the owner of its record
     * (which lives on while a caller of _find_record holds it). */
    if (boot->entry.record != NULL) {
        record_disarm(boot->entry.record);
    }
    registry_unlink(&boot->entry);
    Py_CLEAR(boot->entry.record);
    Py_CLEAR(boot->module);

    PyThreadState_Clear(tstate);
    PyThreadState_DeleteCurrent();     /* drops the GIL */
    current_boot = NULL;

    /* The thread state is gone: joiners may wake now. */
    bootstate_release_sentinels(boot);
    PyMem_RawFree(boot);
}

/* Run by the parent once the OS thread exists, with the GIL held: makes
 * the thread findable by its ident, then lets it run. The bootstate is
 * the child's from here on. With the GIL, so that no registry operation
 * is under way when another thread calls fork() (which holds the GIL):
 * the child process then never inherits the registry's mutex held.
 * Returns -1 if the thread has abandoned its bootstate already (see
 * thread_run), which is then not touched. */
static int
start_publish(bootstate *boot, unsigned long ident)
{
    if (atomic_fetch_or(&boot->phase, BOOT_PUBLISHED) & BOOT_ABANDONED) {
        return -1;
    }
    boot->entry.ident = ident;
    registry_link(&boot->state->registry, &boot->entry);
    PyThread_release_lock(boot->ready);
    return 0;
}

/* Starts a thread running func(*args, **kwargs), and returns without
 * waiting for it to run: the thread makes its own thread state, and it is
 * the thread, not the caller, that waits if it gets there first (for
 * `ready`). On success returns 0 with *ident set; the thread owns `boot`.
 * On failure returns -1 with an exception set; `boot` has been discarded,
 * or, if the thread abandoned it at finalization, is left to the thread
 * (which released its sentinels). Called with the GIL held.
 *
 * PyThread_start_new_thread reads the stack size set by stack_size() from
 * the current thread state, and uses the platform default when there is
 * none. So with a size set, the thread is made with the thread state
 * attached; with none (the usual case) the GIL is dropped first: making an
 * OS thread takes tens of microseconds in the kernel, during which threads
 * started just before run their Python instead of waiting for this one. */
/* The parent's side of the start handshake: wait, without the GIL, until
 * the thread has the GIL and is about to call its function, then free the
 * lock. The wait is for the OS to schedule the new thread (microseconds);
 * it stops only if finalization begins meanwhile (the thread may then
 * never run; the lock is left to it). */
static void
start_wait_running(PyThread_type_lock running)
{
    for (;;) {
        PyLockStatus r;
        Py_BEGIN_ALLOW_THREADS
        r = PyThread_acquire_lock_timed(running, READY_POLL_US, 0);
        Py_END_ALLOW_THREADS
        if (r == PY_LOCK_ACQUIRED) {
            PyThread_free_lock(running);
            return;
        }
        if (Py_IsFinalizing()) {
            return;
        }
    }
}

static int
start_thread(bootstate *boot, unsigned long *ident, int wait_running)
{
    if (Py_IsFinalizing()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "can't create new thread at interpreter shutdown");
        goto error;
    }
    boot->ready = PyThread_allocate_lock();
    if (boot->ready == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    PyThread_acquire_lock(boot->ready, WAIT_LOCK);
    PyThread_type_lock running = NULL;
    if (wait_running) {
        running = boot->running = PyThread_allocate_lock();
        if (running == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        PyThread_acquire_lock(running, WAIT_LOCK);
    }

    atomic_long *count = xthread_count_ref(boot->state);
    atomic_fetch_add(count, 1);
    unsigned long id;
    if (PyThread_get_stacksize() != 0) {
        id = PyThread_start_new_thread(thread_run, boot);
    }
    else {
        Py_BEGIN_ALLOW_THREADS
        id = PyThread_start_new_thread(thread_run, boot);
        Py_END_ALLOW_THREADS
    }
    if (id == PYTHREAD_INVALID_THREAD_ID) {
        atomic_fetch_sub(count, 1);
        PyErr_SetString(PyExc_RuntimeError, "can't start new thread");
        goto error;
    }
    if (start_publish(boot, id) < 0) {
        /* The thread saw finalization begin and ended: it released the
         * sentinels and keeps the bootstate (and `running`, which it
         * released: left, since it may touch it still). */
        PyErr_SetString(PyExc_RuntimeError,
                        "can't create new thread at interpreter shutdown");
        return -1;
    }
    *ident = id;
    if (running != NULL) {
        start_wait_running(running);
    }
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
    boot->state = get_xthread_state(module);
    boot->module = Py_NewRef(module);
    boot->func = Py_NewRef(func);
    boot->args = Py_NewRef(args);
    boot->kwargs = Py_XNewRef(kwargs);
    boot->ready = NULL;
    boot->running = NULL;
    atomic_init(&boot->phase, BOOT_STARTING);
    entry_init(&boot->entry, ++get_xthread_state(module)->next_generation);
    /* Every thread starts shielded until it runs (see thread_run). */
    boot->entry.start_shield = 1;
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
    unsigned long ident;
    if (start_thread(boot, &ident, 0) < 0) {
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
    lockobject *sentinel = NULL;
    /* A held sentinel given by the caller is released on every failure
     * from here on, so that whoever waits on it already (an exit wait
     * that found it tracked) is not left waiting for a thread that never
     * ran. Until it belongs to the bootstate, that is done here. */
    int release_given = 0;
    PyObject *call_args = NULL;
    Py_ssize_t nargs = PyTuple_GET_SIZE(fargs);
    if (nargs > 6) {
        PyErr_Format(PyExc_TypeError,
                     "_start_joinable_thread expected at most 6 arguments, "
                     "got %zd", nargs);
        return NULL;
    }
    /* A list of one item the result is also stored in, before the call
     * returns: an exception that lands as it returns (a signal handler's)
     * must not make the caller take a running thread for a failed start. */
    PyObject *out = NULL;
    if (nargs == 6 && PyTuple_GET_ITEM(fargs, 5) != Py_None) {
        out = PyTuple_GET_ITEM(fargs, 5);
        if (!PyList_Check(out) || PyList_GET_SIZE(out) != 1) {
            PyErr_SetString(PyExc_TypeError,
                            "started must be a list of one item");
            return NULL;
        }
    }
    if (nargs >= 4 && PyTuple_GET_ITEM(fargs, 3) != Py_None) {
        PyObject *given = PyTuple_GET_ITEM(fargs, 3);
        if (!PyObject_TypeCheck(given, state->lock_type)) {
            PyErr_Format(PyExc_TypeError,
                         "sentinel must be an _xthread lock, not %.200s",
                         Py_TYPE(given)->tp_name);
            return NULL;
        }
        sentinel = (lockobject *)Py_NewRef(given);
        if (!atomic_load(&sentinel->core->locked)) {
            PyErr_SetString(PyExc_ValueError, "sentinel must be held");
            goto error;
        }
        release_given = 1;
    }
    int shielded = 0;
    if (nargs >= 5) {
        shielded = PyObject_IsTrue(PyTuple_GET_ITEM(fargs, 4));
        if (shielded < 0) {
            goto error;
        }
    }
    call_args = PyTuple_GetSlice(fargs, 0, nargs < 3 ? nargs : 3);
    if (call_args == NULL) {
        goto error;
    }
    bootstate *boot = bootstate_new(module, call_args);
    Py_CLEAR(call_args);
    if (boot == NULL) {
        goto error;
    }
    if (sentinel == NULL) {
        sentinel = newlockobject(state->lock_type);
        if (sentinel == NULL) {
            bootstate_discard(boot);
            goto error;
        }
        /* Held now, by the thread to be: released when its state is gone. */
        atomic_store(&sentinel->core->locked, 1);
    }
    if (bootstate_add_sentinel(boot, sentinel->core) < 0) {
        bootstate_discard(boot);
        goto error;
    }
    release_given = 0;      /* the bootstate's now, released with it */
    /* Shielded from its first bytecode: what is sent before the thread's
     * own code is ready (a Python bootstrap registering itself) waits
     * until that code leaves the shield. (On top of the shield every
     * thread starts in until it runs: see thread_run.) */
    boot->entry.start_shield += shielded ? 1 : 0;
    unsigned long long generation = boot->entry.generation;
    unsigned long ident;
    /* As threading.Thread.start: return once the thread runs. */
    if (start_thread(boot, &ident, 1) < 0) {
        /* The discarded bootstate released the sentinel: join on a
         * thread that never ran must not hang. */
        goto error;
    }
    PyObject *result = Py_BuildValue("kNK", ident, (PyObject *)sentinel,
                                     generation);
    if (result != NULL && out != NULL) {
        PyList_SetItem(out, 0, Py_NewRef(result));  /* cannot fail */
    }
    return result;

error:
    if (release_given) {
        (void)lock_core_release(sentinel->core);
    }
    Py_XDECREF(call_args);
    Py_XDECREF(sentinel);
    return NULL;
}

PyDoc_STRVAR(start_joinable_thread_doc,
"_start_joinable_thread($module, function, args, kwargs=None,\n"
"                       sentinel=None, shielded=False, started=None, /)\n"
"--\n\n"
"Like start_new_thread(), but return (ident, sentinel, generation): the\n"
"generation tells this thread from a later one that reuses its ident; the\n"
"sentinel (a new one, or the held lock given) is a held lock that the\n"
"thread releases after its thread state is deleted, so acquiring it\n"
"waits for the thread's end. The call returns once the thread runs: it\n"
"has taken the GIL and is about to call function, which it goes on into\n"
"before the caller gets the GIL back (as threading.Thread.start); its\n"
"native id is known. With shielded, the thread starts inside a shield\n"
"(see _shield_exit): exceptions sent through _deliver wait until it\n"
"leaves it, and reach it even before it has run. If the call fails, a\n"
"held sentinel given to it has been released. started, a list of one\n"
"item, gets the result too, before the call returns.");


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
 * tuple (instance,
 * record or None, token). */

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
static PyObject *
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
static int
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

/* The thread state with this ident, or NULL. Holds the GIL; the list is
 * read as sys._current_frames() and debuggers read it. */
static PyThreadState *
find_tstate(unsigned long ident)
{
    PyInterpreterState *interp = PyThreadState_GetInterpreter(
        PyThreadState_Get());
    for (PyThreadState *t = PyInterpreterState_ThreadHead(interp);
         t != NULL; t = PyThreadState_Next(t)) {
        if (t->thread_id == ident) {
            return t;
        }
    }
    return NULL;
}

/* registry_find, but first dropping an entry whose thread has ended. A
 * thread that is not _xthread's gets its record on first use, owned by its
 * thread-state dict; one made while that dict was being cleared (by a
 * __del__ run then, a threading.local value's) is never freed, and its
 * entry would take deliveries meant for a later thread with the same
 * ident. GIL held. */
static reg_entry *
registry_find_live(xthread_state *state, unsigned long ident)
{
    for (;;) {
        reg_entry *e = registry_find(&state->registry, ident);
        if (e == NULL || e->tstate_id == 0) {
            return e;
        }
        PyThreadState *t = find_tstate(ident);
        if (t != NULL && PyThreadState_GetID(t) == e->tstate_id) {
            return e;
        }
        registry_unlink(e);
    }
}

/* The calling thread's record if it has one (borrowed), else NULL; never
 * makes one and never fails. */
static recordobject *
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
    if (rec->outstanding == NULL) {
        return 0;       /* withdrawn meanwhile: nothing to raise */
    }
    if (verdict == VERDICT_NEXT) {
        rec->land_next = 1;
        return 0;
    }
    return verdict == VERDICT_LAND;
}

/* Imports what landing needs, once. Runs Python code: call it before a
 * delivery's checks. Returns 1 when landing is available. */
static int wake_load_call_ops(xthread_state *state);

static int
landing_load(xthread_state *state)
{
    if (XTHREAD_LANDING == 0 || state->landing_failed) {
        return 0;
    }
    if (state->landing_verdict != NULL) {
        return 1;
    }
    PyObject *mod = PyImport_ImportModule("xthread._landing");
    if (mod == NULL) {
        goto failed;
    }
    PyObject *safe = PyObject_GetAttrString(mod, "verdict");
    if (safe == NULL) {
        Py_DECREF(mod);
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
            Py_DECREF(mod);
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
            Py_DECREF(mod);
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
        Py_DECREF(events);
        if (PyErr_Occurred()) {
            Py_DECREF(safe);
            Py_DECREF(mod);
            goto failed;
        }
        state->monitoring = Py_NewRef(mon);
    }
    if (XTHREAD_SIGNAL_WAKES && wake_load_call_ops(state) < 0) {
        Py_DECREF(safe);
        Py_DECREF(mod);
        goto failed;
    }
    /* A set that the module keeps; it only grows. Without it, no code
     * is xthread's own. */
    state->not_here = PyObject_GetAttrString(mod, "_not_here");
    if (state->not_here == NULL || !PySet_Check(state->not_here)) {
        Py_CLEAR(state->not_here);
        PyErr_Clear();
    }
    Py_DECREF(mod);
    state->landing_verdict = safe;
    return 1;

failed:
    /* Plain delivery from now on; say why once. */
    PyErr_WriteUnraisable(NULL);
    state->landing_failed = 1;
    return 0;
}

// sys.monitoring (3.12+)

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
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *r = PyObject_CallMethod(state->monitoring, "set_events", "ii",
                                      id, 0);
    Py_XDECREF(r);
    long evs[] = {state->ev_instruction, state->ev_py_start,
                  state->ev_py_resume};
    for (size_t j = 0; r != NULL && j < 3; j++) {
        r = PyObject_CallMethod(state->monitoring, "register_callback",
                                "ilO", id, evs[j], Py_None);
        Py_XDECREF(r);
    }
    if (r != NULL) {
        r = PyObject_CallMethod(state->monitoring, "free_tool_id", "i", id);
        Py_XDECREF(r);
    }
    if (r == NULL) {
        PyErr_WriteUnraisable(state->monitoring);
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
        long evs[] = {state->ev_instruction, state->ev_py_start,
                      state->ev_py_resume};
        PyObject *cbs[] = {state->cb_instruction, state->cb_py_start,
                           state->cb_py_resume};
        for (size_t j = 0; j < 3; j++) {
            r = PyObject_CallMethod(state->monitoring, "register_callback",
                                    "ilO", id, evs[j], cbs[j]);
            if (r == NULL) {
                mon_release(state);
                return -1;
            }
            Py_DECREF(r);
        }
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

/* Enables instruction events on `code` for `rec` (counted: several
 * records may arm one code object). */
static int
mon_arm_code(xthread_state *state, recordobject *rec, PyObject *code)
{
    PyObject *n = PyDict_GetItemWithError(state->mon_counts, code);
    if (n == NULL && PyErr_Occurred()) {
        return -1;
    }
    long count = n != NULL ? PyLong_AsLong(n) : 0;
    if (count == 0) {
        PyObject *r = PyObject_CallMethod(state->monitoring,
                                          "set_local_events", "iOl",
                                          state->mon_tool, code,
                                          state->ev_instruction);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    PyObject *c = PyLong_FromLong(count + 1);
    if (c == NULL) {
        return -1;
    }
    int rc = PyDict_SetItem(state->mon_counts, code, c);
    Py_DECREF(c);
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
        PyObject *v = PyDict_GetItemWithError(state->mon_counts, code);
        if (v == NULL) {
            PyErr_Clear();
            continue;
        }
        long count = PyLong_AsLong(v) - 1;
        if (count > 0) {
            PyObject *c = PyLong_FromLong(count);
            if (c == NULL || PyDict_SetItem(state->mon_counts, code, c) < 0) {
                rc = -1;
                PyErr_Clear();
            }
            Py_XDECREF(c);
            continue;
        }
        if (PyDict_DelItem(state->mon_counts, code) < 0) {
            PyErr_Clear();
        }
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
static int code_is_own(xthread_state *state, PyCodeObject *code);

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
            PyErr_WriteUnraisable((PyObject *)rec);
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
 * innermost first; stops at the first that fails (-1). */
typedef int (*frame_visitor)(xthread_state *, recordobject *,
                             PyFrameObject *);

static int
for_each_frame(xthread_state *state, recordobject *rec,
               PyThreadState *tstate, frame_visitor fn)
{
    PyFrameObject *frame = PyThreadState_GetFrame(tstate);
    while (frame != NULL) {
        if (fn(state, rec, frame) < 0) {
            Py_DECREF(frame);
            return -1;
        }
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    return 0;
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
static int
record_arm(xthread_state *state, recordobject *rec)
{
    if (XTHREAD_LANDING == 0 || state->landing_verdict == NULL) {
        return 0;
    }
    PyThreadState *tstate = find_tstate(rec->ident);
    if (tstate == NULL) {
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
    return for_each_frame(state, rec, tstate, mon_arm_frame) < 0 ? -1 : 1;
}

/* Undoes record_arm. GIL held, any thread; keeps any exception that is
 * set and reports its own. */
static void
record_disarm(recordobject *rec)
{
    rec->land_next = 0;
    if (!rec->armed) {
        return;
    }
    rec->armed = 0;
    xthread_state *state = PyType_GetModuleState(Py_TYPE(rec));
    if (state == NULL) {
        return;
    }
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (XTHREAD_LANDING == 1) {
        PyThreadState *tstate = find_tstate(rec->ident);
        if (tstate != NULL && xthread_get_trace(tstate) == landing_trace
            && xthread_set_trace(tstate, NULL, NULL) < 0) {
            PyErr_WriteUnraisable((PyObject *)rec);
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
        if (mon_disarm_codes(state, rec) < 0) {
            PyErr_WriteUnraisable((PyObject *)rec);
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
        Py_RETURN_NONE;
    }
    if (rec->plain) {
        /* This thread runs bytecode again: withdraw the plain copy sent to
         * reach it inside a call (wake_thread, kill's overdue fallback).
         * Left pending, it would be raised at the start of the verdict's
         * own Python code and lost there; the armed delivery lands it
         * where the frame's handlers apply. (Something is pending, so the
         * withdrawal clears the eval breaker's signal too.) */
        PyThreadState_SetAsyncExc(rec->ident, NULL);
        rec->plain = 0;
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
    if (rec == NULL || !rec->armed || rec->outstanding == NULL || nargs < 1
        || state->mon_tool < 0) {
        Py_RETURN_NONE;
    }
    if (mon_arm_code(state, rec, args[0]) < 0) {
        PyErr_WriteUnraisable((PyObject *)rec);
    }
    Py_RETURN_NONE;
}

static PyMethodDef landing_callbacks[] = {
    {"_landing_on_instruction", (PyCFunction)(void (*)(void))landing_on_instruction,
     METH_FASTCALL, NULL},
    {"_landing_on_py_start", (PyCFunction)(void (*)(void))landing_on_py_start,
     METH_FASTCALL, NULL},
    {"_landing_on_py_resume", (PyCFunction)(void (*)(void))landing_on_py_start,
     METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL}
};

/* After record_arm, if the delivery was disarmed meanwhile (Python code
 * ran: a finalizer, and the target landed or left the scope), undo what
 * the rest of record_arm armed. */
static void
record_arm_settle(xthread_state *state, recordobject *rec)
{
    if (rec->armed || rec->armed_objs == NULL
        || PyList_GET_SIZE(rec->armed_objs) == 0) {
        return;
    }
    rec->armed = 1;
    if (XTHREAD_LANDING == 2) {
        state->mon_armed++;
    }
    record_disarm(rec);
}

/* Hands `instance` to the thread of `rec` and stores it as outstanding:
 * armed where landing is needed, otherwise (or when it cannot be armed)
 * plain, through `carrier` (made here when NULL). A parked thread is
 * armed too (the caller unparks it): its wait raises the outstanding
 * exception, and if the wait ends otherwise (the lock was granted first)
 * the armed delivery lands next. Not plain: withdrawing a plain exception
 * that the wait raised itself would leave every thread's eval breaker
 * signalled on 3.11, which livelocks a traced frame at its RESUME.
 * Returns 1 if the thread took it, 0 if no thread has the ident, -1 with
 * an exception set. GIL held. */
static int
record_send(xthread_state *state, recordobject *rec, PyObject *instance,
            PyObject *carrier, unsigned long long scope,
            unsigned long long token)
{
    int needs_landing = XTHREAD_LANDING != 0;
    if (needs_landing && state->landing_verdict != NULL) {
        Py_XSETREF(rec->outstanding, Py_NewRef(instance));
        rec->outstanding_scope = scope;
        rec->outstanding_token = token;
        rec->sent_at_us = monotonic_us();
        rec->landed_at_us = 0;
        rec->unguarded = 0;
        rec->land_next = 0;
        int armed = record_arm(state, rec);
        record_arm_settle(state, rec);
        if (armed > 0) {
            return 1;
        }
        if (armed < 0) {
            PyErr_WriteUnraisable(instance);
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

/* Removes the queued deliveries meant for `scope`. GIL held. */
static void
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
 * GIL held; runs in the target thread or a sender; keeps any exception
 * that is set, and reports its own failures as unraisable. */
static void
record_send_next(recordobject *rec)
{
    if (rec->queue == NULL || PyList_GET_SIZE(rec->queue) == 0
        || rec->outstanding != NULL || rec->shield_depth > 0) {
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
            PyErr_WriteUnraisable(instance);
        }
        else if (n == 1 && rec->parked) {
            unpark(rec);
        }
        Py_DECREF(item);
    }
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

/* Queues a delivery behind the one outstanding or deferred. */
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

// Waking: a thread blocked in a system call (3.15+)

/* A thread inside a C call runs no bytecode, so an armed delivery lands
 * only when the call returns. From 3.15 (XTHREAD_SIGNAL_WAKES in
 * compat.h) a C function that retries its system call on EINTR calls
 * PyErr_CheckSignals first, which raises the thread's pending
 * asynchronous exception: time.sleep, socket calls, select and poll,
 * os.read and the like end with the exception if a signal interrupts
 * them. So a delivery to a thread whose innermost frame is at a call
 * instruction is also handed to the interpreter (plain, same token:
 * whichever lands first withdraws the other) and the thread is sent the
 * wake signal, whose handler does nothing and is installed without
 * SA_RESTART. Raised at the call, the exception is in the frame's
 * handlers' range, as any exception the call raised.
 *
 * The signal is SIGURG unless set otherwise (_wake_signal; xthread reads
 * XTHREAD_WAKE_SIGNAL): its default action is to ignore it, and
 * programs rarely use it (out-of-band socket data). The handler is
 * installed on first use, only over the default disposition: a handler
 * someone else installed is never replaced, and before each signal the
 * handler is checked to be still xthread's (if not, no signal is sent).
 *
 * Every signal is sent with the GIL held, by a sender that found the
 * target's thread state in the interpreter (so the OS thread exists: it
 * deletes its thread state with the GIL held) and found its delivery
 * outstanding (so the scope it was sent for is open: closing it
 * withdraws). A signal can still come a moment too early, just before
 * the thread enters its system call; senders send it again while the
 * delivery has not landed (hand_over_gil; _nudge, called by kill's
 * re-deliveries, time limits and the pool's resends).
 *
 * The signal number is process-wide, as signal dispositions are. */

static void
wake_handler(int Py_UNUSED(signum))
{
    /* Nothing: being interrupted is the point. */
}

/* The wake signal (0: none); -1 until the first use reads the default. */
static atomic_int wake_signum = -1;

static int
wake_signal_get(void)
{
    int sig = atomic_load(&wake_signum);
    if (sig < 0) {
        int expected = -1;
        atomic_compare_exchange_strong(&wake_signum, &expected, SIGURG);
        sig = atomic_load(&wake_signum);
    }
    return sig;
}

static int
wake_handler_installed(int sig)
{
    struct sigaction cur;
    return sigaction(sig, NULL, &cur) == 0
           && !(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == wake_handler;
}

/* The signal to wake threads with, its handler installed now if nobody
 * else has one; 0 when there is none to use. */
static int
wake_signal_ready(void)
{
    int sig = wake_signal_get();
    if (sig <= 0) {
        return 0;
    }
    struct sigaction cur;
    if (sigaction(sig, NULL, &cur) != 0) {
        return 0;
    }
    if (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == wake_handler) {
        return sig;
    }
    if ((cur.sa_flags & SA_SIGINFO) || cur.sa_handler != SIG_DFL) {
        return 0;       /* someone else's handler, or ignored on purpose */
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = wake_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;    /* no SA_RESTART: the system call returns EINTR */
    return sigaction(sig, &sa, NULL) == 0 ? sig : 0;
}

static int
wake_load_call_ops(xthread_state *state)
{
    static const char *names[] = {"CALL", "CALL_KW", "CALL_FUNCTION_EX"};
    PyObject *opcode = PyImport_ImportModule("opcode");
    PyObject *opmap = opcode != NULL
        ? PyObject_GetAttrString(opcode, "opmap") : NULL;
    Py_XDECREF(opcode);
    if (opmap == NULL) {
        return -1;
    }
    for (size_t i = 0; i < 3; i++) {
        PyObject *v = PyMapping_GetItemString(opmap, names[i]);
        if (v == NULL) {
            PyErr_Clear();
            state->call_ops[i] = -1;
            continue;
        }
        state->call_ops[i] = (int)PyLong_AsLong(v);
        Py_DECREF(v);
        if (PyErr_Occurred()) {
            Py_DECREF(opmap);
            return -1;
        }
    }
    Py_DECREF(opmap);
    return 0;
}

/* Whether `code` is one of xthread's own primitives (_landing.not_here),
 * where no exception may land: not even a plain copy, which would land
 * between a change they make and their return. Never fails. */
static int
code_is_own(xthread_state *state, PyCodeObject *code)
{
    if (state->not_here == NULL) {
        return 0;
    }
    int own = PySet_Contains(state->not_here, (PyObject *)code);
    if (own < 0) {
        PyErr_Clear();
    }
    return own == 1;
}

/* Whether the thread of `tstate` runs one of xthread's own primitives
 * now (its innermost frame). GIL held. */
static int
thread_in_own_code(xthread_state *state, PyThreadState *tstate)
{
    PyFrameObject *frame = tstate != NULL ? PyThreadState_GetFrame(tstate)
                                          : NULL;
    if (frame == NULL) {
        return 0;
    }
    PyCodeObject *code = PyFrame_GetCode(frame);
    Py_DECREF(frame);
    int own = code_is_own(state, code);
    Py_DECREF(code);
    return own;
}

/* Whether the thread of `tstate` (another thread; the caller holds the
 * GIL, so that thread runs no bytecode) is inside a call: its innermost
 * frame is at a call instruction. Never fails. */
static int
wake_in_call(xthread_state *state, PyThreadState *tstate)
{
    PyFrameObject *frame = PyThreadState_GetFrame(tstate);
    if (frame == NULL) {
        return 0;
    }
    int lasti = xthread_frame_lasti(frame);
    PyCodeObject *code = PyFrame_GetCode(frame);
    Py_DECREF(frame);
    int in_call = 0;
    if (code_is_own(state, code)) {
        Py_DECREF(code);
        return 0;
    }
    PyObject *bytes = lasti >= 0 ? xthread_code_bytes(code) : NULL;
    Py_DECREF(code);
    if (bytes == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (PyBytes_Check(bytes) && lasti < PyBytes_GET_SIZE(bytes)) {
        int op = (unsigned char)PyBytes_AS_STRING(bytes)[lasti];
        for (size_t i = 0; i < 3; i++) {
            in_call |= op == state->call_ops[i];
        }
    }
    Py_DECREF(bytes);
    return in_call;
}

/* Signals the thread `ident` if it is inside a call, after making sure
 * that the interpreter holds `rec`'s outstanding exception for it (plain)
 * when there is a record; with none, the caller has sent it plain. Returns
 * 1 when a signal was sent, else 0; never fails (its errors are cleared:
 * the delivery stands, it only lands when the call returns). GIL held. */
static int
wake_thread(xthread_state *state, unsigned long ident, recordobject *rec)
{
    if (!XTHREAD_SIGNAL_WAKES) {
        return 0;
    }
    if (rec != NULL && (rec->outstanding == NULL || rec->parked
                        || rec->shield_depth > 0 || rec->judging)) {
        return 0;
    }
    int sig = wake_signal_ready();
    if (sig == 0) {
        return 0;
    }
    PyThreadState *tstate = find_tstate(ident);
    if (tstate == NULL || tstate == PyThreadState_Get()
        || !wake_in_call(state, tstate)) {
        return 0;
    }
    if (rec != NULL && !rec->plain) {
        unsigned long long token = rec->outstanding_token;
        PyObject *plain = make_carrier(rec->outstanding, rec, token);
        if (plain == NULL) {
            PyErr_Clear();
            return 0;
        }
        /* Making the carrier ran no Python code on these versions (their
         * collections run at the eval breaker, not at an allocation), but
         * check again rather than rely on it. */
        int taken = 0;
        if (rec->outstanding != NULL && rec->outstanding_token == token
            && find_tstate(ident) == tstate) {
            taken = set_async(ident, plain);
        }
        Py_DECREF(plain);
        if (taken != 1) {
            PyErr_Clear();
            return 0;
        }
        rec->plain = 1;
    }
    else if (rec == NULL && tstate->async_exc == NULL) {
        return 0;       /* nothing pending for it (any more) */
    }
    return pthread_kill((pthread_t)ident, sig) == 0;
}

/* Sends the wake signal again every WAKE_STEP_US while the delivery has
 * not landed, at most `budget_us`, letting go of the GIL in between (a
 * sender's hand-over). Returns whether it landed (for a thread with no
 * record: the interpreter no longer holds it). */
#define WAKE_STEP_US 250

static int
wake_landed(unsigned long ident, recordobject *rec)
{
    if (rec != NULL) {
        return rec->outstanding == NULL;
    }
    PyThreadState *tstate = find_tstate(ident);
    return tstate == NULL || tstate->async_exc == NULL;
}

static int
wake_until_landed(xthread_state *state, unsigned long ident,
                  recordobject *rec, long long budget_us)
{
    long long deadline = monotonic_us() + budget_us;
    for (;;) {
        if (wake_landed(ident, rec)) {
            return 1;
        }
        long long left = deadline - monotonic_us();
        if (left <= 0) {
            return 0;
        }
        long long step = left < WAKE_STEP_US ? left : WAKE_STEP_US;
        Py_BEGIN_ALLOW_THREADS
        if (rec != NULL && rec->landed != NULL) {
            sem_wait_for(rec->landed, &rec->landed_posted, step, 0);
        }
        else {
            struct timespec ts = {0, (long)step * 1000};
            nanosleep(&ts, NULL);
        }
        Py_END_ALLOW_THREADS
        if (wake_landed(ident, rec)) {
            return 1;
        }
        if (!wake_thread(state, ident, rec)) {
            return 0;   /* out of its call, or no signal to send */
        }
    }
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
    if (record_semaphore(&rec->landed) < 0) {
        PyErr_Clear();      /* no hand-over, no harm */
        return;
    }
    /* Drop a stale post of an earlier delivery first. */
    sem_wait_for(rec->landed, &rec->landed_posted, 0, 0);
    if (rec->outstanding == NULL) {
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
    if (signal_clear(state) < 0) {
        goto done;
    }
    reg_entry *entry = registry_find_live(state, ident);
    if (entry != NULL) {
        rec = entry_record(state, entry);
        if (rec == NULL && PyErr_Occurred()) {
            goto done;
        }
        Py_XINCREF(rec);    /* NULL: the thread ended meanwhile */
    }
    unsigned long long token = ++state->next_token;
    carrier = make_carrier(instance, rec, token);
    if (carrier == NULL) {
        goto done;
    }
    /* From here to set_async no Python code runs: the checks and the
     * delivery are one step under the GIL. The thread found first has a
     * record now, so the same thread is found with the same record. */
    entry = registry_find_live(state, ident);
    if (rec != (entry != NULL ? entry->record : NULL)
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
                PyErr_WriteUnraisable(instance);
            }
            record_arm_settle(state, rec);
            if (rec->armed && !rec->plain && !rec->judging
                && rec->outstanding != NULL
                && monotonic_us() - rec->sent_at_us >= PLAIN_AFTER_US
                && !thread_in_own_code(state, find_tstate(rec->ident))) {
                PyObject *plain = make_carrier(rec->outstanding, rec,
                                               rec->outstanding_token);
                if (plain == NULL) {
                    PyErr_WriteUnraisable(instance);
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
        if (rec->parked) {
            unpark(rec);
        }
        else {
            int woken = wake_thread(state, ident, rec);
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
    reg_entry *entry = registry_find_live(state, ident);
    recordobject *rec = entry != NULL ? entry->record : NULL;
    if (rec == NULL || rec->outstanding == NULL
        || (generation != 0 && rec->generation != generation)
        || (scope != 0 && rec->outstanding_scope != scope)) {
        Py_RETURN_FALSE;
    }
    Py_INCREF(rec);
    int woken = wake_thread(state, ident, rec);
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

static PyObject *
xthread_wake_signal(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *arg = NULL;
    if (!PyArg_ParseTuple(args, "|O:_wake_signal", &arg)) {
        return NULL;
    }
    int old = wake_signal_get();
    if (arg != NULL) {
        if (!PyLong_Check(arg) || PyBool_Check(arg)) {
            PyErr_Format(PyExc_TypeError,
                         "signum must be an int, not %.200s",
                         Py_TYPE(arg)->tp_name);
            return NULL;
        }
        int overflow;
        long sig = PyLong_AsLongAndOverflow(arg, &overflow);
        if (sig == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (overflow || (sig != 0 && (sig < 1 || sig >= NSIG
                                      || sig == SIGKILL || sig == SIGSTOP))) {
            PyErr_Format(PyExc_ValueError,
                         "signal number %R cannot wake threads (1 to %d, "
                         "not SIGKILL or SIGSTOP; 0 for none)", arg, NSIG - 1);
            return NULL;
        }
        if (sig != old) {
            if (old > 0 && wake_handler_installed(old)) {
                /* Give the old one back as found. */
                struct sigaction sa;
                memset(&sa, 0, sizeof(sa));
                sa.sa_handler = SIG_DFL;
                sigemptyset(&sa.sa_mask);
                sigaction(old, &sa, NULL);
            }
            atomic_store(&wake_signum, (int)sig);
        }
    }
    return PyLong_FromLong(old);
}

PyDoc_STRVAR(wake_signal_doc,
"_wake_signal($module, signum=<unchanged>, /)\n"
"--\n\n"
"The signal sent to wake a thread blocked in a system call when an\n"
"exception is sent to it (CPython 3.15+; SIGURG unless set), 0 for none.\n"
"With signum, use that one from now on (0: none), giving the previous\n"
"one back its default action if xthread's handler was on it, and return\n"
"the previous one. The handler is installed on first use, and only over\n"
"the default action: a signal with a handler of someone else's is never\n"
"taken over, and a thread is then not signalled.");

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
    xthread_state *state = get_xthread_state(module);
    reg_entry *entry = registry_find_live(state, ident);
    if (entry == NULL) {
        Py_RETURN_NONE;
    }
    recordobject *rec = entry_record(state, entry);
    if (rec == NULL && !PyErr_Occurred()) {
        Py_RETURN_NONE;     /* ended meanwhile */
    }
    return Py_XNewRef((PyObject *)rec);
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
    for (;;) {
        reg_entry *entry = registry_find_live(state, ident);
        if (entry == NULL
            || (generation != 0 && entry->generation != generation)) {
            Py_RETURN_NONE;
        }
        if (entry->pid != current_pid()) {
            /* Linked before a fork(): in this child, its thread is gone,
             * unless it is the one that forked. */
            if (entry == current_boot_entry(state)) {
                return PyLong_FromUnsignedLong(
                    PyThread_get_thread_native_id());
            }
            Py_RETURN_NONE;
        }
        unsigned long native_id = atomic_load(&entry->native_id);
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

/* Opens a scope in the calling thread, owned by `owner` (may be NULL);
 * returns its token, or 0 with an exception set. */
static unsigned long long
record_scope_push(xthread_state *state, recordobject *rec, const void *owner)
{
    if (rec->nscopes == rec->scopes_cap) {
        Py_ssize_t cap = rec->scopes_cap ? rec->scopes_cap * 2 : 4;
        scope_entry *grown = PyMem_RawRealloc(
            rec->scopes, (size_t)cap * sizeof(scope_entry));
        if (grown == NULL) {
            PyErr_NoMemory();
            return 0;
        }
        rec->scopes = grown;
        rec->scopes_cap = cap;
    }
    unsigned long long token = ++state->next_token;
    rec->scopes[rec->nscopes].token = token;
    rec->scopes[rec->nscopes].owner = owner;
    rec->nscopes++;
    return token;
}

/* The token of the innermost scope that `owner` opened in this thread,
 * or 0. */
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
 * GIL held; keeps any exception that is set. */
static void
record_scope_close(recordobject *rec, unsigned long long scope)
{
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

static PyObject *
xthread_shield_enter(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    recordobject *rec = current_record(get_xthread_state(module));
    if (rec == NULL) {
        return NULL;
    }
    rec->shield_depth++;
    /* Sent just before the shield and not landed yet: hold it back too. */
    if (rec->outstanding != NULL) {
        if (rec->deferred == NULL) {
            rec->deferred = Py_NewRef(rec->outstanding);
            rec->deferred_scope = rec->outstanding_scope;
        }
        record_withdraw(rec);
    }
    Py_RETURN_NONE;
}

static PyObject *
xthread_shield_exit(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    recordobject *rec = current_record(get_xthread_state(module));
    if (rec == NULL) {
        return NULL;
    }
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
    if (boot_entry != NULL && boot_entry->record == NULL) {
        /* A started thread with no record yet: nothing was sent to it, so
         * nothing is held back. Its record, if func makes one, starts
         * unshielded. */
        if (boot_entry->start_shield < 1) {
            PyErr_SetString(PyExc_RuntimeError,
                            "_call_unshielded needs a shield");
            return NULL;
        }
        boot_entry->start_shield--;
        res = PyObject_CallNoArgs(func);
        boot_entry->start_shield++;
        rec = (recordobject *)Py_XNewRef((PyObject *)boot_entry->record);
        if (rec == NULL) {
            return res;
        }
    }
    else {
        rec = current_record(state);
        if (rec == NULL) {
            return NULL;
        }
        if (rec->shield_depth < 1) {
            PyErr_SetString(PyExc_RuntimeError,
                            "_call_unshielded needs a shield");
            return NULL;
        }
        Py_INCREF(rec);
        if (--rec->shield_depth > 0) {
            res = PyObject_CallNoArgs(func);
        }
        else if (rec->deferred != NULL) {
            PyObject *exc = rec->deferred;
            rec->deferred = NULL;
            rec->landed_at_us = monotonic_us();
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        else {
            res = PyObject_CallNoArgs(func);
        }
    }
    rec->shield_depth++;
    if (rec->outstanding != NULL) {
        if (rec->deferred == NULL) {
            rec->deferred = Py_NewRef(rec->outstanding);
            rec->deferred_scope = rec->outstanding_scope;
        }
        record_withdraw(rec);
    }
    Py_DECREF(rec);
    return res;
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



// Scoped: a context manager whose block is a delivery scope

/* The base of xthread.time_limit (and anything else whose exceptions are
 * meant for one block). __enter__ opens a scope and then calls the
 * subclass's _scope_entered(token); __exit__ closes the scope *before*
 * any Python code runs, then calls _scope_exited(token). So an exception
 * sent for the block can land only inside it: once __exit__ is called,
 * the interpreter reaches no bytecode boundary before the scope is
 * closed and what is pending for it withdrawn. Reentrant: a stack of
 * tokens per object. */
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
    Py_XDECREF(token);
    if (res == NULL) {
        /* The block will not run: close the scope again. */
        record_scope_close(rec, scope);
        return NULL;
    }
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

static PyType_Spec scoped_type_spec = {
    .name = "_xthread.Scoped",
    .basicsize = sizeof(scopedobject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = scoped_type_slots,
};

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
    xthread_state *state = get_xthread_state(module);
    return PyLong_FromLong(atomic_load(xthread_count_ref(state)));
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

PyDoc_STRVAR(start_new_doc,
"start_new($module, function, args, kwargs=None, /)\n--\n\n"
"An obsolete synonym of start_new_thread().");

PyDoc_STRVAR(allocate_doc,
"allocate($module, /)\n--\n\n"
"An obsolete synonym of allocate_lock().");

PyDoc_STRVAR(exit_thread_doc,
"exit_thread($module, /)\n--\n\n"
"An obsolete synonym of exit().");

static PyMethodDef xthread_methods[] = {
    {"start_new_thread", xthread_start_new_thread, METH_VARARGS,
     start_new_thread_doc},
    {"start_new", xthread_start_new_thread, METH_VARARGS, start_new_doc},
    {"_start_joinable_thread", xthread_start_joinable_thread, METH_VARARGS,
     start_joinable_thread_doc},
    {"allocate_lock", xthread_allocate_lock, METH_NOARGS, allocate_lock_doc},
    {"allocate", xthread_allocate_lock, METH_NOARGS, allocate_doc},
    {"_set_sentinel", xthread_set_sentinel, METH_NOARGS, set_sentinel_doc},
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
    {"_wake_signal", xthread_wake_signal, METH_VARARGS, wake_signal_doc},
    {"_record", xthread_record, METH_NOARGS,
     "_record($module, /)\n--\n\nThe calling thread's record."},
    {"_find_record", xthread_find_record, METH_O,
     "_find_record($module, ident, /)\n--\n\n"
     "The record of the live thread with this ident, or None."},
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
    {"_native_id", (PyCFunction)(void (*)(void))xthread_native_id,
     METH_VARARGS | METH_KEYWORDS, native_id_doc},
    {"_call_unshielded", xthread_call_unshielded, METH_O,
     "_call_unshielded($module, func, /)\n--\n\n"
     "Call func() with the thread's one shield lifted; put it back after."},
    {"sleep", xthread_sleep, METH_O, sleep_doc},
    {"get_ident", xthread_get_ident, METH_NOARGS, get_ident_doc},
    {"get_native_id", xthread_get_native_id, METH_NOARGS, get_native_id_doc},
    {"_count", xthread_count, METH_NOARGS, count_doc},
    {"stack_size", xthread_stack_size, METH_VARARGS, stack_size_doc},
    {"exit", xthread_exit, METH_NOARGS, exit_doc},
    {"exit_thread", xthread_exit, METH_NOARGS, exit_thread_doc},
    {NULL, NULL, 0, NULL}
};


// Module init

static int
xthread_exec(PyObject *module)
{
    xthread_state *state = get_xthread_state(module);
    static pthread_once_t pid_once = PTHREAD_ONCE_INIT;
    (void)pthread_once(&pid_once, xthread_pid_init);
    atomic_init(&state->count, 0);
    state->pid = current_pid();
    state->next_generation = 0;
    state->next_token = 0;
    state->landing_verdict = NULL;
    state->not_here = NULL;
    state->landing_failed = 0;
    state->monitoring = NULL;
    state->mon_tool = -1;
    state->mon_armed = 0;
    state->ev_instruction = state->ev_py_start = state->ev_py_resume = 0;
    state->mon_counts = PyDict_New();
    if (state->mon_counts == NULL) {
        return -1;
    }
    PyObject **cbs[] = {&state->cb_instruction, &state->cb_py_start,
                        &state->cb_py_resume};
    for (size_t i = 0; i < 3; i++) {
        *cbs[i] = PyCFunction_NewEx(&landing_callbacks[i], module, NULL);
        if (*cbs[i] == NULL) {
            return -1;
        }
    }
    state->registry.count = 0;
    state->registry.nchains = REGISTRY_MIN_CHAINS;
    state->registry.chains = PyMem_RawCalloc(REGISTRY_MIN_CHAINS,
                                             sizeof(reg_entry *));
    state->registry.mutex = PyThread_allocate_lock();
    atomic_init(&state->registry.pid, current_pid());
    if (state->registry.chains == NULL || state->registry.mutex == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    state->record_key = PyUnicode_InternFromString("_xthread.record");
    state->str_entered = PyUnicode_InternFromString("_scope_entered");
    state->str_exited = PyUnicode_InternFromString("_scope_exited");
    if (state->record_key == NULL || state->str_entered == NULL
        || state->str_exited == NULL) {
        return -1;
    }

    // Thread records
    state->record_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &record_type_spec, NULL);
    if (state->record_type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "ThreadRecord",
                              (PyObject *)state->record_type) < 0) {
        return -1;
    }

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

    // RLock
    state->rlock_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &rlock_type_spec, NULL);
    if (state->rlock_type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "RLock",
                              (PyObject *)state->rlock_type) < 0) {
        return -1;
    }

    // Scoped
    state->scoped_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &scoped_type_spec, NULL);
    if (state->scoped_type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "Scoped",
                              (PyObject *)state->scoped_type) < 0) {
        return -1;
    }

    // Constants
    for (size_t i = 0; i < 3; i++) {
        state->call_ops[i] = -1;
    }
    /* Whether a delivery signals a thread out of a system call (compat.h). */
    if (PyModule_AddIntConstant(module, "_SIGNAL_WAKES",
                                XTHREAD_SIGNAL_WAKES) < 0) {
        return -1;
    }
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
    return 0;
}

static int
xthread_traverse(PyObject *module, visitproc visit, void *arg)
{
    xthread_state *state = get_xthread_state(module);
    Py_VISIT(state->lock_type);
    Py_VISIT(state->rlock_type);
    Py_VISIT(state->record_type);
    Py_VISIT(state->scoped_type);
    Py_VISIT(state->landing_verdict);
    Py_VISIT(state->not_here);
    Py_VISIT(state->landing_table);
    Py_VISIT(state->plain_nop);
    Py_VISIT(state->signal_clearer);
    Py_VISIT(state->trace_maps);
    Py_VISIT(state->monitoring);
    Py_VISIT(state->mon_counts);
    Py_VISIT(state->cb_instruction);
    Py_VISIT(state->cb_py_start);
    Py_VISIT(state->cb_py_resume);
    return 0;
}

static int
xthread_clear(PyObject *module)
{
    xthread_state *state = get_xthread_state(module);
    Py_CLEAR(state->lock_type);
    Py_CLEAR(state->rlock_type);
    Py_CLEAR(state->record_type);
    Py_CLEAR(state->scoped_type);
    Py_CLEAR(state->record_key);
    Py_CLEAR(state->str_entered);
    Py_CLEAR(state->str_exited);
    Py_CLEAR(state->landing_verdict);
    Py_CLEAR(state->not_here);
    Py_CLEAR(state->landing_table);
    Py_CLEAR(state->plain_nop);
    Py_CLEAR(state->signal_clearer);
    Py_CLEAR(state->trace_maps);
    Py_CLEAR(state->monitoring);
    Py_CLEAR(state->mon_counts);
    Py_CLEAR(state->cb_instruction);
    Py_CLEAR(state->cb_py_start);
    Py_CLEAR(state->cb_py_resume);
    return 0;
}

static void
xthread_free(void *module)
{
    xthread_clear((PyObject *)module);
    /* Records still alive (threads still running) keep a pointer to the
     * registry: detach them before its mutex goes. */
    xthread_state *state = get_xthread_state((PyObject *)module);
    if (state->registry.mutex != NULL) {
        PyThread_acquire_lock(registry_mutex(&state->registry), WAIT_LOCK);
        for (size_t i = 0;
             state->registry.chains != NULL && i < state->registry.nchains;
             i++) {
            for (reg_entry *e = state->registry.chains[i]; e != NULL;) {
                reg_entry *next = e->next;
                e->registry = NULL;
                e->prev = e->next = NULL;
                e = next;
            }
        }
        state->registry.count = 0;
        PyThread_release_lock(state->registry.mutex);
        PyThread_free_lock(state->registry.mutex);
        state->registry.mutex = NULL;
    }
    PyMem_RawFree(state->registry.chains);
    state->registry.chains = NULL;
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
