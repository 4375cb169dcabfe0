/* lock.h: the Lock and RLock types (lock.c), _thread's lock API on a
 * lock core (park.h): killable acquire, _at_fork_reinit, and the RLock
 * methods that threading.Condition uses. thread.c makes a sentinel as a
 * Lock. GIL held.
 */
#ifndef XTHREAD_LOCK_H
#define XTHREAD_LOCK_H

#include "xthread.h"
#include "park.h"

typedef struct {
    PyObject_HEAD
    lock_core *core;
    PyObject *weakreflist;
} lockobject;

/* A new, unlocked Lock of `type` (the module's lock_type). */
lockobject *newlockobject(PyTypeObject *type);
extern PyType_Spec lock_type_spec;
extern PyType_Spec rlock_type_spec;

/* allocate_lock and its old name. */
extern PyMethodDef xthread_lock_methods[];

#endif /* XTHREAD_LOCK_H */
