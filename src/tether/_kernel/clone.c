/*
 * clone.c — the CHILD side of the one clone site of tether (declarations and the contract:
 * clone.h; the parent's side is clone_parent.c).
 *
 * The child runs between clone and execve, sharing the parent's memory. Everything it needs
 * was prepared by the parent in one struct tether_plan; a failed step sends a fixed-size
 * record (stage, errno) on an O_CLOEXEC pipe, whose EOF alone tells the parent the exec
 * succeeded. The parent's side (the exec path and the capability probe, built on the one raw
 * clone of clone_raw.c) is clone_parent.c.
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
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clone.h"
#include "guard_proto.h"

#ifndef SYS_close_range
#define SYS_close_range 436 /* since 5.9 */
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2) /* since 5.11 */
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1) /* since 5.9 */
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* since 5.3 */
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

long tether_default_handler(int sig)
{
    struct kernel_sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.handler = (void *)SIG_DFL;
    return tether_sys_result(syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8));
}

/* CLONE_FILES: until this returns, the table is the parent's, which its other threads go on
 * using (vfork stops only the caller), so no step before it may open, close or dup an fd.
 * Closing [unshare_from, ~0] with CLOSE_RANGE_UNSHARE makes the kernel copy only the fds
 * below unshare_from (every fd the plan names is), at this moment, into a table of our own. */
static long unshare_low_fds(const struct tether_plan *plan)
{
    return tether_sys_result(
        syscall(SYS_close_range, plan->unshare_from, ~0U, CLOSE_RANGE_UNSHARE));
}

/* One short text into a /proc or cgroup file (the user namespace maps, a cgroup join). */
long tether_write_text_at(int dirfd, const char *name, const char *text)
{
    long fd, r;
    size_t len = 0;
    while (text[len] != '\0')
        len++;
    fd = tether_sys_result(syscall(SYS_openat, dirfd, name, O_WRONLY | O_CLOEXEC));
    if (fd < 0)
        return fd;
    do
        r = tether_sys_result(syscall(SYS_write, (int)fd, text, len));
    while (r == -EINTR);
    syscall(SYS_close, (int)fd);
    return r < 0 ? r : 0;
}

static long map_own_ids(const struct tether_plan *plan)
{
    /* "deny" first: an unprivileged gid_map write is refused while setgroups is allowed
     * (since 3.19; older kernels have no setgroups file, hence ENOENT is fine). */
    long r = tether_write_text_at(AT_FDCWD, "/proc/self/setgroups", "deny");
    if (r < 0 && r != -ENOENT)
        return r;
    r = tether_write_text_at(AT_FDCWD, "/proc/self/gid_map", plan->gid_map);
    if (r < 0)
        return r;
    return tether_write_text_at(AT_FDCWD, "/proc/self/uid_map", plan->uid_map);
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
        r = tether_default_handler(sig);
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
        r = tether_sys_result(fcntl(*errpipe, F_DUPFD_CLOEXEC, plan->floor));
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
            r = tether_sys_result(fcntl(src[i], F_DUPFD_CLOEXEC, plan->floor));
            if (r < 0)
                return r;
            src[i] = (int)r;
        }
    }
    for (i = 0; i < n; i++) {
        /* dup2 onto a different number clears FD_CLOEXEC on the target. */
        r = tether_sys_result(dup2(src[i], dst[i]));
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
        long r = tether_sys_result(fcntl(plan->keep_fds[i], F_SETFD, 0));
        if (r < 0)
            return r;
    }
    return 0;
}

/* Marked close-on-exec (how), not closed: the parent waits (vfork) until our exec, and closing
 * each of its fds costs about 100 ns (1.5 ms at 15,000: 3,000 live aio trees), while marking is
 * a bitmap fill; the exec closes them after it has released the parent. Before 5.11: EINVAL.
 * how 0: closed at once. */
static long close_gap(unsigned int lo, unsigned int hi, unsigned int how)
{
    long r;
    if (lo > hi)
        return 0;
    r = tether_sys_result(syscall(SYS_close_range, lo, hi, how));
    if (r != -EINVAL || how == 0)
        return r;
    return tether_sys_result(syscall(SYS_close_range, lo, hi, 0));
}

/* Close everything that is not 0-2, a kept fd, the lifeline, or the failure pipe. The targets
 * are all below floor and errpipe is at or above it, so one ascending walk does. A guard's
 * clone child that starts the program beside its exec (plan->early) closes them at once: the
 * program's clone copies our table, and a program that cannot exec yet (frozen, its exec hung
 * on a dead file system) would hold the parent's fds there (a pipe closed by the parent would
 * not reach EOF; another thread's start waits for its exec and start pipes' EOF). */
static long close_other_fds(const struct tether_plan *plan, int errpipe)
{
    unsigned int next = 3, how = plan->early != NULL ? 0 : CLOSE_RANGE_CLOEXEC;
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
            r = close_gap(next, (unsigned int)k - 1, how);
            if (r < 0)
                return r;
            next = (unsigned int)k + 1;
        }
    }
    if ((unsigned int)errpipe >= next) {
        r = close_gap(next, (unsigned int)errpipe - 1, how);
        if (r < 0)
            return r;
    }
    return close_gap((unsigned int)errpipe + 1, ~0U, how);
}

static long set_pdeathsig(const struct tether_plan *plan)
{
    return tether_sys_result(prctl(PR_SET_PDEATHSIG, plan->pdeathsig, 0, 0, 0));
}

/* The parent may have died between clone and prctl: then the signal will never come.
 * (systemd's rule: re-check the parent after PR_SET_PDEATHSIG.) */
static long check_parent(const struct tether_plan *plan)
{
    return getppid() == plan->expected_ppid ? 0 : -ESRCH;
}

static long set_pgroup(void)
{
    long r = tether_sys_result(setpgid(0, 0));
    /* EPERM: a session leader already (preexec_fn called setsid), which leads its own group.
     * Asked only then: two syscalls fewer in every other clone child. */
    if (r == -EPERM && syscall(SYS_getpgid, 0) == syscall(SYS_getpid))
        return 0;
    return r;
}

/* Send our own pidfd to the guard's parent, as MSG_PROGRAM on the guard's control socket: from
 * here on, whatever this program starts is in a group the parent can end through that pidfd
 * even if the guard dies before it reports (pidfd_open of ourselves is race-free: a running
 * process's number cannot be recycled). The pidfd is O_CLOEXEC and closed again at once. */
static long announce_self(const struct tether_plan *plan)
{
    struct tether_guard_msg msg;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } cm;
    struct iovec iov;
    struct msghdr mh;
    struct cmsghdr *c;
    long self, sent;
    pid_t pid = (pid_t)syscall(SYS_getpid);

    self = tether_sys_result(syscall(SYS_pidfd_open, pid, 0));
    if (self < 0)
        return self;
    memset(&msg, 0, sizeof msg);
    msg.type = TETHER_MSG_PROGRAM;
    msg.a = pid;
    iov.iov_base = &msg;
    iov.iov_len = sizeof msg;
    memset(&mh, 0, sizeof mh);
    memset(&cm, 0, sizeof cm);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cm.buf;
    mh.msg_controllen = sizeof cm.buf;
    c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &(int){(int)self}, sizeof(int));
    do
        sent = tether_sys_result(syscall(SYS_sendmsg, plan->announce_fd, &mh, MSG_NOSIGNAL));
    while (sent == -EINTR);
    (void)syscall(SYS_close, self);
    return sent < 0 ? sent : 0;
}

/* start_new_session: the new session's group has our pid as its number, the same group
 * setpgid(0, 0) would make, so group containment reaches it alike. */
static long set_session(void)
{
    return tether_sys_result(syscall(SYS_setsid));
}

/* Groups, then gid, then uid (after setuid we could no longer change the others). A change of
 * credentials clears PR_SET_PDEATHSIG, so this runs before set_pdeathsig. */
static long set_creds(const struct tether_plan *plan)
{
    long r = 0;
    if (plan->set_groups)
        r = tether_sys_result(syscall(SYS_setgroups, plan->n_groups, plan->groups));
    if (r == 0 && plan->set_gid)
        r = tether_sys_result(syscall(SYS_setresgid, plan->gid, plan->gid, plan->gid));
    if (r == 0 && plan->set_uid)
        r = tether_sys_result(syscall(SYS_setresuid, plan->uid, plan->uid, plan->uid));
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
    return tether_sys_result(chdir(plan->cwd));
}

/* Python ignores SIGPIPE and SIGXFSZ; a program expects them at their defaults (what
 * subprocess calls restore_signals). Handlers first, then the mask: a signal pending now must
 * not run a parent's handler. */
static long reset_signals(const struct tether_plan *plan)
{
    /* A guard that adopts a program started before its exec keeps its own signals held
     * through the exec (clone_early.c): a SIGTERM for the program then waits for the guard's
     * signalfd instead of killing the guard. */
    uint64_t held = plan->early != NULL ? plan->early->exec_mask : 0;
    long r = plan->keep_ignored ? 0 : tether_default_handler(SIGPIPE);
    if (r == 0 && !plan->keep_ignored)
        r = tether_default_handler(SIGXFSZ);
    if (r < 0)
        return r;
    return tether_sys_result(syscall(SYS_rt_sigprocmask, SIG_SETMASK, &held, NULL, 8));
}

/* Returns only on failure. */
static long do_exec(const struct tether_plan *plan)
{
    return tether_sys_result(syscall(SYS_execve, plan->path, plan->argv, plan->envp));
}

__attribute__((noreturn))
static void report_failure(int errpipe, int copies, int stage, long neg_errno)
{
    struct tether_failure rec[2];
    rec[0].stage = rec[1].stage = stage;
    rec[0].error = rec[1].error = (int32_t)-neg_errno;
    /* A short write cannot happen for 16 bytes on an empty pipe (one write, below PIPE_BUF);
     * nothing else to do if it fails: the reader then sees EOF, and the exit status 127. */
    (void)!write(errpipe, rec, (size_t)copies * sizeof rec[0]);
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
int tether_child_exec(void *arg)
{
    const struct tether_plan *plan = (const struct tether_plan *)arg;
    int errpipe = plan->errpipe;
    int stage;
    long err;

    /* First of all: every later step may touch the fd table (map_own_ids opens files). */
    if (plan->unshare_from > 0)
        CHILD_STEP(TETHER_STAGE_CLOSE, unshare_low_fds(plan));
    /* In a new user namespace, before anything else: the ids every later step runs as. */
    if (plan->map_ids)
        CHILD_STEP(TETHER_STAGE_USERNS, map_own_ids(plan));
    if (plan->reset_handlers)
        CHILD_STEP(TETHER_STAGE_SIGNALS, reset_handlers());
    if (plan->set_groups || plan->set_gid || plan->set_uid)
        CHILD_STEP(TETHER_STAGE_CREDS, set_creds(plan)); /* (it clears PDEATHSIG: first) */
    if (plan->pdeathsig) {
        CHILD_STEP(TETHER_STAGE_PDEATHSIG, set_pdeathsig(plan));
        CHILD_STEP(TETHER_STAGE_PARENT_GONE, check_parent(plan));
    }
    if (plan->new_session)
        CHILD_STEP(TETHER_STAGE_SETSID, set_session());
    else if (plan->new_pgroup)
        CHILD_STEP(TETHER_STAGE_SETPGID, set_pgroup());
    /* After the group exists, before the fds are moved or closed (the socket is one). */
    if (plan->announce_fd > 0)
        CHILD_STEP(TETHER_STAGE_ANNOUNCE, announce_self(plan));
    CHILD_STEP(TETHER_STAGE_FDS, dup_fd_plan(plan, &errpipe));
    CHILD_STEP(TETHER_STAGE_FDS, keep_pass_fds(plan));
    if (!plan->inherit_fds)
        CHILD_STEP(TETHER_STAGE_CLOSE, close_other_fds(plan, errpipe));
    if (plan->new_pgroup && !plan->new_session && plan->foreground)
        take_terminal(); /* fd 0 is the program's own by now */
    if (plan->set_umask)
        apply_umask(plan);
    if (plan->cwd != NULL)
        CHILD_STEP(TETHER_STAGE_CHDIR, change_dir(plan));
    if (plan->early != NULL) { /* a guard's: the program first, beside our exec */
        CHILD_STEP(TETHER_GUARD_STAGE_CGROUP, tether_join_early(plan->early));
        CHILD_STEP(TETHER_STAGE_EARLY, tether_start_early(plan->early));
    }
    CHILD_STEP(TETHER_STAGE_SIGNALS, reset_signals(plan));
    CHILD_STEP(TETHER_STAGE_EXEC, do_exec(plan));
failed:
    if (plan->early != NULL)
        tether_abandon_early(plan->early);
    report_failure(errpipe, plan->report_twice ? 2 : 1, stage, err);
}

#undef CHILD_STEP
