/*
 * tether._kernel.core — the only C in the library.
 *
 * It holds what the standard library cannot do for us:
 *   - the clone site (clone.c): clone3(CLONE_PIDFD|CLONE_CLEAR_SIGHAND) in vfork style,
 *     or the legacy clone fallback, probed once and cached here (the only cache of it);
 *   - the tables the Python side must not copy: the child's and the guard's failure stages
 *     (clone.h, guard_proto.h) and the guard's wire protocol (guard_proto.h);
 *   - the parent's end of a guarded tree (end.c): the sleep, the early wake's spin, the read
 *     of MSG_EXITED and the guard's reap, after the wakeup without Python in between;
 *   - the lifeline registry (lifeline_registry.c): every lifeline write end is created and
 *     registered under one mutex, and a pthread_atfork child handler closes all of them in
 *     every fork()ed child, so one child's writer can never keep another child's lifeline open.
 *
 * Everything else (pidfd_send_signal, waitid(P_PIDFD), poll, ioctl) is reached from Python
 * through the standard library.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "clone.h"
#include "core_convert.h"
#include "fd_table.h"
#include "guard_proto.h"
#include "lifeline_registry.h"

/* ------------------------------------------------------------------------------------------ */
/* Clone method probe (cached; a forced method is for tests of the fallback).                   */
/* ------------------------------------------------------------------------------------------ */

/* The one cache of the answer (features.py keeps no copy). Written under probe_lock, with the
 * method stored last (release), so a reader that sees a method without the lock (acquire) also
 * sees its errnos. */
static int probed_method = TETHER_CLONE_UNKNOWN;
static int clone3_errno = 0;
static int legacy_errno = 0;
static pthread_mutex_t probe_lock = PTHREAD_MUTEX_INITIALIZER;

static int errno_means_blocked(int err)
{
    /* Only these say "this primitive is not here" (no kernel support, or a seccomp filter);
     * any other errno is a real failure and must not be cached as a capability answer. */
    return err == ENOSYS || err == EPERM || err == EINVAL;
}

static int probe_clone_method(void)
{
    int method;
    pthread_mutex_lock(&probe_lock);
    method = probed_method;
    if (method == TETHER_CLONE_UNKNOWN) {
        int r = tether_probe_method(TETHER_CLONE_CLONE3);
        if (r == 0) {
            method = TETHER_CLONE_CLONE3;
        } else if (errno_means_blocked(-r)) {
            clone3_errno = -r;
            r = tether_probe_method(TETHER_CLONE_LEGACY);
            if (r == 0)
                method = TETHER_CLONE_LEGACY;
            else if (errno_means_blocked(-r)) {
                legacy_errno = -r;
                method = TETHER_CLONE_NONE;
            } else {
                /* EAGAIN/ENOMEM: transient, do not cache. */
                pthread_mutex_unlock(&probe_lock);
                errno = -r;
                return -1;
            }
        } else {
            pthread_mutex_unlock(&probe_lock);
            errno = -r;
            return -1;
        }
        __atomic_store_n(&probed_method, method, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&probe_lock);
    return method;
}

static PyObject *core_clone_method(PyObject *self, PyObject *noargs)
{
    int method;
    (void)self;
    (void)noargs;
    /* Every spawn asks: answer a cached method without dropping the GIL or taking the lock. */
    method = __atomic_load_n(&probed_method, __ATOMIC_ACQUIRE);
    if (method != TETHER_CLONE_UNKNOWN)
        return Py_BuildValue("iii", method, clone3_errno, legacy_errno);
    Py_BEGIN_ALLOW_THREADS
    method = probe_clone_method();
    Py_END_ALLOW_THREADS
    if (method < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("iii", method, clone3_errno, legacy_errno);
}

static PyObject *core_force_clone_method(PyObject *self, PyObject *arg)
{
    long m = PyLong_AsLong(arg);
    (void)self;
    if (m == -1 && PyErr_Occurred())
        return NULL;
    if (m < TETHER_CLONE_UNKNOWN || m > TETHER_CLONE_NONE) {
        PyErr_SetString(PyExc_ValueError, "unknown clone method");
        return NULL;
    }
    pthread_mutex_lock(&probe_lock);
    if (m == TETHER_CLONE_UNKNOWN) {
        clone3_errno = 0;
        legacy_errno = 0;
    }
    __atomic_store_n(&probed_method, (int)m, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&probe_lock);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* spawn                                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* Build a NULL-terminated char* array that points into the bytes objects of `seq` (a list or
 * tuple of bytes). The caller keeps `seq` alive while the array is used. */
char **bytes_array(PyObject *seq, const char *what)
{
    Py_ssize_t n, i;
    char **out;
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of bytes", what);
        return NULL;
    }
    n = PySequence_Fast_GET_SIZE(seq);
    out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            PyMem_Free(out);
            PyErr_Format(PyExc_TypeError, "%s items must be bytes", what);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    out[n] = NULL;
    return out;
}

/* keep_fds (a tuple of ints) as a C array; raises ValueError unless sorted, unique, >= 3.
 * *floor_fd is raised above every number in it. The caller frees it with PyMem_Free. */
int *keep_fds_array(PyObject *keep_obj, int *floor_fd)
{
    Py_ssize_t n = PyTuple_GET_SIZE(keep_obj), i;
    int *keep = PyMem_Calloc((size_t)n + 1, sizeof(int));
    if (keep == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (i = 0; i < n; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(keep_obj, i));
        if (v == -1 && PyErr_Occurred())
            goto error;
        if (v < 3 || v > INT_MAX || (i > 0 && v <= keep[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "keep_fds must be sorted, unique and >= 3");
            goto error;
        }
        keep[i] = (int)v;
        if (v + 1 > *floor_fd)
            *floor_fd = (int)v + 1;
    }
    return keep;
error:
    PyMem_Free(keep);
    return NULL;
}

/* attrs, subprocess's process attributes: (umask or -1, new_session, inherit_fds,
 * keep_ignored, uid or -1, gid or -1, groups tuple or None), into the plan. *groups is
 * PyMem-allocated for the caller to free. */
int plan_attrs(PyObject *attrs, struct tether_plan *plan, gid_t **groups)
{
    int umask_v, uid, gid, i, n;
    PyObject *groups_obj;
    if (!PyArg_ParseTuple(attrs, "ipppiiO", &umask_v, &plan->new_session, &plan->inherit_fds,
                          &plan->keep_ignored, &uid, &gid, &groups_obj))
        return -1;
    plan->set_umask = umask_v >= 0;
    plan->umask = (mode_t)(umask_v >= 0 ? umask_v : 0);
    plan->set_uid = uid >= 0;
    plan->uid = (uid_t)uid;
    plan->set_gid = gid >= 0;
    plan->gid = (gid_t)gid;
    if (groups_obj == Py_None)
        return 0;
    if (!PyTuple_Check(groups_obj)) {
        PyErr_SetString(PyExc_TypeError, "groups must be a tuple of ints or None");
        return -1;
    }
    n = (int)PyTuple_GET_SIZE(groups_obj);
    *groups = PyMem_Calloc((size_t)n + 1, sizeof(gid_t));
    if (*groups == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < n; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(groups_obj, i));
        if (PyErr_Occurred())
            return -1;
        (*groups)[i] = (gid_t)v;
    }
    plan->set_groups = 1;
    plan->groups = *groups;
    plan->n_groups = n;
    return 0;
}

static PyObject *core_spawn(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path",    "argv",        "env",          "cwd",       "stdin",
                             "stdout",  "stderr",      "keep_fds",     "lifeline_src",
                             "lifeline_dst", "new_pgroup", "pdeathsig", "extra_flags",
                             "cgroup_fd", "method",     "attrs",        NULL};
    PyObject *path_obj, *argv_obj, *env_obj, *cwd_obj, *keep_obj, *attrs = NULL;
    gid_t *groups = NULL;
    int stdio[3];
    int lifeline_src, lifeline_dst, new_pgroup, pdeathsig, cgroup_fd, method;
    unsigned long long extra_flags;
    struct tether_plan plan;
    struct tether_failure failure = {0, 0};
    char **argv = NULL, **envp = NULL, *env_buffer = NULL;
    char lifeline_env[TETHER_LIFELINE_ENTRY_MAX];
    int *keep = NULL;
    int floor_fd = 3;
    pid_t pid = 0;
    int pidfd = -1;
    int rc;
    (void)self;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OO!OiiiO!iipiKii|O", kwlist,
                                     &PyBytes_Type, &path_obj, &argv_obj, &PyDict_Type,
                                     &env_obj, &cwd_obj, &stdio[0],
                                     &stdio[1], &stdio[2], &PyTuple_Type, &keep_obj,
                                     &lifeline_src, &lifeline_dst, &new_pgroup, &pdeathsig,
                                     &extra_flags, &cgroup_fd, &method, &attrs))
        return NULL;
    if (cwd_obj != Py_None && !PyBytes_Check(cwd_obj)) {
        PyErr_SetString(PyExc_TypeError, "cwd must be bytes or None");
        return NULL;
    }

    argv = bytes_array(argv_obj, "argv");
    if (argv == NULL)
        goto error;
    envp = tether_spawn_envp(env_obj, lifeline_src, lifeline_dst, &env_buffer, lifeline_env);
    if (envp == NULL)
        goto error;

    keep = keep_fds_array(keep_obj, &floor_fd);
    if (keep == NULL)
        goto error;
    if (lifeline_src >= 0) {
        if (lifeline_dst < 3) {
            PyErr_SetString(PyExc_ValueError, "lifeline_dst must be >= 3");
            goto error;
        }
        if (lifeline_dst + 1 > floor_fd)
            floor_fd = lifeline_dst + 1;
    }
    if (method == TETHER_CLONE_UNKNOWN) {
        Py_BEGIN_ALLOW_THREADS
        method = probe_clone_method();
        Py_END_ALLOW_THREADS
        if (method < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto error;
        }
    }

    memset(&plan, 0, sizeof plan);
    plan.path = PyBytes_AS_STRING(path_obj);
    plan.argv = argv;
    plan.envp = envp;
    plan.cwd = cwd_obj == Py_None ? NULL : PyBytes_AS_STRING(cwd_obj);
    plan.stdio[0] = stdio[0];
    plan.stdio[1] = stdio[1];
    plan.stdio[2] = stdio[2];
    plan.keep_fds = keep;
    plan.n_keep = (int)PyTuple_GET_SIZE(keep_obj);
    plan.lifeline_src = lifeline_src;
    plan.lifeline_dst = lifeline_dst;
    plan.floor = floor_fd;
    plan.new_pgroup = new_pgroup;
    plan.pdeathsig = pdeathsig;
    plan.expected_ppid = getpid();
    if (attrs != NULL && attrs != Py_None && plan_attrs(attrs, &plan, &groups) < 0)
        goto error;
    Py_BEGIN_ALLOW_THREADS
    plan.share_files = tether_fd_sharing(method);
    rc = tether_clone_exec(&plan, method, (uint64_t)extra_flags, cgroup_fd, &pid, &pidfd,
                           &failure);
    pidfd = tether_fd_above_spawns(pidfd); /* kept as long as the child: out of their way */
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
    }
error:
    PyMem_Free(argv);
    PyMem_Free(envp);
    PyMem_Free(env_buffer);
    PyMem_Free(keep);
    PyMem_Free(groups);
    if (PyErr_Occurred())
        return NULL;
    return Py_BuildValue("iiiii", (int)pid, pidfd, failure.stage, failure.error, method);
}

/* ------------------------------------------------------------------------------------------ */
/* signalfd (the stdlib has no wrapper)                                                         */
/* ------------------------------------------------------------------------------------------ */

static PyObject *core_signalfd(PyObject *self, PyObject *args)
{
    int fd, flags;
    PyObject *signals, *seq;
    sigset_t mask;
    Py_ssize_t i, n;
    (void)self;
    if (!PyArg_ParseTuple(args, "iOi", &fd, &signals, &flags))
        return NULL;
    seq = PySequence_Fast(signals, "signals must be a sequence of ints");
    if (seq == NULL)
        return NULL;
    sigemptyset(&mask);
    n = PySequence_Fast_GET_SIZE(seq);
    for (i = 0; i < n; i++) {
        long sig = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (sig == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        if (sig < 1 || sig >= 65 || sigaddset(&mask, (int)sig) != 0) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "invalid signal number %ld", sig);
            return NULL;
        }
    }
    Py_DECREF(seq);
    fd = signalfd(fd, &mask, flags);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(fd);
}

static PyMethodDef core_methods[] = {
    {"signalfd", core_signalfd, METH_VARARGS,
     "signalfd(fd, signals, flags) -> fd (SFD_CLOEXEC/SFD_NONBLOCK in flags)."},
    {"spawn", (PyCFunction)(void (*)(void))core_spawn, METH_VARARGS | METH_KEYWORDS,
     "Clone one child from a fully converted plan; returns (pid, pidfd, stage, errno, method)."},
    {"launch_guard", (PyCFunction)(void (*)(void))core_launch_guard, METH_VARARGS | METH_KEYWORDS,
     "Start a guard in one call (launch.c): (pid, pidfd, control fd, lifeline fd, stage, errno)."},
    {"read_start_reports", core_read_start_reports, METH_VARARGS,
     "read_start_reports(fd, flags) -> ((data, fd, msg flags, sender pid), ...): a guard's start."},
    {"hold_signals", core_hold_signals, METH_NOARGS, "Block every signal; the old mask."},
    {"release_signals", core_release_signals, METH_O, "Restore a mask hold_signals gave."},
    {"clone_method", core_clone_method, METH_NOARGS,
     "Probe (once) which clone method works: (method, clone3_errno, legacy_errno)."},
    {"force_clone_method", core_force_clone_method, METH_O,
     "Override the probed method (tests of the fallback); 0 forgets the cache."},
    {"close_range_supported", core_close_range_supported, METH_NOARGS, "close_range(2) exists."},
    {"fd_table_sharing", core_fd_table_sharing, METH_O,
     "Whether clones share the fd table and unshare their low fds: (shared, errno)."},
    {"force_fd_table_sharing", core_force_fd_table_sharing, METH_O,
     "False: clones copy the fd table (tests of the fallback); None: probe again."},
    {"keep_above_spawns", core_keep_above_spawns, METH_O,
     "A long-lived fd moved above the numbers spawns hand their children (fd_table.c)."},
    {"lifeline_pipe", core_lifeline_pipe, METH_NOARGS,
     "pipe2(O_CLOEXEC) with the write end registered for closing in fork()ed children."},
    {"lifeline_release", core_lifeline_release, METH_O, "Unregister and close a write end."},
    {"fork_generation", core_fork_generation, METH_NOARGS,
     "How many fork()s separate this process from the one that loaded the module."},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------------------------------ */
/* Tables exported to Python: C holds the one copy.                                             */
/* ------------------------------------------------------------------------------------------ */

static int add_stage(PyObject *stages, int number, const char *what)
{
    PyObject *key = PyLong_FromLong(number);
    PyObject *value = key ? PyUnicode_FromString(what) : NULL;
    int rc = value ? PyDict_SetItem(stages, key, value) : -1;
    Py_XDECREF(key);
    Py_XDECREF(value);
    return rc;
}

/* STAGES: {stage number: what the child (clone.h) or the guard (guard_proto.h) was doing}. */
static int add_stage_table(PyObject *m)
{
    int rc = -1;
    PyObject *stages = PyDict_New();
    if (stages == NULL)
        return -1;
#define TETHER_ADD_STAGE(name, number, what)          \
    if (add_stage(stages, number, what) < 0)          \
        goto done;
    TETHER_CHILD_STAGES(TETHER_ADD_STAGE)
    TETHER_GUARD_STAGES(TETHER_ADD_STAGE)
#undef TETHER_ADD_STAGE
    rc = PyModule_AddObjectRef(m, "STAGES", stages);
done:
    Py_DECREF(stages);
    return rc;
}

static int add_constants(PyObject *m)
{
    static const struct {
        const char *name;
        long value;
    } ints[] = {
        {"CLONE_UNKNOWN", TETHER_CLONE_UNKNOWN},
        {"CLONE_CLONE3", TETHER_CLONE_CLONE3},
        {"CLONE_LEGACY", TETHER_CLONE_LEGACY},
        {"CLONE_NONE", TETHER_CLONE_NONE},
        {"CLONE_IN_PLACE", TETHER_CLONE_IN_PLACE},
        {"CLONE_NEWPID", CLONE_NEWPID},
        {"CLONE_NEWUSER", CLONE_NEWUSER},
        {"TREE_FD_BASE", TETHER_TREE_FD_BASE},
        {"SFD_CLOEXEC", SFD_CLOEXEC},
        {"SFD_NONBLOCK", SFD_NONBLOCK},
        {"STAGE_CHDIR", TETHER_STAGE_CHDIR},
        {"STAGE_EXEC", TETHER_STAGE_EXEC},
        {"STAGE_PREEXEC", TETHER_STAGE_PREEXEC},
        {"GUARD_MSG_SIZE", (long)sizeof(struct tether_guard_msg)},
        {"GUARD_USAGE_SIZE", (long)sizeof(struct tether_guard_usage)},
        {"GUARD_MSG_STARTED", TETHER_MSG_STARTED},
        {"GUARD_MSG_FAILED", TETHER_MSG_FAILED},
        {"GUARD_MSG_EXITED", TETHER_MSG_EXITED},
        {"GUARD_MSG_PROGRAM", TETHER_MSG_PROGRAM},
        {"GUARD_MSG_STOPPED", TETHER_MSG_STOPPED},
        {"GUARD_MSG_SIGNAL_TREE", TETHER_MSG_SIGNAL_TREE},
        {"GUARD_MSG_KILL_TREE", TETHER_MSG_KILL_TREE},
    };
    size_t i;
    for (i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (PyModule_AddIntConstant(m, ints[i].name, ints[i].value) < 0)
            return -1;
    }
    if (PyModule_AddStringConstant(m, "GUARD_MSG_FORMAT", TETHER_GUARD_MSG_FORMAT) < 0)
        return -1;
    if (PyModule_AddStringConstant(m, "GUARD_USAGE_FORMAT", TETHER_GUARD_USAGE_FORMAT) < 0)
        return -1;
    if (PyModule_AddStringConstant(m, "LIFELINE_ENV", TETHER_LIFELINE_ENV) < 0)
        return -1;
    return add_stage_table(m);
}

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "tether._kernel.core", "tether's kernel layer (L0).", -1, core_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_core(void)
{
    PyObject *m;
    if (lifeline_registry_init() != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    m = PyModule_Create(&core_module);
    if (m == NULL)
        return NULL;
    if (add_constants(m) < 0 || tether_add_end(m) < 0 || tether_add_exec_path(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
