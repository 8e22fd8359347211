/*
 * core_convert.h — the extension's converters from Python objects to the plan's C arrays
 * (core.c), shared with the guard launch (launch.c). Each raises a Python error and returns
 * NULL / -1 on bad input; the arrays are the caller's to PyMem_Free.
 */
#ifndef TETHER_CORE_CONVERT_H
#define TETHER_CORE_CONVERT_H

#include <Python.h>
#include <poll.h>

#include "clone.h"
#include "guard_proto.h"

/* A NULL-terminated array pointing into the bytes of a list or tuple of bytes (kept alive by
 * the caller). */
TETHER_HIDDEN char **bytes_array(PyObject *seq, const char *what);
/* exec_path.c: a dict of bytes as an envp in one buffer (*buffer), without the lifeline's
 * variable, with two free slots at its end (that variable and the NULL). */
TETHER_HIDDEN char **tether_env_array(PyObject *env, char **buffer);
/* exec_path.c: the lifeline variable's entry for a child that gets lifeline_src (a read end of
 * ours) at lifeline_dst: the number and the pipe's identity (TETHER_LIFELINE_FORMAT). 0, or
 * -errno from its fstat; no Python call (the launch runs it without the GIL). */
TETHER_HIDDEN int tether_lifeline_entry(char *text, size_t size, int lifeline_src,
                                        int lifeline_dst);
/* exec_path.c: core.spawn's envp, made of its env dict with the lifeline's variable (its
 * entry written in text[TETHER_LIFELINE_ENTRY_MAX]); *buffer is the caller's to free. */
TETHER_HIDDEN char **tether_spawn_envp(PyObject *env, int lifeline_src, int lifeline_dst,
                                       char **buffer, char *text);
/* A sorted, unique tuple of fds >= 3; *floor_fd is raised above every one. */
TETHER_HIDDEN int *keep_fds_array(PyObject *keep_obj, int *floor_fd);
/* ProcessAttrs.core_tuple() into the plan; *groups is the caller's to free. */
TETHER_HIDDEN int plan_attrs(PyObject *attrs, struct tether_plan *plan, gid_t **groups);
/* launch.c: core.launch_guard. */
TETHER_HIDDEN PyObject *core_launch_guard(PyObject *self, PyObject *args, PyObject *kwargs);
/* launch.c: an fd of ours moved above stdio (the number is never one of 0-2). */
TETHER_HIDDEN int fd_above_stdio(int *fd);
/* start_report.c: core.read_start_reports. */
TETHER_HIDDEN PyObject *core_read_start_reports(PyObject *self, PyObject *args);
TETHER_HIDDEN PyObject *core_hold_signals(PyObject *self, PyObject *unused);
TETHER_HIDDEN PyObject *core_release_signals(PyObject *self, PyObject *arg);
/* end.c: core.await_end, core.read_end and their constants, added to the module. */
TETHER_HIDDEN int tether_add_end(PyObject *module);
/* end.c: poll fds without sleeping, yielding between polls, for at most spin_ns: 1 once one
 * is ready. */
TETHER_HIDDEN int tether_spin_ready(struct pollfd *fds, nfds_t count, long long spin_ns);
/* exec_path.c: core.find_program (the PATH search) and core.fs_args, added to the module. */
TETHER_HIDDEN int tether_add_exec_path(PyObject *module);

#endif /* TETHER_CORE_CONVERT_H */
