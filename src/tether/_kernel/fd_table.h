/*
 * fd_table.h — sharing the fd table at the clone, and where a tree's long-lived fds live
 * (fd_table.c; the child's side of the sharing is clone.c's unshare_low_fds).
 */
#ifndef TETHER_FD_TABLE_H
#define TETHER_FD_TABLE_H

#include <Python.h>

#include "clone.h"

/* The lowest number a tree's long-lived fds are moved to: the numbers below it are left to the
 * fds a spawn hands its child, whose clone then copies only those (fd_table.c). A multiple of
 * the kernel's 64-fd table chunk, and a few hundred above it: room for an application's own
 * fds, while the first trees' fds still fit select()'s 1024. */
#define TETHER_TREE_FD_BASE 256

/* 1 if clones share the table (CLONE_FILES) and the child unshares its low fds, 0 if they copy
 * it; the first call probes with `method` (without the GIL). */
TETHER_HIDDEN int tether_fd_sharing(int method);
/* fd moved to TETHER_TREE_FD_BASE or above (close-on-exec; the original closed), or fd itself
 * if it is there already or cannot move (a low RLIMIT_NOFILE, no free number up there). */
TETHER_HIDDEN int tether_fd_above_spawns(int fd);

TETHER_HIDDEN PyObject *core_fd_table_sharing(PyObject *self, PyObject *arg);
TETHER_HIDDEN PyObject *core_force_fd_table_sharing(PyObject *self, PyObject *arg);
TETHER_HIDDEN PyObject *core_keep_above_spawns(PyObject *self, PyObject *arg);
TETHER_HIDDEN PyObject *core_close_range_supported(PyObject *self, PyObject *noargs);

#endif /* TETHER_FD_TABLE_H */
