/* thread.h: starting a thread and its life in C (thread.c): the
 * bootstate, the bootstrap that runs a new OS thread (thread_run), the
 * sentinels released after its thread state is deleted, and the small
 * functions about threads (get_ident, _count, stack_size, exit).
 */
#ifndef XTHREAD_THREAD_H
#define XTHREAD_THREAD_H

#include "xthread.h"

/* The calling thread's registry entry if _xthread started it, else NULL.
 * Any thread; GIL held. */
reg_entry *current_boot_entry(xthread_state *state);

/* start_new_thread, _start_joinable_thread, _set_sentinel, get_ident,
 * get_native_id, _count, stack_size, exit and their old names. */
extern PyMethodDef xthread_thread_methods[];

#endif /* XTHREAD_THREAD_H */
