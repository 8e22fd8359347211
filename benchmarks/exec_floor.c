/*
 * exec_floor.c — the floor under a guarded spawn: what two execs in a row cost with nothing
 * else (no Python, no protocol, no setup), against one exec, what overlapping them could
 * win, and what is left when the guard is launched ahead of the spawn (issue 13). Built by
 * bench_floor.py against the guard's own libc-free runtime (src/tether/_kernel/nolibc/rt.c),
 * so the "guard" here execs exactly as cheaply as a static binary with no libc start-up can.
 *
 *   exec_floor bench N [GUARD] [--limits MEMORY CPU CPUACCT PIDS]
 *                                 N rounds, every variant once per round in rotating order;
 *                                 prints "name median p25 p75" in nanoseconds, one a line;
 *                                 --limits: the limited variants' parent groups (else, or
 *                                 if unusable, they are skipped: the reason on stderr)
 *   exec_floor exit               exit at once (the exec floor of this binary)
 *   exec_floor mini               the smallest guard: clone(VM|VFORK)+exec /bin/true, reap
 *   exec_floor adopt              the overlapped guard: reap the program its pre-exec self
 *                                 started, until ECHILD
 *   exec_floor ahead              the smallest pre-launched guard: control socket on fd 100,
 *                                 lifeline on fd 101; says it is ready, sleeps in poll on
 *                                 both; lifeline EOF: exit; a request: start it, reap it,
 *                                 report, exit (one guard per tree)
 *   exec_floor usage              the limited guard (exec_floor_limits.c)
 *   exec_floor notice N | reader | relay   the exit notice's floor (exec_floor_notice.c)
 *
 * Variants (each one sample = clone, exec(s), every child reaped):
 *   true        vfork-style clone + exec /bin/true                    (Popen's floor)
 *   noop        the same, of this static binary exiting at once       (a guard exec's floor)
 *   guard       the same, of GUARD if given (the real guard, exiting at its usage error)
 *   two_exec    exec "mini", which clones and execs /bin/true         (a guarded spawn's floor)
 *   overlapped  the clone child first clones /bin/true (CLONE_VM, a stack of its own, no
 *               VFORK) and then execs "adopt": the program's exec may run beside the guard's
 *               on another CPU (overlapped_tree)
 *   ahead       a guard launched ahead: before the clock, a SEQPACKET socketpair and a
 *               lifeline pipe, vfork+exec "ahead", and its ready message read (so it sleeps
 *               in poll when the request comes: the best case of a real design). Timed: the
 *               request (a fixed 256-byte record naming the program, with the program's
 *               stdio and an O_PATH fd of our cwd as SCM_RIGHTS, as a real spec would have
 *               to carry them), the guard's vfork+exec of /bin/true (dup2 of the stdio,
 *               fchdir) and its reap, the guard's 20-byte report, our read of it, and the
 *               reap of the guard (it exits after its report: one guard per tree, and
 *               wait() returns once the guard is gone, as today)
 *   ahead_report  the same, the clock stopped at the report's read (the guard's exit and
 *               reap after it): what a guard that outlived its report would leave
 *   ahead_chain the steady state of one guard per tree, each launched ahead of the next
 *               tree: "ahead", timed from the ready message's read (queued long before), with
 *               the next sample's guard launched (vfork+exec, the parent blocked) between the
 *               hand-over and the report's read, while this sample's program runs. That
 *               guard then sleeps through the other variants' samples (so every sample reaps
 *               its own child by pid, never until ECHILD)
 *   ahead_unused  a guard launched ahead that no spawn takes: launch, ready, lifeline and
 *               socket closed, reaped (what a made-ahead guard costs when the pattern does
 *               not repeat)
 *   overlapped_ns  "overlapped" with CLONE_NEWPID on the guard's clone: the program is pid 2
 *               of a new PID namespace and "adopt" its init (the unlimited pidns floor)
 *   limited_ns, limited_ns_nocpu  overlapped_ns in the tree's own limited v1 cgroups, and
 *               the same without the cpu group (issue 15: exec_floor_limits.c)
 * Beside the variants, "ahead_launch" is the untimed part of each "ahead" sample: launch
 * until the ready message is read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STACK_SIZE (64 * 1024)
#define MAX_ROUNDS 20000
#define VARIANTS 12
#define OVERLAPPED 4
#define AHEAD 5        /* the first of the four launched-ahead variants */
#define AHEAD_CHAIN 7
#define AHEAD_UNUSED 8 /* the last of them */
#define OVERLAPPED_NS 9
#define LIMITED_NS 10  /* and LIMITED_NS_NOCPU, 11 */
#define AHEAD_CTL 100  /* the launched-ahead guard's fds (the parent's are all lower) */
#define AHEAD_LIFE 101
#define REQUEST_SIZE 256
#define REPORT_SIZE 20 /* struct tether_guard_msg */
#define REQUEST_FDS 4  /* the program's stdin, stdout, stderr, and the cwd it starts in */

static char guard_stack[STACK_SIZE] __attribute__((aligned(16)));
static char program_stack[STACK_SIZE] __attribute__((aligned(16)));
char *self_path; /* shared with exec_floor_limits.c, as the functions not static are */
static char *guard_path;
static int limited; /* the limited variants are set up */
static char *no_env[] = {0};
static long samples[VARIANTS + 1][MAX_ROUNDS]; /* + 1: ahead_launch */
static const char *names[VARIANTS + 1] = {
    "true",         "noop",         "guard",       "two_exec",    "overlapped",
    "ahead",        "ahead_report", "ahead_chain", "ahead_unused", "overlapped_ns",
    "limited_ns",   "limited_ns_nocpu", "ahead_launch"};

/* exec_floor_limits.c's part: the limited variants' groups, a sample, the "usage" guard. */
int limits_open(char *const dirs[4]);
void limits_close(void);
long limited_sample(int with_cpu);
int usage_main(void);
int notice_main(int argc, char **argv); /* exec_floor_notice.c's modes (else -1) */
void put_row(const char *name, long *samples, int n); /* exec_floor_notice.c's */

long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* In a guard: reap every child, until ECHILD. */
void reap_all(void)
{
    siginfo_t info;
    while (waitid(P_ALL, 0, &info, WEXITED) == 0 || errno == EINTR)
        ;
}

/* In the bench: reap the sample's child (by pid, not until ECHILD: ahead_chain's next guard
 * waits, alive, through the other variants' samples); its exit status. */
static int reap(pid_t pid)
{
    siginfo_t info;
    memset(&info, 0, sizeof info);
    while (waitid(P_PID, (id_t)pid, &info, WEXITED) != 0 && errno == EINTR)
        ;
    return info.si_status;
}

int exec_argv(char *path, char *arg)
{
    char *argv[] = {path, arg, 0};
    syscall(SYS_execve, path, argv, no_env);
    _exit(127);
}

static int exec_true(void *unused) { (void)unused; return exec_argv("/bin/true", 0); }
static int exec_noop(void *unused) { (void)unused; return exec_argv(self_path, "exit"); }
static int exec_guard(void *unused) { (void)unused; return exec_argv(guard_path, 0); }
static int exec_mini(void *unused) { (void)unused; return exec_argv(self_path, "mini"); }

/* In a guard's clone child: clone /bin/true, sharing our memory but not our wait, on a stack
 * of its own (the parent is let go at our exec, the program may still be before its own). */
int start_program(void)
{
    return clone(exec_true, program_stack + STACK_SIZE, CLONE_VM | SIGCHLD, 0);
}

static int exec_overlapped(void *unused)
{
    (void)unused;
    if (start_program() < 0)
        _exit(126);
    return exec_argv(self_path, "adopt");
}

/* An overlapped start: child cloned (flags: CLONE_NEWPID or 0) on the guard's stack;
 * it clones the program and execs a guard. We wait for both execs (EOF on an O_CLOEXEC pipe
 * both hold) before the stacks may be reused, then reap the guard: its exit status. */
int overlapped_tree(int (*child)(void *), int flags)
{
    int pipefd[2];
    char byte;
    pid_t pid;
    if (pipe2(pipefd, O_CLOEXEC) != 0)
        _exit(3);
    pid = clone(child, guard_stack + STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD | flags, 0);
    close(pipefd[1]);
    while (read(pipefd[0], &byte, 1) < 0 && errno == EINTR)
        ;
    close(pipefd[0]);
    return reap(pid);
}

/* ---- the guard launched ahead ------------------------------------------------------------ */

/* The request: the program's path in a fixed record (argv and envp would follow it in a real
 * spec); its fds travel beside it. */
struct request {
    char path[REQUEST_SIZE];
};

static struct request request;
static int request_fds[REQUEST_FDS];

static int exec_request(void *unused)
{
    (void)unused;
    for (int fd = 0; fd < 3; fd++)
        if (dup2(request_fds[fd], fd) < 0)
            _exit(126);
    if (syscall(SYS_fchdir, request_fds[3]) != 0)
        _exit(126);
    return exec_argv(request.path, 0);
}

/* "ahead": ready, then asleep on the control socket and the lifeline until one speaks. */
static int ahead_main(void)
{
    struct pollfd pfd[2] = {{AHEAD_CTL, POLLIN, 0}, {AHEAD_LIFE, POLLIN, 0}};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof request_fds)];
    } cm;
    struct iovec iov = {&request, sizeof request};
    struct msghdr mh;
    struct cmsghdr *c;
    char report[REPORT_SIZE] = {0};
    siginfo_t info;
    if (write(AHEAD_CTL, "r", 1) != 1)
        return 3;
    for (;;) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 3;
        }
        if (pfd[0].revents & POLLIN)
            break;
        if (pfd[1].revents || pfd[0].revents) /* lifeline EOF, or the parent hung up */
            return 0;
    }
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cm.buf;
    mh.msg_controllen = sizeof cm.buf;
    if (syscall(SYS_recvmsg, AHEAD_CTL, &mh, MSG_CMSG_CLOEXEC) != (long)sizeof request)
        return 0;
    c = CMSG_FIRSTHDR(&mh);
    if (c == 0 || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof request_fds))
        return 3;
    memcpy(request_fds, CMSG_DATA(c), sizeof request_fds);
    clone(exec_request, guard_stack + STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, 0);
    for (int fd = 0; fd < REQUEST_FDS; fd++)
        close(request_fds[fd]);
    memset(&info, 0, sizeof info);
    while (waitid(P_ALL, 0, &info, WEXITED) == 0 || errno == EINTR)
        memcpy(report + 4, &info.si_status, sizeof info.si_status);
    return write(AHEAD_CTL, report, sizeof report) == (ssize_t)sizeof report ? 0 : 3;
}

/* A guard launched ahead, as the parent holds it. */
struct ahead {
    int ctl;  /* our end of its control socket */
    int life; /* the write end of its lifeline */
    pid_t pid;
};

static struct ahead chained; /* ahead_chain's next guard (pid 0: none yet) */
static int launch_fds[2];    /* the guard's ends, for its clone child */

static int exec_ahead(void *unused)
{
    (void)unused;
    /* dup2 leaves the copies inheritable; the originals are O_CLOEXEC */
    if (dup2(launch_fds[0], AHEAD_CTL) < 0 || dup2(launch_fds[1], AHEAD_LIFE) < 0)
        _exit(126);
    return exec_argv(self_path, "ahead");
}

/* Launch a guard ahead: a control socket, a lifeline, vfork+exec "ahead". */
static void launch_ahead(struct ahead *a)
{
    int pair[2], life[2];
    if (syscall(SYS_socketpair, AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0
        || pipe2(life, O_CLOEXEC) != 0)
        _exit(3);
    launch_fds[0] = pair[1];
    launch_fds[1] = life[0];
    a->pid = clone(exec_ahead, guard_stack + STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, 0);
    if (a->pid < 0)
        _exit(3);
    close(pair[1]);
    close(life[0]);
    a->ctl = pair[0];
    a->life = life[1];
}

/* Its ready message (a real design would not wait for one: the request would queue). */
static void await_ready(const struct ahead *a)
{
    char byte;
    if (read(a->ctl, &byte, 1) != 1)
        _exit(3);
}

static void drop_ahead(const struct ahead *a)
{
    close(a->ctl);
    close(a->life);
}

/* Hand the program to the guard launched ahead: the request and its fds in one message. */
static void hand_over(const struct ahead *a)
{
    static struct request req = {"/bin/true"};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof request_fds)];
    } cm;
    struct iovec iov = {&req, sizeof req};
    struct msghdr mh;
    struct cmsghdr *c;
    int fds[REQUEST_FDS] = {0, 1, 2, open(".", O_PATH | O_DIRECTORY | O_CLOEXEC)};
    memset(&cm, 0, sizeof cm);
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cm.buf;
    mh.msg_controllen = sizeof cm.buf;
    c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    if (fds[3] < 0 || sendmsg(a->ctl, &mh, MSG_NOSIGNAL) != (ssize_t)sizeof req)
        _exit(3);
    close(fds[3]);
}

/* The guard's report; exits if there is none or /bin/true did not run as asked. */
static void read_report(const struct ahead *a)
{
    char report[REPORT_SIZE];
    int status;
    ssize_t n;
    while ((n = read(a->ctl, report, sizeof report)) < 0 && errno == EINTR)
        ;
    memcpy(&status, report + 4, sizeof status);
    if (n != (ssize_t)sizeof report || status != 0)
        _exit(4);
}

/* One launched-ahead sample; *launch_ns: the untimed launch's own time (ahead). */
static long ahead_sample(int variant, long *launch_ns)
{
    struct ahead a;
    long start = now_ns(), end;
    if (variant == AHEAD_CHAIN) {
        /* The steady state of one guard per tree: this tree's guard was launched by the
         * last sample (untimed only the first time); the next one is launched here, once
         * the program is handed over, while it runs. */
        if (chained.pid == 0)
            launch_ahead(&chained);
        a = chained;
        start = now_ns();
        await_ready(&a);
        hand_over(&a);
        launch_ahead(&chained);
        read_report(&a);
        reap(a.pid);
        end = now_ns();
        drop_ahead(&a);
        return end - start;
    }
    launch_ahead(&a);
    await_ready(&a);
    *launch_ns = now_ns() - start;
    if (variant == AHEAD_UNUSED) {
        drop_ahead(&a);
        reap(a.pid);
        return now_ns() - start;
    }
    start = now_ns();
    hand_over(&a);
    read_report(&a);
    if (variant == AHEAD)
        reap(a.pid);
    end = now_ns();
    drop_ahead(&a);
    if (variant != AHEAD)
        reap(a.pid);
    return end - start;
}

static long one_sample(int variant, long *launch_ns)
{
    static int (*const fns[OVERLAPPED])(void *) = {exec_true, exec_noop, exec_guard, exec_mini};
    long start;
    if (variant >= LIMITED_NS)
        return limited_sample(variant == LIMITED_NS);
    if (variant >= AHEAD && variant <= AHEAD_UNUSED)
        return ahead_sample(variant, launch_ns);
    start = now_ns();
    if (variant == OVERLAPPED || variant == OVERLAPPED_NS)
        overlapped_tree(exec_overlapped, variant == OVERLAPPED_NS ? CLONE_NEWPID : 0);
    else
        reap(clone(fns[variant], guard_stack + STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, 0));
    return now_ns() - start;
}

void put(const char *s) { (void)!write(1, s, strlen(s)); }

void put_num(long v)
{
    char digits[24], out[24];
    int n = 0, k = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        out[k++] = digits[--n];
    out[k] = 0;
    put(out);
}

void sort(long *a, int n)
{
    for (int i = 1; i < n; i++) {
        long x = a[i];
        int j = i;
        for (; j > 0 && a[j - 1] > x; j--)
            a[j] = a[j - 1];
        a[j] = x;
    }
}

static long parse_rounds(const char *s)
{
    long v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    return v < 1 ? 1 : v > MAX_ROUNDS ? MAX_ROUNDS : v;
}

/* Not run: the real guard without its path, the limited variants without their groups. */
static int skipped(int v)
{
    return (v == 2 && !guard_path) || (v >= LIMITED_NS && v < VARIANTS && !limited);
}

static int bench(int rounds)
{
    int n_variants = VARIANTS;
    long launch_ns = 0;
    for (int i = 0; i < rounds / 10 + 10; i++) /* warm-up: page cache, dentries, the CPUs */
        for (int v = 0; v < n_variants; v++)
            if (!skipped(v))
                one_sample(v, &launch_ns);
    for (int i = 0; i < rounds; i++)
        for (int k = 0; k < n_variants; k++) {
            int v = (i + k) % n_variants;
            if (!skipped(v))
                samples[v][i] = one_sample(v, &launch_ns);
            if (v == AHEAD)
                samples[VARIANTS][i] = launch_ns;
        }
    if (chained.pid != 0) {
        drop_ahead(&chained);
        reap(chained.pid);
    }
    limits_close();
    for (int v = 0; v <= n_variants; v++) {
        if (skipped(v))
            continue;
        put_row(names[v], samples[v], rounds);
    }
    return 0;
}

int main(int argc, char **argv)
{
    int notice;
    self_path = argv[0];
    if (argc > 1 && strcmp(argv[1], "exit") == 0)
        return 0;
    if (argc > 1 && strcmp(argv[1], "mini") == 0) /* /bin/true, then reaped as "adopt" */
        clone(exec_true, guard_stack + STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, 0);
    if (argc > 1 && (strcmp(argv[1], "mini") == 0 || strcmp(argv[1], "adopt") == 0))
        return reap_all(), 0;
    if (argc > 1 && strcmp(argv[1], "ahead") == 0)
        return ahead_main();
    if (argc > 1 && strcmp(argv[1], "usage") == 0)
        return usage_main();
    if (argc > 2 && strcmp(argv[1], "bench") == 0) {
        int at = 3;
        if (argc > at && strcmp(argv[at], "--limits") != 0)
            guard_path = argv[at++];
        if (argc > at && (argc != at + 5 || strcmp(argv[at], "--limits") != 0))
            return put("exec_floor: --limits takes four directories\n"), 2;
        limited = argc > at && limits_open(argv + at + 1) == 0;
        return bench((int)parse_rounds(argv[2]));
    }
    if ((notice = notice_main(argc, argv)) < 0)
        put("usage: exec_floor bench N [GUARD] [--limits DIRS] | notice N\n"
            "     | exit|mini|adopt|ahead|usage|reader|relay\n");
    return notice < 0 ? 2 : notice;
}
