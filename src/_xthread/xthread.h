/* xthread.h: what every part of _xthread shares: the includes, the
 * module state, the registry's entries, the thread record, and the
 * monotonic clock. Each part (a .c file, one concept) has a header of its
 * own saying what it offers and who may call it; version differences live
 * in compat.h only.
 */
#ifndef XTHREAD_H
#define XTHREAD_H

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

extern struct PyModuleDef xthread_module;     /* module.c */

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
    /* Attached under the registry's mutex by whoever makes it (a sender,
     * say), read without it by the entry's own thread: an atomic, so
     * that the thread sees the record whole. */
    _Atomic(struct recordobject *) record;
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

/* A lock for state that the GIL guards on a GIL build (see
 * xthread_mutex in compat.h): a real lock only without the GIL, where it
 * is recursive (what it guards calls into the interpreter, which may run
 * a finalizer or an audit hook that comes back) and given up in a forked
 * child, whose holder may not exist there (record.c: ft_lock_*). */
typedef struct {
    xthread_mutex mutex;
    atomic_ulong owner;         /* ident of the holder; 0: free */
    int depth;                  /* the holder's */
    atomic_int pid;             /* the process the mutex is for */
} xthread_ft_lock;

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
    /* Taken by any thread (new_generation, new_token): never 0, never
     * the same twice. */
    atomic_ullong next_generation;
    atomic_ullong next_token;           /* deliveries and scopes */
    /* Landing (landing.c): xthread._landing.verdict, imported by
     * the first delivery that needs it; whether that import failed.
     * `landing_ready` is set (release) once the fields below are all
     * published, `landing_failed` once the import has failed: neither is
     * unset. */
    PyObject *landing_verdict;
    PyObject *not_here;         /* xthread._landing._not_here, a set */
    atomic_int landing_ready;
    atomic_int landing_failed;
    /* Guards the landing fields' publication, and the arming state: the
     * sys.monitoring tool and counts below, and every record's `armed`
     * and `armed_objs`. Taken by senders and by armed threads. */
    xthread_ft_lock landing_lock;
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
    /* XTHREAD_SELF_ARM: how many records wait for their thread to arm
     * itself (under landing_lock), the global events switched on
     * meanwhile (0 where none is known), those and the events they bring
     * along (C_RETURN with CALL), and their callback. */
    Py_ssize_t arm_requests;
    long ev_progress, ev_progress_seen;
    PyObject *cb_progress;
    /* Where a plain copy may be handed over (plain_would_split) and
     * waking (XTHREAD_SIGNAL_WAKES): the opcodes of the call instructions
     * (CALL, CALL_KW, CALL_FUNCTION_EX) and of LOAD_SPECIAL (3.14+),
     * -1 where unknown; loaded with the landing module on 3.12+. */
    int call_ops[3];
    int load_special_op;
} xthread_state;

static inline xthread_state *
get_xthread_state(PyObject *module)
{
    void *state = PyModule_GetState(module);
    assert(state != NULL);
    return (xthread_state *)state;
}

/* A new generation (of a thread) or token (of a delivery or a scope). */
static inline unsigned long long
new_generation(xthread_state *state)
{
    return atomic_fetch_add(&state->next_generation, 1) + 1;
}

static inline unsigned long long
new_token(xthread_state *state)
{
    return atomic_fetch_add(&state->next_token, 1) + 1;
}

/* Monotonic clock in microseconds; Linux-only project, so no fallback. */
static inline long long
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
 * before the record is freed.
 *
 * The delivery state (outstanding, deferred, queue, scopes, shield depth,
 * plain, the send and landing times) is read and written under the
 * record's `lock` (record_lock in record.h), by the thread and by its
 * senders: each decision (is it in the scope, shielded, is one pending
 * already) and the change it makes are one step under it. The GIL makes
 * them so on a GIL build, where the lock is nothing. Once a sender has
 * stored `outstanding` and let the lock go, only the thread itself takes
 * it away (it lands, is withdrawn, or its scope closes): a thread that
 * has seen it under the lock may raise it. */
/* A delivery scope open in a thread, and the object that opened it (for
 * identity only: a Scoped finds its own innermost scope in this thread). */
typedef struct {
    unsigned long long token;
    const void *owner;
} scope_entry;

typedef struct recordobject {
    PyObject_HEAD
    reg_entry own;              /* a thread not started by _xthread */
    xthread_ft_lock lock;       /* the delivery state's (see above) */
    unsigned long ident;
    unsigned long long generation;
    PyThread_type_lock park;    /* posted to wake the thread from a wait */
    PyThread_type_lock landed;  /* posted when a sent exception lands */
    atomic_int park_posted, landed_posted;      /* see sem_post */
    /* In a killable wait now. A waiter counts itself in before it looks
     * at `outstanding`; a sender stores `outstanding` before it looks
     * here (record_parked): with a full fence on each side, one of the
     * two sees the other, so no wake-up is lost without the GIL. */
    atomic_int parked;
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
     * where the frame's handlers apply (landing.c); `armed_objs`
     * holds what was armed for it: code objects (sys.monitoring) or
     * frames whose f_trace_opcodes was set (trace function). */
    atomic_int armed;           /* written under landing_lock */
    /* XTHREAD_SELF_ARM: the thread is to arm its own frames (set by a
     * sender, cleared by the thread; both under landing_lock). */
    atomic_int arm_requested;
    /* The outstanding delivery was sent to the thread in a killable wait
     * and not armed: the wait raises it. If the wait ends otherwise (the
     * lock was granted first), the thread arms it itself (park_end).
     * Under the record's lock. */
    int arm_deferred;
    /* Raise at the next instruction it runs: set by the thread as it
     * judges, cleared by whoever disarms (an atomic, no lock). */
    atomic_int land_next;
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
    atomic_int judging;         /* the thread's own; senders read it */
    PyObject *armed_objs;
    /* The last exception went by plain delivery on a version where a
     * frame's handlers may then be skipped. */
    int unguarded;
    /* The thread is ending (record_end): senders leave it alone. */
    atomic_int ended;
} recordobject;

#endif /* XTHREAD_H */
