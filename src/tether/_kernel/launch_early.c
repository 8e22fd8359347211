/*
 * launch_early.c — the parent's part of the overlapped start (the child's part: clone_early.c;
 * the contract: clone.h, struct tether_early). launch.c calls it for a guarded start whose
 * guard adopts a program cloned by its clone child before its exec.
 *
 * What the parent adds to a guard's launch for it:
 *   - the program's plan (what the guard's start_program would build: the program's own
 *     lifeline, its announcement on the control socket, PDEATHSIG, its own process group, its
 *     attributes), its argv (the guard's, after "--"), its envp (the guard's, with the
 *     program's lifeline) and a stack for its clone child;
 *   - two pipes, both registered (lifeline_registry.c: a fork elsewhere in this process must
 *     not hold a write end): the exec pipe (the program's failure record, or EOF once it has
 *     exec'd; the guard reads it, --exec-fd, and we wait for its EOF) and the program's
 *     lifeline (its write end the guard's, --program-lifeline-fd);
 *   - all four fds on the guard's keep list, so that no step of its clone child moves or
 *     closes them (clone_early.c marks the program's two close-on-exec);
 *   - --adopt PID:PIDFD:METHOD, written by the clone child once the program exists.
 * After the clone we close our copies and wait for the exec pipe's EOF: until then the
 * program may still be reading its plan, or running on its stack, in our memory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core_convert.h"
#include "guard_proto.h"
#include "launch_early.h"
#include "lifeline_registry.h"

/* The program's clone child needs little (its steps use a few hundred bytes); the legacy
 * clone's 64 KiB, from the heap rather than an mmap of its own. */
#define EARLY_STACK_SIZE (64 * 1024)

void early_init(struct launch_early *le)
{
    memset(le, 0, sizeof *le);
    le->exec_pipe[0] = le->exec_pipe[1] = -1;
    le->lifeline[0] = le->lifeline[1] = -1;
    le->early.program = &le->program;
    le->early.pidfd = -1;
    le->early.pid = 0;
    le->early.adopted = le->adopted;
}

/* With the GIL: the program's attributes and pass_fds, its envp (the guard's n_env entries,
 * then a slot for its lifeline), its stack. spec: (attrs or None, pass_fds, program_lifeline,
 * cgroup_fd, the cgroup directories to join). 0, or -1 with a Python error. */
int early_prepare(struct launch_early *le, PyObject *spec, char **envp, int method)
{
    PyObject *attrs, *keep, *join;
    int lifeline, cgroup_fd, cpu_group, floor_fd = 3;
    size_t n_env = 0;
    Py_ssize_t i;
    if (!PyArg_ParseTuple(spec, "OO!piO!p", &attrs, &PyTuple_Type, &keep, &lifeline,
                          &cgroup_fd, &PyTuple_Type, &join, &cpu_group))
        return -1;
    if (PyTuple_GET_SIZE(join) > (Py_ssize_t)(sizeof le->join / sizeof le->join[0])) {
        PyErr_SetString(PyExc_ValueError, "too many cgroups to join");
        return -1;
    }
    for (i = 0; i < PyTuple_GET_SIZE(join); i++) {
        long fd = PyLong_AsLong(PyTuple_GET_ITEM(join, i));
        if (fd == -1 && PyErr_Occurred())
            return -1;
        le->join[i] = (int)fd;
    }
    le->early.join_fds = le->join;
    le->early.n_join = (int)PyTuple_GET_SIZE(join);
    if (attrs != Py_None && plan_attrs(attrs, &le->program, &le->groups) < 0)
        return -1;
    if ((le->keep = keep_fds_array(keep, &floor_fd)) == NULL)
        return -1;
    le->n_keep = (int)PyTuple_GET_SIZE(keep);
    while (envp[n_env] != NULL)
        n_env++;
    le->envp = PyMem_Calloc(n_env + 2, sizeof(char *));
    le->early.stack = PyMem_RawMalloc(EARLY_STACK_SIZE);
    if (le->envp == NULL || le->early.stack == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(le->envp, envp, n_env * sizeof(char *));
    le->n_env = n_env;
    le->with_lifeline = lifeline;
    le->cpu_group = cpu_group;
    le->early.stack_size = EARLY_STACK_SIZE;
    le->early.method = method;
    le->early.cgroup_fd = cgroup_fd;
    le->early.exec_mask = TETHER_GUARD_HELD_MASK;
    le->enabled = 1;
    return 0;
}

/* The program's path and argv: the guard's argv after its first "--" (-1: none). */
static int program_at(char **argv)
{
    int i;
    for (i = 1; argv[i] != NULL; i++)
        if (strcmp(argv[i], "--") == 0)
            return argv[i + 1] != NULL ? i + 1 : -1;
    return -1;
}

/* Without the GIL, before the guard's keep list is made: the pipes and the program's plan.
 * argv: the guard's. 0 or -errno (nothing open). */
int early_open(struct launch_early *le, char **argv, int control)
{
    const int *keep = le->keep;
    int n_keep = le->n_keep;
    struct tether_plan *p = &le->program;
    int at = program_at(argv), err;
    if (at < 0)
        return -EINVAL;
    if ((err = lifeline_registry_pipe(le->exec_pipe, 0)) != 0) {
        le->exec_pipe[0] = le->exec_pipe[1] = -1;
        return -err;
    }
    if (le->with_lifeline && (err = lifeline_registry_pipe(le->lifeline, 0)) != 0) {
        le->lifeline[0] = le->lifeline[1] = -1;
        early_close(le, -1);
        return -err;
    }
    p->path = argv[at];
    p->argv = argv + at + 1;
    p->envp = le->envp;
    p->stdio[0] = p->stdio[1] = p->stdio[2] = -1;
    p->keep_fds = keep;
    p->n_keep = n_keep;
    p->lifeline_src = le->lifeline[0];
    p->lifeline_dst = lifeline_number(keep, n_keep, 0); /* (close_fds=False: never here) */
    p->floor = le->with_lifeline ? p->lifeline_dst + 1 : 3;
    if (n_keep > 0 && keep[n_keep - 1] + 1 > p->floor)
        p->floor = keep[n_keep - 1] + 1;
    p->new_pgroup = 1;
    p->pdeathsig = SIGKILL; /* the guard is single-threaded: see guard_program.c */
    p->announce_fd = control;
    p->errpipe = le->exec_pipe[1];
    p->report_twice = 1;
    if (le->with_lifeline) {
        if ((err = tether_lifeline_entry(le->lifeline_env, sizeof le->lifeline_env,
                                         le->lifeline[0], p->lifeline_dst)) < 0) {
            early_close(le, -1);
            return err;
        }
        le->envp[le->n_env] = le->lifeline_env;
    }
    snprintf(le->exec_arg, sizeof le->exec_arg, "%d", le->exec_pipe[0]);
    snprintf(le->lifeline_arg, sizeof le->lifeline_arg, "%d", le->lifeline[1]);
    return 0;
}

/* The fds the guard's clone child must keep for the program: n of them into out. */
int early_fds(const struct launch_early *le, int out[4])
{
    int n = 0;
    out[n++] = le->exec_pipe[0];
    out[n++] = le->exec_pipe[1];
    if (le->lifeline[0] >= 0) {
        out[n++] = le->lifeline[0];
        out[n++] = le->lifeline[1];
    }
    return n;
}

/* The guard's options for the adoption (NULL-terminated, at most 7 entries with the NULL). */
void early_args(struct launch_early *le, char **out)
{
    int n = 0;
    out[n++] = "--adopt";
    out[n++] = le->adopted;
    out[n++] = "--exec-fd";
    out[n++] = le->exec_arg;
    if (le->with_lifeline) {
        out[n++] = "--program-lifeline-fd";
        out[n++] = le->lifeline_arg;
    }
    out[n] = NULL;
}

/* How long the parent of a program in a cpu group of its own polls for the program's exec
 * before it sleeps (early_close). */
#define EXEC_SPIN_NS 500000LL

/* After the clone (or instead of it): our copies closed, and, if a program may exist, the
 * wait until it has exec'd or exited: EOF on the exec pipe, once its write end is closed
 * everywhere (ours here, the guard's clone child's at its exec or exit, the program's at its
 * exec or exit). The loop reads no errno: the program shares this thread's (a CLONE_VM child
 * of our clone child), and may set it in a failed step while we sleep. A signal of the
 * caller's (signals: their signalfd, or -1) ends the wait as it ends the wait for the start
 * (launch.c): a program stopped before its exec, or whose exec hangs on a dead file system,
 * must not hold up a Ctrl-C; the launch is then abandoned: the exec pipe stays open, and
 * early_abandon keeps everything until early_sweep sees its EOF. */
void early_close(struct launch_early *le, int signals)
{
    struct pollfd pfd[2] = {{le->exec_pipe[0], 0, 0}, {signals, POLLIN, 0}};
    int watched = signals >= 0 ? 2 : 1;
    if (le->exec_pipe[1] >= 0)
        lifeline_registry_drop(le->exec_pipe[1]);
    if (le->lifeline[1] >= 0)
        lifeline_registry_drop(le->lifeline[1]);
    if (le->lifeline[0] >= 0)
        close(le->lifeline[0]);
    le->exec_pipe[1] = le->lifeline[0] = le->lifeline[1] = -1;
    if (le->exec_pipe[0] < 0)
        return;
    /* events 0 on the pipe: POLLHUP alone; a failure record is the guard's to read. A
     * program in a cpu group of its own (cpu_group): the wakeup its exec gives a sleeping
     * parent places the parent on the program's CPU (the exec moved the program to the CPU
     * we slept on, idle then), where a task's wakeup does not preempt a cpu group's entity:
     * we waited there for the rest of the program's start while the other CPU idled (perf
     * sched timehist). So we poll for the exec first, yielding, as the end's early wake does
     * for the guard's report, and sleep only after EXEC_SPIN_NS. */
    if (!le->cpu_group || !tether_spin_ready(pfd, (nfds_t)watched, EXEC_SPIN_NS))
        pfd[0].revents = pfd[1].revents = 0;
    while (!(pfd[0].revents & (POLLHUP | POLLERR | POLLNVAL)) && !pfd[1].revents) {
        pfd[0].revents = pfd[1].revents = 0;
        (void)poll(pfd, (nfds_t)watched, -1);
    }
    le->abandoned = !(pfd[0].revents & (POLLHUP | POLLERR | POLLNVAL));
    if (le->abandoned)
        return; /* the exec pipe is kept: early_abandon, early_sweep */
    /* EOF with no record: the program exec'd (or died before it, which its guard reports).
     * A record is our copy (the program writes one for each reader): the guard reports that
     * failure itself, and the caller waits for its report. */
    {
        struct tether_failure rec;
        ssize_t n;
        do
            n = read(le->exec_pipe[0], &rec, sizeof rec);
        while (n < 0 && errno == EINTR);
        le->exec_seen = n == 0;
    }
    close(le->exec_pipe[0]);
    le->exec_pipe[0] = -1;
}

/* With the GIL, last: what early_prepare allocated, and le itself (not after an abandoned
 * launch: see early_close). */
void early_free(struct launch_early *le)
{
    if (le->abandoned)
        return;
    PyMem_Free(le->envp);
    PyMem_RawFree(le->early.stack);
    PyMem_Free(le->groups);
    PyMem_Free(le->keep);
    PyMem_RawFree(le);
}

/* Abandoned launches, until their programs have exec'd or exited; only touched with the GIL.
 * A handler that does not raise (a profiler's SIGPROF, an interval timer's SIGALRM) lets the
 * start go on: kept for good, each would be memory lost at every start such a signal caught. */
static struct launch_early *abandoned;

/* With the GIL: le, abandoned (early_close), kept with the caller's memory (held: PyMem
 * blocks) and objects (refs, a reference taken each) that the program's plan points into. */
void early_abandon(struct launch_early *le, void *held[3], PyObject *refs[3])
{
    struct stat st;
    int i;
    le->exec_ino = fstat(le->exec_pipe[0], &st) == 0 ? (unsigned long long)st.st_ino : 0;
    for (i = 0; i < 3; i++) {
        le->held[i] = held[i];
        le->refs[i] = refs[i];
        Py_INCREF(refs[i]);
    }
    le->next = abandoned;
    abandoned = le;
}

/* With the GIL, at each launch: free the abandoned launches whose exec pipe is at EOF. One
 * whose fd is no longer that pipe (closed under us, its number reused) can never tell: it
 * is dropped from the list and stays leaked, never freed under a program that may read it. */
void early_sweep(void)
{
    struct launch_early **at = &abandoned, *le;
    struct stat st;
    int i;
    while ((le = *at) != NULL) {
        struct pollfd pfd = {le->exec_pipe[0], 0, 0};
        int ours = fstat(pfd.fd, &st) == 0 && (unsigned long long)st.st_ino == le->exec_ino;
        if (ours && poll(&pfd, 1, 0) == 0) {
            at = &le->next;
            continue;
        }
        *at = le->next;
        if (!ours)
            continue;
        close(le->exec_pipe[0]);
        for (i = 0; i < 3; i++) {
            PyMem_Free(le->held[i]);
            Py_DECREF(le->refs[i]);
        }
        le->abandoned = 0;
        early_free(le);
    }
}
