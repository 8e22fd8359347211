/*
 * clone.h — the one clone site of tether: declarations. The code: clone.c (the child),
 * clone_parent.c (the exec path and the probe) and clone_raw.c (the one raw clone).
 *
 * Both are compiled into the Python extension (core.c) and into the guard executable
 * (guard.c), so every process tether ever creates is made by tether_clone_exec(): clone3()
 * with CLONE_PIDFD|CLONE_CLEAR_SIGHAND in vfork style (CLONE_VM|CLONE_VFORK), or, where
 * seccomp or an old kernel refuses clone3, the legacy clone(CLONE_PIDFD|CLONE_VM|CLONE_VFORK)
 * with the signal handlers reset by hand. Both go through the one raw clone,
 * tether_clone_raw(), which the capability probe uses too.
 */
#ifndef TETHER_CLONE_H
#define TETHER_CLONE_H

#include <errno.h>
#include <stdint.h>
#include <sys/types.h>

/* The extension is a shared object: these are for core.c and guard.c, not for its users. */
#define TETHER_HIDDEN __attribute__((visibility("hidden")))

enum tether_clone_method {
    TETHER_CLONE_UNKNOWN = 0,
    TETHER_CLONE_CLONE3 = 1, /* clone3 + CLONE_PIDFD + CLONE_CLEAR_SIGHAND, vfork style */
    TETHER_CLONE_LEGACY = 2, /* clone(CLONE_PIDFD|CLONE_VM|CLONE_VFORK), handlers reset by hand */
    TETHER_CLONE_NONE = 3,
    /* Not a clone: this process (a child forked to run preexec_fn) runs the child steps and
     * execs; cgroup_fd carries the failure pipe's write end. tether_clone_exec only. */
    TETHER_CLONE_IN_PLACE = 4,
};

/* Stages named in the failure record: X(NAME, number, what the child was doing). The one
 * table: the extension exports it (core.STAGES) and the Python parent words its errors from
 * it. The guard's own setup stages (100 and up) are in guard_proto.h. */
#define TETHER_CHILD_STAGES(X)                                   \
    X(FDS, 1, "setting up the child's fds")                     \
    X(CLOSE, 2, "closing inherited fds")                        \
    X(PDEATHSIG, 3, "setting PR_SET_PDEATHSIG")                 \
    X(PARENT_GONE, 4, "checking the parent is alive")           \
    X(SETPGID, 5, "setpgid")                                    \
    X(CHDIR, 6, "chdir")                                        \
    X(SIGNALS, 7, "resetting signals")                          \
    X(EXEC, 8, "exec")                                          \
    X(USERNS, 9, "user namespace setup")                        \
    X(SETSID, 10, "setsid")                                     \
    X(CREDS, 11, "setting groups, gid and uid")                 \
    X(PREEXEC, 12, "running preexec_fn")                        \
    X(ANNOUNCE, 13, "announcing the program's pidfd to the parent")          \
    X(EARLY, 14, "starting the program beside the guard")

enum tether_stage {
    TETHER_STAGE_NONE = 0,
#define TETHER_STAGE_ENUM(name, number, what) TETHER_STAGE_##name = number,
    TETHER_CHILD_STAGES(TETHER_STAGE_ENUM)
#undef TETHER_STAGE_ENUM
};

/* The failure record: fixed size, written once by the child, read once by the parent. */
struct tether_failure {
    int32_t stage;
    int32_t error;
};

struct tether_plan;

/* The overlapped start (clone_early.c): a guard's clone child, its own fds in place, clones
 * the program (CLONE_VM, a stack of its own, no CLONE_VFORK) and then execs the guard, so
 * that the two execs run side by side; the guard adopts the program (--adopt). Made by the
 * parent (launch_early.c), which keeps every byte of it, the program's stack included, until
 * the program has exec'd or exited (EOF on the exec pipe: the program's errpipe). */
struct tether_early {
    struct tether_plan *program; /* the program's plan; its errpipe is the exec pipe's write
                                  * end, its lifeline_src the program's lifeline read end */
    int method;                  /* the clone method for the program */
    int cgroup_fd;               /* >= 0: CLONE_INTO_CGROUP for the program (cgroup mode) */
    char *stack;                 /* the program's clone child runs here, never on ours */
    size_t stack_size;
    uint64_t exec_mask;          /* the signals the guard holds, kept blocked across its exec
                                  * (bit n-1: signal n) so that none is lost before its
                                  * signalfd exists */
    char *adopted;               /* out: "PID:PIDFD:METHOD:V1" for the guard's --adopt (48
                                  * bytes, a string of its argv) */
    int pidfd;                   /* the program's pidfd in the guard's clone child; -1 */
    pid_t pid;                   /* its pid there (and so its process group's id); 0 */
    const int *join_fds;         /* a limited tree's cgroup directories, joined first */
    int n_join;
    unsigned int joined_v1;      /* out: bit i set: join_fds[i] was a v1 directory ("tasks") */
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
    int new_pgroup;         /* setpgid(0, 0) */
    int pdeathsig;          /* 0: none. Only the single-threaded guard sets this. */
    pid_t expected_ppid;    /* with pdeathsig: the parent we must still have after prctl */
    int foreground;         /* 1: after setpgid, make the new group the foreground process group
                             * of the terminal on fd 0 (best effort; the caller checked that fd 0
                             * is its controlling terminal). Only the guard sets this. */
    int announce_fd;        /* > 0: the guard's control socket. Before anything can exec, the
                             * child sends its own pidfd over it (MSG_PROGRAM, guard_proto.h),
                             * so the parent holds the program's group even if the guard dies
                             * before it can report. 0: none (the extension's own clone). */
    /* subprocess's process attributes; a zeroed plan changes none of them. */
    int set_umask;          /* umask(umask) */
    mode_t umask;
    int new_session;        /* setsid() instead of setpgid(0, 0): the same group number */
    int inherit_fds;        /* close_fds=False: inheritable fds pass (O_CLOEXEC ones close) */
    int keep_ignored;       /* restore_signals=False: SIGPIPE/SIGXFSZ keep their disposition */
    int share_files;        /* clone with CLONE_FILES; the child's first step unshares the table,
                             * keeping only the fds below the plan's highest (fd_table.c). Only
                             * where tether_fd_sharing() said the kernel can; ignored with
                             * inherit_fds (every inheritable fd must pass) */
    int set_groups;         /* setgroups(n_groups, groups) */
    const gid_t *groups;
    int n_groups;
    int set_gid;            /* setresgid(gid, gid, gid) */
    gid_t gid;
    int set_uid;            /* setresuid(uid, uid, uid) */
    uid_t uid;
    /* Filled in by tether_clone_exec itself (callers leave them zeroed). */
    int errpipe;            /* write end of the failure pipe (O_CLOEXEC) */
    int reset_handlers;     /* legacy clone: CLONE_CLEAR_SIGHAND was not available */
    unsigned int unshare_from; /* > 0: the table is shared; keep only the fds below this */
    /* With CLONE_NEWUSER the child maps its own euid/egid to themselves ("ID ID 1\n") before
     * anything else. It must be the child, before execve: after an execve in a namespace
     * where it has no uid mapping, a process holds no capabilities there, and can then no
     * longer write its own maps (user_namespaces(7); checked on 6.18 with unshare -U). */
    int map_ids;
    char uid_map[32];
    char gid_map[32];
    /* Set by launch_early.c only (a guard's plan): clone the program before the exec. */
    struct tether_early *early;
    /* The program's plan of an overlapped start: its failure record written twice, one for
     * each reader of the exec pipe (the guard, and the parent, launch_early.c). */
    int report_twice;
};

/* The one raw clone: clone3 (method TETHER_CLONE_CLONE3) or the legacy clone
 * (TETHER_CLONE_LEGACY), always CLONE_PIDFD|CLONE_VM|CLONE_VFORK, with every signal blocked
 * around it. The child runs fn(arg) and exits with its return value; the parent resumes once
 * the child has exec'd or exited. extra_flags (namespaces) and cgroup_fd >= 0
 * (CLONE_INTO_CGROUP) ride on clone3 only: -ENOSYS with the legacy clone, which takes
 * CLONE_FILES alone. Returns the child's
 * pid with *pidfd_out set (O_CLOEXEC), or -errno and nothing was created. */
TETHER_HIDDEN long tether_clone_raw(int method, uint64_t extra_flags, int cgroup_fd,
                                    int (*fn)(void *), void *arg, int *pidfd_out);

/* The same raw clone without CLONE_VFORK, on the given stack (CLONE_VM|CLONE_PIDFD, and
 * CLONE_CLEAR_SIGHAND with clone3): the caller runs on while the child does. Only the guard's
 * clone child calls it, every signal already blocked (clone_early.c). */
TETHER_HIDDEN long tether_clone_raw_beside(int method, int cgroup_fd, int (*fn)(void *),
                                           void *arg, char *stack, size_t stack_size,
                                           int *pidfd_out);

/* Small async-signal-safe helpers of the clone site, shared by its files and the guard. */

/* A raw syscall's result as 0/positive or -errno (glibc's syscall() returns -1 and sets errno,
 * a thread-local shared with the parent thread in a CLONE_VM child; the parent does not read
 * it across the clone). */
static inline long tether_sys_result(long ret)
{
    return ret == -1 ? -(long)errno : ret;
}

/* clone.c: sig back to SIG_DFL; text written into the file name at dirfd (AT_FDCWD: a
 * path). Each 0 or -errno. */
TETHER_HIDDEN long tether_default_handler(int sig);
TETHER_HIDDEN long tether_write_text_at(int dirfd, const char *name, const char *text);

/* clone_parent.c: the decimal digits of v at out (no NUL), their count; our own child
 * reaped through its pidfd (never its number). */
TETHER_HIDDEN int tether_put_uint(char *out, unsigned long long v);
TETHER_HIDDEN void tether_reap_pidfd(int pidfd);

/* clone_parent.c, fault injection for the test suite only: wait until the test writes to (or
 * closes) the fd that the decimal string value names (NULL: none), if it is one of keep
 * (the program's pass_fds, sorted); the guard's hold before its setup and the overlapped
 * start's after the program's clone (tests/test_overlapped_start.py). A read: safe in a
 * clone child. */
TETHER_HIDDEN void tether_hold_for_test(const char *value, const int *keep, int n_keep);

/* clone_early.c: join the cgroup directory dirfd (this thread: "0" into "tasks" on v1, where
 * it needs no kernel-wide lock; "cgroup.procs" on v2, which has no "tasks"): 1 for a v1
 * directory, 0 for a v2 one, or -errno. The guard's own join and the overlapped start's. */
TETHER_HIDDEN int tether_cgroup_join(int dirfd);

/* clone_early.c: the overlapped start's steps in the guard's clone child. */
TETHER_HIDDEN long tether_join_early(struct tether_early *early);
TETHER_HIDDEN long tether_start_early(struct tether_early *early);
TETHER_HIDDEN void tether_abandon_early(struct tether_early *early);

/* Clone one child that runs the plan and execs.
 *
 * extra_flags may carry CLONE_NEWPID/CLONE_NEWUSER (clone3 only; a new PID namespace is fine
 * with CLONE_VM); cgroup_fd >= 0 places the child into that cgroup (clone3 only).
 *
 * Returns 0 and sets *pid_out / *pidfd_out on success (exec done). On a child failure, the
 * child is reaped, its pidfd closed, and *failure says the stage and errno; returns 0 with
 * *pidfd_out = -1. Returns -errno if the clone itself failed (nothing was created), or if the
 * pidfd, made at 0-2 in a caller whose stdio is closed, could not be moved above 2 (the child
 * was killed and reaped). */
TETHER_HIDDEN int tether_clone_exec(struct tether_plan *plan, int method, uint64_t extra_flags,
                                    int cgroup_fd, pid_t *pid_out, int *pidfd_out,
                                    struct tether_failure *failure);

/* The child's side (clone.c): runs the plan (a struct tether_plan *) and execs; returns only
 * through exit_group(127) after writing the failure record. */
TETHER_HIDDEN int tether_child_exec(void *arg);

/* Try one method for real with a child that exits at once (reaped): 0 if it works, else
 * -errno. How the extension learns which method this kernel and sandbox allow. */
TETHER_HIDDEN int tether_probe_method(int method);

#endif /* TETHER_CLONE_H */
