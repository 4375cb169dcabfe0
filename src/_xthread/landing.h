/* landing.h: raising a sent exception where the frame's handlers apply
 * (landing.c). A delivery to a thread with a record is armed instead of
 * handed to the interpreter loop: sys.monitoring instruction events on
 * 3.12+, a C trace function on the target thread on 3.9-3.11
 * (XTHREAD_LANDING in compat.h), and xthread._landing's verdict says at
 * which instruction to raise.
 *
 * All of it runs with the GIL held (where there is one): arming and
 * disarming in a sender or in the target, the callbacks in the thread
 * that runs armed code. The arming state (the sys.monitoring tool and
 * its counts, each record's `armed` and `armed_objs`) is changed only
 * under state->landing_lock, which these functions take themselves.
 */
#ifndef XTHREAD_LANDING_H
#define XTHREAD_LANDING_H

#include "xthread.h"

/* Makes the monitoring callbacks bound to `module` (module exec). */
int landing_init(PyObject *module, xthread_state *state);
/* Imports xthread._landing once; runs Python code, so a sender calls it
 * before its checks. 1 when landing is available, 0 when not. */
int landing_load(xthread_state *state);
/* Whether landing_load has succeeded (in any thread). */
static inline int
landing_ready(xthread_state *state)
{
    return atomic_load_explicit(&state->landing_ready, memory_order_acquire);
}
/* Arms `rec`'s outstanding delivery on the target's current stack: 1
 * when armed, 0 when it cannot be (send it plain), -1 with an exception
 * set. record_arm_settle undoes what record_arm armed if the delivery
 * was disarmed while it ran; record_disarm undoes record_arm, in any
 * thread, keeping a set exception. */
int record_arm(xthread_state *state, recordobject *rec);
void record_arm_settle(xthread_state *state, recordobject *rec);
void record_disarm(recordobject *rec);

/* Whether another thread's frames may be read now (compat.h:
 * XTHREAD_SELF_ARM): always on a GIL build; on a free-threaded one while
 * its GIL is enabled. Never fails. */
int frames_readable(void);

/* _fork_hold, _fork_release. */
extern PyMethodDef xthread_landing_methods[];

#endif /* XTHREAD_LANDING_H */
