/* thread.c: starting a thread: the bootstate, the C bootstrap that runs
 * a new OS thread, sentinels, and the small functions about threads. What
 * each offers and who may call it: thread.h.
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
 */
#include "xthread.h"
#include "deliver.h"
#include "landing.h"
#include "lock.h"
#include "park.h"
#include "record.h"
#include "thread.h"

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

reg_entry *
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
    if (entry_start_shield_add(boot->state, &boot->entry, -1) == 1) {
        return 0;                       /* no record: nothing was sent */
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
    while (xthread_acquire_timed(boot->ready, READY_POLL_US, 0)
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
    /* Asked again: finalization may have begun since the look above. A
     * thread state made once it has taken the other threads' states off
     * the list (to stop them for good) is not among them: finalization
     * frees it later, and this thread, attached meanwhile, would end it a
     * second time (3.14t crashed so, 2% of runs of threads starting
     * threads at exit). Made before, it is among them, and attaching
     * stops this thread for good. Left alone here, it goes with the
     * interpreter. */
    if (Py_IsFinalizing()) {
        thread_abandon(boot, NULL);
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
    registry_unlink(&boot->entry);
    /* Unlinked: no sender finds the entry now, nor attaches a record to
     * it, so its record is this thread's alone to take. */
    recordobject *rec = boot->entry.record;
    boot->entry.record = NULL;
    if (rec != NULL) {
        record_end(rec);
        Py_DECREF(rec);
    }
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
        r = xthread_acquire_timed(running, READY_POLL_US, 0);
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
    entry_init(&boot->entry, new_generation(get_xthread_state(module)));
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

PyDoc_STRVAR(exit_thread_doc,
"exit_thread($module, /)\n--\n\n"
"An obsolete synonym of exit().");

/* The module functions defined here; module.c adds them. */
PyMethodDef xthread_thread_methods[] = {
    {"start_new_thread", xthread_start_new_thread, METH_VARARGS,
     start_new_thread_doc},
    {"start_new", xthread_start_new_thread, METH_VARARGS, start_new_doc},
    {"_start_joinable_thread", xthread_start_joinable_thread, METH_VARARGS,
     start_joinable_thread_doc},
    {"_set_sentinel", xthread_set_sentinel, METH_NOARGS, set_sentinel_doc},
    {"get_ident", xthread_get_ident, METH_NOARGS, get_ident_doc},
    {"get_native_id", xthread_get_native_id, METH_NOARGS, get_native_id_doc},
    {"_count", xthread_count, METH_NOARGS, count_doc},
    {"stack_size", xthread_stack_size, METH_VARARGS, stack_size_doc},
    {"exit", xthread_exit, METH_NOARGS, exit_doc},
    {"exit_thread", xthread_exit, METH_NOARGS, exit_thread_doc},
    {NULL, NULL, 0, NULL}
};
