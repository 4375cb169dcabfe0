/* deliver.h: an exception sent to another thread through xthread
 * (deliver.c): carriers, the sender's checks (generation, scope, shield),
 * the record's outstanding, deferred and queued deliveries, withdrawal,
 * and raising at a killable wait. How the exception is raised where the
 * frame's handlers apply is landing.h's; waking a thread out of a system
 * call is wake.h's.
 *
 * All of it runs with the GIL held. A sender runs in its own thread; the
 * functions named "current" or "the calling thread" run in the target.
 */
#ifndef XTHREAD_DELIVER_H
#define XTHREAD_DELIVER_H

#include "xthread.h"

/* A thread identifier: a non-negative int. -1 with an exception set. */
int parse_ident(PyObject *obj, unsigned long *ident);

/* A new carrier class for `instance`, told to `rec` (may be NULL) under
 * `token`: what PyThreadState_SetAsyncExc is given. */
PyObject *make_carrier(PyObject *instance, recordobject *rec,
                       unsigned long long token);
/* Hands a carrier to thread `ident`'s interpreter loop (plain delivery):
 * how many thread states took it, or -1 with an exception set. */
int set_async(unsigned long ident, PyObject *carrier);

/* Withdraws what is outstanding for `rec`, armed or plain. */
void record_withdraw(recordobject *rec);
/* In the target: raises its outstanding exception now (a killable wait
 * was interrupted, or an armed delivery lands). Always returns NULL. */
PyObject *raise_outstanding(recordobject *rec);
/* In the target, leaving a killable wait that did not raise (the lock
 * was granted first, the wait timed out): arms what was sent to it
 * during the wait and left unarmed (`arm_deferred`), or sends it plain
 * where it cannot be armed. Keeps any exception that is set. */
void record_arm_deferred(recordobject *rec);
/* In the target: leaves one shield level; at the outermost raises what
 * was held back (-1 with it set). */
int record_shield_exit(recordobject *rec);
/* The queue of deliveries behind the outstanding one: drop those of a
 * closed scope; send the next once nothing is outstanding or shielded. */
void record_drop_queued(recordobject *rec, unsigned long long scope);
void record_send_next(recordobject *rec);

/* set_async_exc, _deliver, _handling, _nudge. */
extern PyMethodDef xthread_deliver_methods[];

#endif /* XTHREAD_DELIVER_H */
