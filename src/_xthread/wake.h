/* wake.h: where a plain copy may be handed to a thread, and waking a
 * thread blocked in a system call (wake.c). From 3.15
 * (XTHREAD_SIGNAL_WAKES in compat.h) a signal without SA_RESTART makes a
 * C call that retries on EINTR check for the thread's pending exception,
 * so a delivery to a thread inside a call also signals it. Elsewhere the
 * functions here send nothing and say so.
 *
 * GIL held, in the sender's thread.
 */
#ifndef XTHREAD_WAKE_H
#define XTHREAD_WAKE_H

#include "xthread.h"

/* Loads the opcodes that plain_would_split and the wake read (with the
 * landing module, 3.12+). */
int plain_load_opcodes(xthread_state *state);
/* Whether `code` is one of xthread's own primitives, where nothing may
 * land. Whether a plain copy handed to the thread of `tstate` now could
 * land between something taken and the handler that gives it back: its
 * innermost frame runs one of xthread's primitives, or calls a `with`'s
 * __enter__ (3.14+). Never fail. */
int code_is_own(xthread_state *state, PyCodeObject *code);
int plain_would_split(xthread_state *state, PyThreadState *tstate);
/* Signals thread `ident` if it is inside a call, first handing the
 * interpreter a plain copy of `rec`'s outstanding exception: 1 when a
 * signal was sent. wake_until_landed signals again, GIL dropped between,
 * until the delivery lands or `budget_us` is spent: whether it landed.
 * Never fail. */
int wake_thread(xthread_state *state, unsigned long ident,
                recordobject *rec);
int wake_until_landed(xthread_state *state, unsigned long ident,
                      recordobject *rec, long long budget_us);

/* _wake_signal. */
extern PyMethodDef xthread_wake_methods[];

#endif /* XTHREAD_WAKE_H */
