/*
 * clone.c — the one clone site of tether (declarations and the contract: clone.h).
 *
 * Two halves:
 *   - the CHILD side (child_exec and the steps it calls) runs in the child between clone and
 *     execve, sharing the parent's memory. Everything it needs was prepared by the parent in
 *     one struct tether_plan; a failed step sends a fixed-size record (stage, errno) on an
 *     O_CLOEXEC pipe, whose EOF alone tells the parent the exec succeeded.
 *   - the PARENT side: the exec path and the capability probe, both built on the one raw
 *     clone (clone_raw.c: clone3, or the legacy clone).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clone.h"

#ifndef SYS_close_range
#define SYS_close_range 436 /* since 5.9 */
#endif
#ifndef P_PIDFD
#define P_PIDFD 3 /* since 5.4 */
#endif

/* ------------------------------------------------------------------------------------------ */
/* CHILD side: async-signal-safe only. Raw syscalls, no malloc, no locks, no stdio, no         */
/* errno-to-string. Each step returns 0 or -errno; child_exec names the stage of the one that  */
/* failed.                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* The kernel's struct sigaction for rt_sigaction (not glibc's, which differs in layout). */
struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

static long sys_result(long ret)
{
    /* glibc's syscall() returns -1 and sets errno (a thread-local shared with the parent
     * thread in a CLONE_VM child; the parent does not read it across the clone). */
    return ret == -1 ? -(long)errno : ret;
}

static long set_default_handler(int sig)
{
    struct kernel_sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.handler = (void *)SIG_DFL;
    return sys_result(syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8));
}

/* Write one short text to a /proc file (the user namespace maps). */
static long write_text(const char *path, const char *text)
{
    long fd, r;
    size_t len = 0;
    while (text[len] != '\0')
        len++;
    fd = sys_result(syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CLOEXEC));
    if (fd < 0)
        return fd;
    r = sys_result(syscall(SYS_write, (int)fd, text, len));
    syscall(SYS_close, (int)fd);
    return r < 0 ? r : 0;
}

static long map_own_ids(const struct tether_plan *plan)
{
    /* "deny" first: an unprivileged gid_map write is refused while setgroups is allowed
     * (since 3.19; older kernels have no setgroups file, hence ENOENT is fine). */
    long r = write_text("/proc/self/setgroups", "deny");
    if (r < 0 && r != -ENOENT)
        return r;
    r = write_text("/proc/self/gid_map", plan->gid_map);
    if (r < 0)
        return r;
    return write_text("/proc/self/uid_map", plan->uid_map);
}

/* Legacy clone has no CLONE_CLEAR_SIGHAND (5.5): put every handled signal back to SIG_DFL
 * before anything can unblock (ignored signals stay ignored, as with clear_sighand). */
static long reset_handlers(void)
{
    int sig;
    for (sig = 1; sig < 65; sig++) {
        struct kernel_sigaction old;
        long r;
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (syscall(SYS_rt_sigaction, sig, NULL, &old, 8) != 0)
            continue;
        if (old.handler == (void *)SIG_DFL || old.handler == (void *)SIG_IGN)
            continue;
        r = set_default_handler(sig);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Put stdio and the lifeline at their numbers. Every source fd (and the failure pipe, whose
 * new number lands in *errpipe) is first moved above every target number, so no dup2 can
 * clobber a source that a later dup2 still needs. */
static long dup_fd_plan(const struct tether_plan *plan, int *errpipe)
{
    int src[4], dst[4];
    int n = 0, i;
    long r;
    if (*errpipe < plan->floor) {
        r = sys_result(fcntl(*errpipe, F_DUPFD_CLOEXEC, plan->floor));
        if (r < 0)
            return r;
        *errpipe = (int)r;
    }
    for (i = 0; i < 3; i++) {
        if (plan->stdio[i] >= 0) {
            src[n] = plan->stdio[i];
            dst[n++] = i;
        }
    }
    if (plan->lifeline_src >= 0) {
        src[n] = plan->lifeline_src;
        dst[n++] = plan->lifeline_dst;
    }
    for (i = 0; i < n; i++) {
        if (src[i] < plan->floor || src[i] == *errpipe) {
            r = sys_result(fcntl(src[i], F_DUPFD_CLOEXEC, plan->floor));
            if (r < 0)
                return r;
            src[i] = (int)r;
        }
    }
    for (i = 0; i < n; i++) {
        /* dup2 onto a different number clears FD_CLOEXEC on the target. */
        r = sys_result(dup2(src[i], dst[i]));
        if (r < 0)
            return r;
    }
    return 0;
}

/* pass_fds keep their numbers and must survive the exec. */
static long keep_pass_fds(const struct tether_plan *plan)
{
    int i;
    for (i = 0; i < plan->n_keep; i++) {
        long r = sys_result(fcntl(plan->keep_fds[i], F_SETFD, 0));
        if (r < 0)
            return r;
    }
    return 0;
}

static long close_gap(unsigned int lo, unsigned int hi)
{
    if (lo > hi)
        return 0;
    return sys_result(syscall(SYS_close_range, lo, hi, 0));
}

/* Close everything that is not 0-2, a kept fd, the lifeline, or the failure pipe. The targets
 * are all below floor and errpipe is at or above it, so one ascending walk does. */
static long close_other_fds(const struct tether_plan *plan, int errpipe)
{
    unsigned int next = 3;
    int li = 0;
    int placed_lifeline = plan->lifeline_src < 0;
    long r;
    for (;;) {
        int k;
        if (!placed_lifeline && (li >= plan->n_keep || plan->lifeline_dst < plan->keep_fds[li])) {
            k = plan->lifeline_dst;
            placed_lifeline = 1;
        } else if (li < plan->n_keep) {
            k = plan->keep_fds[li++];
        } else {
            break;
        }
        if ((unsigned int)k >= next) {
            r = close_gap(next, (unsigned int)k - 1);
            if (r < 0)
                return r;
            next = (unsigned int)k + 1;
        }
    }
    if ((unsigned int)errpipe >= next) {
        r = close_gap(next, (unsigned int)errpipe - 1);
        if (r < 0)
            return r;
    }
    return close_gap((unsigned int)errpipe + 1, ~0U);
}

static long set_pdeathsig(const struct tether_plan *plan)
{
    return sys_result(prctl(PR_SET_PDEATHSIG, plan->pdeathsig, 0, 0, 0));
}

/* The parent may have died between clone and prctl: then the signal will never come.
 * (systemd's rule: re-check the parent after PR_SET_PDEATHSIG.) */
static long check_parent(const struct tether_plan *plan)
{
    return getppid() == plan->expected_ppid ? 0 : -ESRCH;
}

static long set_pgroup(void)
{
    /* A leader already (preexec_fn called setsid): setpgid would fail with EPERM. */
    if (syscall(SYS_getpgid, 0) == syscall(SYS_getpid))
        return 0;
    return sys_result(setpgid(0, 0));
}

/* start_new_session: the new session's group has our pid as its number, the same group
 * setpgid(0, 0) would make, so group containment reaches it alike. */
static long set_session(void)
{
    return sys_result(syscall(SYS_setsid));
}

/* Groups, then gid, then uid (after setuid we could no longer change the others). A change of
 * credentials clears PR_SET_PDEATHSIG, so this runs before set_pdeathsig. */
static long set_creds(const struct tether_plan *plan)
{
    long r = 0;
    if (plan->set_groups)
        r = sys_result(syscall(SYS_setgroups, plan->n_groups, plan->groups));
    if (r == 0 && plan->set_gid)
        r = sys_result(syscall(SYS_setresgid, plan->gid, plan->gid, plan->gid));
    if (r == 0 && plan->set_uid)
        r = sys_result(syscall(SYS_setresuid, plan->uid, plan->uid, plan->uid));
    return r;
}

static void apply_umask(const struct tether_plan *plan)
{
    (void)syscall(SYS_umask, plan->umask);
}

/* Every signal is still blocked here, and the tty layer treats a blocked SIGTTOU as ignored
 * (tty_check_change), so a background group may take the terminal without being stopped.
 * Best effort: a terminal hung up meanwhile is no reason not to run the program. */
static void take_terminal(void)
{
    pid_t self = (pid_t)syscall(SYS_getpid);
    (void)syscall(SYS_ioctl, 0, TIOCSPGRP, &self);
}

static long change_dir(const struct tether_plan *plan)
{
    return sys_result(chdir(plan->cwd));
}

/* Python ignores SIGPIPE and SIGXFSZ; a program expects them at their defaults (what
 * subprocess calls restore_signals). Handlers first, then the mask: a signal pending now must
 * not run a parent's handler. */
static long reset_signals(const struct tether_plan *plan)
{
    sigset_t empty;
    long r = plan->keep_ignored ? 0 : set_default_handler(SIGPIPE);
    if (r == 0 && !plan->keep_ignored)
        r = set_default_handler(SIGXFSZ);
    if (r < 0)
        return r;
    sigemptyset(&empty);
    return sys_result(syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, 8));
}

/* Returns only on failure. */
static long do_exec(const struct tether_plan *plan)
{
    return sys_result(syscall(SYS_execve, plan->path, plan->argv, plan->envp));
}

__attribute__((noreturn))
static void report_failure(int errpipe, int stage, long neg_errno)
{
    struct tether_failure rec;
    rec.stage = stage;
    rec.error = (int32_t)-neg_errno;
    /* A short write cannot happen for 8 bytes on an empty pipe; nothing else to do if it
     * fails: the parent then sees EOF, and the child's exit status 127. */
    (void)!write(errpipe, &rec, sizeof rec);
    syscall(SYS_exit_group, 127);
    __builtin_unreachable();
}

/* The one error path: note the step's stage, and on failure go to the one label. */
#define CHILD_STEP(step_stage, call) \
    do {                             \
        stage = (step_stage);        \
        err = (call);                \
        if (err < 0)                 \
            goto failed;             \
    } while (0)

/* The child: async-signal-safe only. Runs on the parent's stack (clone3) or a private one
 * (legacy clone), with every signal blocked; never returns (execve, or exit_group(127)). */
__attribute__((noinline))
static int child_exec(void *arg)
{
    const struct tether_plan *plan = (const struct tether_plan *)arg;
    int errpipe = plan->errpipe;
    int stage;
    long err;

    /* In a new user namespace, before anything else: the ids every later step runs as. */
    if (plan->map_ids)
        CHILD_STEP(TETHER_STAGE_USERNS, map_own_ids(plan));
    if (plan->reset_handlers)
        CHILD_STEP(TETHER_STAGE_SIGNALS, reset_handlers());
    CHILD_STEP(TETHER_STAGE_FDS, dup_fd_plan(plan, &errpipe));
    CHILD_STEP(TETHER_STAGE_FDS, keep_pass_fds(plan));
    if (!plan->inherit_fds)
        CHILD_STEP(TETHER_STAGE_CLOSE, close_other_fds(plan, errpipe));
    if (plan->set_groups || plan->set_gid || plan->set_uid)
        CHILD_STEP(TETHER_STAGE_CREDS, set_creds(plan));
    if (plan->pdeathsig) {
        CHILD_STEP(TETHER_STAGE_PDEATHSIG, set_pdeathsig(plan));
        CHILD_STEP(TETHER_STAGE_PARENT_GONE, check_parent(plan));
    }
    if (plan->new_session)
        CHILD_STEP(TETHER_STAGE_SETSID, set_session());
    else if (plan->new_pgroup) {
        CHILD_STEP(TETHER_STAGE_SETPGID, set_pgroup());
        if (plan->foreground)
            take_terminal();
    }
    if (plan->set_umask)
        apply_umask(plan);
    if (plan->cwd != NULL)
        CHILD_STEP(TETHER_STAGE_CHDIR, change_dir(plan));
    CHILD_STEP(TETHER_STAGE_SIGNALS, reset_signals(plan));
    CHILD_STEP(TETHER_STAGE_EXEC, do_exec(plan));
failed:
    report_failure(errpipe, stage, err);
}

#undef CHILD_STEP

/* ------------------------------------------------------------------------------------------ */
/* PARENT side.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* "ID ID 1\n" into out (at least 32 bytes): the identity map of one id. */
static void format_id_map(char *out, unsigned int id)
{
    char digits[12];
    int n = 0, k = 0, rep;
    do {
        digits[n++] = (char)('0' + id % 10);
        id /= 10;
    } while (id != 0);
    for (rep = 0; rep < 2; rep++) {
        int i;
        for (i = n - 1; i >= 0; i--)
            out[k++] = digits[i];
        out[k++] = ' ';
    }
    out[k++] = '1';
    out[k++] = '\n';
    out[k] = '\0';
}

static void reap_pidfd(int pidfd)
{
    siginfo_t info;
    /* Our own child, named by its pidfd, never its number. */
    while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED) != 0 && errno == EINTR)
        ;
}

/* 1 and *failure filled if the child sent a failure record, 0 on EOF (it exec'd). */
static int read_failure(int readfd, struct tether_failure *failure)
{
    struct tether_failure rec;
    ssize_t n;
    /* CLONE_VFORK: the child has exec'd or exited by now, so the record (if any) is already in
     * the pipe. Read without blocking, so a sibling forked elsewhere in this process that
     * inherited the write end cannot stall us. */
    int fl = fcntl(readfd, F_GETFL);
    if (fl >= 0)
        fcntl(readfd, F_SETFL, fl | O_NONBLOCK);
    do {
        n = read(readfd, &rec, sizeof rec);
    } while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof rec)
        return 0;
    *failure = rec;
    return 1;
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
    plan->reset_handlers = 1;
    plan->map_ids = 0;
    return child_exec(plan);
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

    if (pipe2(pipefd, O_CLOEXEC) != 0)
        return -errno;
    plan->errpipe = pipefd[1];
    pid = tether_clone_raw(method, extra_flags, cgroup_fd, child_exec, plan, &pidfd);
    close(pipefd[1]);
    if (pid < 0) {
        close(pipefd[0]);
        return (int)pid;
    }
    failed = read_failure(pipefd[0], failure);
    close(pipefd[0]);
    *pid_out = (pid_t)pid;
    if (failed) {
        reap_pidfd(pidfd);
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
            reap_pidfd(pidfd);
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
    reap_pidfd(pidfd);
    close(pidfd);
    return 0;
}
