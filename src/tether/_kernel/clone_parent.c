/*
 * clone_parent.c — the PARENT side of the one clone site (the contract: clone.h): the exec
 * path (tether_clone_exec: the plan's last fields, the failure pipe, the one raw clone of
 * clone_raw.c, the failure record read back) and the capability probe. The child's side,
 * tether_child_exec and its steps, is clone.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clone.h"

#ifndef P_PIDFD
#define P_PIDFD 3 /* since 5.4 */
#endif

/* ------------------------------------------------------------------------------------------ */
/* PARENT side.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

int tether_put_uint(char *out, unsigned long long v)
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

/* "ID ID 1\n" into out (at least 32 bytes): the identity map of one id. */
static void format_id_map(char *out, unsigned int id)
{
    int k = tether_put_uint(out, id);
    out[k++] = ' ';
    k += tether_put_uint(out + k, id);
    out[k++] = ' ';
    out[k++] = '1';
    out[k++] = '\n';
    out[k] = '\0';
}

void tether_reap_pidfd(int pidfd)
{
    siginfo_t info;
    /* Our own child, named by its pidfd, never its number. */
    while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED) != 0 && errno == EINTR)
        ;
}

void tether_hold_for_test(const char *value, const int *keep, int n_keep)
{
    int fd = 0, kept = 0, i;
    char byte;
    while (value != NULL && *value >= '0' && *value <= '9' && fd < 1 << 20)
        fd = fd * 10 + (*value++ - '0');
    /* Only one of the program's pass_fds: a stray value naming one of the caller's own fds
     * (a control socket, a lifeline, a pipe it holds both ends of) would block it for good. */
    for (i = 0; i < n_keep && !kept; i++)
        kept = fd > 2 && keep[i] == fd;
    while (kept && read(fd, &byte, 1) < 0 && errno == EINTR)
        ;
}

/* 1 and *failure filled if the child sent a failure record, 0 on EOF (it exec'd). */
static int read_failure(int readfd, struct tether_failure *failure)
{
    struct tether_failure rec;
    ssize_t n;
    /* CLONE_VFORK: the child has exec'd or exited by now, so the record (if any) is already in
     * the pipe. The pipe is non-blocking (made so), so a sibling forked elsewhere in this
     * process that inherited the write end cannot stall us. */
    do {
        n = read(readfd, &rec, sizeof rec);
    } while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof rec)
        return 0;
    *failure = rec;
    return 1;
}

/* One above every fd the child will use (never below 3: its stdio may be inherited). */
static unsigned int fds_in_use_below(const struct tether_plan *plan)
{
    int top = plan->errpipe > 2 ? plan->errpipe : 2, i;
    for (i = 0; i < 3; i++)
        top = plan->stdio[i] > top ? plan->stdio[i] : top;
    top = plan->lifeline_src > top ? plan->lifeline_src : top;
    top = plan->announce_fd > top ? plan->announce_fd : top;
    if (plan->n_keep > 0 && plan->keep_fds[plan->n_keep - 1] > top)
        top = plan->keep_fds[plan->n_keep - 1];
    return (unsigned int)top + 1;
}

/* preexec_fn's slow path: a fork()ed child of Python, after preexec_fn, becomes the child
 * here. It has Python's handlers (a fork keeps them) and no CLONE_CLEAR_SIGHAND: block every
 * signal and reset handled ones, as the legacy clone does. Returns only if it cannot start. */
static int exec_in_place(struct tether_plan *plan, int errpipe)
{
    sigset_t all;
    sigfillset(&all);
    if (sigprocmask(SIG_SETMASK, &all, NULL) != 0)
        return -errno;
    plan->errpipe = errpipe;
    plan->unshare_from = 0; /* a fork has a table of its own */
    plan->reset_handlers = 1;
    plan->map_ids = 0;
    return tether_child_exec(plan);
}

int tether_clone_exec(struct tether_plan *plan, int method, uint64_t extra_flags,
                      int cgroup_fd, pid_t *pid_out, int *pidfd_out,
                      struct tether_failure *failure)
{
    int pipefd[2];
    int pidfd = -1;
    int failed;
    long pid;

    failure->stage = TETHER_STAGE_NONE;
    failure->error = 0;
    *pid_out = 0;
    *pidfd_out = -1;
    if (method == TETHER_CLONE_IN_PLACE)
        return exec_in_place(plan, cgroup_fd);

    plan->map_ids = (extra_flags & CLONE_NEWUSER) != 0;
    if (plan->map_ids) {
        /* Map the caller to itself in the new user namespace (done by the child, see struct
         * tether_plan). The namespace's owner is our euid, the one id an unprivileged process
         * may map. */
        format_id_map(plan->uid_map, (unsigned int)geteuid());
        format_id_map(plan->gid_map, (unsigned int)getegid());
    }
    plan->reset_handlers = method == TETHER_CLONE_LEGACY;

    /* Non-blocking from the start (read_failure), rather than an F_GETFL and F_SETFL after
     * every clone; the child's one small write into the empty pipe cannot block anyway. */
    if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) != 0)
        return -errno;
    plan->errpipe = pipefd[1];
    plan->unshare_from = 0;
    if (plan->share_files && !plan->inherit_fds) {
        plan->unshare_from = fds_in_use_below(plan);
        extra_flags |= CLONE_FILES;
    }
    pid = tether_clone_raw(method, extra_flags, cgroup_fd, tether_child_exec, plan, &pidfd);
    close(pipefd[1]);
    if (pid < 0) {
        close(pipefd[0]);
        return (int)pid;
    }
    failed = read_failure(pipefd[0], failure);
    close(pipefd[0]);
    *pid_out = (pid_t)pid;
    if (failed) {
        tether_reap_pidfd(pidfd);
        close(pidfd);
        return 0;
    }
    if (pidfd <= 2) {
        /* A parent whose stdio is closed: the pidfd must not pose as its fd 0, 1 or 2. If it
         * cannot be moved, nothing may be left behind: the child is killed and reaped. */
        int moved = fcntl(pidfd, F_DUPFD_CLOEXEC, 3);
        if (moved < 0) {
            int err = errno;
            (void)syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
            tether_reap_pidfd(pidfd);
            close(pidfd);
            return -err;
        }
        close(pidfd);
        pidfd = moved;
    }
    *pidfd_out = pidfd;
    return 0;
}

static int probe_child(void *arg)
{
    (void)arg;
    return 0;
}

int tether_probe_method(int method)
{
    int pidfd = -1;
    long pid = tether_clone_raw(method, 0, -1, probe_child, NULL, &pidfd);
    if (pid < 0)
        return (int)pid;
    if (pidfd < 0)
        return -ENOSYS; /* a kernel that ignored CLONE_PIDFD */
    tether_reap_pidfd(pidfd);
    close(pidfd);
    return 0;
}
