/* compat.h: every difference between the CPython versions that _xthread
 * supports (3.9 to 3.15, and 3.14's free-threaded build with the GIL
 * enabled) lives in this file and nowhere else.
 *
 * Each block names the version that added or changed the API and keeps
 * CPython's own spelling, so that a block can be deleted once the oldest
 * supported version has the real thing.
 */
#ifndef XTHREAD_COMPAT_H
#define XTHREAD_COMPAT_H

#include <Python.h>
/* PyFrame_GetBack (3.9+) is declared by frameobject.h, which Python.h
 * includes only from 3.11. */
#include <frameobject.h>

/* Py_NewRef / Py_XNewRef: added in 3.10 (bpo-42262). */
#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
Py_NewRef(PyObject *obj)
{
    Py_INCREF(obj);
    return obj;
}
static inline PyObject *
Py_XNewRef(PyObject *obj)
{
    Py_XINCREF(obj);
    return obj;
}
#endif

/* PyModule_AddObjectRef: added in 3.10 (bpo-1635741); unlike
 * PyModule_AddObject it never steals the reference. */
#if PY_VERSION_HEX < 0x030A0000
static inline int
PyModule_AddObjectRef(PyObject *mod, const char *name, PyObject *value)
{
    Py_INCREF(value);
    if (PyModule_AddObject(mod, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#endif

/* PyType_GetModuleByDef: added in 3.11 (bpo-46613). Before, walk the
 * MRO for the heap type made by this module (ht_module, 3.9+). Returns a
 * borrowed reference, or NULL with TypeError. */
#if PY_VERSION_HEX < 0x030B0000
static inline PyObject *
PyType_GetModuleByDef(PyTypeObject *type, PyModuleDef *def)
{
    PyObject *mro = type->tp_mro;
    for (Py_ssize_t i = 0; mro != NULL && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *t = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (!(t->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
            continue;
        }
        PyObject *m = ((PyHeapTypeObject *)t)->ht_module;
        if (m != NULL && PyModule_GetDef(m) == def) {
            return m;
        }
    }
    PyErr_Format(PyExc_TypeError,
                 "no superclass of '%s' belongs to this module",
                 type->tp_name);
    return NULL;
}
#endif

/* Py_TPFLAGS_IMMUTABLETYPE: added in 3.10 (bpo-43908). On 3.9 heap types
 * stay mutable; nothing in _xthread relies on the flag for correctness. */
#ifndef Py_TPFLAGS_IMMUTABLETYPE
#  define Py_TPFLAGS_IMMUTABLETYPE 0
#endif

/* Py_TPFLAGS_DISALLOW_INSTANTIATION: added in 3.10 (bpo-43916). On 3.9 a
 * type without tp_new cannot be instantiated from Python anyway. */
#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION
#  define Py_TPFLAGS_DISALLOW_INSTANTIATION 0
#endif

/* Py_IsFinalizing: public from 3.13 (gh-108014); before that the same
 * function is exported as _Py_IsFinalizing. Safe to call without the GIL:
 * both read one atomic field of the runtime. */
#if PY_VERSION_HEX < 0x030D00A1
#  define Py_IsFinalizing() _Py_IsFinalizing()
#endif

/* PyErr_FormatUnraisable: added in 3.13 (gh-108082); 3.9-3.12 export the
 * older _PyErr_WriteUnraisableMsg. As CPython's own _thread on each
 * version: 3.9-3.12 pass `obj` as the hook's `object` (err_msg
 * "Exception ignored <msg>"); 3.13+ put its repr into err_msg and pass
 * object=None ("Exception ignored <msg> <repr>"). */
#if PY_VERSION_HEX >= 0x030D00A1
#  define XTHREAD_WRITE_UNRAISABLE(msg, obj) \
       PyErr_FormatUnraisable("Exception ignored " msg " %R", (obj))
#else
#  define XTHREAD_WRITE_UNRAISABLE(msg, obj) \
       _PyErr_WriteUnraisableMsg(msg, (obj))
#endif

/* The class an exception instance travels in (see make_carrier).
 * 3.9-3.11 keep the carrier as the raised type until a handler normalizes
 * it, and `except` clauses test that type, so the carrier must subclass
 * the instance's class. 3.12+ normalize at once and take the type from the
 * instance (_PyErr_SetObject), so a private BaseException subclass carries
 * any instance; 3.12 deprecates and 3.14 rejects PyType_FromSpec bases
 * whose metaclass has its own tp_new (abc.ABCMeta), so no user class is
 * subclassed there at all. */
#if PY_VERSION_HEX >= 0x030C0000
#  define XTHREAD_CARRIER_SUBCLASSES 0
#  define XTHREAD_CARRIER_BASE(cls) (PyExc_BaseException)
#else
#  define XTHREAD_CARRIER_SUBCLASSES 1
#  define XTHREAD_CARRIER_BASE(cls) ((PyObject *)(cls))
#endif

/* An instance sent in a carrier that no handler caught is still reported
 * with the carrier as its type on 3.9-3.11: normalize, and report the
 * instance's own class. The pending exception stays set. */
#if PY_VERSION_HEX < 0x030C0000
#  define XTHREAD_REPORT_OWN_CLASS() do { \
       PyObject *type_, *value_, *tb_; \
       PyErr_Fetch(&type_, &value_, &tb_); \
       PyErr_NormalizeException(&type_, &value_, &tb_); \
       if (value_ != NULL && PyExceptionInstance_Check(value_)) { \
           Py_SETREF(type_, Py_NewRef(PyExceptionInstance_Class(value_))); \
       } \
       PyErr_Restore(type_, value_, tb_); \
   } while (0)
#else
#  define XTHREAD_REPORT_OWN_CLASS() ((void)0)
#endif

/* Where a sent exception lands. PyThreadState_SetAsyncExc makes the
 * target raise at its next eval-breaker check, and some of those checks
 * sit where the frame's handlers do not apply:
 *   - 3.11-3.14: on a loop's back edge the check runs at the backward
 *     jump, whose offset the exception table may leave uncovered
 *     (python/cpython#108214 on 3.11 and 3.12, where the jump is taken
 *     before the check; python/cpython#130279 on 3.13 and 3.14, where the
 *     table stops short of the jump): except/finally/with exits skipped;
 *   - 3.9 and 3.10: a check follows the POP_BLOCK that ends a `with` body,
 *     before its __exit__ is called: in a loop, `with lock:` leaves the
 *     lock held.
 * So xthread arms deliveries instead (see "Landing" in the C source):
 *
 *   XTHREAD_LANDING 1: a C trace function set on the target's thread
 *       state for the delivery window (_PyEval_SetTrace, declared in
 *       cpython/ceval.h up to 3.12, takes any thread state; opcode events
 *       need the frame's f_trace_opcodes). 3.9-3.11.
 *   XTHREAD_LANDING 2: sys.monitoring instruction events on the code of
 *       the target's frames (3.12+: _PyEval_SetTrace is internal from
 *       3.13, and legacy tracing raises at the jump itself).
 * XTHREAD_LANDING 0 would be plain delivery, for a version where it is
 * right. The helpers below are stubs where unused, so that the C source
 * has no version test of its own. */
#if PY_VERSION_HEX >= 0x030C0000
#  define XTHREAD_LANDING 2
#else
#  define XTHREAD_LANDING 1
#endif

#if XTHREAD_LANDING == 1
static inline int
xthread_set_trace(PyThreadState *tstate, Py_tracefunc func, PyObject *obj)
{
    return _PyEval_SetTrace(tstate, func, obj);
}
static inline Py_tracefunc
xthread_get_trace(PyThreadState *tstate)
{
    return tstate->c_tracefunc;
}
#else
static inline int
xthread_set_trace(PyThreadState *Py_UNUSED(tstate),
                  Py_tracefunc Py_UNUSED(func), PyObject *Py_UNUSED(obj))
{
    PyErr_SetString(PyExc_SystemError,
                    "no per-thread trace landing on this Python");
    return -1;
}
static inline Py_tracefunc
xthread_get_trace(PyThreadState *Py_UNUSED(tstate))
{
    return NULL;
}
#endif

/* Withdrawing a plain copy (PyThreadState_SetAsyncExc(ident, NULL)) on
 * 3.9-3.11 leaves the interpreter's async-exception signal set: only
 * raising an exception clears it. On 3.11 a traced thread (an armed
 * delivery) then spins for ever at its next function start, where the
 * signal is checked before the call event and nothing clears it. So a
 * thread withdraws a plain copy pending in itself by letting the loop
 * raise it at the start of a no-op call, which clears the signal; not
 * the main thread, where that check runs signal handlers too (their
 * exception would have nowhere to go). And since anyone can leave the
 * signal set (a withdrawal through the plain API, xthread's own in the
 * main thread), a sender clears it the same way, with a throwaway
 * exception raised in itself, before it arms a delivery. 3.12+ clear the
 * signal with the withdrawal. */
#if PY_VERSION_HEX < 0x030C0000
#  define XTHREAD_TAKE_PLAIN 1
static inline int
xthread_can_take_plain(void)
{
    return !_PyOS_IsMainThread();
}
/* Whether the calling thread has an exception pending in its loop. */
static inline int
xthread_own_async_pending(void)
{
    return PyThreadState_Get()->async_exc != NULL;
}
#else
#  define XTHREAD_TAKE_PLAIN 0
static inline int
xthread_can_take_plain(void)
{
    return 0;
}
static inline int
xthread_own_async_pending(void)
{
    return 0;
}
#endif

/* Waking a thread blocked in a system call. From 3.15 (gh-144748,
 * python/cpython PR 145178) PyErr_CheckSignals raises the calling
 * thread's pending asynchronous exception, and the C functions that retry
 * a system call on EINTR (time.sleep, socket calls, select, ...) call it
 * before retrying: a thread whose call is interrupted by a signal then
 * raises what PyThreadState_SetAsyncExc sent it, at that call. Up to 3.14
 * the exception waits until the call returns, so a signal would only
 * cost the thread a retry.
 *   XTHREAD_SIGNAL_WAKES 1: deliveries to a thread inside a C call are
 *       followed by a signal to that thread (see "Waking" in the C
 *       source). 3.15+, GIL builds: on a free-threaded build the target
 *       may be running while its frame is read, which needs the design of
 *       its own that free-threading support brings.
 *   XTHREAD_SIGNAL_WAKES 0: nothing is signalled. */
#if PY_VERSION_HEX >= 0x030F0000 && !defined(Py_GIL_DISABLED)
#  define XTHREAD_SIGNAL_WAKES 1
#else
#  define XTHREAD_SIGNAL_WAKES 0
#endif

/* The offset in bytes of the instruction the frame is at, -1 before its
 * first: PyFrame_GetLasti from 3.11; f_lasti counts bytes on 3.9 and
 * code units on 3.10 (bpo-27129). */
static inline int
xthread_frame_lasti(PyFrameObject *frame)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyFrame_GetLasti(frame);
#elif PY_VERSION_HEX >= 0x030A0000
    return frame->f_lasti < 0 ? -1 : frame->f_lasti * 2;
#else
    return frame->f_lasti;
#endif
}

/* The class of the exception another thread (GIL held, so it is not
 * running) is raising now, on its way to a handler (borrowed; NULL if
 * none): 3.12 keeps one exception object (current_exception), before a
 * (type, value, traceback) triple that may not be normalized yet. */
static inline PyObject *
xthread_raising_type(PyThreadState *tstate)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = tstate->current_exception;
    return exc != NULL ? (PyObject *)Py_TYPE(exc) : NULL;
#else
    return tstate->curexc_type;
#endif
}

/* The bytecode of a code object, as bytes (new reference): PyCode_GetCode
 * from 3.11 (deoptimized: specialized and instrumented instructions read
 * as their base instruction); co_code before. */
static inline PyObject *
xthread_code_bytes(PyCodeObject *code)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyCode_GetCode(code);
#else
    return PyObject_GetAttrString((PyObject *)code, "co_code");
#endif
}

/* PY_TIMEOUT_MAX: a macro up to 3.12, a const variable from 3.13
 * (gh-110850). Both spell the same name; the value is only read at run
 * time, so nothing to do but say so here. */

/* PyGC_Disable / PyGC_Enable: added in 3.10 (bpo-28254). Before, the gc
 * module's own functions. Return the previous state (1: enabled), or -1
 * with an exception set. */
#if PY_VERSION_HEX < 0x030A0000
static inline int
xthread_gc_call(const char *name)
{
    PyObject *gc = PyImport_ImportModule("gc");
    if (gc == NULL) {
        return -1;
    }
    PyObject *was = PyObject_CallMethod(gc, "isenabled", NULL);
    PyObject *res = was != NULL ? PyObject_CallMethod(gc, name, NULL) : NULL;
    Py_DECREF(gc);
    int enabled = res != NULL ? PyObject_IsTrue(was) : -1;
    Py_XDECREF(was);
    Py_XDECREF(res);
    return enabled;
}
#  define PyGC_Disable() xthread_gc_call("disable")
#  define PyGC_Enable() xthread_gc_call("enable")
#endif

/* Py_mod_multiple_interpreters: added in 3.12 (PEP 684); a module
 * without the slot is taken to support subinterpreters that share the
 * main GIL, which is what this one claims. */
#ifdef Py_mod_multiple_interpreters
#  define XTHREAD_SHARED_GIL_SLOT \
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED},
#else
#  define XTHREAD_SHARED_GIL_SLOT
#endif

/* Py_mod_gil: 3.13+ (PEP 703). The free-threaded build keeps the GIL off
 * when every extension imported says it needs none; one that does not
 * say so turns it back on for the whole process. Every piece of shared
 * state here has its own protection (docs/free-threading.md lists them),
 * so _xthread says so. GIL builds ignore the slot. */
#ifdef Py_mod_gil
#  define XTHREAD_GIL_SLOT {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#else
#  define XTHREAD_GIL_SLOT
#endif

/* ThreadSanitizer cannot see into an uninstrumented CPython's PyMutex
 * (atomics and futexes inside libpython): a TSan build of _xthread tells
 * it of each lock and unlock, or every field the mutex guards would be
 * reported as raced. Nothing in other builds. */
#if defined(__SANITIZE_THREAD__)
#  define XTHREAD_TSAN 1
#elif defined(__has_feature)
#  if __has_feature(thread_sanitizer)
#    define XTHREAD_TSAN 1
#  endif
#endif
#ifdef XTHREAD_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#  define XTHREAD_TSAN_ACQUIRE(addr) __tsan_acquire(addr)
#  define XTHREAD_TSAN_RELEASE(addr) __tsan_release(addr)
#else
#  define XTHREAD_TSAN_ACQUIRE(addr) ((void)(addr))
#  define XTHREAD_TSAN_RELEASE(addr) ((void)(addr))
#endif

/* PyThread_acquire_lock_timed, told to ThreadSanitizer: a wait with a
 * timeout is a sem_clockwait there, which it does not intercept (the
 * release, a sem_post, it does). */
static inline PyLockStatus
xthread_acquire_timed(PyThread_type_lock lock, PY_TIMEOUT_T timeout_us,
                      int intr_flag)
{
    PyLockStatus r = PyThread_acquire_lock_timed(lock, timeout_us, intr_flag);
    if (r == PY_LOCK_ACQUIRED) {
        XTHREAD_TSAN_ACQUIRE(lock);
    }
    return r;
}

/* Free-threaded builds (Py_GIL_DISABLED, 3.13+). What the GIL
 * serialises on a GIL build needs a lock of its own there: state whose
 * updates call C functions of the interpreter (sys.monitoring's), which
 * run no bytecode and so never let another thread in under the GIL.
 * xthread_mutex is CPython's PyMutex there (it parks detached, so a
 * thread waiting on it never holds up a stop-the-world), and nothing on a
 * GIL build, which pays no cost for it. */
#ifdef Py_GIL_DISABLED
#  define XTHREAD_FREE_THREADED 1
typedef PyMutex xthread_mutex;
static inline void
xthread_mutex_lock(xthread_mutex *m)
{
    PyMutex_Lock(m);
    XTHREAD_TSAN_ACQUIRE(m);
}
static inline void
xthread_mutex_unlock(xthread_mutex *m)
{
    XTHREAD_TSAN_RELEASE(m);
    PyMutex_Unlock(m);
}
#else
#  define XTHREAD_FREE_THREADED 0
typedef struct { char unused; } xthread_mutex;
static inline void
xthread_mutex_lock(xthread_mutex *Py_UNUSED(m))
{
}
static inline void
xthread_mutex_unlock(xthread_mutex *Py_UNUSED(m))
{
}
#endif

/* Who arms a delivery (landing.c, "Arming").
 *   XTHREAD_SELF_ARM 0: the sender, walking the target's frames, which
 *       the GIL keeps still meanwhile.
 *   XTHREAD_SELF_ARM 1 (free-threaded builds): the target runs while a
 *       sender would read its frames, and CPython frees and reuses them
 *       under the reader. So the sender only asks, and switches on global
 *       sys.monitoring events that every thread running bytecode meets
 *       within a few instructions (jumps, branches, returns, yields,
 *       calls); the target arms its own frames at the first of them. */
#define XTHREAD_SELF_ARM XTHREAD_FREE_THREADED

#endif /* XTHREAD_COMPAT_H */
