/* wake.c: where a plain copy may be handed to a thread, signalling a
 * thread out of a system call so that a delivery lands (3.15+), and
 * _wake_signal. What each offers and who may call it:
 * wake.h. */
#include "xthread.h"
#include "deliver.h"
#include "landing.h"
#include "park.h"
#include "record.h"
#include "wake.h"

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

int
plain_load_opcodes(xthread_state *state)
{
    static const char *names[] = {"CALL", "CALL_KW", "CALL_FUNCTION_EX",
                                  "LOAD_SPECIAL"};
    int *ops[] = {&state->call_ops[0], &state->call_ops[1],
                  &state->call_ops[2], &state->load_special_op};
    PyObject *opcode = PyImport_ImportModule("opcode");
    PyObject *opmap = opcode != NULL
        ? PyObject_GetAttrString(opcode, "opmap") : NULL;
    Py_XDECREF(opcode);
    if (opmap == NULL) {
        return -1;
    }
    for (size_t i = 0; i < 4; i++) {
        PyObject *v = PyMapping_GetItemString(opmap, names[i]);
        if (v == NULL) {
            PyErr_Clear();
            *ops[i] = -1;
            continue;
        }
        *ops[i] = (int)PyLong_AsLong(v);
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
int
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

/* Where a plain copy handed to a thread now would first be checked for:
 * SPOT_SPLITS where it would land between something taken and the
 * handler that gives it back, SPOT_IN_CALL at another call, SPOT_OTHER
 * elsewhere. The thread's innermost frame splits in one of xthread's own
 * primitives, and at the call of a `with`'s __enter__ on 3.14+
 * (LOAD_SPECIAL __enter__, then CALL): that call's own eval-breaker
 * check raises at the CALL, which no handler of the `with` covers yet,
 * so a lock that __enter__ took would stay held for good. (Up to 3.13,
 * BEFORE_WITH calls __enter__ and checks nothing.) */
enum { SPOT_OTHER, SPOT_IN_CALL, SPOT_SPLITS };

static int
plain_spot(xthread_state *state, PyThreadState *tstate)
{
    PyFrameObject *frame = tstate != NULL ? PyThreadState_GetFrame(tstate)
                                          : NULL;
    if (frame == NULL) {
        return SPOT_OTHER;
    }
    int lasti = xthread_frame_lasti(frame);
    PyCodeObject *code = PyFrame_GetCode(frame);
    Py_DECREF(frame);
    if (code_is_own(state, code)) {
        Py_DECREF(code);
        return SPOT_SPLITS;
    }
    PyObject *bytes = lasti >= 0 ? xthread_code_bytes(code) : NULL;
    Py_DECREF(code);
    if (bytes == NULL) {
        PyErr_Clear();
        return SPOT_OTHER;
    }
    int spot = SPOT_OTHER;
    if (PyBytes_Check(bytes) && lasti < PyBytes_GET_SIZE(bytes)) {
        const unsigned char *co = (const unsigned char *)
                                  PyBytes_AS_STRING(bytes);
        int op = co[lasti];
        for (size_t i = 0; i < 3; i++) {
            if (op == state->call_ops[i]) {
                spot = SPOT_IN_CALL;
            }
        }
        if (spot == SPOT_IN_CALL && lasti >= 2 && state->load_special_op >= 0
            && co[lasti - 2] == state->load_special_op
            && co[lasti - 1] == 0 /* __enter__ */) {
            spot = SPOT_SPLITS;
        }
    }
    Py_DECREF(bytes);
    return spot;
}

int
plain_would_split(xthread_state *state, PyThreadState *tstate)
{
    return plain_spot(state, tstate) == SPOT_SPLITS;
}

/* Signals the thread `ident` if it is inside a call, after making sure
 * that the interpreter holds `rec`'s outstanding exception for it (plain)
 * when there is a record; with none, the caller has sent it plain. Returns
 * 1 when a signal was sent, else 0; never fails (its errors are cleared:
 * the delivery stands, it only lands when the call returns). GIL held,
 * and the record's lock when there is a record. */
int
wake_thread(xthread_state *state, unsigned long ident, recordobject *rec)
{
    if (!XTHREAD_SIGNAL_WAKES) {
        return 0;
    }
    if (rec != NULL && (rec->ended || rec->outstanding == NULL || rec->parked
                        || rec->shield_depth > 0 || rec->judging)) {
        return 0;
    }
    int sig = wake_signal_ready();
    if (sig == 0 || (ident != PyThread_get_thread_ident()
                     && !frames_readable())) {
        return 0;       /* its call ends before it lands (README) */
    }
    PyThreadState *tstate = find_tstate(ident);
    if (tstate == NULL || tstate == PyThreadState_Get()
        || plain_spot(state, tstate) != SPOT_IN_CALL) {
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
        return !record_has_outstanding(rec);
    }
    PyThreadState *tstate = find_tstate(ident);
    return tstate == NULL || tstate->async_exc == NULL;
}

int
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
        if (rec != NULL) {
            record_lock(rec);
        }
        int woken = wake_thread(state, ident, rec);
        if (rec != NULL) {
            record_unlock(rec);
        }
        if (!woken) {
            return 0;   /* out of its call, or no signal to send */
        }
    }
}

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

/* The module functions defined here; module.c adds them. */
PyMethodDef xthread_wake_methods[] = {
    {"_wake_signal", xthread_wake_signal, METH_VARARGS, wake_signal_doc},
    {NULL, NULL, 0, NULL}
};
