/* scope.h: delivery scopes and shields (scope.c). A scope is a block of
 * the calling thread whose exceptions are meant for that block only: what
 * was sent for it and has not landed is withdrawn as it closes. A shield
 * holds back every delivery until it is left. The Scoped type makes a
 * context manager's block a scope (xthread.time_limit's base).
 *
 * All of it runs with the GIL held, in the thread that opens the scope or
 * the shield.
 */
#ifndef XTHREAD_SCOPE_H
#define XTHREAD_SCOPE_H

#include "xthread.h"

extern PyType_Spec scoped_type_spec;

/* _scope_enter, _scope_exit, _shield_enter, _shield_exit,
 * _call_unshielded. */
extern PyMethodDef xthread_scope_methods[];

#endif /* XTHREAD_SCOPE_H */
