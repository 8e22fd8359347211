/*
 * guard_start.c — the guard before its loop: parse the command line and set up (ids, fds,
 * signals, subreaper, cgroup files). The program's start is guard_program.c. Any failure here
 * ends the guard with MSG_FAILED and nothing left behind.
 */
#include "guard.h"
#include "guard_attrs.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <termios.h>

/* The signals a user sends to "the command" and that we pass on to the program. */
#define FORWARDED_ITEM(sig) sig,
static const int forwarded[] = {TETHER_GUARD_FORWARDED(FORWARDED_ITEM)};
#undef FORWARDED_ITEM

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

/* A decimal unsigned 64-bit number at s; *end_out just past it. -1 if there is none. */
static int parse_u64(const char *s, const char **end_out, unsigned long long *out)
{
    unsigned long long v = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9') {
        unsigned int d = (unsigned int)(*p - '0');
        if (v > (~0ULL - d) / 10)
            return -1;
        v = v * 10 + d;
        p++;
    }
    if (p == s)
        return -1;
    *end_out = p;
    *out = v;
    return 0;
}

int fmt_u64(char *out, unsigned long long v)
{
    int k = tether_put_uint(out, v);
    out[k] = '\0';
    return k;
}

/* ------------------------------------------------------------------------------------------ */
/* Startup.                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* A setup failure before the program exists: nothing is left behind, say why, exit 127. */
__attribute__((noreturn)) void fail(int stage, int err)
{
    (void)cg_remove(0);
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

int fd_is_open(int fd)
{
    return fd >= 0 && fcntl(fd, F_GETFD) >= 0;
}

/* An fd given to us for our own use (--control, --start-fd): open, and close-on-exec from
 * now on, so it never reaches the program; one fcntl both checks and marks it. */
static int own_fd(int fd)
{
    return fd >= 3 && fcntl(fd, F_SETFD, FD_CLOEXEC) == 0;
}

int is_kept(int fd)
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

/* --userns: the clone site mapped our ids in the new user namespace before it exec'd us
 * (clone.c, map_own_ids: after execve we would hold no capability there to do it ourselves).
 * Check that we run as the ids the parent asked for. */
static void userns_check(const char *spec)
{
    const char *end;
    int uid = parse_uint(spec, &end), gid = -1;
    if (uid >= 0 && *end == ':')
        gid = parse_uint(end + 1, NULL);
    if (uid < 0 || gid < 0)
        usage("bad --userns (want UID:GID): ", spec);
    if (getuid() != (uid_t)uid || getgid() != (gid_t)gid)
        fail(TETHER_GUARD_STAGE_USERNS, EPERM);
}

/* --control first, so that every later complaint can travel as MSG_FAILED. */
static void parse_control(int argc, char **argv)
{
    int i;
    for (i = 1; i + 1 < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--control") == 0) {
            g.control = parse_uint(argv[i + 1], NULL);
            /* Never one of 0-2: those are the program's stdio, not ours. */
            if (!own_fd(g.control)) {
                g.control = -1;
                usage("bad --control fd: ", argv[i + 1]);
            }
            break;
        }
    }
    if (g.control < 0)
        usage("--control FD is required", NULL);
}

/* --contain and --clone, once every option has been read. */
static void check_modes(const char *contain, const char *clone)
{
    if (strcmp(contain, "group") == 0)
        g.contain = CONTAIN_GROUP;
    else if (strcmp(contain, "cgroup") == 0)
        g.contain = CONTAIN_CGROUP;
    else if (strcmp(contain, "pidns") == 0)
        g.contain = CONTAIN_PIDNS;
    else
        usage("bad --contain: ", contain);
    if (clone == NULL)
        g.clone_method = TETHER_CLONE_UNKNOWN;
    else if (strcmp(clone, "clone3") == 0)
        g.clone_method = TETHER_CLONE_CLONE3;
    else if (strcmp(clone, "legacy") == 0)
        g.clone_method = TETHER_CLONE_LEGACY;
    else
        usage("bad --clone (want clone3 or legacy): ", clone);
    if (g.contain != CONTAIN_CGROUP)
        return;
    /* CLONE_INTO_CGROUP rides on clone3 only (5.7): no legacy clone can start the program
     * inside the cgroup, and starting it outside and moving it would be a race. */
    if (g.clone_method == TETHER_CLONE_LEGACY)
        usage("cgroup mode needs clone3 (CLONE_INTO_CGROUP), not --clone legacy", NULL);
    if (g.cgroup_path == NULL || g.cgroup_path[0] != '/')
        usage("cgroup mode needs --cgroup-path (absolute)", NULL);
    if (!fd_is_open(g.cgroup_fd))
        usage("cgroup mode needs --cgroup-fd", NULL);
}

/* --usage-KIND: where g keeps that directory fd (NULL: no such kind). */
static int *usage_fd(const char *kind)
{
    if (strcmp(kind, "cpu") == 0)
        return &g.usage_cpu_fd;
    if (strcmp(kind, "memory") == 0)
        return &g.usage_memory_fd;
    return strcmp(kind, "pids") == 0 ? &g.usage_pids_fd : NULL;
}

/* --adopt PID:PIDFD:METHOD:V1, as our clone child wrote it (clone_early.c): the program, our
 * child already, and its pidfd (ours from now on, close-on-exec); V1: which --join-cgroup
 * directories the clone child joined were v1 ones (bit i: the i-th). */
static void parse_adopt(const char *s)
{
    const char *end;
    int pid = parse_uint(s, &end), pidfd = -1, method = -1, v1 = -1;
    if (pid > 0 && *end == ':')
        pidfd = parse_uint(end + 1, &end);
    if (pidfd >= 0 && *end == ':')
        method = parse_uint(end + 1, &end);
    if (method >= 0 && *end == ':')
        v1 = parse_uint(end + 1, NULL);
    if (v1 < 0 || !own_fd(pidfd))
        usage("bad --adopt: ", s);
    g.program_pid = pid;
    g.program_pidfd = pidfd;
    g.adopt_method = method;
    g.adopt_v1 = v1;
}

/* Read the command line into g; returns the index of PATH (after "--"). */
int parse_args(int argc, char **argv)
{
    const char *contain = "group";
    const char *clone = NULL;
    int i, r;

    parse_control(argc, argv);
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
        if (strcmp(opt, "--keep-cgroup") == 0) {
            g.keep_cgroup = 1;
            continue;
        }
        if (strcmp(opt, "--foreground") == 0) {
            g.foreground = 1;
            continue;
        }
        if (strcmp(opt, "--job-control") == 0) {
            g.job_control = 1;
            continue;
        }
        if (strcmp(opt, "--no-program-lifeline") == 0) {
            g.no_program_lifeline = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage("option needs a value: ", opt);
        if (strcmp(opt, "--control") == 0) {
            /* parsed above */
        } else if (strcmp(opt, "--start-fd") == 0) {
            g.start_fd = parse_uint(argv[i + 1], NULL);
            if (!own_fd(g.start_fd))
                usage("bad --start-fd: ", argv[i + 1]);
        } else if (strcmp(opt, "--adopt") == 0) {
            g.adopt = argv[i + 1];
        } else if (strcmp(opt, "--exec-fd") == 0) {
            g.exec_fd = parse_uint(argv[i + 1], NULL);
            if (!own_fd(g.exec_fd))
                usage("bad --exec-fd: ", argv[i + 1]);
        } else if (strcmp(opt, "--program-lifeline-fd") == 0) {
            g.program_lifeline_fd = parse_uint(argv[i + 1], NULL);
            if (!own_fd(g.program_lifeline_fd))
                usage("bad --program-lifeline-fd: ", argv[i + 1]);
        } else if (strcmp(opt, "--keep") == 0) {
            parse_keep(argv[i + 1]);
        } else if (strcmp(opt, "--contain") == 0) {
            contain = argv[i + 1];
        } else if (strcmp(opt, "--clone") == 0) {
            clone = argv[i + 1];
        } else if (strcmp(opt, "--cgroup-fd") == 0) {
            g.cgroup_fd = parse_uint(argv[i + 1], NULL);
            if (g.cgroup_fd < 0)
                usage("bad --cgroup-fd: ", argv[i + 1]);
        } else if (strcmp(opt, "--cgroup-path") == 0) {
            g.cgroup_path = argv[i + 1];
        } else if (strcmp(opt, "--join-cgroup") == 0) {
            if (g.n_join >= GUARD_MAX_JOIN)
                usage("too many --join-cgroup: ", argv[i + 1]);
            g.join_fds[g.n_join] = parse_uint(argv[i + 1], NULL);
            if (g.join_fds[g.n_join++] < 0)
                usage("bad --join-cgroup fd: ", argv[i + 1]);
        } else if (strncmp(opt, "--usage-", 8) == 0 && usage_fd(opt + 8) != NULL) {
            *usage_fd(opt + 8) = parse_uint(argv[i + 1], NULL);
            if (*usage_fd(opt + 8) < 3)
                usage("bad fd for ", opt);
        } else if (strcmp(opt, "--userns") == 0) {
            g.userns = argv[i + 1];
        } else if ((r = guard_parse_attr(opt, argv[i + 1])) < 0) {
            usage("bad value for ", opt);
        } else if (r == 0) {
            usage("unknown option: ", opt);
        }
        i++;
    }
    check_modes(contain, clone);
    if ((g.adopt != NULL) != (g.exec_fd >= 0))
        usage("--adopt and --exec-fd go together", NULL);
    if (g.adopt != NULL)
        parse_adopt(g.adopt);
    if (i + 1 >= argc)
        usage("usage: _guard --control FD [options] -- PATH ARGV0 [ARG...]", NULL);
    return i;
}

/* Signals: the ones we forward and SIGCHLD are blocked for good and read from a signalfd. A
 * blocked signal is queued even for a PID-namespace init with SIG_DFL (sig_ignored() never
 * ignores a blocked signal). SIGCHLD must not be SIG_IGN (inherited through exec from a parent
 * that ignores it): the kernel would then reap our children itself and we could not read the
 * program's status. */
static void setup_signals(void)
{
    sigset_t mask;
    size_t s;
    sigemptyset(&mask);
    for (s = 0; s < sizeof forwarded / sizeof forwarded[0]; s++)
        sigaddset(&mask, forwarded[s]);
    sigaddset(&mask, SIGCHLD);
    /* (This drops a SIGCHLD already pending, as for any signal set to an ignoring default:
     * the adopted program may have stopped by now. main() asks for its stop once, after.) */
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
}

/* Our fds 0-2 are the program's stdio, as the parent gave them; a closed one stays closed for
 * the program. Until we exec it, a closed one holds /dev/null (close-on-exec): every fd the
 * guard opens lands above 2, so none poses as the program's stdio, and no complaint of ours
 * written to fd 2 can reach the control socket or a pipe. */
static void hold_stdio(void)
{
    int fd;
    /* Ascending: open() takes the lowest free number, which is this fd. */
    for (fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF && open("/dev/null", O_RDWR | O_CLOEXEC) < 0)
            fail(TETHER_GUARD_STAGE_SETUP, errno);
    }
}

/* Our lifeline from TETHER_LIFELINE_FD: "N" or "N:<st_dev>:<st_ino>". The fd must be a pipe
 * (and that very pipe, given its identity); -1 if it is not. */
static int own_lifeline(const char *value)
{
    unsigned long long fd, dev = 0, ino = 0;
    const char *p;
    struct stat st;
    int identity = 0;
    if (parse_u64(value, &p, &fd) != 0 || fd > INT_MAX)
        return -1;
    if (*p == ':') {
        if (parse_u64(p + 1, &p, &dev) != 0 || *p != ':' || parse_u64(p + 1, &p, &ino) != 0)
            return -1;
        identity = 1;
    }
    if (*p != '\0' || fstat((int)fd, &st) != 0 || !S_ISFIFO(st.st_mode))
        return -1;
    if (identity && ((unsigned long long)st.st_dev != dev || (unsigned long long)st.st_ino != ino))
        return -1;
    return (int)fd;
}

/* --join-cgroup: into the tree's per-controller cgroups, with their limits, before the program
 * exists. Each fd is ours (never 0-2, never one the program keeps) and stays out of it. */
static void join_cgroups(void)
{
    int i, r;
    for (i = 0; i < g.n_join; i++) {
        int fd = g.join_fds[i];
        /* (F_SETFD fails on an fd that is not open: the one check that it is) */
        if (fd < 3 || is_kept(fd) || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
            fail(TETHER_GUARD_STAGE_SETUP, EBADF);
        /* --adopt: our clone child joined them before it started the program */
        r = g.adopt != NULL ? (g.adopt_v1 >> i) & 1 : tether_cgroup_join(fd);
        if (r < 0)
            fail(TETHER_GUARD_STAGE_CGROUP, -r);
        g.join_v1[i] = r;
    }
}

/* --usage-*: directories we hold already (a --join-cgroup fd, or the --cgroup-fd of cgroup
 * mode), checked and kept from the program there; read at the end (guard_usage.c). */
static void check_usage_fds(void)
{
    const int fds[] = {g.usage_cpu_fd, g.usage_memory_fd, g.usage_pids_fd};
    size_t i;
    int j, held;
    for (i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        held = fds[i] < 0 || (fds[i] == g.cgroup_fd && g.contain == CONTAIN_CGROUP);
        for (j = 0; j < g.n_join && !held; j++)
            held = fds[i] == g.join_fds[j];
        if (!held)
            fail(TETHER_GUARD_STAGE_SETUP, EBADF);
    }
}

/* Everything the guard needs before the program exists: its ids, its lifeline, its own fds
 * kept from the program, signals, the subreaper bit, the cgroup's files. */
void setup_guard(void)
{
    const char *lifeline_env;

    /* In the new user namespace, before anything else (the ids every later step runs as). */
    if (g.userns != NULL)
        userns_check(g.userns);

    hold_stdio();
    lifeline_env = getenv(TETHER_LIFELINE_ENV);
    g.lifeline = lifeline_env ? own_lifeline(lifeline_env) : -1;
    if (g.lifeline < 3 || g.lifeline == g.control || is_kept(g.lifeline) ||
        is_kept(g.control) || (g.cgroup_fd >= 0 && (g.cgroup_fd < 3 || is_kept(g.cgroup_fd))) ||
        (g.start_fd >= 0 && (is_kept(g.start_fd) || g.start_fd == g.control ||
                             g.start_fd == g.lifeline)))
        fail(TETHER_GUARD_STAGE_SETUP, EBADF);
    /* Our own fds must not leak into the program (the child closes all but its plan anyway;
     * this also covers any exec we do not know of). --control and --start-fd are marked
     * already (own_fd). */
    fcntl(g.lifeline, F_SETFD, FD_CLOEXEC);
    if (g.cgroup_fd >= 0)
        fcntl(g.cgroup_fd, F_SETFD, FD_CLOEXEC);

    setup_signals();
    /* Orphans of the tree are reparented to us, so we can reap them and see when they are
     * gone (since 3.4). In pidns mode we are PID 1 and get them anyway. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        fail(TETHER_GUARD_STAGE_SETUP, errno);

    join_cgroups();
    check_usage_fds();

    if (g.contain == CONTAIN_CGROUP) {
        /* cgroup.kill is opened when there is something to kill (cg_kill); the events are
         * read when they matter (cg_kill, and while the tree ends). */
        g.events_fd = openat(g.cgroup_fd, "cgroup.events", O_RDONLY | O_CLOEXEC);
        if (g.events_fd < 0)
            fail(TETHER_GUARD_STAGE_CGROUP, errno);
    }
}
