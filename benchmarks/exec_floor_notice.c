/*
 * exec_floor_notice.c — the floor of the exit notice (issue 13): from a program's exit to its
 * parent knowing of it, for the parent's own child (Popen.wait()'s one wakeup) against a
 * program under the smallest guard that reports (two wakeups in a row: the guard's, then the
 * parent's), and the same with tether's early wake. Linked with exec_floor.c by bench_floor.py.
 *
 *   exec_floor notice N    N rounds, the variants once per round in rotating order (a rotation
 *                          of its own, apart from "bench"'s: the two mix nothing); prints
 *                          "name median p25 p75" in nanoseconds, one a line, and on stderr
 *                          how often the early wake was taken and how often its spins ran out
 *   exec_floor reader      the program of every variant: maps the stamp page (fd 101, a
 *                          memfd MAP_SHARED), reads fd 0 until EOF, sleeps the page's delay,
 *                          stores its CLOCK_MONOTONIC in the page and _exit(0)s at once
 *   exec_floor relay       the smallest guard: its control socket on fd 100, the program's
 *                          stdin on fd 0; vfork+execs "reader", opens its pidfd, sends its pid
 *                          (4 bytes), sleeps in poll on the pidfd; reaps it, sends a 20-byte
 *                          report (struct tether_guard_msg's size, the status at offset 4),
 *                          exits
 *
 * Each sample starts its tree untimed: a pipe (O_CLOEXEC), the reader's stdin; vfork+exec of
 * the reader (notice_direct), or of the relay with a SEQPACKET socketpair, its pid read, and
 * the relay's pidfd opened (pidfd_open: the relay cannot exit before its program, nor the
 * program before the pipe's EOF). Then the parent waits until every process of the tree is
 * asleep ('S' in /proc/PID/stat: the reader in its read, the relay in its poll), checking
 * after each 1 ms sleep. It puts a delay D in the stamp page (uniform in 2-20 ms, a fixed
 * seed), closes the pipe's write end (the reader's EOF) and goes straight into its wait. The
 * reader sleeps D, reads CLOCK_MONOTONIC, stores it in the page (a plain store: the page was
 * mapped and touched before its read; nothing wakes the parent) and _exits. So the parent has
 * been asleep for milliseconds when the program exits, its vCPU halted, as in a real wait and
 * as in section 3 (_exitlat.py, whose child reads D from a pipe, sleeps it, then writes its
 * stamp to a pipe). Timed: from the reader's stamp to the parent's clock when it knows the program has
 * exited:
 *
 *   notice_direct   the reader is our child: waitid(P_PIDFD) on its pidfd (what
 *                   Popen.wait() does, without Python: one wakeup)
 *   notice_guarded  the reader is the relay's: we sleep in poll on the control socket, read
 *                   the report, reap the relay (a blocking waitid(P_PIDFD): it may still be
 *                   exiting). The clock stops after the reap, as tether's wait() returns only
 *                   once the guard is reaped
 *   notice_early    the same, our poll also on the reader's pidfd (pidfd_open of the pid the
 *                   relay sent, untimed, the reader alive): woken by it alone (the early
 *                   wake), we poll(0) the socket with sched_yield between, for at most 400 us
 *                   (tether's SPIN_NS), then read the report; the relay's pidfd is spun on the
 *                   same way before its reap (as core.reap_exiting). A spin that runs out
 *                   sleeps in poll (counted: it is the wake the spin was to save)
 *
 * notice_guarded_report and notice_early_report are the same samples with the clock read
 * once more, at the report's read: what a guard whose reap were off the path would leave.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* since 5.3 */
#endif
#ifndef P_PIDFD
#define P_PIDFD 3 /* since 5.4 */
#endif

#define STACK_SIZE (64 * 1024)
#define MAX_ROUNDS 20000
#define RELAY_CTL 100        /* the relay's control socket (the parent's fds are all lower) */
#define STAMP_FD 101         /* the stamp page's memfd, in the tree */
#define PAGE_SIZE 4096
#define REPORT_SIZE 20       /* struct tether_guard_msg */
#define SPIN_NS 400000L      /* the early wake's spin, at most (early_wake.py's SPIN_NS) */
#define SETTLE_NS 1000000L   /* the sleep between checks that the tree is asleep */
#define SETTLE_TRIES 1000    /* a tree not asleep after this many: the run ends */
#define DELAY_MIN_NS 2000000L  /* the reader's sleep after its EOF: uniform in 2-20 ms, */
#define DELAY_SPAN_NS 18000000L /* as _exitlat.py's D */

enum { DIRECT, GUARDED, EARLY, VARIANTS, GUARDED_REPORT = VARIANTS, EARLY_REPORT, SERIES };

/* exec_floor.c's part. */
extern char *self_path;
long now_ns(void);
int exec_argv(char *path, char *arg);
void put(const char *s);
void put_num(long v);
void sort(long *a, int n);

/* Ours, called by exec_floor.c's main. */
int notice_main(int argc, char **argv);
void put_row(const char *name, long *samples, int n);

/* One output line, "name median p25 p75\n", of n samples (ns), sorted here: every variant's,
 * ours and exec_floor.c's bench. */
void put_row(const char *name, long *samples, int n)
{
    static const int quarter[3] = {2, 1, 3};
    sort(samples, n);
    put(name);
    for (int q = 0; q < 3; q++) {
        put(" ");
        put_num(samples[quarter[q] * n / 4]);
    }
    put("\n");
}

/* The page the parent shares with every reader (a memfd, MAP_SHARED): the delay the parent
 * sets before the reader's EOF, and the reader's clock just before its _exit. */
struct stamp {
    long delay_ns;
    long exit_ns;
};

/* One tree, as the parent holds it (-1, 0: not in this variant). */
struct tree {
    int go;        /* the write end of the reader's stdin: its close lets the reader go */
    int in;        /* the read end, the child's stdin (ours closed once it has it) */
    int ctl;       /* our end of the relay's control socket */
    int peer;      /* the relay's end, for its clone child */
    int prog;      /* the reader's pidfd */
    int guard;     /* the relay's pidfd */
    pid_t program; /* the reader's pid */
};

static char child_stack[STACK_SIZE] __attribute__((aligned(16)));
static long samples[SERIES][MAX_ROUNDS];
static const char *names[SERIES] = {"notice_direct", "notice_guarded", "notice_early",
                                    "notice_guarded_report", "notice_early_report"};
static int early_wakes, report_spins_out, reap_spins_out; /* notice_early's, after warm-up */
static volatile struct stamp *stamp; /* the parent's mapping of the stamp page */
static int stamp_fd;                 /* its memfd (O_CLOEXEC), dup2'd to STAMP_FD in a tree */
static unsigned long delay_state = 7; /* the delays' xorshift64, a fixed seed */

static int pidfd_open(pid_t pid)
{
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0)
        _exit(3);
    return fd;
}

/* Reap through a pidfd (blocking); the run ends unless the child exited 0. */
static void reap_pidfd(int fd)
{
    siginfo_t info;
    memset(&info, 0, sizeof info);
    while (waitid((idtype_t)P_PIDFD, (id_t)fd, &info, WEXITED) != 0)
        if (errno != EINTR)
            _exit(4);
    if (info.si_code != CLD_EXITED || info.si_status != 0)
        _exit(4);
}

/* Sleep in poll until one of fds is ready. */
static void sleep_poll(struct pollfd *fds, nfds_t count)
{
    while (poll(fds, count, -1) < 0)
        if (errno != EINTR)
            _exit(3);
}

/* poll(fd, 0) until it is ready, sched_yield between (what we wait for may be queued on our
 * CPU), for at most SPIN_NS: 1 if it is ready, 0 if the spin ran out (as end.c's). */
static int spin_ready(struct pollfd *fd)
{
    long end = now_ns() + SPIN_NS;
    for (;;) {
        if (poll(fd, 1, 0) > 0)
            return 1;
        if (now_ns() >= end)
            return 0;
        syscall(SYS_sched_yield);
    }
}

/* v in decimal at `at` (no NUL): the end. */
static char *decimal(char *at, long v)
{
    char digits[24];
    int n = 0;
    do
        digits[n++] = (char)('0' + v % 10);
    while ((v /= 10) > 0);
    while (n)
        *at++ = digits[--n];
    return at;
}

/* ---- the reader and the relay ------------------------------------------------------------ */

/* "reader": map the stamp page and fault it in, read fd 0 until EOF (or an error), sleep
 * the page's delay, store the clock in the page and _exit(0) at once; 3 without the page. */
static int reader_main(void)
{
    char buf[64];
    ssize_t n;
    struct timespec delay;
    volatile struct stamp *page =
        mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, STAMP_FD, 0);
    if (page == MAP_FAILED)
        return 3;
    close(STAMP_FD);
    page->exit_ns = 0; /* the write fault taken now, not after the stamp */
    do
        n = read(0, buf, sizeof buf);
    while (n > 0 || (n < 0 && errno == EINTR));
    delay.tv_sec = page->delay_ns / 1000000000L;
    delay.tv_nsec = page->delay_ns % 1000000000L;
    while (nanosleep(&delay, &delay) != 0 && errno == EINTR)
        ;
    page->exit_ns = now_ns();
    _exit(0);
}

static int exec_reader(void *unused)
{
    (void)unused;
    return exec_argv(self_path, "reader");
}

/* "relay": the reader started and reported as above; 0, or 3 if a step failed. */
static int relay_main(void)
{
    struct pollfd program = {-1, POLLIN, 0};
    char report[REPORT_SIZE] = {0};
    siginfo_t info;
    pid_t pid;
    /* the reader inherits its stdin (fd 0), not the socket */
    if (fcntl(RELAY_CTL, F_SETFD, FD_CLOEXEC) != 0)
        return 3;
    pid = clone(exec_reader, child_stack + STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, 0);
    if (pid < 0 || (program.fd = (int)syscall(SYS_pidfd_open, pid, 0)) < 0)
        return 3;
    close(0);
    close(STAMP_FD); /* the reader's, not ours */
    if (write(RELAY_CTL, &pid, sizeof pid) != (ssize_t)sizeof pid)
        return 3;
    while (poll(&program, 1, -1) < 0)
        if (errno != EINTR)
            return 3;
    memset(&info, 0, sizeof info);
    while (waitid((idtype_t)P_PIDFD, (id_t)program.fd, &info, WEXITED) != 0)
        if (errno != EINTR)
            return 3;
    memcpy(report + 4, &info.si_status, sizeof info.si_status);
    return write(RELAY_CTL, report, sizeof report) == (ssize_t)sizeof report ? 0 : 3;
}

/* ---- the parent's side ------------------------------------------------------------------- */

/* The stamp page, set up once, untimed: a memfd of one page, mapped MAP_SHARED. */
static void open_stamp(void)
{
    void *page;
    stamp_fd = (int)syscall(SYS_memfd_create, "exec_floor-stamp", MFD_CLOEXEC);
    if (stamp_fd < 0 || syscall(SYS_ftruncate, stamp_fd, PAGE_SIZE) != 0)
        _exit(3);
    page = mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, stamp_fd, 0);
    if (page == MAP_FAILED)
        _exit(3);
    stamp = page;
}

/* The next reader's delay, uniform in DELAY_MIN_NS + [0, DELAY_SPAN_NS). */
static long next_delay(void)
{
    delay_state ^= delay_state << 13;
    delay_state ^= delay_state >> 7;
    delay_state ^= delay_state << 17;
    return DELAY_MIN_NS + (long)(delay_state % DELAY_SPAN_NS);
}

/* The time from the reader's stamp to end (our clock when we knew of its exit); the run ends
 * if the reader stored none. */
static long since_exit(long end)
{
    long exited = stamp->exit_ns;
    if (exited <= 0 || exited > end)
        _exit(4);
    return end - exited;
}

/* The clone child of start_tree: the pipe's read end as stdin, the stamp page's memfd on
 * STAMP_FD (the relay's reader inherits it), and for the relay its socket on RELAY_CTL
 * (dup2's copies are inheritable, the originals O_CLOEXEC). */
static int exec_tree(void *arg)
{
    const struct tree *t = arg;
    if (dup2(t->in, 0) < 0 || dup2(stamp_fd, STAMP_FD) < 0
        || (t->peer >= 0 && dup2(t->peer, RELAY_CTL) < 0))
        _exit(126);
    return exec_argv(self_path, t->peer >= 0 ? "relay" : "reader");
}

/* Whether process pid is asleep ('S' in /proc/PID/stat, after its comm's closing paren). */
static int asleep(pid_t pid)
{
    char path[40] = "/proc/", buf[512];
    int fd;
    ssize_t len;
    memcpy(decimal(path + 6, pid), "/stat", sizeof "/stat");
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return 0;
    len = read(fd, buf, sizeof buf - 1);
    close(fd);
    while (--len > 1 && buf[len] != ')')
        ;
    return len > 1 && buf[len + 1] == ' ' && buf[len + 2] == 'S';
}

/* Sleep SETTLE_NS at a time until the reader (and the relay, if any) are asleep. */
static void settle(pid_t relay, pid_t program)
{
    struct timespec pause = {0, SETTLE_NS};
    int tries = 0;
    do {
        if (++tries > SETTLE_TRIES)
            _exit(3);
        nanosleep(&pause, 0);
    } while (!asleep(program) || (relay > 0 && !asleep(relay)));
}

/* A tree for variant, untimed: the pipe, the reader (direct) or the relay and its reader,
 * the pidfds the variant waits on, every process of it asleep. */
static void start_tree(struct tree *t, int variant)
{
    int pipefd[2], pair[2] = {-1, -1};
    pid_t pid;
    if (pipe2(pipefd, O_CLOEXEC) != 0
        || (variant != DIRECT
            && syscall(SYS_socketpair, AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0))
        _exit(3);
    t->go = pipefd[1];
    t->in = pipefd[0];
    t->ctl = pair[0];
    t->peer = pair[1];
    t->prog = t->guard = -1;
    pid = clone(exec_tree, child_stack + STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, t);
    if (pid < 0)
        _exit(3);
    close(t->in);
    t->program = pid;
    if (variant != DIRECT) {
        close(t->peer);
        t->guard = pidfd_open(pid);
        if (read(t->ctl, &t->program, sizeof t->program) != (ssize_t)sizeof t->program)
            _exit(4);
    }
    if (variant != GUARDED)
        t->prog = pidfd_open(t->program);
    settle(variant != DIRECT ? pid : 0, t->program);
}

/* The relay's report: the run ends if there is none, or the reader did not exit 0. */
static void read_report(int ctl)
{
    char report[REPORT_SIZE];
    int status;
    ssize_t n;
    while ((n = read(ctl, report, sizeof report)) < 0 && errno == EINTR)
        ;
    memcpy(&status, report + 4, sizeof status);
    if (n != (ssize_t)sizeof report || status != 0)
        _exit(4);
}

/* One sample of variant: from the program's exit (its stamp) to our knowing of it;
 * *report_ns: to the report's read (guarded and early). */
static long notice_sample(int variant, long *report_ns)
{
    struct tree t;
    struct pollfd fds[2];
    long end;
    start_tree(&t, variant);
    fds[0] = (struct pollfd){t.ctl, POLLIN, 0};
    fds[1] = (struct pollfd){t.prog, POLLIN, 0};
    stamp->delay_ns = next_delay();
    stamp->exit_ns = 0;
    close(t.go); /* the reader's EOF: it exits D later, we are asleep in our wait by then */
    if (variant == DIRECT) {
        reap_pidfd(t.prog);
        end = now_ns();
        close(t.prog);
        return since_exit(end);
    }
    sleep_poll(fds, variant == EARLY ? 2 : 1);
    if (variant == EARLY && !fds[0].revents) { /* the reader's exit alone: the early wake */
        early_wakes++;
        if (!spin_ready(&fds[0])) {
            report_spins_out++;
            sleep_poll(fds, 1);
        }
    }
    read_report(t.ctl);
    *report_ns = since_exit(now_ns());
    fds[0] = (struct pollfd){t.guard, POLLIN, 0};
    if (variant == EARLY && !spin_ready(&fds[0]))
        reap_spins_out++; /* the reap below sleeps */
    reap_pidfd(t.guard);
    end = now_ns();
    close(t.ctl);
    close(t.guard);
    if (t.prog >= 0)
        close(t.prog);
    return since_exit(end);
}

/* On stderr, a line of notice_early's counts over the timed samples. */
static void say_counts(int rounds)
{
    char line[256], *at = line;
    const char *parts[] = {"exec_floor: notice_early: the early wake in ", " of ",
                           " samples; its spin for the report ran out in ",
                           ", for the relay's exit in ", "\n"};
    const long counts[] = {early_wakes, rounds, report_spins_out, reap_spins_out};
    for (int i = 0; i < 5; i++) {
        memcpy(at, parts[i], strlen(parts[i]));
        at += strlen(parts[i]);
        if (i < 4)
            at = decimal(at, counts[i]);
    }
    (void)!write(2, line, (size_t)(at - line));
}

/* "notice N": warm-up, then N rounds; the medians and quartiles, and on stderr the counts. */
static int notice_bench(int rounds)
{
    long report_ns = 0;
    open_stamp();
    for (int i = 0; i < rounds / 10 + 10; i++)
        for (int v = 0; v < VARIANTS; v++)
            notice_sample(v, &report_ns);
    early_wakes = report_spins_out = reap_spins_out = 0;
    for (int i = 0; i < rounds; i++)
        for (int k = 0; k < VARIANTS; k++) {
            int v = (i + k) % VARIANTS;
            samples[v][i] = notice_sample(v, &report_ns);
            if (v != DIRECT)
                samples[v == GUARDED ? GUARDED_REPORT : EARLY_REPORT][i] = report_ns;
        }
    for (int s = 0; s < SERIES; s++)
        put_row(names[s], samples[s], rounds);
    say_counts(rounds);
    return 0;
}

/* "notice N", "reader" or "relay" (argv[1]): its exit status; -1 for any other argv. */
int notice_main(int argc, char **argv)
{
    long rounds = 0;
    if (argc > 1 && strcmp(argv[1], "reader") == 0)
        return reader_main();
    if (argc > 1 && strcmp(argv[1], "relay") == 0)
        return relay_main();
    if (argc != 3 || strcmp(argv[1], "notice") != 0)
        return -1;
    for (const char *p = argv[2]; *p >= '0' && *p <= '9'; p++)
        rounds = rounds * 10 + (*p - '0');
    return notice_bench(rounds < 1 ? 1 : rounds > MAX_ROUNDS ? MAX_ROUNDS : (int)rounds);
}
