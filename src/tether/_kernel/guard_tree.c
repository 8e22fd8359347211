/*
 * guard_tree.c — the tree under the guard: signal it and kill it per containment mode, see
 * the program exit (its status read once, the zombie kept while it holds the group's number),
 * reap every child that comes back to us, and decide when the tree has ended.
 */
#include "guard.h"

#include <fcntl.h>
#include <string.h>
#include <termios.h>

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

/* A signal that asks the program to end: a stopped process would hold it pending for ever,
 * so it is followed by SIGCONT, as timeout(1) does (the signal first: the process resumes
 * with it pending and acts on it before running anything else). Not for SIGUSR1, SIGWINCH
 * and the like: those must not resume a job that someone stopped on purpose. */
int ends_program(int sig)
{
    return sig == SIGTERM || sig == SIGINT || sig == SIGHUP || sig == SIGQUIT;
}

void signal_tree(int sig)
{
    int cont = ends_program(sig);
    switch (g.contain) {
    case CONTAIN_GROUP:
        (void)group_signal(sig);
        if (cont)
            (void)group_signal(SIGCONT);
        break;
    case CONTAIN_CGROUP:
        if (sig == SIGKILL)
            cg_kill();
        else
            cg_signal_frozen(sig); /* it adds the SIGCONT itself, while the tree is frozen */
        break;
    case CONTAIN_PIDNS:
        /* We are PID 1 of the namespace: kill(-1) reaches every process in it but us. */
        (void)kill(-1, sig);
        if (cont)
            (void)kill(-1, SIGCONT);
        break;
    }
}

/* SIGKILL the whole tree, once. */
void kill_tree(void)
{
    if (g.killing)
        return;
    g.killing = 1;
    g.settle_deadline = now_ms() + SETTLE_MS;
    signal_tree(SIGKILL);
    /* cgroup mode: also the program's process group. A member that moved itself to another
     * cgroup (root, or any user inside a delegated subtree, can write cgroup.procs) is out of
     * cgroup.kill's reach, but not out of the group unless it also called setsid(). */
    if (g.contain == CONTAIN_CGROUP)
        (void)group_signal(SIGKILL);
    /* The program itself, also when it left its group (setsid) or the cgroup; not once it
     * has exited (a zombie takes no signal: the program's exit is the common way here). */
    if (!g.program_exited)
        (void)sys_pidfd_send_signal(g.program_pidfd, SIGKILL, 0);
}

/* Give the terminal back once the program has exited (--foreground).
 *
 * tcsetpgrp from a background group would raise SIGTTOU; the guard keeps SIGTTOU blocked for
 * its whole life (see setup_signals), which the tty layer treats as ignored, so the call just
 * works.
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
    if (!g.killing && !g.wait_tree) {
        /* Before the reap: the zombie leader keeps the group's number ours. */
        kill_tree();
    }
    while (waitid((idtype_t)P_PIDFD, (id_t)g.program_pidfd, &info, WEXITED) != 0 &&
           errno == EINTR)
        ;
    g.program_reaped = 1;
}

/* Has the program exited? Status read with WNOWAIT: the zombie stays, holding the pgid. */
void program_check(void)
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

/* --job-control: was the program stopped (Ctrl-Z, SIGTTIN at a background read, a SIGSTOP)?
 * Tell the parent (MSG_STOPPED). `tether run` then stops itself, so that its shell sees the job
 * stop and takes the terminal back, as it would without tether; when the shell continues the
 * job (fg, bg), the parent gives the terminal to the program if the job is in the foreground
 * and continues the tree. Only the program's stop is looked at: the status is consumed (no
 * WNOWAIT), and a stop never hides an exit (WEXITED is not asked). */
void job_check(void)
{
    siginfo_t si;
    if (!g.job_control || g.program_exited)
        return;
    memset(&si, 0, sizeof si);
    while (waitid((idtype_t)P_PIDFD, (id_t)g.program_pidfd, &si, WSTOPPED | WNOHANG) != 0) {
        if (errno != EINTR)
            return;
    }
    if (si.si_pid != 0 && si.si_code == CLD_STOPPED)
        send_msg(TETHER_MSG_STOPPED, si.si_status, 0, -1);
}

/* Reap every child that has exited. Orphans of the tree come back to us (subreaper, or PID 1
 * in pidns mode). While the program is unreaped it is only looked at, never reaped here. */
int reap_children(void)
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

/* Has the tree ended, per the policy and the mode? The cheapest sign first: ECHILD from the
 * last reap pass costs no syscall, the group test one, the clock one (no vDSO here). */
int tree_done(void)
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
        return g.children == REAP_NONE_LEFT || group_empty() || now_ms() >= g.settle_deadline;
    case CONTAIN_CGROUP:
        /* "populated 0" comes when the last member has *exited*; its children may still be on
         * their way to us (exit_notify runs after cgroup_exit), so also reap until ECHILD.
         * The deadline only matters for a child moved out of the cgroup. */
        if (g.populated != 0)
            return 0;
        return g.children == REAP_NONE_LEFT || now_ms() >= g.settle_deadline;
    case CONTAIN_PIDNS:
        /* Nothing escapes a PID namespace: every orphan comes to PID 1. */
        return g.children == REAP_NONE_LEFT;
    }
    return 1;
}

/* The loop itself failed (poll refused valid fds: cannot happen short of a kernel out of
 * memory): end the tree as on lifeline EOF, without waiting for the finer signs, and exit
 * non-zero. */
__attribute__((noreturn)) void die_with_tree(void)
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
    (void)cg_remove(0); /* its EBUSY retries wait for the last member to exit */
    _exit(1);
}
