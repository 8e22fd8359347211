/*
 * guard_program.c — start the program: its environment (the lifeline variable), the clone
 * through the one clone site (the program announces its own pidfd to the parent before it can
 * exec: clone.c), and the start report MSG_STARTED. A failure ends the guard with MSG_FAILED.
 */
#include "guard.h"
#include "guard_attrs.h"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>

/* The program's environment: ours, with TETHER_LIFELINE_FD naming the program's lifeline:
 * its fd there and the pipe's identity, "N:<st_dev>:<st_ino>" (what attach() checks).
 * Without a lifeline (lifeline_src < 0) ours is still removed: it names *our* lifeline.
 * Edited in place (the array is ours, on our initial stack, and we have read our own entry
 * already): no allocation, so nothing to unmap after the clone either, which in a process
 * whose memory the program's clone child shared costs a TLB shootdown. */
static char **program_env(int lifeline_dst, int lifeline_src)
{
    extern char **environ;
    static char entry[sizeof TETHER_LIFELINE_ENV + 12 + 2 * 22] = TETHER_LIFELINE_ENV "=";
    size_t i, k = 0;
    struct stat st;
    char *at = entry + sizeof TETHER_LIFELINE_ENV;
    if (lifeline_src >= 0) {
        if (fstat(lifeline_src, &st) != 0)
            fail(TETHER_GUARD_STAGE_SETUP, errno);
        at += fmt_u64(at, (unsigned long long)lifeline_dst);
        *at++ = ':';
        at += fmt_u64(at, (unsigned long long)st.st_dev);
        *at++ = ':';
        fmt_u64(at, (unsigned long long)st.st_ino);
    }
    for (i = 0; environ[i] != NULL; i++) {
        if (strncmp(environ[i], TETHER_LIFELINE_ENV "=", sizeof TETHER_LIFELINE_ENV) != 0)
            environ[k++] = environ[i];
        else if (lifeline_src >= 0)
            environ[k++] = entry; /* ours was there (setup_guard insists): one slot for one */
    }
    environ[k] = NULL;
    return environ;
}

/* Clone the program through the one clone site; returns the method that made it. clone3
 * first, unless --clone names one; CLONE_INTO_CGROUP exists only there (5.7). The legacy clone
 * stands in where seccomp or an old kernel refuses clone3 (ENOSYS/EPERM), or rejects
 * CLONE_CLEAR_SIGHAND (EINVAL on 5.3/5.4), as in core.c's probe. */
static int clone_program(struct tether_plan *plan, pid_t *pid, int *pidfd)
{
    struct tether_failure failure;
    int cgroup_fd = g.contain == CONTAIN_CGROUP ? g.cgroup_fd : -1;
    int method = g.clone_method != TETHER_CLONE_UNKNOWN ? g.clone_method : TETHER_CLONE_CLONE3;
    int r = tether_clone_exec(plan, method, 0, cgroup_fd, pid, pidfd, &failure);
    if (g.clone_method == TETHER_CLONE_UNKNOWN && (r == -ENOSYS || r == -EPERM || r == -EINVAL)) {
        if (g.contain == CONTAIN_CGROUP)
            fail(TETHER_GUARD_STAGE_CLONE, ENOSYS);
        method = TETHER_CLONE_LEGACY;
        r = tether_clone_exec(plan, method, 0, -1, pid, pidfd, &failure);
    }
    if (plan->lifeline_src >= 0)
        close(plan->lifeline_src);
    if (r < 0)
        fail(TETHER_GUARD_STAGE_CLONE, -r);
    if (*pidfd < 0) /* the child failed before exec and has been reaped */
        fail(failure.stage, failure.error);
    return method;
}

/* Start PATH as the program: leader of its own process group, with a lifeline of its own,
 * PDEATHSIG tied to us; then report MSG_STARTED with its pidfd and the clone method used. */
void start_program(char **path_argv)
{
    struct tether_plan plan;
    int life_pipe[2];
    int lifeline_dst, method, r;
    pid_t pid = 0;
    int pidfd = -1;

    /* The program's own lifeline: we keep the write end, so the program's lifeline-aware
     * descendants see EOF when we are gone. Its number there: the lowest fd >= 3 not kept.
     * --no-program-lifeline: none (the program's fds are exactly what the caller asked). */
    life_pipe[0] = life_pipe[1] = -1;
    if (!g.no_program_lifeline && pipe2(life_pipe, O_CLOEXEC) != 0)
        fail(TETHER_GUARD_STAGE_SETUP, errno);
    for (lifeline_dst = 3; life_pipe[0] >= 0 && (is_kept(lifeline_dst) ||
         (guard_attrs_inherit_fds() && fd_is_open(lifeline_dst))); lifeline_dst++)
        ;

    memset(&plan, 0, sizeof plan);
    plan.path = path_argv[0];
    plan.argv = path_argv + 1;
    plan.envp = program_env(lifeline_dst, life_pipe[0]);
    plan.cwd = NULL;
    plan.stdio[0] = plan.stdio[1] = plan.stdio[2] = -1;
    plan.keep_fds = g.keep;
    plan.n_keep = g.n_keep;
    plan.lifeline_src = life_pipe[0];
    plan.lifeline_dst = lifeline_dst;
    plan.floor = life_pipe[0] >= 0 ? lifeline_dst + 1 : 3;
    if (g.n_keep > 0 && g.keep[g.n_keep - 1] + 1 > plan.floor)
        plan.floor = g.keep[g.n_keep - 1] + 1;
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

    /* The program sends its own pidfd to the parent before it can exec (MSG_PROGRAM). */
    plan.announce_fd = g.control;

    if ((r = guard_apply_attrs(&plan, g.control, g.lifeline, g.cgroup_fd)) != 0)
        fail(TETHER_GUARD_STAGE_SETUP, r);
    method = clone_program(&plan, &pid, &pidfd);
    g.program_pid = pid;
    g.program_pidfd = pidfd;
    g.fg_given = plan.foreground;
    /* Fault injection for the test suite only: stop in the window between the program's exec
     * and its start report, where a test then kills us (tests/test_guard_protocol.py); the
     * parent is let go first, so that it reads what came before the report. */
    if (getenv("TETHER_GUARD_TEST_STOP_BEFORE_REPORT") != NULL) {
        start_reported();
        (void)kill(getpid(), SIGSTOP);
    }
    send_msg(TETHER_MSG_STARTED, pid, method, -1);
    start_reported();
}

/* Until the program has exec'd or exited (its exec pipe readable: a record or EOF). Lifeline
 * EOF meanwhile (the parent died, or gave up the start) ends the program at once: one stopped
 * or frozen before its exec, or whose exec hangs, must not hold up the end of the tree. */
static void await_exec(void)
{
    struct pollfd pfd[2] = {{g.exec_fd, POLLIN, 0}, {g.lifeline, POLLIN, 0}};
    for (;;) {
        pfd[0].revents = pfd[1].revents = 0;
        if (poll(pfd, pfd[1].fd >= 0 ? 2 : 1, -1) < 0 && errno != EINTR)
            return; /* the read below then blocks: the old way, still correct */
        if (pfd[0].revents)
            return;
        if (pfd[1].revents) {
            (void)sys_pidfd_send_signal(g.program_pidfd, SIGKILL, 0);
            pfd[1].fd = -1; /* the loop sees the EOF again, and ends the tree */
        }
    }
}

/* --adopt: the program was cloned by our clone child before our exec (clone_early.c), with
 * the plan start_program would have made (launch_early.c). Its exec pipe says whether it
 * exec'd: EOF (every write end closed: its exec, or its death before, which the loop then
 * sees), or a failure record, after which it exits 127: reap it, and fail as start_program
 * would. Its lifeline's write end (--program-lifeline-fd) stays open with us, as there. */
void adopt_program(void)
{
    struct tether_failure rec;
    ssize_t n;
    /* Fault injection for the test suite only: end at once, the program started beside our
     * exec and nothing reported (tests/test_overlapped_start.py). An exit, not a SIGKILL of
     * ourselves: a PID-namespace init cannot be killed from inside. */
    if (getenv("TETHER_GUARD_TEST_DIE_AT_ADOPT") != NULL)
        _exit(99);
    await_exec();
    do
        n = read(g.exec_fd, &rec, sizeof rec);
    while (n < 0 && errno == EINTR);
    close(g.exec_fd);
    g.exec_fd = -1;
    if (n == (ssize_t)sizeof rec) {
        tether_reap_pidfd(g.program_pidfd);
        g.program_pidfd = -1;
        fail(rec.stage, rec.error);
    }
    if (getenv("TETHER_GUARD_TEST_STOP_BEFORE_REPORT") != NULL) { /* as in start_program */
        start_reported();
        (void)kill(getpid(), SIGSTOP);
    }
    send_msg(TETHER_MSG_STARTED, g.program_pid, g.adopt_method, -1);
    start_reported();
}

/* --start-fd: wake the parent, which sleeps until the start is reported (launch.c,
 * wait_started); MSG_PROGRAM and MSG_STARTED wait for it on the socket, read in one go. An
 * exit (MSG_FAILED) closes it too. */
void start_reported(void)
{
    if (g.start_fd >= 0)
        close(g.start_fd);
    g.start_fd = -1;
}
