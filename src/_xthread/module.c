/* module.c: the _xthread module: its function tables (one per part),
 * state, init, traverse, clear and free. The parts, one concept each, are
 * listed in setup.py and described in README ("How the code is laid
 * out"); xthread.h has what they share, compat.h every difference between
 * CPython versions. */
#include "xthread.h"
#include "deliver.h"
#include "landing.h"
#include "lock.h"
#include "park.h"
#include "record.h"
#include "scope.h"
#include "thread.h"
#include "wake.h"

// Module init

/* The module's functions, one table per part that defines them. */
static PyMethodDef *const method_tables[] = {
    xthread_thread_methods,     /* start, ident, count, stack size, exit */
    xthread_lock_methods,       /* allocate_lock */
    xthread_park_methods,       /* sleep */
    xthread_record_methods,     /* records, native ids */
    xthread_deliver_methods,    /* set_async_exc, _deliver, kill's helpers */
    xthread_wake_methods,       /* _wake_signal */
    xthread_scope_methods,      /* scopes and shields */
    xthread_landing_methods,    /* fork hooks of the arming state */
};

static int
xthread_exec(PyObject *module)
{
    xthread_state *state = get_xthread_state(module);
    for (size_t i = 0; i < sizeof(method_tables) / sizeof(*method_tables);
         i++) {
        if (PyModule_AddFunctions(module, method_tables[i]) < 0) {
            return -1;
        }
    }
    static pthread_once_t pid_once = PTHREAD_ONCE_INIT;
    (void)pthread_once(&pid_once, xthread_pid_init);
    atomic_init(&state->count, 0);
    state->pid = current_pid();
    atomic_init(&state->next_generation, 0);
    atomic_init(&state->next_token, 0);
    state->landing_verdict = NULL;
    state->not_here = NULL;
    atomic_init(&state->landing_ready, 0);
    atomic_init(&state->landing_failed, 0);
    ft_lock_init(&state->landing_lock);
    state->monitoring = NULL;
    state->mon_tool = -1;
    state->mon_armed = 0;
    state->ev_instruction = state->ev_py_start = state->ev_py_resume = 0;
    state->arm_requests = 0;
    state->ev_progress = state->ev_progress_seen = 0;
    if (landing_init(module, state) < 0) {
        return -1;
    }
    if (registry_init(&state->registry) < 0) {
        return -1;
    }
    state->record_key = PyUnicode_InternFromString("_xthread.record");
    state->str_entered = PyUnicode_InternFromString("_scope_entered");
    state->str_exited = PyUnicode_InternFromString("_scope_exited");
    if (state->record_key == NULL || state->str_entered == NULL
        || state->str_exited == NULL) {
        return -1;
    }

    // Thread records
    state->record_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &record_type_spec, NULL);
    if (state->record_type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "ThreadRecord",
                              (PyObject *)state->record_type) < 0) {
        return -1;
    }

    // Lock
    state->lock_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &lock_type_spec, NULL);
    if (state->lock_type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "LockType",
                              (PyObject *)state->lock_type) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "lock",
                              (PyObject *)state->lock_type) < 0) {
        return -1;
    }

    // RLock
    state->rlock_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &rlock_type_spec, NULL);
    if (state->rlock_type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "RLock",
                              (PyObject *)state->rlock_type) < 0) {
        return -1;
    }

    // Scoped
    state->scoped_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &scoped_type_spec, NULL);
    if (state->scoped_type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "Scoped",
                              (PyObject *)state->scoped_type) < 0) {
        return -1;
    }

    // Constants
    for (size_t i = 0; i < 3; i++) {
        state->call_ops[i] = -1;
    }
    state->load_special_op = -1;
    /* Whether a delivery signals a thread out of a system call (compat.h). */
    if (PyModule_AddIntConstant(module, "_SIGNAL_WAKES",
                                XTHREAD_SIGNAL_WAKES) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "error", PyExc_RuntimeError) < 0) {
        return -1;
    }
    PyObject *timeout_max = PyFloat_FromDouble(timeout_max_seconds());
    if (timeout_max == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(module, "TIMEOUT_MAX", timeout_max);
    Py_DECREF(timeout_max);
    if (rc < 0) {
        return -1;
    }
    return 0;
}

static int
xthread_traverse(PyObject *module, visitproc visit, void *arg)
{
    xthread_state *state = get_xthread_state(module);
    Py_VISIT(state->lock_type);
    Py_VISIT(state->rlock_type);
    Py_VISIT(state->record_type);
    Py_VISIT(state->scoped_type);
    Py_VISIT(state->landing_verdict);
    Py_VISIT(state->not_here);
    Py_VISIT(state->landing_table);
    Py_VISIT(state->plain_nop);
    Py_VISIT(state->signal_clearer);
    Py_VISIT(state->trace_maps);
    Py_VISIT(state->monitoring);
    Py_VISIT(state->mon_counts);
    Py_VISIT(state->cb_instruction);
    Py_VISIT(state->cb_py_start);
    Py_VISIT(state->cb_py_resume);
    Py_VISIT(state->cb_progress);
    return 0;
}

static int
xthread_clear(PyObject *module)
{
    xthread_state *state = get_xthread_state(module);
    Py_CLEAR(state->lock_type);
    Py_CLEAR(state->rlock_type);
    Py_CLEAR(state->record_type);
    Py_CLEAR(state->scoped_type);
    Py_CLEAR(state->record_key);
    Py_CLEAR(state->str_entered);
    Py_CLEAR(state->str_exited);
    Py_CLEAR(state->landing_verdict);
    Py_CLEAR(state->not_here);
    Py_CLEAR(state->landing_table);
    Py_CLEAR(state->plain_nop);
    Py_CLEAR(state->signal_clearer);
    Py_CLEAR(state->trace_maps);
    Py_CLEAR(state->monitoring);
    Py_CLEAR(state->mon_counts);
    Py_CLEAR(state->cb_instruction);
    Py_CLEAR(state->cb_py_start);
    Py_CLEAR(state->cb_py_resume);
    Py_CLEAR(state->cb_progress);
    return 0;
}

static void
xthread_free(void *module)
{
    xthread_clear((PyObject *)module);
    registry_free(&get_xthread_state((PyObject *)module)->registry);
}

static PyModuleDef_Slot xthread_slots[] = {
    {Py_mod_exec, xthread_exec},
    /* Only the thread-local bootstate pointer is process-wide, and it is
     * per OS thread; everything else is in module state. But nothing here
     * has been tested under a per-interpreter GIL, so claim only support
     * for subinterpreters that share the main GIL (3.12+; compat.h). */
    XTHREAD_SHARED_GIL_SLOT
    /* Runs without the GIL on a free-threaded build (compat.h). */
    XTHREAD_GIL_SLOT
    {0, NULL}
};

PyDoc_STRVAR(xthread_doc,
"CPython's _thread machinery rebuilt on the public thread-state API:\n"
"threads with their own thread state, locks, sentinels released after a\n"
"thread state is deleted, and exceptions raised in other threads.");

struct PyModuleDef xthread_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_xthread",
    .m_doc = xthread_doc,
    .m_size = sizeof(xthread_state),
    .m_slots = xthread_slots,
    .m_traverse = xthread_traverse,
    .m_clear = xthread_clear,
    .m_free = xthread_free,
};

PyMODINIT_FUNC
PyInit__xthread(void)
{
    return PyModuleDef_Init(&xthread_module);
}
