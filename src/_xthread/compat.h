/* compat.h: every difference between the CPython versions that _xthread
 * supports (3.9 to 3.13, compiled also against 3.14 and free-threaded
 * headers) lives in this file and nowhere else.
 *
 * Each block names the version that added or changed the API and keeps
 * CPython's own spelling, so that a block can be deleted once the oldest
 * supported version has the real thing.
 */
#ifndef XTHREAD_COMPAT_H
#define XTHREAD_COMPAT_H

#include <Python.h>

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

/* PyErr_FormatUnraisable: added in 3.13 (gh-108082). 3.9-3.12 export the
 * older _PyErr_WriteUnraisableMsg, which prefixes "Exception ignored " and
 * appends ": <obj>"; both reach sys.unraisablehook with the same object. */
#if PY_VERSION_HEX >= 0x030D00A1
#  define XTHREAD_WRITE_UNRAISABLE(msg, obj) \
       PyErr_FormatUnraisable("Exception ignored " msg ": %R", (obj))
#else
#  define XTHREAD_WRITE_UNRAISABLE(msg, obj) \
       _PyErr_WriteUnraisableMsg(msg, (obj))
#endif

/* PY_TIMEOUT_MAX: a macro up to 3.12, a const variable from 3.13
 * (gh-110850). Both spell the same name; the value is only read at run
 * time, so nothing to do but say so here. */

#endif /* XTHREAD_COMPAT_H */
