/*
 * guard.c — the tether guard: a lifeline for programs that don't know about lifelines.
 *
 *   _guard --control FD [--keep FD[,FD...]] [--contain group|cgroup|pidns]
 *          [--cgroup-fd FD --cgroup-path PATH] [--userns UID:GID] [--wait-tree] [--foreground]
 *          [--job-control] [--start-fd FD] [--join-cgroup FD]... [--keep-cgroup]
 *          [--usage-cpu FD] [--usage-memory FD] [--usage-pids FD]
 *          [--clone clone3|legacy]
 *          [--adopt PID:PIDFD:METHOD --exec-fd FD [--program-lifeline-fd FD]]
 *          -- PATH ARGV0 [ARG...]
 *
 * The Python parent (tether/_tree/guarded.py) starts the guard through tether's one spawn
 * path: its lifeline read end announced in TETHER_LIFELINE_FD, cwd and fds 0/1/2 in place, the
 * fds named above kept at their numbers and every other fd closed. The guard starts PATH
 * (already resolved by the parent) as *the program*, through the same clone site (clone.c), as
 * the leader of a new process group, and from then on it is one poll loop:
 *
 *   lifeline EOF (the parent died, any way)  -> SIGKILL the whole tree, reap, exit;
 *   the program exits                        -> end the rest of the tree (or, --wait-tree, wait
 *                                               for it), reap, report MSG_EXITED, exit 0;
 *   SIGTERM/SIGINT/SIGHUP/... to the guard   -> forwarded to the program (its pidfd), the
 *                                               terminating ones followed by SIGCONT;
 *   MSG_SIGNAL_TREE / MSG_KILL_TREE          -> signal / end the whole tree.
 *
 * --start-fd: a pipe's write end, closed once the start is reported (MSG_STARTED) or at our
 * exit: the parent sleeps on it through our start instead of waking at each step (launch.c).
 *
 * --adopt: the program exists already: our clone child cloned it before our exec, so that the
 * two execs ran side by side (clone_early.c); we read its exec pipe (--exec-fd: its failure
 * record, or EOF once it has exec'd), keep the write end of its lifeline, and report.
 *
 * --clone: use that clone method only, as the parent does when its method is forced (tests of
 * the legacy fallback). Without it: clone3, falling back to the legacy clone where refused.
 *
 * Wire protocol: guard_proto.h. Containment (--contain):
 *   group   the program's process group, signalled through the leader's pidfd
 *           (PIDFD_SIGNAL_PROCESS_GROUP, 6.9+). A process that leaves the group (setsid daemons,
 *           job-control shells) is out of reach: documented, and never waited for.
 *   cgroup  a cgroup v2 directory made by the parent: CLONE_INTO_CGROUP (5.7), cgroup.kill
 *           (5.14), cgroup.events "populated" (4.5), cgroup.freeze (5.2). The kill also
 *           signals the program's process group, for a member that moved itself to another
 *           cgroup; one that moved and called setsid() is out of reach (README).
 *   pidns   the guard is PID 1 of a new PID namespace (the parent cloned it so): kill(-1) ends
 *           every other process of the namespace, and the kernel kills them all if we die.
 *
 * The guard is single-threaded and blocks the signals it handles (read with a signalfd), so
 * PR_SET_PDEATHSIG on the program is safe here: it fires when this one thread exits, which is
 * when the guard exits. It is a child subreaper, so orphans of the tree come back to it.
 * No stdio, no malloc beyond two small arrays made before the clone, small buffers only: the
 * guard runs once per tree and should cost next to nothing.
 *
 * This file is the loop and the protocol; guard.h says where the other parts are.
 */
#include "guard.h"

#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>

struct guard g = {
    .control = -1,
    .lifeline = -1,
    .start_fd = -1,
    .cgroup_fd = -1,
    .events_fd = -1,
    .cgkill_fd = -1,
    .usage_cpu_fd = -1,
    .usage_memory_fd = -1,
    .usage_pids_fd = -1,
    .sigfd = -1,
    .program_pidfd = -1,
    .exec_fd = -1,
    .program_lifeline_fd = -1,
    .populated = 1,
    .children = REAP_SOME_ALIVE,
};

/* ------------------------------------------------------------------------------------------ */
/* Protocol.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

void send_msg(uint32_t type, int32_t a, int32_t b, int pass_fd)
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

static int32_t clamp32(long long v)
{
    return v < 0 ? 0 : v > INT32_MAX ? INT32_MAX : (int32_t)v;
}

/* MSG_EXITED: the program's status, and what every descendant we (or their parents) reaped
 * used, exactly as the kernel summed it at each reap (guard_proto.h); with `with_usage` (the
 * tree's cgroups are emptied, not removed: limits), the tree's final usage from them as the
 * packet's tail. Sent once the tree is reaped, as our last word. */
static void send_exited(int status, int with_usage)
{
    struct rusage ru;
    struct tether_guard_msg msg;
    struct tether_guard_usage usage;
    struct iovec iov[2] = {{&msg, sizeof msg}, {&usage, sizeof usage}};
    struct msghdr mh;
    if (g.control < 0)
        return;
    memset(&msg, 0, sizeof msg);
    msg.type = TETHER_MSG_EXITED;
    msg.a = status;
    if (getrusage(RUSAGE_CHILDREN, &ru) == 0) {
        msg.b = clamp32((long long)ru.ru_utime.tv_sec * 1000 + ru.ru_utime.tv_usec / 1000);
        msg.c = clamp32((long long)ru.ru_stime.tv_sec * 1000 + ru.ru_stime.tv_usec / 1000);
        msg.d = clamp32(ru.ru_maxrss);
    } else {
        msg.b = msg.c = msg.d = -1;
    }
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = iov;
    mh.msg_iovlen = with_usage && read_tree_usage(&usage) ? 2 : 1;
    while (sendmsg(g.control, &mh, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
}

/* ------------------------------------------------------------------------------------------ */
/* Event handlers.                                                                              */
/* ------------------------------------------------------------------------------------------ */

static void on_signal(uint32_t sig)
{
    /* SIGCHLD needs nothing here: every loop turn reaps. SIGCONT under --job-control is
     * the parent's to pass on, once it has given the program the terminal. */
    if (sig == SIGCHLD || (sig == SIGCONT && g.job_control) || g.program_reaped)
        return;
    (void)sys_pidfd_send_signal(g.program_pidfd, (int)sig, 0);
    if (ends_program((int)sig)) /* a stopped program must still end */
        (void)sys_pidfd_send_signal(g.program_pidfd, SIGCONT, 0);
}

/* Several records a read: a short read means none was left (no EAGAIN round, whose read
 * would cost the exit path a syscall); one queued meanwhile makes the fd readable again. */
static void on_signals(void)
{
    struct signalfd_siginfo ssi[4];
    ssize_t n, i;
    do {
        do
            n = read(g.sigfd, ssi, sizeof ssi);
        while (n < 0 && errno == EINTR);
        for (i = 0; n > 0 && i < n / (ssize_t)sizeof ssi[0]; i++)
            on_signal(ssi[i].ssi_signo);
    } while (n == (ssize_t)sizeof ssi);
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
    g.lifeline_ended = !g.killing;
    kill_tree();
}

/* The poll loop, until the tree has ended per the policy and the mode. */
static void run_until_tree_ends(void)
{
    for (;;) {
        struct pollfd pfd[5];
        int n = 0, i, at_life = -1, at_sig, at_ctl = -1, at_events = -1;
        int timeout = -1;

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
        /* Only while the tree ends: before, "populated" decides nothing, and its change to 1
         * at the program's start would wake us for nothing. */
        if (g.events_fd >= 0 && g.killing) {
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
        job_check();
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
        if (g.events_fd >= 0 && g.killing)
            cg_read_events();
        if (tree_done())
            return;
    }
}

/* Fault injection for the test suite only: before any setup, wait until the test writes to
 * (or closes) the fd TETHER_GUARD_TEST_HOLD_SETUP_FD names, one of the program's pass_fds
 * (--keep; tether_hold_for_test): what an adopted program does before our setup. */
static void hold_for_test(void)
{
    tether_hold_for_test(getenv("TETHER_GUARD_TEST_HOLD_SETUP_FD"), g.keep, g.n_keep);
}

int main(int argc, char **argv)
{
    int prog = parse_args(argc, argv);
    int removed, orphaned;

    hold_for_test();
    setup_guard();
    if (g.adopt != NULL)
        adopt_program(); /* started beside our exec by our clone child */
    else
        start_program(argv + prog);
    /* A stop of an adopted program before setup_signals() came with a SIGCHLD that setting
     * SIGCHLD to SIG_DFL there dropped (the kernel flushes a pending signal whose disposition
     * becomes "ignore"); its status is still waitable: report it now. */
    job_check();
    open_tree_usage(); /* (limits) while the program runs: the end only reads */
    run_until_tree_ends();
    /* The directory goes before the report: a parent that hears MSG_EXITED may rely on it
     * being gone. The report is also attempted after lifeline EOF: a parent that cut its
     * lifeline on purpose may still be listening; a dead one cannot be hurt by it. A dead
     * parent leaves us its directories: we remove them (cg_remove_joined_v1), the one of
     * cgroup mode too, --keep-cgroup or not. */
    /* Only a tree with directories a dead parent would leave (limits) asks: parent_gone()
     * may wait PARENT_HUP_GRACE_MS for the socket, which no other tree need pay. */
    orphaned = (g.n_join > 0 || g.keep_cgroup) && parent_gone();
    if (orphaned)
        cg_remove_joined_v1();
    removed = cg_remove(orphaned);
    /* The usage only from directories still there (not an orphan's, removed above) and
     * emptied (cgroup mode: "populated 0"; else the parent reads them once it can). */
    send_exited(g.program_status, !orphaned && removed == 0);
    return removed == 0 ? 0 : 1;
}
