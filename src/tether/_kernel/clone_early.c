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
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "clone.h"

#ifndef PR_SET_CHILD_SUBREAPER
#define PR_SET_CHILD_SUBREAPER 36 /* since 3.4 */
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424 /* since 5.1 */
#endif

/* What the program must find in place when it starts, set before its clone: orphans of the
 * program come back to us (the subreaper bit survives our exec into the guard: it lives in
 * the signal struct, as the guard's own setup relies on), and SIGCHLD is not ignored (an
 * inherited SIG_IGN would have the kernel reap the program, whose status the guard reads). */
static long prepare_parent(void)
{
    long r = tether_sys_result(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0));
    return r < 0 ? r : tether_default_handler(SIGCHLD);
}

/* The program's pidfd must survive our exec (a clone's pidfd is always close-on-exec), and
 * must not be one of 0-2 (the guard's, and so the program's, stdio numbers). */
static long keep_across_exec(int *pidfd)
{
    long moved;
    if (*pidfd > 2)
        return tether_sys_result(fcntl(*pidfd, F_SETFD, 0));
    moved = tether_sys_result(fcntl(*pidfd, F_DUPFD, 3));
    if (moved < 0)
        return moved;
    (void)syscall(SYS_close, *pidfd);
    *pidfd = (int)moved;
    return 0;
}

/* Into the cgroup dirfd, before the program exists, so the program and everything it forks
 * start there. "0" is the writer itself, in v1 and v2 alike: we never move another pid.
 *
 * v1 through "tasks", not "cgroup.procs": a cgroup.procs write takes the kernel's
 * cgroup_threadgroup_rwsem for writing, and the first writer after a quiet spell waits for an
 * RCU grace period (measured here: 7.6 ms median, up to 30 ms, for a write after a 30 ms
 * pause; a tree started now and then paid it on every start). Moving only the writing
 * thread needs no such lock, and the writer (the guard, or its clone child) is a process of
 * one thread. v2 has no "tasks" (ENOENT there): cgroup.procs. */
int tether_cgroup_join(int dirfd)
{
    long r = tether_write_text_at(dirfd, "tasks", "0");
    if (r == 0)
        return 1;
    return (int)(r == -ENOENT ? tether_write_text_at(dirfd, "cgroup.procs", "0") : r);
}

/* A limited tree's cgroups, joined by us (the guard to be) before the program exists, so
 * that it starts in them, as the guard's own join_cgroups does. The guard learns which were
 * v1 from --adopt. */
long tether_join_early(struct tether_early *early)
{
    int i;
    for (i = 0; i < early->n_join; i++) {
        int r = tether_cgroup_join(early->join_fds[i]);
        if (r < 0)
            return r;
        early->joined_v1 |= (unsigned int)r << i;
    }
    return 0;
}

/* Fault injection for the test suite only: with TETHER_TEST_EARLY_HOLD_FD=N in the
 * program's environment (N one of its pass_fds, kept by us), wait after the program's clone
 * until the test writes to (or closes) N: the program may exec and fork meanwhile, before
 * our exec fails (tether_hold_for_test). The variable is found by a scan of the program's
 * environment in memory: getenv is not ours to call here. */
static void hold_for_test(const struct tether_plan *program)
{
    static const char key[] = "TETHER_TEST_EARLY_HOLD_FD=";
    char *const *env;
    for (env = program->envp; *env != NULL; env++) {
        const char *p = *env, *k = key;
        while (*k != '\0' && *p == *k)
            p++, k++;
        if (*k == '\0') {
            tether_hold_for_test(p, program->keep_fds, program->n_keep);
            return;
        }
    }
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
    r = tether_sys_result(fcntl(program->errpipe, F_SETFD, FD_CLOEXEC));
    if (r == 0 && program->lifeline_src >= 0)
        r = tether_sys_result(fcntl(program->lifeline_src, F_SETFD, FD_CLOEXEC));
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
    early->pid = (pid_t)pid;
    r = keep_across_exec(&early->pidfd);
    if (r < 0)
        return r;
    at += tether_put_uint(at, (unsigned long)pid);
    *at++ = ':';
    at += tether_put_uint(at, (unsigned long)early->pidfd);
    *at++ = ':';
    at += tether_put_uint(at, (unsigned long)early->method);
    *at++ = ':';
    at += tether_put_uint(at, (unsigned long)early->joined_v1);
    *at = '\0';
    hold_for_test(program);
    return 0;
}

/* Our own failure after the program's clone (the guard's exec failed): nothing may be left.
 * The program is our child: kill it through its pidfd, then its process group (it leads
 * one, as the guard's own start makes it: by the time our exec failed it may have exec'd
 * and forked; the group's id is its pid, which stays its own until we reap it), and reap it.
 * A member that forks meanwhile is refused the fork by its pending SIGKILL. */
void tether_abandon_early(struct tether_early *early)
{
    if (early->pidfd < 0)
        return;
    (void)syscall(SYS_pidfd_send_signal, early->pidfd, SIGKILL, NULL, 0);
    if (early->pid > 0)
        (void)syscall(SYS_kill, -early->pid, SIGKILL);
    tether_reap_pidfd(early->pidfd);
    early->pidfd = -1;
}
