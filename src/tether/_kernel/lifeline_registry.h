/*
 * lifeline_registry.h — the lifeline registry (lifeline_registry.c), as core.c's method table
 * and module init reach it.
 */
#ifndef TETHER_LIFELINE_REGISTRY_H
#define TETHER_LIFELINE_REGISTRY_H

#include <Python.h>

#define TETHER_REGISTRY_API __attribute__((visibility("hidden")))

TETHER_REGISTRY_API PyObject *core_lifeline_pipe(PyObject *self, PyObject *noargs);
TETHER_REGISTRY_API PyObject *core_lifeline_release(PyObject *self, PyObject *arg);
TETHER_REGISTRY_API PyObject *core_fork_generation(PyObject *self, PyObject *noargs);
/* For C callers (launch.c), without the GIL: a registered lifeline pipe, both ends above 2,
 * the write end moved above the spawns' fds (fd_table.h) if it lives as long as a tree (0,
 * or the errno); and the undo of one on an error path (unregister and close). */
TETHER_REGISTRY_API int lifeline_registry_pipe(int fds[2], int write_end_above_spawns);
TETHER_REGISTRY_API void lifeline_registry_drop(int fd);
/* Install the pthread_atfork handlers (once per process): 0, or -1 if that failed. */
TETHER_REGISTRY_API int lifeline_registry_init(void);

#endif /* TETHER_LIFELINE_REGISTRY_H */
