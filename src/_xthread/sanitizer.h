/* AddressSanitizer builds only (gcc and clang define __SANITIZE_ADDRESS__
 * or have __has_feature(address_sanitizer)); nothing in a normal build.
 *
 * At interpreter exit, CPython 3.9-3.11 end a thread that asks for the GIL
 * with pthread_exit, from inside its GIL request. The frames that were
 * active then (thread_run, a wait that let the GIL go) never return, so
 * ASan never clears the redzones of their address-taken locals; the
 * thread's own teardown then runs over that part of the stack and ASan
 * reports a stack-buffer-overflow in it (in sigaltstack, from its own
 * thread destructor). Not a memory error, but it hides real reports.
 *
 * So a thread that may be ended that way registers a thread-specific
 * value whose destructor, run by glibc at thread exit before ASan's own
 * (which waits for the last destructor round), clears the shadow of the
 * stack below it: every frame there is dead. */
#ifndef XTHREAD_SANITIZER_H
#define XTHREAD_SANITIZER_H

#if defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define XTHREAD_ASAN 1
#  endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#  define XTHREAD_ASAN 1
#endif

#ifdef XTHREAD_ASAN
#include <pthread.h>
#include <sanitizer/asan_interface.h>

static pthread_key_t xthread_asan_key;
static pthread_once_t xthread_asan_once = PTHREAD_ONCE_INIT;

static void
xthread_asan_clear_dead_frames(void *Py_UNUSED(value))
{
    char here;
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) != 0) {
        return;
    }
    void *low;
    size_t size;
    if (pthread_attr_getstack(&attr, &low, &size) == 0
        && (char *)low < &here) {
        ASAN_UNPOISON_MEMORY_REGION(low, (size_t)(&here - (char *)low));
    }
    pthread_attr_destroy(&attr);
}

static void
xthread_asan_make_key(void)
{
    (void)pthread_key_create(&xthread_asan_key,
                             xthread_asan_clear_dead_frames);
}

/* Called by a thread before it may be ended inside a GIL request. */
static inline void
xthread_sanitizer_may_end_here(void)
{
    (void)pthread_once(&xthread_asan_once, xthread_asan_make_key);
    if (pthread_getspecific(xthread_asan_key) == NULL) {
        (void)pthread_setspecific(xthread_asan_key, &xthread_asan_key);
    }
}
#else
static inline void
xthread_sanitizer_may_end_here(void)
{
}
#endif

#endif /* XTHREAD_SANITIZER_H */
