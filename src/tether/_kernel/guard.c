/*
 * guard.c — the tether guard: a lifeline for programs that don't know about lifelines.
 *
 *   _guard --control FD [--keep FD[,FD...]] [--contain group|cgroup|pidns]
 *          [--cgroup-fd FD --cgroup-path PATH] [--userns UID:GID] [--wait-tree] [--foreground]
 *          -- PATH ARGV0 [ARG...]
 *
 * The Python parent (tether/_guard.py) starts the guard through tether's one spawn path: its
 * lifeline read end announced in TETHER_LIFELINE_FD, cwd and fds 0/1/2 in place, the fds named
 * above kept at their numbers and every other fd closed. The guard starts PATH (already
 * resolved by the parent) as *the program*, through the same clone site (_clone.h), as the
 * leader of a new process group, and from then on it is one poll loop:
 *
 *   lifeline EOF (the parent died, any way)  -> SIGKILL the whole tree, reap, exit;
 *   the program exits                        -> end the rest of the tree (or, --wait-tree, wait
 *                                               for it), reap, report MSG_EXITED, exit 0;
 *   SIGTERM/SIGINT/SIGHUP/... to the guard   -> forwarded to the program (its pidfd);
 *   MSG_SIGNAL_TREE / MSG_KILL_TREE          -> signal / end the whole tree.
 *
 * Wire protocol: _guard_proto.h. Containment (--contain):
 *   group   the program's process group, signalled through the leader's pidfd
 *           (PIDFD_SIGNAL_PROCESS_GROUP, 6.9+). A process that leaves the group (setsid daemons,
 *           job-control shells) is out of reach: documented, and never waited for.
 *   cgroup  a cgroup v2 directory made by the parent: CLONE_INTO_CGROUP (5.7), cgroup.kill
 *           (5.14), cgroup.events "populated" (4.5), cgroup.freeze (5.2). Catches everything.
 *   pidns   the guard is PID 1 of a new PID namespace (the parent cloned it so): kill(-1) ends
 *           every other process of the namespace, and the kernel kills them all if we die.
 *
 * The guard is single-threaded and blocks the signals it handles (read with a signalfd), so
 * PR_SET_PDEATHSIG on the program is safe here: it fires when this one thread exits, which is
 * when the guard exits. It is a child subreaper, so orphans of the tree come back to it.
 * No stdio, no malloc beyond two small arrays made before the clone, small buffers only: the
 * guard runs once per tree and should cost next to nothing.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* _clone.h also holds the extension's clone-method probe, which the guard does not use. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "clone.h"
#pragma GCC diagnostic pop
#include "guard_proto.h"

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424 /* since 5.1 */
#endif
#ifndef PIDFD_SIGNAL_PROCESS_GROUP
#define PIDFD_SIGNAL_PROCESS_GROUP 4 /* since 6.9 */
#endif
#ifndef PR_SET_CHILD_SUBREAPER
#define PR_SET_CHILD_SUBREAPER 36 /* since 3.4 */
#endif

#define LIFELINE_ENV "TETHER_LIFELINE_FD"

/* How long, after the kill, the guard keeps waiting for dead members that are not its own to
 * be reaped by their parents (group mode), or for children that left the cgroup (cgroup mode).
 * Only those pathological trees ever wait this long: a normal tree ends the moment the kernel
 * says so (group-empty test, "populated 0", ECHILD). */
#define SETTLE_MS 1000
/* rmdir of a cgroup whose last member has just exited can still see EBUSY briefly. */
#define RMDIR_TRIES 100
#define RMDIR_WAIT_MS 2
/* Nested cgroups the program may have made below ours (only root can); deeper is ignored. */
#define CGROUP_MAX_DEPTH 8

enum contain { CONTAIN_GROUP, CONTAIN_CGROUP, CONTAIN_PIDNS };

/* Children left, as a reap pass sees them. */
enum reaped { REAP_SOME_ALIVE, REAP_NONE_LEFT, REAP_PROGRAM_WAITS };

/* The signals a user sends to "the command" and that we pass on to the program. */
static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH,
                                SIGCONT};

static struct guard {
    /* options */
    int control;       /* our end of the SEQPACKET socketpair; -1 once the parent hung up */
    int lifeline;      /* our lifeline read end; -1 once it said EOF */
    enum contain contain;
    int wait_tree;
    int foreground;
    int cgroup_fd;     /* the tree's cgroup directory (cgroup mode) */
    const char *cgroup_path;
    int *keep;         /* the user's pass_fds, sorted, unique */
    int n_keep;
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
    int64_t settle_deadline;
    int tree_flags;     /* TETHER_TREE_* for MSG_EXITED */
    int fg_given;       /* the program's group took the terminal */
    pid_t fg_restore;   /* the group to give it back to */
    int children;       /* enum reaped, from the last pass */
} g;

/* ------------------------------------------------------------------------------------------ */
/* Small helpers (no stdio).                                                                    */
/* ------------------------------------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void say(const char *a, const char *b)
{
    struct iovec iov[4] = {
        {(void *)"tether guard: ", 14},
        {(void *)a, strlen(a)},
        {(void *)b, b ? strlen(b) : 0},
        {(void *)"\n", 1},
    };
    (void)!writev(2, iov, 4);
}

/* A non-negative decimal int that fills the whole string; -1 if it is not one. */
static int parse_uint(const char *s, const char **end_out)
{
    long v = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (*p - '0');
        if (v > INT_MAX)
            return -1;
        p++;
    }
    if (p == s)
        return -1;
    if (end_out != NULL)
        *end_out = p;
    else if (*p != '\0')
        return -1;
    return (int)v;
}

static int fmt_uint(char *out, unsigned int v)
{
    char digits[12];
    int n = 0, k = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        out[k++] = digits[--n];
    out[k] = '\0';
    return k;
}

static int sys_pidfd_send_signal(int pidfd, int sig, unsigned int flags)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, flags);
}

static int sys_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Protocol.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void send_msg(uint32_t type, int32_t a, int32_t b, int pass_fd)
{
    struct tether_guard_msg msg;
    struct iovec iov;
    struct msghdr mh;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } cm;

    if (g.control < 0)
        return;
    memset(&msg, 0, sizeof msg);
    msg.type = type;
    msg.a = a;
    msg.b = b;
    iov.iov_base = &msg;
    iov.iov_len = sizeof msg;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (pass_fd >= 0) {
        struct cmsghdr *c;
        memset(&cm, 0, sizeof cm);
        mh.msg_control = cm.buf;
        mh.msg_controllen = sizeof cm.buf;
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    /* MSG_NOSIGNAL: a parent that has gone away must not SIGPIPE us mid-cleanup. A failed send
     * needs no handling: the lifeline, not the socket, decides whether the parent lives. */
    while (sendmsg(g.control, &mh, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
}

/* ------------------------------------------------------------------------------------------ */
/* cgroup files (cgroup mode). Reached through the directory fd, never re-resolved by path,    */
/* except for the final rmdir, which needs the path.                                            */
/* ------------------------------------------------------------------------------------------ */

static int line_value(const char *text, const char *key)
{
    size_t klen = strlen(key);
    const char *p = text;
    while (*p != '\0') {
        if (strncmp(p, key, klen) == 0 && p[klen] == ' ')
            return p[klen + 1] == '1';
        p = strchr(p, '\n');
        if (p == NULL)
            break;
        p++;
    }
    return -1;
}

/* Re-read cgroup.events: refreshes populated/frozen and re-arms its POLLPRI notification. */
static void cg_read_events(void)
{
    char buf[160];
    ssize_t n;
    int v;
    do
        n = pread(g.events_fd, buf, sizeof buf - 1, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return;
    buf[n] = '\0';
    v = line_value(buf, "populated");
    if (v >= 0)
        g.populated = v;
    v = line_value(buf, "frozen");
    if (v >= 0)
        g.frozen = v;
}

static int write_text_at(int dirfd, const char *name, const char *text)
{
    int fd = openat(dirfd, name, O_WRONLY | O_CLOEXEC);
    ssize_t n;
    if (fd < 0)
        return -errno;
    do
        n = write(fd, text, strlen(text));
    while (n < 0 && errno == EINTR);
    n = n < 0 ? -errno : 0;
    close(fd);
    return (int)n;
}

struct linux_dirent64 {
    uint64_t ino;
    int64_t off;
    unsigned short reclen;
    unsigned char type;
    char name[];
};

/* Call visit(listing_fd, name, depth, arg) for each sub-directory of dirfd (nested cgroups
 * the program made; only root can). Returns how many visits returned non-zero. */
static int cg_each_subdir(int dirfd, int (*visit)(int, const char *, int, int), int depth,
                          int arg)
{
    char buf[512];
    ssize_t n;
    int hits = 0;
    /* A fresh open of ".": its own directory offset, whatever the caller's fd has read. */
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || depth > CGROUP_MAX_DEPTH) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    for (;;) {
        ssize_t off = 0;
        do
            n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        while (n < 0 && errno == EINTR);
        if (n <= 0)
            break;
        while (off < n) {
            const struct linux_dirent64 *d = (const void *)(buf + off);
            if (d->type == DT_DIR && strcmp(d->name, ".") != 0 && strcmp(d->name, "..") != 0)
                hits += visit(fd, d->name, depth, arg) != 0;
            off += d->reclen;
        }
    }
    close(fd);
    return hits;
}

static void signal_one_pid(pid_t pid, int sig)
{
    /* Race-free only because the cgroup is frozen: a frozen task cannot exit by itself, so
     * the number read from cgroup.procs still names that task when we open it. */
    int pidfd = sys_pidfd_open(pid);
    if (pidfd < 0)
        return;
    (void)sys_pidfd_send_signal(pidfd, sig, 0);
    close(pidfd);
}

static int signal_nested(int dirfd, const char *name, int depth, int sig);

/* Signal every pid in dirfd's cgroup.procs and, depth first, in every nested cgroup below it
 * (cgroup.freeze and cgroup.kill act on the whole subtree; so must we). */
static void cg_signal_members(int dirfd, int depth, int sig)
{
    char buf[512];
    ssize_t n;
    long pid = -1;
    int fd = openat(dirfd, "cgroup.procs", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        for (;;) {
            ssize_t i;
            do
                n = read(fd, buf, sizeof buf);
            while (n < 0 && errno == EINTR);
            if (n <= 0)
                break;
            for (i = 0; i < n; i++) { /* one pid per line; a number may span two reads */
                if (buf[i] >= '0' && buf[i] <= '9') {
                    pid = (pid < 0 ? 0 : pid * 10) + (buf[i] - '0');
                } else if (pid >= 0) {
                    signal_one_pid((pid_t)pid, sig);
                    pid = -1;
                }
            }
        }
        if (pid >= 0)
            signal_one_pid((pid_t)pid, sig);
        close(fd);
    }
    (void)cg_each_subdir(dirfd, signal_nested, depth + 1, sig);
}

static int signal_nested(int dirfd, const char *name, int depth, int sig)
{
    int sub = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sub >= 0) {
        cg_signal_members(sub, depth, sig);
        close(sub);
    }
    return 0;
}

/* Signal every member of the cgroup: freeze, list, signal through fresh pidfds, thaw. */
static void cg_signal_frozen(int sig)
{
    struct pollfd pfd[2];
    if (write_text_at(g.cgroup_fd, "cgroup.freeze", "1") < 0)
        return;
    for (;;) {
        int n = 1;
        cg_read_events();
        if (g.frozen == 1 || g.populated == 0)
            break;
        pfd[0].fd = g.events_fd;
        pfd[0].events = POLLPRI;
        if (g.lifeline >= 0 && sig != SIGKILL) {
            /* Do not sit here while the parent dies: the main loop kills the tree instead
             * (unless this already is that kill: cgroup.kill missing, before 5.14). */
            pfd[1].fd = g.lifeline;
            pfd[1].events = POLLIN;
            n = 2;
        }
        /* No deadline: only a task in uninterruptible sleep delays the freeze, and it would
         * delay its own death just as much. */
        if (poll(pfd, (nfds_t)n, -1) < 0 && errno != EINTR)
            goto thaw; /* never signal by number unfrozen */
        if (n == 2 && pfd[1].revents != 0)
            goto thaw;
    }
    cg_signal_members(g.cgroup_fd, 0, sig);
thaw:
    (void)write_text_at(g.cgroup_fd, "cgroup.freeze", "0");
}

static void cg_kill(void)
{
    ssize_t n = -1;
    if (g.cgkill_fd >= 0) {
        /* cgroup.kill (5.14) SIGKILLs the whole subtree and keeps killing what forks
         * meanwhile, setsid'd daemons included. */
        do
            n = pwrite(g.cgkill_fd, "1", 1, 0);
        while (n < 0 && errno == EINTR);
    }
    if (n < 0)
        cg_signal_frozen(SIGKILL);
}

/* Remove a nested cgroup (the program made it) after its own nested ones; 1 if removed. */
static int remove_nested(int dirfd, const char *name, int depth, int unused)
{
    int sub = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    (void)unused;
    if (sub >= 0) {
        /* Again until a pass removes nothing: removing entries while listing them may make
         * the listing skip some. */
        while (cg_each_subdir(sub, remove_nested, depth + 1, 0) > 0)
            ;
        close(sub);
    }
    return unlinkat(dirfd, name, AT_REMOVEDIR) == 0;
}

/* 0 if the tree's directory is gone, else -errno. */
static int cg_remove(void)
{
    int tries;
    if (g.contain != CONTAIN_CGROUP || g.cgroup_path == NULL)
        return 0;
    if (g.cgroup_fd >= 0)
        while (cg_each_subdir(g.cgroup_fd, remove_nested, 1, 0) > 0)
            ;
    for (tries = 0; tries < RMDIR_TRIES; tries++) {
        if (rmdir(g.cgroup_path) == 0 || errno == ENOENT)
            return 0;
        if (errno != EBUSY && errno != EINTR)
            return -errno;
        /* EBUSY: the last member is still on its way out (the directory becomes removable
         * once every member has exited, zombies included). Its "populated 0" event wakes us
         * early; the timeout bounds the wait either way. */
        if (g.events_fd >= 0) {
            struct pollfd pfd = {g.events_fd, POLLPRI, 0};
            cg_read_events();
            (void)poll(&pfd, 1, RMDIR_WAIT_MS);
        } else {
            struct timespec ts = {0, RMDIR_WAIT_MS * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    return -EBUSY;
}

/* ------------------------------------------------------------------------------------------ */
/* The tree.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Signal the program's process group; 0 if someone got it, else -errno (ESRCH: empty). */
static int group_signal(int sig)
{
    if (!g.group_fallback) {
        /* The leader's pidfd is a race-free handle on its group: the group is the one whose
         * pgid *is* that struct pid, and it works even once the leader is reaped, as long as
         * a member lives (6.9+). */
        if (sys_pidfd_send_signal(g.program_pidfd, sig, PIDFD_SIGNAL_PROCESS_GROUP) == 0)
            return 0;
        if (errno != EINVAL)
            return -errno;
        g.group_fallback = 1;
    }
    /* Kernels before 6.9: kill(-pgid). Race-free while the program (the group leader) is our
     * own *unreaped* child: its number, which is the pgid, cannot be handed out again before
     * we reap it, so this is why the program is reaped only after the group kill. After the
     * reap the number is still held by every live member (a struct pid is not freed while
     * any task uses it as its pgid), so kill(-pgid) can only go astray once the group is
     * empty and the number recycled as another group's pgid in between — a window we accept
     * only on these old kernels, and only in --wait-tree and MSG_SIGNAL_TREE after the
     * program has exited. */
    if (kill(-g.program_pid, sig) == 0)
        return 0;
    return -errno;
}

/* Group mode, program reaped: is the group gone? ESRCH from the group signal 0 is the
 * kernel's word for it (zombie members still count: they keep the pgid). */
static int group_empty(void)
{
    return group_signal(0) == -ESRCH;
}

static void signal_tree(int sig)
{
    switch (g.contain) {
    case CONTAIN_GROUP:
        (void)group_signal(sig);
        break;
    case CONTAIN_CGROUP:
        if (sig == SIGKILL)
            cg_kill();
        else
            cg_signal_frozen(sig);
        break;
    case CONTAIN_PIDNS:
        /* We are PID 1 of the namespace: kill(-1) reaches every process in it but us. */
        (void)kill(-1, sig);
        break;
    }
}

/* SIGKILL the whole tree, once. */
static void kill_tree(void)
{
    if (g.killing)
        return;
    g.killing = 1;
    g.settle_deadline = now_ms() + SETTLE_MS;
    signal_tree(SIGKILL);
    /* The program itself, also when it left its group (setsid) or the cgroup. */
    if (!g.program_reaped)
        (void)sys_pidfd_send_signal(g.program_pidfd, SIGKILL, 0);
}

/* Give the terminal back once the program has exited (--foreground).
 *
 * tcsetpgrp from a background group would raise SIGTTOU; the guard keeps SIGTTOU blocked for
 * its whole life (see main), which the tty layer treats as ignored, so the call just works.
 * Limitation: in pidns mode a foreground group outside the namespace has no number here
 * (tcgetpgrp said 0 at startup) and TIOCSPGRP can only be given a number, so the guard can
 * only hand the terminal to its own group, or leave it; the parent then takes it back. */
static void foreground_restore(void)
{
    pid_t back;
    if (!g.fg_given)
        return;
    g.fg_given = 0;
    /* Only undo our own change: if someone else has taken the terminal since, leave it. The
     * program's pgid number still names its group here: the terminal holds a reference on
     * the group's struct pid. */
    if (tcgetpgrp(0) != g.program_pid)
        return;
    back = g.fg_restore;
    if (back > 0 && tcsetpgrp(0, back) == 0)
        return;
    /* That group is gone (or has no number here): our own, if it has one. */
    if (getpgrp() > 0 && getpgrp() != back)
        (void)tcsetpgrp(0, getpgrp());
}

static int wait_status(const siginfo_t *si)
{
    switch (si->si_code) {
    case CLD_EXITED:
        return (si->si_status & 0xff) << 8;
    case CLD_DUMPED:
        return (si->si_status & 0x7f) | 0x80;
    default: /* CLD_KILLED */
        return si->si_status & 0x7f;
    }
}

static void program_exited(const siginfo_t *si)
{
    siginfo_t info;
    g.program_exited = 1;
    g.program_status = wait_status(si);
    foreground_restore();
    if (!g.killing) {
        if (g.wait_tree) {
            g.tree_flags |= TETHER_TREE_WAITED;
        } else {
            g.tree_flags |= TETHER_TREE_KILLED;
            /* Before the reap: the zombie leader keeps the group's number ours. */
            kill_tree();
        }
    }
    while (waitid((idtype_t)P_PIDFD, (id_t)g.program_pidfd, &info, WEXITED) != 0 &&
           errno == EINTR)
        ;
    g.program_reaped = 1;
}

/* Has the program exited? Status read with WNOWAIT: the zombie stays, holding the pgid. */
static void program_check(void)
{
    siginfo_t si;
    if (g.program_exited)
        return;
    memset(&si, 0, sizeof si);
    while (waitid((idtype_t)P_PIDFD, (id_t)g.program_pidfd, &si,
                  WEXITED | WNOHANG | WNOWAIT) != 0) {
        if (errno != EINTR)
            return;
    }
    if (si.si_pid != 0)
        program_exited(&si);
}

/* Reap every child that has exited. Orphans of the tree come back to us (subreaper, or PID 1
 * in pidns mode). While the program is unreaped it is only looked at, never reaped here. */
static int reap_children(void)
{
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (!g.program_reaped) {
            if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0) {
                if (errno == EINTR)
                    continue;
                return errno == ECHILD ? REAP_NONE_LEFT : REAP_SOME_ALIVE;
            }
            if (si.si_pid == 0)
                return REAP_SOME_ALIVE;
            if (si.si_pid == g.program_pid)
                return REAP_PROGRAM_WAITS;
            /* An exited, unreaped child of ours: its number cannot be reused before we reap
             * it, so naming it by number is exact here. */
            while (waitid(P_PID, (id_t)si.si_pid, &si, WEXITED) != 0 && errno == EINTR)
                ;
        } else {
            if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG) != 0) {
                if (errno == EINTR)
                    continue;
                return errno == ECHILD ? REAP_NONE_LEFT : REAP_SOME_ALIVE;
            }
            if (si.si_pid == 0)
                return REAP_SOME_ALIVE;
        }
    }
}

/* Has the tree ended, per the policy and the mode? */
static int tree_done(int64_t now)
{
    if (!g.program_reaped)
        return 0;
    if (!g.killing) /* --wait-tree: every descendant, setsid'd ones included, has exited */
        return g.children == REAP_NONE_LEFT;
    switch (g.contain) {
    case CONTAIN_GROUP:
        /* Not ECHILD: setsid'd daemons that left the group are our children too (we are a
         * subreaper) and live on; group mode cannot end them and must not wait for them. Done
         * when the group is empty — or we have no child at all (what is left is not ours to
         * reap), or, after SETTLE_MS, when dead members are held unreaped by a parent
         * outside the group. */
        return group_empty() || g.children == REAP_NONE_LEFT || now >= g.settle_deadline;
    case CONTAIN_CGROUP:
        /* "populated 0" comes when the last member has *exited*; its children may still be on
         * their way to us (exit_notify runs after cgroup_exit), so also reap until ECHILD.
         * The deadline only matters for a child moved out of the cgroup. */
        if (g.populated != 0)
            return 0;
        return g.children == REAP_NONE_LEFT || now >= g.settle_deadline;
    case CONTAIN_PIDNS:
        /* Nothing escapes a PID namespace: every orphan comes to PID 1. */
        return g.children == REAP_NONE_LEFT;
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Event handlers.                                                                              */
/* ------------------------------------------------------------------------------------------ */

static void on_signals(void)
{
    struct signalfd_siginfo ssi;
    for (;;) {
        ssize_t n = read(g.sigfd, &ssi, sizeof ssi);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != (ssize_t)sizeof ssi)
            return;
        /* SIGCHLD needs nothing here: every loop turn reaps. */
        if (ssi.ssi_signo != SIGCHLD && !g.program_reaped)
            (void)sys_pidfd_send_signal(g.program_pidfd, (int)ssi.ssi_signo, 0);
    }
}

static void on_control(void)
{
    struct tether_guard_msg msg;
    for (;;) {
        ssize_t n = recv(g.control, &msg, sizeof msg, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            /* The parent hung up: stop reading. The lifeline alone decides life. */
            close(g.control);
            g.control = -1;
            return;
        }
        if (n != (ssize_t)sizeof msg)
            continue;
        if (msg.type == TETHER_MSG_SIGNAL_TREE && msg.a >= 0 && msg.a < 65) {
            signal_tree(msg.a);
        } else if (msg.type == TETHER_MSG_KILL_TREE) {
            g.tree_flags |= TETHER_TREE_FORCED;
            kill_tree();
        }
    }
}

/* The lifeline: EOF (or an error) means the parent is gone. */
static void on_lifeline(short revents)
{
    char buf[16];
    ssize_t n = 1;
    if (!(revents & (POLLHUP | POLLERR))) {
        do
            n = read(g.lifeline, buf, sizeof buf);
        while (n < 0 && errno == EINTR);
        if (n > 0 || (n < 0 && errno == EAGAIN))
            return; /* nobody writes into a lifeline; not EOF either way */
    }
    close(g.lifeline);
    g.lifeline = -1;
    kill_tree();
}

/* The loop itself failed (poll refused valid fds: cannot happen short of a kernel out of
 * memory): end the tree as on lifeline EOF, without waiting for the finer signs, and exit
 * non-zero. */
__attribute__((noreturn)) static void die_with_tree(void)
{
    siginfo_t si;
    kill_tree();
    if (!g.program_reaped) {
        /* SIGKILLed just now: this wait is short. */
        while (waitid((idtype_t)P_PIDFD, (id_t)g.program_pidfd, &si, WEXITED) != 0 &&
               errno == EINTR)
            ;
        g.program_reaped = 1;
    }
    (void)reap_children();
    (void)cg_remove(); /* its EBUSY retries wait for the last member to exit */
    _exit(1);
}

/* ------------------------------------------------------------------------------------------ */
/* Startup.                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* A setup failure before the program exists: nothing is left behind, say why, exit 127. */
__attribute__((noreturn)) static void fail(int stage, int err)
{
    (void)cg_remove();
    send_msg(TETHER_MSG_FAILED, stage, err, -1);
    _exit(127);
}

__attribute__((noreturn)) static void usage(const char *why, const char *what)
{
    say(why, what);
    if (g.control >= 0)
        fail(TETHER_GUARD_STAGE_SETUP, EINVAL);
    _exit(2);
}

static int fd_is_open(int fd)
{
    return fd >= 0 && fcntl(fd, F_GETFD) >= 0;
}

static int is_kept(int fd)
{
    int i;
    for (i = 0; i < g.n_keep; i++)
        if (g.keep[i] == fd)
            return 1;
    return 0;
}

static void parse_keep(const char *s)
{
    const char *p = s;
    int n = 1, i, j;
    for (p = s; *p; p++)
        n += *p == ',';
    g.keep = malloc((size_t)n * sizeof(int));
    if (g.keep == NULL)
        fail(TETHER_GUARD_STAGE_SETUP, ENOMEM);
    p = s;
    for (i = 0; i < n; i++) {
        const char *end;
        int fd = parse_uint(p, &end);
        if (fd < 3 || (*end != ',' && *end != '\0'))
            usage("bad --keep list: ", s);
        p = end + (*end == ',');
        if (is_kept(fd))
            continue;
        /* insertion sort: the clone plan wants them ascending */
        for (j = g.n_keep; j > 0 && g.keep[j - 1] > fd; j--)
            g.keep[j] = g.keep[j - 1];
        g.keep[j] = fd;
        g.n_keep++;
    }
}

/* --userns: the clone site maps the ids in the child before it execs us (see struct
 * tether_plan: after execve we hold no capability in the namespace and could not). Check
 * that it did; try to write the maps ourselves only if they are still empty. */
static void userns_check(const char *spec)
{
    const char *end;
    char buf[64];
    ssize_t n = -1;
    int uid = parse_uint(spec, &end), gid = -1, fd;
    if (uid >= 0 && *end == ':')
        gid = parse_uint(end + 1, NULL);
    if (uid < 0 || gid < 0)
        usage("bad --userns (want UID:GID): ", spec);
    fd = open("/proc/self/uid_map", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        do
            n = read(fd, buf, sizeof buf);
        while (n < 0 && errno == EINTR);
        close(fd);
    }
    if (n <= 0) {
        char line[32];
        int r, k = fmt_uint(line, (unsigned int)gid);
        line[k++] = ' ';
        k += fmt_uint(line + k, (unsigned int)gid);
        memcpy(line + k, " 1\n", 4);
        r = tether_write_text("/proc/self/setgroups", "deny");
        if (r == 0 || r == -ENOENT)
            r = (int)tether_write_text("/proc/self/gid_map", line);
        if (r == 0) {
            k = fmt_uint(line, (unsigned int)uid);
            line[k++] = ' ';
            k += fmt_uint(line + k, (unsigned int)uid);
            memcpy(line + k, " 1\n", 4);
            r = (int)tether_write_text("/proc/self/uid_map", line);
        }
        if (r < 0)
            fail(TETHER_GUARD_STAGE_USERNS, -r);
    }
    if (getuid() != (uid_t)uid || getgid() != (gid_t)gid)
        fail(TETHER_GUARD_STAGE_USERNS, EPERM);
}

/* The program's environment: ours, with TETHER_LIFELINE_FD naming the program's lifeline. */
static char **program_env(int lifeline_dst)
{
    extern char **environ;
    static char entry[sizeof LIFELINE_ENV + 12] = LIFELINE_ENV "=";
    size_t n = 0, i, k = 0;
    char **envp;
    fmt_uint(entry + sizeof LIFELINE_ENV, (unsigned int)lifeline_dst);
    while (environ[n] != NULL)
        n++;
    envp = malloc((n + 2) * sizeof(char *));
    if (envp == NULL)
        fail(TETHER_GUARD_STAGE_SETUP, ENOMEM);
    for (i = 0; i < n; i++) {
        if (strncmp(environ[i], LIFELINE_ENV "=", sizeof LIFELINE_ENV) != 0)
            envp[k++] = environ[i];
    }
    envp[k++] = entry;
    envp[k] = NULL;
    return envp;
}

int main(int argc, char **argv)
{
    const char *contain = "group";
    const char *userns = NULL;
    const char *lifeline_env;
    struct tether_plan plan;
    struct tether_failure failure;
    sigset_t mask;
    int life_pipe[2];
    int lifeline_dst, floor_fd, method, r, i, prog;
    pid_t pid = 0;
    int pidfd = -1;

    g.control = -1;
    g.lifeline = -1;
    g.cgroup_fd = -1;
    g.events_fd = -1;
    g.cgkill_fd = -1;
    g.sigfd = -1;
    g.program_pidfd = -1;
    g.populated = 1;
    g.children = REAP_SOME_ALIVE;

    /* --control first, so that every later complaint can travel as MSG_FAILED. */
    for (i = 1; i + 1 < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--control") == 0) {
            g.control = parse_uint(argv[i + 1], NULL);
            if (!fd_is_open(g.control)) {
                g.control = -1;
                usage("bad --control fd: ", argv[i + 1]);
            }
            break;
        }
    }
    if (g.control < 0)
        usage("--control FD is required", NULL);

    for (i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(opt, "--wait-tree") == 0) {
            g.wait_tree = 1;
            continue;
        }
        if (strcmp(opt, "--foreground") == 0) {
            g.foreground = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage("option needs a value: ", opt);
        if (strcmp(opt, "--control") == 0) {
            /* parsed above */
        } else if (strcmp(opt, "--keep") == 0) {
            parse_keep(argv[i + 1]);
        } else if (strcmp(opt, "--contain") == 0) {
            contain = argv[i + 1];
        } else if (strcmp(opt, "--cgroup-fd") == 0) {
            g.cgroup_fd = parse_uint(argv[i + 1], NULL);
            if (g.cgroup_fd < 0)
                usage("bad --cgroup-fd: ", argv[i + 1]);
        } else if (strcmp(opt, "--cgroup-path") == 0) {
            g.cgroup_path = argv[i + 1];
        } else if (strcmp(opt, "--userns") == 0) {
            userns = argv[i + 1];
        } else {
            usage("unknown option: ", opt);
        }
        i++;
    }
    if (strcmp(contain, "group") == 0)
        g.contain = CONTAIN_GROUP;
    else if (strcmp(contain, "cgroup") == 0)
        g.contain = CONTAIN_CGROUP;
    else if (strcmp(contain, "pidns") == 0)
        g.contain = CONTAIN_PIDNS;
    else
        usage("bad --contain: ", contain);
    if (g.contain == CONTAIN_CGROUP && (g.cgroup_path == NULL || g.cgroup_path[0] != '/'))
        usage("cgroup mode needs --cgroup-path (absolute)", NULL);
    if (g.contain == CONTAIN_CGROUP && !fd_is_open(g.cgroup_fd))
        usage("cgroup mode needs --cgroup-fd", NULL);
    if (i + 1 >= argc)
        usage("usage: _guard --control FD [options] -- PATH ARGV0 [ARG...]", NULL);
    prog = i;

    /* In the new user namespace, before anything else (the ids every later step runs as). */
    if (userns != NULL)
        userns_check(userns);

    lifeline_env = getenv(LIFELINE_ENV);
    g.lifeline = lifeline_env ? parse_uint(lifeline_env, NULL) : -1;
    if (!fd_is_open(g.lifeline) || g.lifeline == g.control || is_kept(g.lifeline) ||
        is_kept(g.control) || (g.cgroup_fd >= 0 && is_kept(g.cgroup_fd)))
        fail(TETHER_GUARD_STAGE_SETUP, EBADF);
    /* Our own fds must not leak into the program (the child closes all but its plan anyway;
     * this also covers any exec we do not know of). */
    fcntl(g.lifeline, F_SETFD, FD_CLOEXEC);
    fcntl(g.control, F_SETFD, FD_CLOEXEC);
    if (g.cgroup_fd >= 0)
        fcntl(g.cgroup_fd, F_SETFD, FD_CLOEXEC);

    /* Signals: the ones we forward and SIGCHLD are blocked for good and read from a signalfd. A
     * blocked signal is queued even for a PID-namespace init with SIG_DFL (sig_ignored()
     * never ignores a blocked signal). SIGCHLD must not be SIG_IGN (inherited through exec
     * from a parent that ignores it): the kernel would then reap our children itself and we
     * could not read the program's status. */
    sigemptyset(&mask);
    for (size_t s = 0; s < sizeof forwarded / sizeof forwarded[0]; s++)
        sigaddset(&mask, forwarded[s]);
    sigaddset(&mask, SIGCHLD);
    signal(SIGCHLD, SIG_DFL);
    g.sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    /* Job control must never stop the guard: a stopped guard cannot honour lifeline EOF.
     * SIGTSTP/SIGTTIN/SIGTTOU are blocked (not ignored: an ignored disposition would be
     * inherited by the program, a blocked one is not, the child clears its mask) and never
     * read. Blocked SIGTTOU also lets us give the terminal back from a background group. */
    sigaddset(&mask, SIGTSTP);
    sigaddset(&mask, SIGTTIN);
    sigaddset(&mask, SIGTTOU);
    if (g.sigfd < 0 || sigprocmask(SIG_BLOCK, &mask, NULL) != 0)
        fail(TETHER_GUARD_STAGE_SETUP, errno);
    /* Orphans of the tree are reparented to us, so we can reap them and see when they are
     * gone (since 3.4). In pidns mode we are PID 1 and get them anyway. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        fail(TETHER_GUARD_STAGE_SETUP, errno);

    if (g.contain == CONTAIN_CGROUP) {
        g.events_fd = openat(g.cgroup_fd, "cgroup.events", O_RDONLY | O_CLOEXEC);
        if (g.events_fd < 0)
            fail(TETHER_GUARD_STAGE_CGROUP, errno);
        g.cgkill_fd = openat(g.cgroup_fd, "cgroup.kill", O_WRONLY | O_CLOEXEC);
        if (g.cgkill_fd < 0 && errno != ENOENT) /* ENOENT: before 5.14, freeze instead */
            fail(TETHER_GUARD_STAGE_CGROUP, errno);
        cg_read_events();
    }

    /* The program's own lifeline: we keep the write end, so the program's lifeline-aware
     * descendants see EOF when we are gone. Its number there: the lowest fd >= 3 not kept. */
    if (pipe2(life_pipe, O_CLOEXEC) != 0)
        fail(TETHER_GUARD_STAGE_SETUP, errno);
    for (lifeline_dst = 3; is_kept(lifeline_dst); lifeline_dst++)
        ;
    floor_fd = lifeline_dst + 1;
    if (g.n_keep > 0 && g.keep[g.n_keep - 1] + 1 > floor_fd)
        floor_fd = g.keep[g.n_keep - 1] + 1;

    memset(&plan, 0, sizeof plan);
    plan.path = argv[prog];
    plan.argv = argv + prog + 1;
    plan.envp = program_env(lifeline_dst);
    plan.cwd = NULL;
    plan.stdio[0] = plan.stdio[1] = plan.stdio[2] = -1;
    plan.keep_fds = g.keep;
    plan.n_keep = g.n_keep;
    plan.lifeline_src = life_pipe[0];
    plan.lifeline_dst = lifeline_dst;
    plan.floor = floor_fd;
    plan.new_pgroup = 1;
    /* Safe here, unlike in a threaded parent: PDEATHSIG follows the creating *thread*, and
     * the guard has only one. It backs up the lifeline if the guard itself is SIGKILLed. */
    plan.pdeathsig = SIGKILL;
    plan.expected_ppid = getpid();
    if (g.foreground && isatty(0)) {
        /* Only our controlling terminal can be handed over; tcgetpgrp says if it is one. The
         * foreground group seen now is the one to give it back to (0 when that group is
         * outside our PID namespace: see foreground_restore). */
        pid_t fg = tcgetpgrp(0);
        if (fg >= 0) {
            g.fg_restore = fg;
            plan.foreground = 1;
        }
    }

    /* One clone site. clone3 first; CLONE_INTO_CGROUP exists only there (5.7). The legacy
     * clone stands in where seccomp or an old kernel refuses clone3 (ENOSYS/EPERM), or
     * rejects CLONE_CLEAR_SIGHAND (EINVAL on 5.3/5.4), as in _core.c's probe. */
    method = TETHER_CLONE_CLONE3;
    r = tether_clone_exec(&plan, method, 0, g.contain == CONTAIN_CGROUP ? g.cgroup_fd : -1,
                          &pid, &pidfd, &failure);
    if (r == -ENOSYS || r == -EPERM || r == -EINVAL) {
        if (g.contain == CONTAIN_CGROUP)
            fail(TETHER_GUARD_STAGE_CLONE, ENOSYS);
        method = TETHER_CLONE_LEGACY;
        r = tether_clone_exec(&plan, method, 0, -1, &pid, &pidfd, &failure);
    }
    close(life_pipe[0]);
    if (r < 0)
        fail(TETHER_GUARD_STAGE_CLONE, -r);
    if (pidfd < 0) /* the child failed before exec and has been reaped */
        fail(failure.stage, failure.error);
    free((void *)plan.envp);
    g.program_pid = pid;
    g.program_pidfd = pidfd;
    g.fg_given = plan.foreground;
    send_msg(TETHER_MSG_STARTED, pid, 0, pidfd);

    for (;;) {
        struct pollfd pfd[5];
        int n = 0, at_life = -1, at_sig, at_ctl = -1, at_events = -1;
        int timeout = -1;
        int64_t now;

        if (g.lifeline >= 0) {
            at_life = n;
            pfd[n].fd = g.lifeline;
            pfd[n++].events = POLLIN;
        }
        at_sig = n;
        pfd[n].fd = g.sigfd;
        pfd[n++].events = POLLIN;
        if (!g.program_exited) {
            /* POLLIN: the program exited. It only wakes us; program_check() asks waitid. */
            pfd[n].fd = g.program_pidfd;
            pfd[n++].events = POLLIN;
        }
        if (g.control >= 0) {
            at_ctl = n;
            pfd[n].fd = g.control;
            pfd[n++].events = POLLIN;
        }
        if (g.events_fd >= 0) {
            at_events = n;
            pfd[n].fd = g.events_fd;
            pfd[n++].events = POLLPRI;
        }
        if (g.killing && g.program_reaped &&
            (g.contain == CONTAIN_GROUP || (g.contain == CONTAIN_CGROUP && g.populated == 0))) {
            int64_t left = g.settle_deadline - now_ms();
            timeout = left <= 0 ? 0 : (int)left;
        }
        for (i = 0; i < n; i++)
            pfd[i].revents = 0;
        if (poll(pfd, (nfds_t)n, timeout) < 0 && errno != EINTR)
            die_with_tree();

        /* Commands before the lifeline: a parent that sends MSG_KILL_TREE and then closes
         * its lifeline still gets its MSG_EXITED. */
        if (at_ctl >= 0 && pfd[at_ctl].revents != 0)
            on_control();
        if (at_life >= 0 && pfd[at_life].revents != 0)
            on_lifeline(pfd[at_life].revents);
        if (pfd[at_sig].revents != 0)
            on_signals();
        /* While the tree is ending, look at cgroup.events on every wakeup, not only on its
         * POLLPRI: the kernel rate-limits that notification (one per 10 ms per file), but it
         * updates "populated" in cgroup_exit(), before exit_notify() sends us the SIGCHLD
         * that woke us. */
        if (at_events >= 0 && (pfd[at_events].revents != 0 || g.killing))
            cg_read_events();
        program_check();
        g.children = reap_children();
        if (g.children == REAP_PROGRAM_WAITS) {
            /* The program is a zombie the pidfd has not reported yet (a race between two
             * wakeups): handle it now, then reap what queued behind it. */
            program_check();
            g.children = reap_children();
        }
        /* program_check() may just have started the kill (g.killing): the members it killed
         * may already be gone, and the POLLPRI for that is rate-limited, so look now rather
         * than sleep up to 10 ms on a file that already says "populated 0". */
        if (at_events >= 0 && g.killing)
            cg_read_events();
        now = now_ms();
        if (tree_done(now))
            break;
    }

    /* The directory goes before the report: a parent that hears MSG_EXITED may rely on it
     * being gone. The report is also attempted after lifeline EOF: a parent that cut its
     * lifeline on purpose may still be listening; a dead one cannot be hurt by it. */
    r = cg_remove();
    send_msg(TETHER_MSG_EXITED, g.program_status, g.tree_flags, -1);
    return r == 0 ? 0 : 1;
}
