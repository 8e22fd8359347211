/*
 * launch.c — the parent's part of a guarded start, in one call (core.launch_guard): the
 * control socketpair, the lifeline (registered, lifeline_registry.c), the guard's argv and
 * envp, and the clone of the guard through the one clone site (tether_clone_exec, clone.h).
 *
 * Why in C: done in Python, these steps cost about as much as the clone itself (socket
 * objects, a spec copy, the argv and envp lists, an fstat for the lifeline's identity), on
 * every guarded spawn. Everything that depends only on the spec and the mode (the guard's
 * options, the program's argv) is built by the caller once; this file adds only what is new
 * per spawn: the control fd's number and the lifeline's fd and identity.
 *
 * On every error path each fd made here is closed again (the lifeline unregistered), and a
 * guard that failed before its exec is already reaped by tether_clone_exec.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clone.h"
#include "core_convert.h"
#include "fd_table.h"
#include "guard_proto.h"
#include "launch_early.h"
#include "lifeline_registry.h"

/* What one launch made, undone by launch_undo unless it is handed to the caller. */
struct launch_fds {
    int ours;      /* our end of the control socket */
    int guards;    /* the guard's end (--control N), closed after the clone */
    int lifeline[2];
    int start[2];  /* --start-fd: the guard closes its end once the program has started */
    int signals;   /* a signalfd of the caller's signals, which end the wait for the start */
};

static void launch_undo(struct launch_fds *fds)
{
    if (fds->ours >= 0)
        close(fds->ours);
    if (fds->guards >= 0)
        close(fds->guards);
    if (fds->lifeline[0] >= 0)
        close(fds->lifeline[0]);
    if (fds->lifeline[1] >= 0)
        lifeline_registry_drop(fds->lifeline[1]);
    if (fds->start[0] >= 0)
        close(fds->start[0]);
    if (fds->start[1] >= 0)
        lifeline_registry_drop(fds->start[1]);
    if (fds->signals >= 0)
        close(fds->signals);
}

/* *fd moved above 2 (close-on-exec) if it is not already: 0, or -errno (*fd left open). */
int fd_above_stdio(int *fd)
{
    int moved;
    if (*fd > 2)
        return 0;
    moved = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
    if (moved < 0)
        return -errno;
    close(*fd);
    *fd = moved;
    return 0;
}

/* The socketpair (both ends above 2: --control must not be one of the program's stdio fds),
 * with watch the start pipe (its ends above 2 alike) and a signalfd of watch, and the
 * lifeline; 0 or -errno (nothing left open). No GIL needed. With pass_creds (a new PID
 * namespace) our end has SO_PASSCRED before anyone can send: the program's announcement then
 * carries its pid as we see it (start_report.c). */
static int launch_open(struct launch_fds *fds, const sigset_t *watch, int start_pipe,
                       int pass_creds)
{
    int pair[2], err, on = 1;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0)
        return -errno;
    fds->ours = pair[0];
    fds->guards = pair[1];
    if ((err = fd_above_stdio(&fds->ours)) < 0 || (err = fd_above_stdio(&fds->guards)) < 0)
        goto undo;
    fds->ours = tether_fd_above_spawns(fds->ours); /* ours lives as long as the tree */
    if (pass_creds && setsockopt(fds->ours, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0) {
        err = -errno;
        goto undo;
    }
    /* Registered like a lifeline: a fork() elsewhere in this process must not hold its write
     * end open, or the wait for the start would last as long as that child. */
    if (start_pipe && (err = -lifeline_registry_pipe(fds->start, 0)) < 0) {
        fds->start[0] = fds->start[1] = -1;
        goto undo;
    }
    if (watch != NULL) {
        fds->signals = signalfd(-1, watch, SFD_CLOEXEC | SFD_NONBLOCK);
        if (fds->signals < 0 || (err = fd_above_stdio(&fds->signals)) < 0) {
            err = fds->signals < 0 ? -errno : err;
            goto undo;
        }
    }
    err = -lifeline_registry_pipe(fds->lifeline, 1);
    if (err < 0) {
        fds->lifeline[0] = fds->lifeline[1] = -1;
        goto undo;
    }
    return 0;
undo:
    launch_undo(fds);
    return err;
}

/* keep (sorted) with the guard's control fd inserted in order; the caller frees it. */
static int *keep_with(const int *keep, int n, int fd)
{
    int *out = PyMem_RawMalloc(((size_t)n + 1) * sizeof(int));
    int i, k = 0;
    if (out == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        if (k == i && keep[i] > fd)
            out[k++] = fd;
        out[k++] = keep[i];
    }
    if (k == n)
        out[k] = fd;
    return out;
}

/* A lifeline's fd in a child (the guard's; the program's, launch_early.c): the lowest number
 * >= 3 that no kept fd takes (nor, when inheritable fds pass, any fd open here), as
 * SpawnSpec.lifeline_fd says. */
int lifeline_number(const int *keep, int n, int inherit_fds)
{
    int fd = 3, i;
    for (;;) {
        int taken = inherit_fds && fcntl(fd, F_GETFD) >= 0;
        for (i = 0; i < n && !taken; i++)
            taken = keep[i] == fd;
        if (!taken)
            return fd;
        fd++;
    }
}

/* [guard, --control, N, (--start-fd, M,) *extra, *head, *tail]: the guard's argv, N and M
 * written into ctl and start (16 bytes each; start NULL: no start pipe) by the caller once the
 * fds exist; extra (NULL-terminated, at most 6: the overlapped start's) likewise. */
static char **guard_argv(PyObject *path, PyObject *head, PyObject *tail, char *ctl, char *start,
                         char **extra)
{
    Py_ssize_t nh = PyTuple_GET_SIZE(head), nt = PyTuple_GET_SIZE(tail), i, at = 3;
    char **out = PyMem_Calloc((size_t)(nh + nt) + 12, sizeof(char *));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    out[0] = PyBytes_AS_STRING(path);
    out[1] = "--control";
    out[2] = ctl;
    if (start != NULL) {
        out[at++] = "--start-fd";
        out[at++] = start;
    }
    while (*extra != NULL)
        out[at++] = *extra++;
    for (i = 0; i < nh + nt; i++) {
        PyObject *item = i < nh ? PyTuple_GET_ITEM(head, i) : PyTuple_GET_ITEM(tail, i - nh);
        if (!PyBytes_Check(item)) {
            PyMem_Free(out);
            PyErr_SetString(PyExc_TypeError, "the guard's argv must be bytes");
            return NULL;
        }
        out[at + i] = PyBytes_AS_STRING(item);
    }
    return out;
}

/* The guard's own fds kept across its exec: the control socket and, if any, the start pipe's
 * write end (not the program's: they are not on --keep), and the overlapped start's (n_more
 * of them). NULL without memory; *n the new count. */
static int *keep_guards(struct tether_plan *plan, const struct launch_fds *fds, const int *more,
                        int n_more, int *n)
{
    int *keep = keep_with(plan->keep_fds, plan->n_keep, fds->guards), *both, i;
    *n = plan->n_keep + 1;
    for (i = -1; keep != NULL && i < n_more; i++) {
        int fd = i < 0 ? fds->start[1] : more[i];
        if (fd < 0)
            continue;
        both = keep_with(keep, *n, fd);
        PyMem_RawFree(keep);
        keep = both;
        *n += 1;
    }
    return keep;
}

/* Sleep until the guard has started the program (it closes the start pipe then, or exits) or
 * one of the caller's signals is pending: the parent stays off the CPU while the guard starts
 * the program, and is woken once, rather than at MSG_PROGRAM and again at MSG_STARTED. The
 * caller holds every signal (spawn.py), and they stay held: a signal only ends this wait,
 * through the signalfd, and its handler runs once the caller owns the fds (a Ctrl-C is never
 * held up by a slow start, nor raised while the fds are plain ints). Any return will do: the
 * caller reads the start from the control socket either way. */
static void wait_started(const struct launch_fds *fds)
{
    struct pollfd pfd[2] = {{fds->start[0], POLLIN, 0}, {fds->signals, POLLIN, 0}};
    (void)poll(pfd, 2, -1);
}

/* The part without the GIL: open, name, clone (and, with start_pipe, wait for the start;
 * watch: the signals that end a wait, the start's or the overlapped start's). 0
 * (the guard exec'd, or *failure says where it failed) or -errno; on anything but a running
 * guard, every fd made here is closed. */
static int launch_clone(struct tether_plan *plan, struct launch_fds *fds, char *ctl,
                        char *start, char *lifeline_env, int method, uint64_t extra_flags,
                        const sigset_t *watch, int start_pipe, struct launch_early *le,
                        pid_t *pid, int *pidfd,
                        struct tether_failure *failure)
{
    int *keep = NULL, rc, more[4], n_more = 0;
    char **envp = (char **)plan->envp;
    Py_ssize_t n_env = 0;
    if ((rc = launch_open(fds, watch, start_pipe, (extra_flags & CLONE_NEWPID) != 0)) < 0)
        return rc;
    snprintf(ctl, 16, "%d", fds->guards);
    snprintf(start, 16, "%d", fds->start[1]);
    if (le->enabled) {
        if ((rc = early_open(le, (char **)plan->argv, fds->guards)) < 0) {
            launch_undo(fds);
            return rc;
        }
        n_more = early_fds(le, more);
        plan->early = &le->early;
    }
    keep = keep_guards(plan, fds, more, n_more, &plan->n_keep);
    if (keep == NULL) {
        rc = -ENOMEM;
        goto done;
    }
    plan->keep_fds = keep;
    plan->lifeline_src = fds->lifeline[0];
    plan->lifeline_dst = lifeline_number(keep, plan->n_keep, plan->inherit_fds);
    plan->floor = plan->lifeline_dst + 1;
    if (keep[plan->n_keep - 1] + 1 > plan->floor)
        plan->floor = keep[plan->n_keep - 1] + 1;
    rc = tether_lifeline_entry(lifeline_env, TETHER_LIFELINE_ENTRY_MAX, fds->lifeline[0],
                               plan->lifeline_dst);
    if (rc < 0)
        goto done;
    while (envp[n_env] != NULL)
        n_env++;
    envp[n_env] = lifeline_env;
    plan->share_files = tether_fd_sharing(method);
    rc = tether_clone_exec(plan, method, extra_flags, -1, pid, pidfd, failure);
    *pidfd = tether_fd_above_spawns(*pidfd);
    envp[n_env] = NULL;
done:
    if (le->enabled) /* until the program has exec'd, it may read what we would free */
        early_close(le, fds->signals);
    PyMem_RawFree(keep);
    close(fds->lifeline[0]);
    fds->lifeline[0] = -1;
    close(fds->guards);
    fds->guards = -1;
    if (fds->start[1] >= 0)
        lifeline_registry_drop(fds->start[1]);
    fds->start[1] = -1;
    if (rc < 0 || *pidfd < 0) {
        launch_undo(fds);
        return rc;
    }
    if (fds->start[0] >= 0) {
        wait_started(fds);
        close(fds->start[0]);
        fds->start[0] = -1;
    }
    if (fds->signals >= 0)
        close(fds->signals);
    fds->signals = -1;
    return rc;
}

/* A mask as core.hold_signals() returns it (bit n-1 for signal n) into set, or (unblocked)
 * every signal it leaves unblocked; -1 with a Python error if it is not such a number. */
static int mask_from_bits(PyObject *number, sigset_t *set, int unblocked)
{
    unsigned long long bits = PyLong_AsUnsignedLongLong(number);
    int sig;
    if (bits == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    sigemptyset(set);
    for (sig = 1; sig <= 64; sig++)
        if (((bits >> (sig - 1)) & 1) != (unsigned long long)unblocked)
            sigaddset(set, sig);
    return 0;
}

/* core.launch_guard(...): with wait_mask (the caller's signal mask, as hold_signals returned
 * it: the caller holds every signal) and wait_start (the default), the call returns once the
 * program has started (or the guard ended, or a signal that mask lets in is pending);
 * without, as soon as the guard has exec'd. With early (the overlapped start), once the
 * guard and the program have exec'd (wait_mask's signals end that wait alike), and the last
 * value returned says whether the program's exec pipe said it exec'd: its start is then
 * known without the guard's report (MSG_PROGRAM is queued: the program sent it before). */
PyObject *core_launch_guard(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", "head", "tail", "env", "cwd", "stdin", "stdout", "stderr",
                             "keep_fds", "new_pgroup", "extra_flags", "method", "attrs",
                             "wait_mask", "early", "wait_start", NULL};
    PyObject *path, *head, *tail, *env, *cwd, *keep_obj, *attrs = Py_None, *wait = Py_None;
    PyObject *early = Py_None;
    int wait_start = 1;
    struct launch_early *le = PyMem_RawCalloc(1, sizeof *le);
    char *extra[8] = {NULL};
    struct tether_plan plan;
    struct tether_failure failure = {0, 0};
    struct launch_fds fds = {-1, -1, {-1, -1}, {-1, -1}, -1};
    sigset_t watch;
    char ctl[16], start[16], lifeline_env[TETHER_LIFELINE_ENTRY_MAX];
    char *env_buffer = NULL, **argv = NULL, **envp = NULL;
    gid_t *groups = NULL;
    int *keep = NULL, floor_fd = 3, method, pidfd = -1, rc = 0, exec_seen = 0;
    unsigned long long extra_flags;
    pid_t pid = 0;
    (void)self;
    memset(&plan, 0, sizeof plan);
    if (le == NULL)
        return PyErr_NoMemory();
    early_init(le);
    early_sweep();
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!O!O!OiiiO!pKi|OOOp", kwlist,
                                     &PyBytes_Type, &path, &PyTuple_Type, &head, &PyTuple_Type,
                                     &tail, &PyDict_Type, &env, &cwd, &plan.stdio[0],
                                     &plan.stdio[1], &plan.stdio[2], &PyTuple_Type, &keep_obj,
                                     &plan.new_pgroup, &extra_flags, &method, &attrs, &wait,
                                     &early, &wait_start))
        goto done;
    if (wait != Py_None) {
        if (mask_from_bits(wait, &watch, 1) < 0)
            goto done;
        /* Not these: ignored by default, so never a reason to cut the wait short, and an
         * unrelated child's exit (or our own clone-method probe's) would otherwise end it
         * every time. Like every held signal, a handler of theirs runs right after the call. */
        sigdelset(&watch, SIGCHLD);
        sigdelset(&watch, SIGWINCH);
        sigdelset(&watch, SIGURG);
    }
    if (cwd != Py_None && !PyBytes_Check(cwd)) {
        PyErr_SetString(PyExc_TypeError, "cwd must be bytes or None");
        goto done;
    }
    if ((envp = tether_env_array(env, &env_buffer)) == NULL
        || (early != Py_None && early_prepare(le, early, envp, method) < 0))
        goto done;
    if (le->enabled)
        early_args(le, extra);
    /* The overlapped start waits for the program's exec instead (launch_early.c): the
     * guard's report of it need not be waited for. */
    wait_start = wait_start && wait != Py_None && early == Py_None;
    if ((argv = guard_argv(path, head, tail, ctl, wait_start ? start : NULL, extra)) == NULL
        || (keep = keep_fds_array(keep_obj, &floor_fd)) == NULL
        || (attrs != Py_None && plan_attrs(attrs, &plan, &groups) < 0))
        goto done;
    plan.path = PyBytes_AS_STRING(path);
    plan.argv = argv;
    plan.envp = envp;
    plan.cwd = cwd == Py_None ? NULL : PyBytes_AS_STRING(cwd);
    plan.keep_fds = keep;
    plan.n_keep = (int)PyTuple_GET_SIZE(keep_obj);
    plan.expected_ppid = getpid();
    Py_BEGIN_ALLOW_THREADS
    rc = launch_clone(&plan, &fds, ctl, start, lifeline_env, method, (uint64_t)extra_flags,
                      wait == Py_None ? NULL : &watch, wait_start, le, &pid, &pidfd,
                      &failure);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
    }
done:
    exec_seen = le->exec_seen;
    if (le->abandoned) {
        /* A signal ended the wait for a program that has not exec'd yet (stopped, or its
         * exec blocked on a hung file system): what it may still read is freed once it has. */
        void *held[3] = {argv, envp, env_buffer};
        PyObject *refs[3] = {path, head, tail};
        early_abandon(le, held, refs);
    } else {
        early_free(le);
        PyMem_Free(argv);
        PyMem_Free(envp);
        PyMem_Free(env_buffer);
    }
    PyMem_Free(keep);
    PyMem_Free(groups);
    if (PyErr_Occurred())
        return NULL;
    return Py_BuildValue("iiiiiiN", (int)pid, pidfd, fds.ours, fds.lifeline[1], failure.stage,
                         failure.error, PyBool_FromLong(exec_seen));
}

/* core.hold_signals() -> int: block every signal in this thread; the previous mask as a
 * 64-bit number (bit n-1 for signal n). With core.release_signals(mask), what keeps a Python
 * signal handler (Ctrl-C's KeyboardInterrupt) from running while a new child's fds are still
 * plain ints (spawn.py): about a microsecond, where signal.pthread_sigmask with every signal
 * costs tens (it converts 64-member sets both ways). */
PyObject *core_hold_signals(PyObject *self, PyObject *unused)
{
    sigset_t all, old;
    unsigned long long bits = 0;
    int sig;
    (void)self;
    (void)unused;
    sigfillset(&all);
    if (pthread_sigmask(SIG_BLOCK, &all, &old) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    /* A signal delivered before the block has tripped its Python handler, which would run
     * at the caller's first bytecode after this call, before its try: the mask returned
     * would be lost. Run it here, and give the mask back if it raises (Ctrl-C). */
    if (PyErr_CheckSignals() < 0) {
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return NULL;
    }
    for (sig = 1; sig <= 64; sig++)
        if (sigismember(&old, sig) == 1)
            bits |= 1ULL << (sig - 1);
    return PyLong_FromUnsignedLongLong(bits);
}

/* core.release_signals(mask): set this thread's mask back to one hold_signals() returned. */
PyObject *core_release_signals(PyObject *self, PyObject *arg)
{
    sigset_t mask;
    (void)self;
    if (mask_from_bits(arg, &mask, 0) < 0)
        return NULL;
    if (pthread_sigmask(SIG_SETMASK, &mask, NULL) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}
