/*
 * exec_floor.c — the floor under a guarded spawn: what two execs in a row cost with nothing
 * else (no Python, no protocol, no setup), against one exec, and what overlapping them could
 * win (issue 13). Built by bench_floor.py against the guard's own libc-free runtime
 * (src/tether/_kernel/nolibc/rt.c), so the "guard" here execs exactly as cheaply as a static
 * binary with no libc start-up can.
 *
 *   exec_floor bench N [GUARD]    N rounds, every variant once per round in rotating order;
 *                                 prints "name median p25 p75" in nanoseconds, one a line
 *   exec_floor exit               exit at once (the exec floor of this binary)
 *   exec_floor mini               the smallest guard: clone(VM|VFORK)+exec /bin/true, reap
 *   exec_floor adopt              the overlapped guard: reap the program its pre-exec self
 *                                 started, until ECHILD
 *
 * Variants (each one sample = clone, exec(s), every child reaped):
 *   true        vfork-style clone + exec /bin/true                    (Popen's floor)
 *   noop        the same, of this static binary exiting at once       (a guard exec's floor)
 *   guard       the same, of GUARD if given (the real guard, exiting at its usage error)
 *   two_exec    exec "mini", which clones and execs /bin/true         (a guarded spawn's floor)
 *   overlapped  the clone child first clones /bin/true (CLONE_VM, a stack of its own, no
 *               VFORK) and then execs "adopt": the program's exec may run beside the guard's
 *               on another CPU. The parent waits for both execs (EOF on an O_CLOEXEC pipe both
 *               hold) before it reuses the stacks, then reaps.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STACK_SIZE (64 * 1024)
#define MAX_ROUNDS 20000
#define VARIANTS 5

static char guard_stack[STACK_SIZE] __attribute__((aligned(16)));
static char program_stack[STACK_SIZE] __attribute__((aligned(16)));
static char *self_path;
static char *guard_path;
static char *no_env[] = {0};
static long samples[VARIANTS][MAX_ROUNDS];
static const char *names[VARIANTS] = {"true", "noop", "guard", "two_exec", "overlapped"};

static long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void reap_all(void)
{
    siginfo_t info;
    while (waitid(P_ALL, 0, &info, WEXITED) == 0 || errno == EINTR)
        ;
}

static int exec_argv(char *path, char *arg)
{
    char *argv[] = {path, arg, 0};
    syscall(SYS_execve, path, argv, no_env);
    _exit(127);
}

static int exec_true(void *unused) { (void)unused; return exec_argv("/bin/true", 0); }
static int exec_noop(void *unused) { (void)unused; return exec_argv(self_path, "exit"); }
static int exec_guard(void *unused) { (void)unused; return exec_argv(guard_path, 0); }
static int exec_mini(void *unused) { (void)unused; return exec_argv(self_path, "mini"); }

static int exec_overlapped(void *unused)
{
    (void)unused;
    if (clone(exec_true, program_stack + STACK_SIZE, CLONE_VM | SIGCHLD, 0) < 0)
        _exit(126);
    return exec_argv(self_path, "adopt");
}

static long one_sample(int variant)
{
    static int (*const fns[VARIANTS])(void *) = {exec_true, exec_noop, exec_guard, exec_mini,
                                                 exec_overlapped};
    int pipefd[2];
    char byte;
    long start = now_ns();
    if (variant == 4 && pipe2(pipefd, O_CLOEXEC) != 0)
        _exit(3);
    clone(fns[variant], guard_stack + STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, 0);
    if (variant == 4) {
        close(pipefd[1]);
        while (read(pipefd[0], &byte, 1) < 0 && errno == EINTR)
            ;
        close(pipefd[0]);
    }
    reap_all();
    return now_ns() - start;
}

static void put(const char *s) { (void)!write(1, s, strlen(s)); }

static void put_num(long v)
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

static void sort(long *a, int n)
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

static int bench(int rounds)
{
    int n_variants = VARIANTS;
    for (int i = 0; i < rounds / 10 + 10; i++) /* warm-up: page cache, dentries, the CPUs */
        for (int v = 0; v < n_variants; v++)
            if (v != 2 || guard_path)
                one_sample(v);
    for (int i = 0; i < rounds; i++)
        for (int k = 0; k < n_variants; k++) {
            int v = (i + k) % n_variants;
            if (v != 2 || guard_path)
                samples[v][i] = one_sample(v);
        }
    for (int v = 0; v < n_variants; v++) {
        if (v == 2 && !guard_path)
            continue;
        sort(samples[v], rounds);
        put(names[v]);
        put(" ");
        put_num(samples[v][rounds / 2]);
        put(" ");
        put_num(samples[v][rounds / 4]);
        put(" ");
        put_num(samples[v][3 * rounds / 4]);
        put("\n");
    }
    return 0;
}

int main(int argc, char **argv)
{
    self_path = argv[0];
    if (argc > 1 && strcmp(argv[1], "exit") == 0)
        return 0;
    if (argc > 1 && strcmp(argv[1], "mini") == 0) {
        clone(exec_true, guard_stack + STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, 0);
        reap_all();
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "adopt") == 0) {
        reap_all();
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "bench") == 0) {
        guard_path = argc > 3 ? argv[3] : 0;
        return bench((int)parse_rounds(argv[2]));
    }
    put("usage: exec_floor bench N [GUARD] | exit | mini | adopt\n");
    return 2;
}
