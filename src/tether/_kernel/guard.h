/*
 * guard.h — what the parts of the guard executable share. The guard is one single-threaded
 * process, and its state is one struct, g:
 *   guard.c         the poll loop, its event handlers and the protocol (main);
 *   guard_start.c   before the loop: parse the command line, set up;
 *   guard_program.c start the program (its environment, the clone, MSG_STARTED);
 *   guard_tree.c    the tree: signal it, kill it, see the program exit, reap, decide the end;
 *   guard_cgroup.c  the cgroup files (cgroup mode), and the directory's removal;
 *   guard_usage.c   the tree's final usage from its own cgroups (limits), for MSG_EXITED.
 */
#ifndef TETHER_GUARD_H
#define TETHER_GUARD_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clone.h"
#include "guard_proto.h"

#ifndef P_PIDFD
#define P_PIDFD 3 /* since 5.4 */
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* since 5.3 */
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424 /* since 5.1 */
#endif
#ifndef PIDFD_SIGNAL_PROCESS_GROUP
#define PIDFD_SIGNAL_PROCESS_GROUP 4 /* since 6.9 */
#endif
#ifndef PR_SET_CHILD_SUBREAPER
#define PR_SET_CHILD_SUBREAPER 36 /* since 3.4 */
#endif

/* How long, after the kill, the guard keeps waiting for dead members that are not its own to
 * be reaped by their parents (group mode), or for children that left the cgroup (cgroup mode).
 * Only those pathological trees ever wait this long: a normal tree ends the moment the kernel
 * says so (group-empty test, "populated 0", ECHILD). */
#define SETTLE_MS 1000
/* Removing the cgroup directory: see cg_remove for the policy. */
#define CG_REMOVE_TIMEOUT_MS 5000
#define CG_REMOVE_WAIT_MS 2
/* After lifeline EOF ended the tree: how long the control socket may lag behind in hanging
 * up, the dying parent's kernel closing its fds one after the other (see parent_gone). */
#define PARENT_HUP_GRACE_MS 20
/* Nested cgroups the program may have made below ours (only root can); deeper is ignored. */
#define CGROUP_MAX_DEPTH 8

/* Per-tree cgroups the guard moves itself into (one per v1 hierarchy, and a v2 one). */
#define GUARD_MAX_JOIN 8

enum contain { CONTAIN_GROUP, CONTAIN_CGROUP, CONTAIN_PIDNS };

/* Children left, as a reap pass sees them. */
enum reaped { REAP_SOME_ALIVE, REAP_NONE_LEFT, REAP_PROGRAM_WAITS };

struct guard {
    /* options */
    int control;       /* our end of the SEQPACKET socketpair; -1 once the parent hung up */
    int lifeline;      /* our lifeline read end; -1 once it said EOF */
    int start_fd;      /* --start-fd: a pipe's write end the parent sleeps on until we close
                        * it, once the program has started (start_reported); -1: none */
    enum contain contain;
    int wait_tree;
    int foreground;
    int job_control;   /* --job-control: report the program's stops, leave SIGCONT to the parent */
    int cgroup_fd;     /* the tree's cgroup directory (cgroup mode) */
    const char *cgroup_path;
    int *keep;         /* the user's pass_fds, sorted, unique */
    int n_keep;
    const char *userns; /* --userns UID:GID, or NULL */
    int clone_method;   /* --clone: TETHER_CLONE_*; TETHER_CLONE_UNKNOWN: clone3, then legacy */
    int join_fds[GUARD_MAX_JOIN]; /* --join-cgroup: cgroup dirs (v1 per controller) we join */
    int join_v1[GUARD_MAX_JOIN]; /* 1: that one is a v1 directory (joined through "tasks") */
    int n_join;
    int keep_cgroup;   /* --keep-cgroup: leave the emptied directory to the parent (limits) */
    int usage_cpu_fd;  /* --usage-cpu/-memory/-pids: the tree's cgroup directories (among the */
    int usage_memory_fd; /* ones above) whose final counters MSG_EXITED carries; -1: none */
    int usage_pids_fd;
    int no_program_lifeline; /* --no-program-lifeline: the program gets no lifeline fd (the
                              * drop-in's Popen: the tree is held by us, not by a lifeline) */
    const char *adopt;  /* --adopt PID:PIDFD:METHOD: the program was cloned by our clone child
                         * before our exec (clone_early.c); NULL: we start it ourselves */
    int adopt_method;   /* the clone method that made it */
    int adopt_v1;       /* bit i: --join-cgroup i was a v1 directory (joined already) */
    int exec_fd;        /* --exec-fd: the program's exec pipe (a failure record, or EOF) */
    int program_lifeline_fd; /* --program-lifeline-fd: the write end of the program's lifeline
                              * (adopted; -1: none) */
    /* runtime */
    int sigfd;
    int events_fd;     /* cgroup.events (cgroup mode) */
    int cgkill_fd;     /* cgroup.kill, or -1 before 5.14 */
    int populated;     /* from cgroup.events */
    int frozen;
    pid_t program_pid; /* in our PID namespace */
    int program_pidfd;
    int program_exited;
    int program_reaped;
    int program_status; /* wait status, as waitpid reports it */
    int group_fallback; /* PIDFD_SIGNAL_PROCESS_GROUP said EINVAL: a kernel before 6.9 */
    int killing;        /* the tree has been sent SIGKILL */
    int lifeline_ended; /* lifeline EOF started the kill (not a MSG_KILL_TREE before it) */
    int64_t settle_deadline;
    int fg_given;       /* the program's group took the terminal */
    pid_t fg_restore;   /* the group to give it back to */
    int children;       /* enum reaped, from the last pass */
};

extern struct guard g;

/* Small helpers (no stdio). */

static inline int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int sys_pidfd_send_signal(int pidfd, int sig, unsigned int flags)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, flags);
}

static inline int sys_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* guard.c */
void send_msg(uint32_t type, int32_t a, int32_t b, int pass_fd);

/* guard_start.c */
int parse_args(int argc, char **argv);
void setup_guard(void);
int fmt_u64(char *out, unsigned long long v);
int is_kept(int fd);
int fd_is_open(int fd);
__attribute__((noreturn)) void fail(int stage, int err);

/* guard_program.c */
void start_program(char **path_argv);
void adopt_program(void);
void start_reported(void);

/* guard_tree.c */
int ends_program(int sig);
void signal_tree(int sig);
void kill_tree(void);
void program_check(void);
void job_check(void);
int reap_children(void);
int tree_done(void);
__attribute__((noreturn)) void die_with_tree(void);

/* guard_cgroup.c */
void cg_read_events(void);
void cg_signal_frozen(int sig);
void cg_kill(void);
int cg_remove(int parent_gone);
int parent_gone(void);
void cg_remove_joined_v1(void);

/* guard_usage.c */
void open_tree_usage(void);
int read_tree_usage(struct tether_guard_usage *u);

#endif /* TETHER_GUARD_H */
