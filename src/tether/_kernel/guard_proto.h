/*
 * _guard_proto.h — the wire protocol between the Python parent (tether/_guard.py) and the
 * guard executable (guard.c). Keep in sync with _guard.py (_MSG_FMT and the constants).
 *
 * Transport: one AF_UNIX SOCK_SEQPACKET socket (a socketpair), the guard's end passed with
 * --control FD. Every message is one struct tether_guard_msg (16 bytes, native byte order,
 * both ends are on one machine); MSG_STARTED carries the program's pidfd as SCM_RIGHTS.
 *
 * guard -> parent, in this order:
 *   MSG_STARTED  a = program pid (in the guard's PID namespace; the parent derives its own
 *                view of the pid from the pidfd), with the program's pidfd attached
 *     or
 *   MSG_FAILED   a = stage (enum tether_stage, or GUARD_STAGE_*), b = errno; the guard then
 *                exits 127 without starting anything (nothing is left behind)
 *   MSG_EXITED   a = the program's wait status (as waitpid reports it), b = GUARD_TREE_*
 *                flags; sent once the tree has ended per the policy, every descendant the
 *                guard could reach is reaped and the cgroup directory (if any) is removed.
 *                The guard exits 0 right after.
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

#include <stdint.h>

struct tether_guard_msg {
    uint32_t type;
    int32_t a;
    int32_t b;
    int32_t c;
};

enum tether_guard_msg_type {
    TETHER_MSG_STARTED = 1,
    TETHER_MSG_FAILED = 2,
    TETHER_MSG_EXITED = 3,
    TETHER_MSG_SIGNAL_TREE = 10,
    TETHER_MSG_KILL_TREE = 11,
};

/* Guard-side setup stages for MSG_FAILED (above the child stages of _clone.h). */
enum tether_guard_stage {
    TETHER_GUARD_STAGE_SETUP = 100,    /* signalfd, subreaper, pipes, socket */
    TETHER_GUARD_STAGE_CLONE = 101,    /* the clone itself failed (errno) */
    TETHER_GUARD_STAGE_USERNS = 102,   /* writing uid_map/gid_map/setgroups */
    TETHER_GUARD_STAGE_CGROUP = 103,   /* opening cgroup files */
};

/* MSG_EXITED b flags */
#define TETHER_TREE_KILLED 0x1   /* the rest of the tree was killed after the program exited */
#define TETHER_TREE_WAITED 0x2   /* the guard waited for every descendant (--wait-tree) */
#define TETHER_TREE_FORCED 0x4   /* the parent asked for MSG_KILL_TREE */

#endif /* TETHER_GUARD_PROTO_H */
