/*
 * _clone.h — the one clone site of tether.
 *
 * Both the Python extension (_core.c) and the guard executable (guard.c) include this file, so
 * every process tether ever creates is made by tether_clone_exec() below: clone3() with
 * CLONE_PIDFD|CLONE_CLEAR_SIGHAND in vfork style (CLONE_VM|CLONE_VFORK), or, where seccomp or an
 * old kernel refuses clone3, the legacy clone(CLONE_PIDFD|CLONE_VM|CLONE_VFORK) with the signal
 * handlers reset by hand.
 *
 * The file is split in two halves:
 *   - the CHILD side (tether_child_main and what it calls) runs in the child between clone and
 *     execve, sharing the parent's memory. It is async-signal-safe only: raw syscalls, no malloc,
 *     no locks, no stdio, no errno-to-string. Everything it needs was prepared by the parent in
 *     one struct tether_plan.
 *   - the PARENT side (tether_clone_exec) blocks signals, clones, and reads the child's failure
 *     record, if any, from an O_CLOEXEC pipe: EOF means the exec succeeded.
 */
#ifndef TETHER_CLONE_H
#define TETHER_CLONE_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Flag values from the kernel uapi, spelled out so older headers still build. */
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000 /* since 5.2 */
#endif
#define TETHER_CLONE_CLEAR_SIGHAND 0x100000000ULL /* since 5.5 */
#define TETHER_CLONE_INTO_CGROUP 0x200000000ULL   /* since 5.7 */
#ifndef SYS_clone3
#define SYS_clone3 435 /* since 5.3 */
#endif
#ifndef SYS_close_range
#define SYS_close_range 436 /* since 5.9 */
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef P_PIDFD
#define P_PIDFD 3 /* since 5.4 */
#endif

/* Stages named in the failure record; the parent maps them to a message. Keep in sync with
 * _spawn.py (_STAGES). */
enum tether_stage {
    TETHER_STAGE_NONE = 0,
    TETHER_STAGE_FDS = 1,       /* moving or dup2'ing the fd plan */
    TETHER_STAGE_CLOSE = 2,     /* close_range of every other fd */
    TETHER_STAGE_PDEATHSIG = 3, /* prctl(PR_SET_PDEATHSIG) */
    TETHER_STAGE_PARENT_GONE = 4,
    TETHER_STAGE_SETPGID = 5,
    TETHER_STAGE_CHDIR = 6,
    TETHER_STAGE_SIGNALS = 7,   /* handler reset / mask reset */
    TETHER_STAGE_EXEC = 8,
    TETHER_STAGE_USERNS = 9,    /* writing the new user namespace's setgroups/gid_map/uid_map */
};

/* The failure record: fixed size, written once, read once. */
struct tether_failure {
    int32_t stage;
    int32_t error;
};

/* Everything the child needs, converted by the parent before the clone. */
struct tether_plan {
    const char *path;       /* resolved executable */
    char *const *argv;
    char *const *envp;
    const char *cwd;        /* NULL: inherit */
    int stdio[3];           /* source fd for 0/1/2, or -1: inherit */
    const int *keep_fds;    /* sorted ascending, each >= 3: same number in the child */
    int n_keep;
    int lifeline_src;       /* -1: no lifeline */
    int lifeline_dst;       /* >= 3, not in keep_fds */
    int floor;              /* first fd number above every target fd */
    int errpipe;            /* write end of the failure pipe (O_CLOEXEC) */
    int new_pgroup;         /* setpgid(0, 0) */
    int pdeathsig;          /* 0: none. Only the single-threaded guard sets this. */
    pid_t expected_ppid;    /* with pdeathsig: the parent we must still have after prctl */
    int reset_handlers;     /* legacy clone: CLONE_CLEAR_SIGHAND was not available */
    int foreground;         /* 1: after setpgid, make the new group the foreground process group
                             * of the terminal on fd 0 (best effort; the caller checked that fd 0
                             * is its controlling terminal). Only the guard sets this. */
    /* Filled in by tether_clone_exec itself when extra_flags has CLONE_NEWUSER (callers leave
     * them zeroed): the child maps its own euid/egid to themselves ("ID ID 1\n") before
     * anything else. It must be the child, before execve: after an execve in a namespace
     * where it has no uid mapping, a process holds no capabilities there, and can then no
     * longer write its own maps (user_namespaces(7); checked on 6.18 with unshare -U). */
    int map_ids;
    char uid_map[32];
    char gid_map[32];
};

struct tether_clone_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
    uint64_t set_tid;
    uint64_t set_tid_size;
    uint64_t cgroup;
};

/* ------------------------------------------------------------------------------------------ */
/* CHILD side: async-signal-safe only.                                                          */
/* ------------------------------------------------------------------------------------------ */

/* The kernel's struct sigaction for rt_sigaction (not glibc's, which differs in layout). */
struct tether_ksigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

static inline long tether_sys(long ret)
{
    /* glibc's syscall() returns -1 and sets errno (a thread-local shared with the parent
     * thread in a CLONE_VM child; the parent does not read it across the clone). */
    return ret == -1 ? -(long)errno : ret;
}

__attribute__((noreturn, noinline)) static void
tether_child_fail(const struct tether_plan *plan, int errpipe, int stage, long neg_errno)
{
    struct tether_failure rec;
    rec.stage = stage;
    rec.error = (int32_t)-neg_errno;
    /* A short write cannot happen for 8 bytes on an empty pipe; nothing else to do if it
     * fails: the parent then sees EOF, and the child's exit status 127. */
    (void)!write(errpipe, &rec, sizeof rec);
    (void)plan;
    syscall(SYS_exit_group, 127);
    __builtin_unreachable();
}

static long tether_close_gap(unsigned int lo, unsigned int hi)
{
    if (lo > hi)
        return 0;
    return tether_sys(syscall(SYS_close_range, lo, hi, 0));
}

/* Write one short text to a /proc file (the user namespace maps). */
static long tether_write_text(const char *path, const char *text)
{
    long fd, r;
    size_t len = 0;
    while (text[len] != '\0')
        len++;
    fd = tether_sys(syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CLOEXEC));
    if (fd < 0)
        return fd;
    r = tether_sys(syscall(SYS_write, (int)fd, text, len));
    syscall(SYS_close, (int)fd);
    return r < 0 ? r : 0;
}

/* Runs in the child, on the parent's stack (clone3) or a private one (legacy clone), with
 * every signal blocked. Never returns on success (execve). */
__attribute__((noinline)) static int tether_child_main(void *arg)
{
    const struct tether_plan *plan = (const struct tether_plan *)arg;
    int errpipe = plan->errpipe;
    long r;
    int i;

    if (plan->map_ids) {
        /* "deny" first: an unprivileged gid_map write is refused while setgroups is allowed
         * (since 3.19; older kernels have no setgroups file, hence ENOENT is fine). */
        r = tether_write_text("/proc/self/setgroups", "deny");
        if (r < 0 && r != -ENOENT)
            tether_child_fail(plan, errpipe, TETHER_STAGE_USERNS, r);
        r = tether_write_text("/proc/self/gid_map", plan->gid_map);
        if (r < 0)
            tether_child_fail(plan, errpipe, TETHER_STAGE_USERNS, r);
        r = tether_write_text("/proc/self/uid_map", plan->uid_map);
        if (r < 0)
            tether_child_fail(plan, errpipe, TETHER_STAGE_USERNS, r);
    }

    if (plan->reset_handlers) {
        /* Legacy clone has no CLONE_CLEAR_SIGHAND: put every handled signal back to SIG_DFL
         * before anything can unblock (ignored signals stay ignored, as with clear_sighand). */
        int sig;
        for (sig = 1; sig < 65; sig++) {
            struct tether_ksigaction old, dfl;
            if (sig == SIGKILL || sig == SIGSTOP)
                continue;
            if (syscall(SYS_rt_sigaction, sig, NULL, &old, 8) != 0)
                continue;
            if (old.handler == (void *)SIG_DFL || old.handler == (void *)SIG_IGN)
                continue;
            memset(&dfl, 0, sizeof dfl);
            dfl.handler = (void *)SIG_DFL;
            r = tether_sys(syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8));
            if (r < 0)
                tether_child_fail(plan, errpipe, TETHER_STAGE_SIGNALS, r);
        }
    }

    /* Move every source fd (and the failure pipe) above every target number first, so no
     * dup2 below can clobber a source that a later dup2 still needs. */
    if (errpipe < plan->floor) {
        r = tether_sys(fcntl(errpipe, F_DUPFD_CLOEXEC, plan->floor));
        if (r < 0)
            tether_child_fail(plan, errpipe, TETHER_STAGE_FDS, r);
        errpipe = (int)r;
    }
    {
        int src[4];
        int dst[4];
        int n = 0;
        for (i = 0; i < 3; i++) {
            if (plan->stdio[i] >= 0) {
                src[n] = plan->stdio[i];
                dst[n] = i;
                n++;
            }
        }
        if (plan->lifeline_src >= 0) {
            src[n] = plan->lifeline_src;
            dst[n] = plan->lifeline_dst;
            n++;
        }
        for (i = 0; i < n; i++) {
            if (src[i] < plan->floor || src[i] == errpipe) {
                r = tether_sys(fcntl(src[i], F_DUPFD_CLOEXEC, plan->floor));
                if (r < 0)
                    tether_child_fail(plan, errpipe, TETHER_STAGE_FDS, r);
                src[i] = (int)r;
            }
        }
        for (i = 0; i < n; i++) {
            /* dup2 onto a different number clears FD_CLOEXEC on the target. */
            r = tether_sys(dup2(src[i], dst[i]));
            if (r < 0)
                tether_child_fail(plan, errpipe, TETHER_STAGE_FDS, r);
        }
    }
    for (i = 0; i < plan->n_keep; i++) {
        r = tether_sys(fcntl(plan->keep_fds[i], F_SETFD, 0));
        if (r < 0)
            tether_child_fail(plan, errpipe, TETHER_STAGE_FDS, r);
    }

    /* Close everything that is not 0-2, a kept fd, the lifeline, or the failure pipe. The
     * targets are all below floor and errpipe is at or above it, so one ascending walk does. */
    {
        unsigned int next = 3;
        int li = 0;
        int placed_lifeline = plan->lifeline_src < 0;
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
                r = tether_close_gap(next, (unsigned int)k - 1);
                if (r < 0)
                    tether_child_fail(plan, errpipe, TETHER_STAGE_CLOSE, r);
                next = (unsigned int)k + 1;
            }
        }
        if ((unsigned int)errpipe >= next) {
            r = tether_close_gap(next, (unsigned int)errpipe - 1);
            if (r < 0)
                tether_child_fail(plan, errpipe, TETHER_STAGE_CLOSE, r);
        }
        r = tether_close_gap((unsigned int)errpipe + 1, ~0U);
        if (r < 0)
            tether_child_fail(plan, errpipe, TETHER_STAGE_CLOSE, r);
    }

    if (plan->pdeathsig) {
        r = tether_sys(prctl(PR_SET_PDEATHSIG, plan->pdeathsig, 0, 0, 0));
        if (r < 0)
            tether_child_fail(plan, errpipe, TETHER_STAGE_PDEATHSIG, r);
        /* The parent may have died between clone and prctl: then the signal will never come.
         * (systemd's rule: re-check the parent after PR_SET_PDEATHSIG.) */
        if (getppid() != plan->expected_ppid)
            tether_child_fail(plan, errpipe, TETHER_STAGE_PARENT_GONE, -ESRCH);
    }
    if (plan->new_pgroup) {
        r = tether_sys(setpgid(0, 0));
        if (r < 0)
            tether_child_fail(plan, errpipe, TETHER_STAGE_SETPGID, r);
        if (plan->foreground) {
            /* Every signal is still blocked here, and the tty layer treats a blocked SIGTTOU
             * as ignored (tty_check_change), so a background group may take the terminal
             * without being stopped. Best effort: a terminal hung up meanwhile is no reason
             * not to run the program. */
            pid_t self = (pid_t)syscall(SYS_getpid);
            (void)syscall(SYS_ioctl, 0, TIOCSPGRP, &self);
        }
    }
    if (plan->cwd != NULL) {
        r = tether_sys(chdir(plan->cwd));
        if (r < 0)
            tether_child_fail(plan, errpipe, TETHER_STAGE_CHDIR, r);
    }

    /* Python ignores SIGPIPE and SIGXFSZ; a program expects them at their defaults (what
     * subprocess calls restore_signals). Handlers first, then the mask: a signal pending now
     * must not run a parent's handler. */
    {
        static const int restore[] = {SIGPIPE, SIGXFSZ};
        struct tether_ksigaction dfl;
        sigset_t empty;
        memset(&dfl, 0, sizeof dfl);
        dfl.handler = (void *)SIG_DFL;
        for (i = 0; i < 2; i++) {
            r = tether_sys(syscall(SYS_rt_sigaction, restore[i], &dfl, NULL, 8));
            if (r < 0)
                tether_child_fail(plan, errpipe, TETHER_STAGE_SIGNALS, r);
        }
        sigemptyset(&empty);
        r = tether_sys(syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, 8));
        if (r < 0)
            tether_child_fail(plan, errpipe, TETHER_STAGE_SIGNALS, r);
    }

    r = tether_sys(syscall(SYS_execve, plan->path, plan->argv, plan->envp));
    tether_child_fail(plan, errpipe, TETHER_STAGE_EXEC, r);
}

/* ------------------------------------------------------------------------------------------ */
/* The clone3 trampoline.                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* long tether_clone3_raw(struct tether_clone_args *args, size_t size, int (*fn)(void *), void *arg)
 *
 * Returns the child's pid (or -errno) in the parent. The child never returns through C: it
 * calls fn(arg) on the parent's stack below the parent's live frames (stack=0, size=0: the
 * glibc vfork trick; the parent is suspended until the child execs or exits), then exit_group. */
#if defined(__x86_64__)
#define TETHER_HAVE_CLONE3_TRAMPOLINE 1
__asm__(".text\n"
        ".p2align 4\n"
        ".type tether_clone3_raw,@function\n"
        "tether_clone3_raw:\n"
        "    mov %rdx, %r8\n"      /* fn: r8/r9 survive the syscall (only rcx, r11 do not) */
        "    mov %rcx, %r9\n"      /* arg */
        "    mov $435, %eax\n"     /* SYS_clone3 */
        "    syscall\n"
        "    test %rax, %rax\n"
        "    jnz 1f\n"
        "    xor %ebp, %ebp\n"
        "    and $-16, %rsp\n"     /* ABI: 16-byte aligned before the call */
        "    mov %r9, %rdi\n"
        "    call *%r8\n"
        "    mov %eax, %edi\n"
        "    mov $231, %eax\n"     /* SYS_exit_group */
        "    syscall\n"
        "    hlt\n"
        "1:  ret\n"
        ".size tether_clone3_raw, .-tether_clone3_raw\n");
#elif defined(__aarch64__)
#define TETHER_HAVE_CLONE3_TRAMPOLINE 1
__asm__(".text\n"
        ".p2align 4\n"
        ".type tether_clone3_raw,%function\n"
        "tether_clone3_raw:\n"
        "    mov x9, x2\n"
        "    mov x10, x3\n"
        "    mov x8, #435\n"
        "    svc #0\n"
        "    cbnz x0, 1f\n"
        "    mov x29, xzr\n"
        "    mov x0, x10\n"
        "    blr x9\n"
        "    mov x8, #94\n"        /* SYS_exit_group */
        "    svc #0\n"
        "1:  ret\n"
        ".size tether_clone3_raw, .-tether_clone3_raw\n");
#else
#define TETHER_HAVE_CLONE3_TRAMPOLINE 0
#endif

#if TETHER_HAVE_CLONE3_TRAMPOLINE
long tether_clone3_raw(struct tether_clone_args *args, size_t size, int (*fn)(void *), void *arg)
    __attribute__((visibility("hidden")));
#endif

/* ------------------------------------------------------------------------------------------ */
/* PARENT side.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

enum tether_clone_method {
    TETHER_CLONE_UNKNOWN = 0,
    TETHER_CLONE_CLONE3 = 1,  /* clone3 + CLONE_PIDFD + CLONE_CLEAR_SIGHAND, vfork style */
    TETHER_CLONE_LEGACY = 2,  /* clone(CLONE_PIDFD|CLONE_VM|CLONE_VFORK), handlers reset by hand */
    TETHER_CLONE_NONE = 3,
};

#define TETHER_LEGACY_STACK (64 * 1024)

/* "ID ID 1\n" into out (at least 32 bytes): the identity map of one id. */
static void tether_format_map(char *out, unsigned int id)
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

/* Clone one child that runs the plan and execs.
 *
 * extra_flags may carry CLONE_NEWPID/CLONE_NEWUSER (clone3 only, and only when the caller
 * knows the child will not touch shared memory in a way that matters: a new PID namespace
 * is fine with CLONE_VM); cgroup_fd >= 0 places the child into that cgroup (clone3 only).
 *
 * Returns 0 and sets *pid_out / *pidfd_out on success (exec done). On a child failure, the
 * child is reaped, its pidfd closed, and *failure says the stage and errno; returns 0 with
 * *pidfd_out = -1. Returns -errno if the clone itself failed (nothing was created). */
static int tether_clone_exec(struct tether_plan *plan, int method, uint64_t extra_flags,
                             int cgroup_fd, pid_t *pid_out, int *pidfd_out,
                             struct tether_failure *failure)
{
    int pipefd[2];
    int pidfd = -1;
    long pid;
    sigset_t all, old;
    int saved_errno;

    failure->stage = TETHER_STAGE_NONE;
    failure->error = 0;
    *pid_out = 0;
    *pidfd_out = -1;

    if (extra_flags & CLONE_NEWUSER) {
        /* Map the caller to itself in the new user namespace (done by the child, see
         * struct tether_plan). The namespace's owner is our euid, the one id an unprivileged
         * process may map. */
        plan->map_ids = 1;
        tether_format_map(plan->uid_map, (unsigned int)geteuid());
        tether_format_map(plan->gid_map, (unsigned int)getegid());
    }

    if (pipe2(pipefd, O_CLOEXEC) != 0)
        return -errno;
    plan->errpipe = pipefd[1];

    /* Block everything around the clone so no handler of ours runs in the child before it
     * has reset handlers and mask (musl's order). */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);

    if (method == TETHER_CLONE_CLONE3) {
#if TETHER_HAVE_CLONE3_TRAMPOLINE
        struct tether_clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | TETHER_CLONE_CLEAR_SIGHAND | extra_flags;
        args.pidfd = (uint64_t)(uintptr_t)&pidfd;
        args.exit_signal = SIGCHLD;
        if (cgroup_fd >= 0) {
            args.flags |= TETHER_CLONE_INTO_CGROUP;
            args.cgroup = (uint64_t)cgroup_fd;
        }
        plan->reset_handlers = 0;
        pid = tether_clone3_raw(&args, sizeof args, tether_child_main, plan);
        saved_errno = pid < 0 ? (int)-pid : 0;
#else
        pid = -ENOSYS;
        saved_errno = ENOSYS;
#endif
    } else if (method == TETHER_CLONE_LEGACY) {
        void *stack;
        if (extra_flags != 0 || cgroup_fd >= 0) {
            /* Namespaces and CLONE_INTO_CGROUP ride on clone3 only; the caller checks. */
            pid = -ENOSYS;
            saved_errno = ENOSYS;
        } else {
            stack = mmap(NULL, TETHER_LEGACY_STACK, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
            if (stack == MAP_FAILED) {
                saved_errno = errno;
                pid = -saved_errno;
            } else {
                plan->reset_handlers = 1;
                pid = clone(tether_child_main, (char *)stack + TETHER_LEGACY_STACK,
                            CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, plan, &pidfd);
                saved_errno = pid < 0 ? errno : 0;
                if (pid < 0)
                    pid = -saved_errno;
                munmap(stack, TETHER_LEGACY_STACK);
            }
        }
    } else {
        pid = -ENOSYS;
        saved_errno = ENOSYS;
    }

    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(pipefd[1]);

    if (pid < 0) {
        close(pipefd[0]);
        return -saved_errno;
    }

    /* CLONE_VFORK: the child has exec'd or exited by now, so the record (if any) is already
     * in the pipe. Read without blocking, so a sibling forked elsewhere in this process that
     * inherited the write end cannot stall us. */
    {
        struct tether_failure rec;
        ssize_t n;
        int fl = fcntl(pipefd[0], F_GETFL);
        if (fl >= 0)
            fcntl(pipefd[0], F_SETFL, fl | O_NONBLOCK);
        do {
            n = read(pipefd[0], &rec, sizeof rec);
        } while (n < 0 && errno == EINTR);
        close(pipefd[0]);
        if (n == (ssize_t)sizeof rec) {
            siginfo_t info;
            *failure = rec;
            /* Reap our own failed child through its pidfd, never its number. */
            while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED) != 0 && errno == EINTR)
                ;
            close(pidfd);
            *pid_out = (pid_t)pid;
            return 0;
        }
    }
    *pid_out = (pid_t)pid;
    *pidfd_out = pidfd;
    return 0;
}

/* A child that exits at once: used by the probe to learn which clone method this kernel
 * and sandbox allow. */
__attribute__((noinline)) static int tether_probe_child(void *arg)
{
    (void)arg;
    return 0;
}

/* Try one method for real; 0 if it works, else -errno. The probe child is reaped. */
static int tether_probe_method(int method)
{
    int pidfd = -1;
    long pid;
    siginfo_t info;
    sigset_t all, old;

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (method == TETHER_CLONE_CLONE3) {
#if TETHER_HAVE_CLONE3_TRAMPOLINE
        struct tether_clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | TETHER_CLONE_CLEAR_SIGHAND;
        args.pidfd = (uint64_t)(uintptr_t)&pidfd;
        args.exit_signal = SIGCHLD;
        pid = tether_clone3_raw(&args, sizeof args, tether_probe_child, NULL);
#else
        pid = -ENOSYS;
#endif
    } else {
        void *stack = mmap(NULL, TETHER_LEGACY_STACK, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED) {
            pid = -errno;
        } else {
            pid = clone(tether_probe_child, (char *)stack + TETHER_LEGACY_STACK,
                        CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, NULL, &pidfd);
            if (pid < 0)
                pid = -errno;
            munmap(stack, TETHER_LEGACY_STACK);
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0)
        return (int)pid;
    if (pidfd < 0)
        return -ENOSYS; /* a kernel that ignored CLONE_PIDFD */
    while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED) != 0 && errno == EINTR)
        ;
    close(pidfd);
    return 0;
}

#endif /* TETHER_CLONE_H */
