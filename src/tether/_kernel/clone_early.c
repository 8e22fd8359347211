/*
 * clone_early.c — the overlapped start, in a guard's clone child (the contract: clone.h,
 * struct tether_early; the parent's side is launch_early.c).
 *
 * A guarded start used to run two execs one after the other: the guard's, then, once the
 * guard had set itself up, the program's. Here the guard's clone child, once its own fds are
 * in place, does the part of the guard's setup the program must find (the subreaper bit,
 * SIGCHLD at its default), clones the program through the same child steps (tether_child_exec,
 * clone.c) and only then execs the guard, which adopts the program (guard --adopt): on two CPUs
 * the two execs run side by side.
 *
 * The program's clone shares the memory of the parent (as the guard's clone child does) but
 * not its wait: the parent is let go at the guard's exec, while the program may still be
 * between its clone and its exec. So the program runs on a stack of its own, and the parent
 * keeps everything the program reads (its plan, argv, envp, that stack) until the exec pipe
 * says the program has exec'd or exited (launch_early.c).
 *
 * Async-signal-safe only, as in clone.c: raw syscalls, no allocation, no locks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clone.h"

#ifndef PR_SET_CHILD_SUBREAPER
#define PR_SET_CHILD_SUBREAPER 36 /* since 3.4 */
#endif
#ifndef P_PIDFD
#define P_PIDFD 3 /* since 5.4 */
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424 /* since 5.1 */
#endif

/* The kernel's struct sigaction for rt_sigaction (as in clone.c). */
struct early_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

static long early_result(long ret)
{
    return ret == -1 ? -(long)errno : ret;
}

/* Decimal digits of v at out; returns the count. */
static int put_uint(char *out, unsigned long v)
{
    char digits[20];
    int n = 0, k = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        out[k++] = digits[--n];
    return k;
}

/* What the program must find in place when it starts, set before its clone: orphans of the
 * program come back to us (the subreaper bit survives our exec into the guard: it lives in
 * the signal struct, as the guard's own setup relies on), and SIGCHLD is not ignored (an
 * inherited SIG_IGN would have the kernel reap the program, whose status the guard reads). */
static long prepare_parent(void)
{
    struct early_sigaction dfl;
    long r = early_result(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0));
    if (r < 0)
        return r;
    memset(&dfl, 0, sizeof dfl);
    dfl.handler = (void *)SIG_DFL;
    return early_result(syscall(SYS_rt_sigaction, SIGCHLD, &dfl, NULL, 8));
}

/* "0" written into the file name at dirfd: 0 or -errno. */
static long write_zero_at(int dirfd, const char *name)
{
    long fd = early_result(syscall(SYS_openat, dirfd, name, O_WRONLY | O_CLOEXEC)), r;
    if (fd < 0)
        return fd;
    r = early_result(syscall(SYS_write, (int)fd, "0", 1));
    (void)syscall(SYS_close, (int)fd);
    return r < 0 ? r : 0;
}

/* The program's pidfd must survive our exec (a clone's pidfd is always close-on-exec), and
 * must not be one of 0-2 (the guard's, and so the program's, stdio numbers). */
static long keep_across_exec(int *pidfd)
{
    long moved;
    if (*pidfd > 2)
        return early_result(fcntl(*pidfd, F_SETFD, 0));
    moved = early_result(fcntl(*pidfd, F_DUPFD, 3));
    if (moved < 0)
        return moved;
    (void)syscall(SYS_close, *pidfd);
    *pidfd = (int)moved;
    return 0;
}

/* A limited tree's cgroups, joined by us (the guard to be) before the program exists, so
 * that it starts in them, as the guard's own join_cgroups does: "0" into "tasks" moves only
 * the writing thread (v1, no kernel-wide lock), "cgroup.procs" where there is no "tasks"
 * (v2). The guard learns which were v1 from --adopt. */
long tether_join_early(struct tether_early *early)
{
    int i;
    for (i = 0; i < early->n_join; i++) {
        long r = write_zero_at(early->join_fds[i], "tasks");
        if (r == -ENOENT)
            r = write_zero_at(early->join_fds[i], "cgroup.procs");
        else if (r == 0)
            early->joined_v1 |= 1U << i;
        if (r < 0)
            return r;
    }
    return 0;
}

long tether_start_early(struct tether_early *early)
{
    struct tether_plan *program = early->program;
    char *at = early->adopted;
    long pid, r;
    int pidfd = -1;

    /* The program's fds reached us kept (the parent put them on our keep list, so no step
     * of ours moved or closed them); they must close at our exec, and at the program's (the
     * exec pipe's EOF is the parent's sign that the program has exec'd). */
    r = early_result(fcntl(program->errpipe, F_SETFD, FD_CLOEXEC));
    if (r == 0 && program->lifeline_src >= 0)
        r = early_result(fcntl(program->lifeline_src, F_SETFD, FD_CLOEXEC));
    if (r == 0)
        r = prepare_parent();
    if (r < 0)
        return r;
    /* PDEATHSIG ties the program to us, the guard to be: our pid is the one it must see. */
    program->expected_ppid = (pid_t)syscall(SYS_getpid);
    pid = tether_clone_raw_beside(early->method, early->cgroup_fd, tether_child_exec, program,
                                  early->stack, early->stack_size, &pidfd);
    if (pid < 0)
        return pid;
    early->pidfd = pidfd; /* from here on, a failure of ours ends the program (abandon) */
    r = keep_across_exec(&early->pidfd);
    if (r < 0)
        return r;
    at += put_uint(at, (unsigned long)pid);
    *at++ = ':';
    at += put_uint(at, (unsigned long)early->pidfd);
    *at++ = ':';
    at += put_uint(at, (unsigned long)early->method);
    *at++ = ':';
    at += put_uint(at, (unsigned long)early->joined_v1);
    *at = '\0';
    return 0;
}

/* Our own failure after the program's clone (the guard's exec failed): nothing may be left.
 * The program is our child: kill it through its pidfd, and reap it. */
void tether_abandon_early(struct tether_early *early)
{
    siginfo_t info;
    if (early->pidfd < 0)
        return;
    (void)syscall(SYS_pidfd_send_signal, early->pidfd, SIGKILL, NULL, 0);
    while (syscall(SYS_waitid, P_PIDFD, early->pidfd, &info, WEXITED, NULL) != 0 &&
           errno == EINTR)
        ;
    early->pidfd = -1;
}
