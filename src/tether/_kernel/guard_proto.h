/*
 * guard_proto.h — the wire protocol between the Python parent (tether/_tree/guarded.py) and
 * the guard executable (guard.c). The one copy: the extension exports every constant below
 * (core.GUARD_MSG_FORMAT, core.GUARD_MSG_*, the stages in core.STAGES), and
 * guarded.py takes them from there.
 *
 * Transport: one AF_UNIX SOCK_SEQPACKET socket (a socketpair), the guard's end passed with
 * --control FD. Every message is one struct tether_guard_msg (20 bytes, native byte order,
 * both ends are on one machine); MSG_PROGRAM carries the program's pidfd as SCM_RIGHTS.
 *
 * guard -> parent, in this order:
 *   MSG_PROGRAM  sent by the program itself (clone.c, announce_self), after it has made its
 *                process group and before it can exec: a = its pid in the guard's PID
 *                namespace, with its own pidfd attached. From then on the parent can end the
 *                program's group even if the guard dies before it reports. Absent only if the
 *                program failed before that step (then MSG_FAILED follows). In pidns mode
 *                the parent's end has SO_PASSCRED (launch.c), so the message also carries
 *                the program's pid as the parent sees it (SCM_CREDENTIALS: the kernel
 *                translates the sender's pid into the reader's namespace at the read, also
 *                once the program has been reaped; start_report.c).
 *   MSG_STARTED  the program has exec'd: a = its pid in the guard's namespace (the parent
 *                takes its own view from MSG_PROGRAM), b = the clone method that made the
 *                program (TETHER_CLONE_CLONE3 or TETHER_CLONE_LEGACY, clone.h)
 *     or
 *   MSG_FAILED   a = stage (enum tether_stage, or TETHER_GUARD_STAGE_*), b = errno; the
 *                guard then exits 127 without starting anything (nothing is left behind)
 *   MSG_STOPPED  (--job-control only, any number of times before MSG_EXITED) the program was
 *                stopped: a = the signal that stopped it. The guard leaves continuing it to
 *                the parent, which stops itself so that its shell sees the job stop.
 *   MSG_EXITED   a = the program's wait status (as waitpid reports it); sent once the tree
 *                has ended per the policy, every descendant the guard could reach is reaped
 *                and the cgroup directory (if any) is removed. It also carries the guard's
 *                getrusage(RUSAGE_CHILDREN) at that point (the CPU of every descendant
 *                reaped, by it or by their own parents; the peak RSS of the largest single
 *                one): b = user CPU ms, c = system CPU ms, d = maxrss KiB (each clamped to
 *                INT32_MAX; all -1 if getrusage failed): the parent's Usage where the tree
 *                has no cgroups of its own (source "rusage"). One message, so that the
 *                parent reads the end in one go. The guard exits 0 right after: once its
 *                pidfd is readable, this report is in the socket (the parent's blocking
 *                wait polls that pidfd: one wakeup, and the reap cannot block).
 *                With --usage-cpu/--usage-memory/--usage-pids (limits: the tree's own
 *                cgroups), a struct tether_guard_usage follows in the same packet: the
 *                tree's final usage, read from those directories once the tree has ended
 *                (guard_usage.c), so the parent need not read them after our exit. Absent
 *                (a 20-byte packet) where the cgroup could not be emptied: the parent then
 *                reads the files itself.
 *
 * parent -> guard:
 *   MSG_SIGNAL_TREE  a = signal number: signal every process of the tree (group: the program's
 *                    process group; cgroup: every member of the cgroup; pidns: kill(-1) from
 *                    PID 1). SIGKILL in cgroup mode uses cgroup.kill.
 *   MSG_KILL_TREE    end the tree now (SIGKILL, as on lifeline EOF), then report MSG_EXITED.
 *
 * Lifeline EOF (the parent died or cut it): the guard kills the whole tree with SIGKILL,
 * reaps, removes the cgroup directory, and exits; nothing is sent (nobody is listening).
 */
#ifndef TETHER_GUARD_PROTO_H
#define TETHER_GUARD_PROTO_H

#include <stddef.h>
#include <stdint.h>

struct tether_guard_msg {
    uint32_t type;
    int32_t a;
    int32_t b;
    int32_t c;
    int32_t d;
};

/* The same layout as a Python struct format (native byte order, no padding). */
#define TETHER_GUARD_MSG_FORMAT "=Iiiii"

/* The variable that tells a program its lifeline: "N:<st_dev>:<st_ino>" (the fd number and
 * the pipe's identity, which attach() checks). Python's is core.LIFELINE_ENV. */
#define TETHER_LIFELINE_ENV "TETHER_LIFELINE_FD"
/* Its entry, for snprintf: the child's fd number, st_dev, st_ino (int, 2 unsigned long long),
 * in at most TETHER_LIFELINE_ENTRY_MAX bytes with its NUL. */
#define TETHER_LIFELINE_FORMAT TETHER_LIFELINE_ENV "=%d:%llu:%llu"
#define TETHER_LIFELINE_ENTRY_MAX 96
_Static_assert(sizeof(struct tether_guard_msg) == 20 &&
                   offsetof(struct tether_guard_msg, a) == 4 &&
                   offsetof(struct tether_guard_msg, b) == 8 &&
                   offsetof(struct tether_guard_msg, c) == 12 &&
                   offsetof(struct tether_guard_msg, d) == 16,
               "struct tether_guard_msg must match TETHER_GUARD_MSG_FORMAT");

/* MSG_EXITED's tail (see above): the tree's final usage; -1 where that figure is not
 * counted there (no such directory, or this kernel lacks the file). CPU time in ns, memory in
 * bytes, whatever the directory's cgroup version. */
struct tether_guard_usage {
    int64_t user_ns;
    int64_t system_ns;
    int64_t memory_peak; /* v1 memory.max_usage_in_bytes, v2 memory.peak */
    int64_t oom_kills;   /* v1 memory.oom_control, v2 memory.events: oom_kill */
    int64_t pids_peak;   /* pids.peak */
};

#define TETHER_GUARD_USAGE_FORMAT "=qqqqq"
_Static_assert(sizeof(struct tether_guard_usage) == 40,
               "struct tether_guard_usage must match TETHER_GUARD_USAGE_FORMAT");

enum tether_guard_msg_type {
    TETHER_MSG_STARTED = 1,
    TETHER_MSG_FAILED = 2,
    TETHER_MSG_EXITED = 3,
    TETHER_MSG_PROGRAM = 4,
    TETHER_MSG_STOPPED = 5,
    /* 6 was MSG_USAGE, now part of MSG_EXITED */
    TETHER_MSG_SIGNAL_TREE = 10,
    TETHER_MSG_KILL_TREE = 11,
};

/* Guard-side setup stages for MSG_FAILED, above the child stages of clone.h:
 * X(NAME, number, what the guard was doing), exported with them in core.STAGES. */
#define TETHER_GUARD_STAGES(X)                                                   \
    X(SETUP, 100, "guard setup")           /* signalfd, subreaper, pipes, usage */ \
    X(CLONE, 101, "clone in the guard")    /* the clone itself failed (errno) */   \
    X(USERNS, 102, "user namespace setup") /* not running as the --userns ids */   \
    X(CGROUP, 103, "cgroup setup")         /* opening cgroup files */

/* The signals the guard forwards to the program (X(SIG) each), and those it holds blocked for
 * good: the forwarded ones and SIGCHLD (read from its signalfd), and the job-control stops
 * (never read: a stopped guard could not honour lifeline EOF). guard_start.c sets them up;
 * a guard that adopts a program started before its exec has them held from its clone child
 * on (TETHER_GUARD_HELD_MASK, launch_early.c). */
#define TETHER_GUARD_FORWARDED(X) \
    X(SIGTERM) X(SIGINT) X(SIGHUP) X(SIGQUIT) X(SIGUSR1) X(SIGUSR2) X(SIGWINCH) X(SIGCONT)
#define TETHER_GUARD_SIGBIT(sig) | (1ULL << ((sig) - 1))
#define TETHER_GUARD_HELD_MASK                                                              \
    (0ULL TETHER_GUARD_FORWARDED(TETHER_GUARD_SIGBIT) TETHER_GUARD_SIGBIT(SIGCHLD)          \
     TETHER_GUARD_SIGBIT(SIGTSTP) TETHER_GUARD_SIGBIT(SIGTTIN) TETHER_GUARD_SIGBIT(SIGTTOU))

enum tether_guard_stage {
#define TETHER_GUARD_STAGE_ENUM(name, number, what) TETHER_GUARD_STAGE_##name = number,
    TETHER_GUARD_STAGES(TETHER_GUARD_STAGE_ENUM)
#undef TETHER_GUARD_STAGE_ENUM
};

#endif /* TETHER_GUARD_PROTO_H */
