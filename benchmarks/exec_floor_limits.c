/*
 * exec_floor_limits.c — exec_floor.c's limited variants (issue 15): what the kernel alone
 * charges for starting a tree in cgroups of its own, with resource limits, against the same
 * start without them (overlapped_ns). Linked with exec_floor.c by bench_floor.py.
 *
 * The layout is a hybrid host's: memory, cpu, cpuacct and pids each on a v1 hierarchy of its
 * own. The caller passes one empty directory per hierarchy, made in this process's own group
 * there (bench_floor.py: `<own>/tether-floor-<pid>`, at the depth of tether's `<own>/tether`),
 * and removes them. Each step is tether's for a limited tree in pidns mode:
 *
 *   once      the pooled groups: "pool" under the cpu, cpuacct and pids directories, limits
 *             written (cpu.cfs_quota_us 100000 per cpu.cfs_period_us 100000, pids.max 100)
 *             and left, shared by every tree as tether's pool shares them
 *   untimed   the tree's memory group, fresh per tree: "tree" under the memory directory,
 *             memory.limit_in_bytes 536870912, made after the previous sample (tether makes
 *             it ahead); the pool's cpuacct.usage reset ("0") before the clock
 *   timed     overlapped_ns, whose clone child (pid 1 of the new PID namespace) first joins
 *             the groups, writing "0" into "tasks" through an openat of each directory fd the
 *             parent holds (clone_early.c's tether_cgroup_join), so the program it clones
 *             next starts in them. The guard ("usage", the namespace's init) reaps to ECHILD,
 *             then reads the tree's usage through the directory fds it inherited, as
 *             guard_usage.c does: cpuacct.usage_all to its end, memory.max_usage_in_bytes,
 *             memory.oom_control, pids.peak. The parent reaps it, then closes and removes the
 *             tree's memory group (on tether's path too)
 *
 * limited_ns joins all four groups; limited_ns_nocpu all but cpu's: the difference is what
 * the cpu controller's group scheduling costs (a program in a cpu group of its own has been
 * seen not to be preempted by the parent's wake-up, so the parent waits behind it on the same
 * CPU). The guard checks what it read (the tree was counted: a memory peak, a pids.peak of two
 * at least) and exits non-zero otherwise, and the parent, untimed, that cpuacct.usage counted
 * the tree's CPU time; a failure ends the run (a join that missed must not flatter it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { MEMORY, CPU, CPUACCT, PIDS, HIERARCHIES }; /* --limits' order, and the joins' */
#define USAGE_FD 110 /* the usage guard's directories: cpuacct, memory, pids (110-112) */
#define POOL "pool"
#define TREE "tree"

/* exec_floor.c's part. */
extern char *self_path;
long now_ns(void);
void reap_all(void);
int exec_argv(char *path, char *arg);
int start_program(void);
int overlapped_tree(int (*child)(void *), int flags);

/* Ours, called by exec_floor.c. */
int limits_open(char *const dirs[HIERARCHIES]);
void limits_close(void);
long limited_sample(int with_cpu);
int usage_main(void);

static int parent_fd[HIERARCHIES] = {-1, -1, -1, -1}; /* the caller's directories */
static int group_fd[HIERARCHIES] = {-1, -1, -1, -1};  /* the tree's: memory fresh, others pooled */
static int join_cpu; /* this sample's clone child joins the cpu group (limited_ns) */

/* A line on stderr: "what where (label n)" (errno as a number: no strerror without a libc). */
static void say(const char *what, const char *where, const char *label, int n)
{
    char digits[] = "000)\n";
    digits[0] = (char)('0' + n / 100 % 10);
    digits[1] = (char)('0' + n / 10 % 10);
    digits[2] = (char)('0' + n % 10);
    (void)!write(2, what, strlen(what));
    (void)!write(2, where, strlen(where));
    (void)!write(2, label, strlen(label));
    (void)!write(2, digits, strlen(digits));
}

/* A failed limited sample: the run ends (its numbers would not be the limited start's). */
static void fail(const char *what, const char *label, int n)
{
    say("exec_floor: a limited sample failed: ", what, label, n);
    _exit(5);
}

/* One short text into the file `name` of directory dirfd, as clone.c's tether_write_text_at
 * (async-signal-safe: the clone child's joins): 0, or -1. */
static int write_at(int dirfd, const char *name, const char *text)
{
    size_t len = strlen(text);
    ssize_t n;
    int fd = openat(dirfd, name, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    do
        n = write(fd, text, len);
    while (n < 0 && errno == EINTR);
    close(fd);
    return n == (ssize_t)len ? 0 : -1;
}

/* The file `name` of directory dirfd into buf, NUL-terminated, as guard_usage.c reads it: one
 * read (a file of a line or a few), or (to_end) reads to its end. Its length, or -1. */
static ssize_t read_at(int dirfd, const char *name, char *buf, size_t size, int to_end)
{
    ssize_t n, len = 0;
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    do {
        do
            n = read(fd, buf + len, size - 1 - (size_t)len);
        while (n < 0 && errno == EINTR);
        len += n > 0 ? n : 0;
    } while (to_end && n > 0 && (size_t)len < size - 1);
    close(fd);
    buf[len] = '\0';
    return n < 0 ? -1 : len;
}

/* The decimal number at p, or -1. */
static long number_at(const char *p)
{
    long v = 0;
    if (*p < '0' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9')
        v = v * 10 + (*p++ - '0');
    return v;
}

/* Make the group `name` in hierarchy h, open it into group_fd[h] and write its limit (file
 * 0: none): 0, or -1. */
static int make_group(int h, const char *name, const char *file, const char *value)
{
    if (syscall(SYS_mkdirat, parent_fd[h], name, 0755) != 0)
        return -1;
    group_fd[h] = openat(parent_fd[h], name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return group_fd[h] < 0 || (file != 0 && write_at(group_fd[h], file, value) != 0) ? -1 : 0;
}

/* The next tree's memory group, made ahead. */
static int make_memory_group(void)
{
    return make_group(MEMORY, TREE, "memory.limit_in_bytes", "536870912");
}

/* Close group_fd[h] and remove the group `name`: 0, or -1 (it was not there, or is busy). */
static int remove_group(int h, const char *name)
{
    if (group_fd[h] >= 0)
        close(group_fd[h]);
    group_fd[h] = -1;
    return parent_fd[h] < 0 ? -1 : (int)syscall(SYS_unlinkat, parent_fd[h], name, AT_REMOVEDIR);
}

/* Whatever limits_open and the samples made, removed (also after a failed set-up: the caller
 * sweeps its directories too). */
void limits_close(void)
{
    for (int h = 0; h < HIERARCHIES; h++) {
        remove_group(h, h == MEMORY ? TREE : POOL);
        if (parent_fd[h] >= 0)
            close(parent_fd[h]);
        parent_fd[h] = -1;
    }
}

/* The pooled groups with their limits, and the first tree's memory group: -1, or the
 * hierarchy that refused. */
static int make_groups(void)
{
    /* the quota after the period it must fit in */
    if (make_group(CPU, POOL, "cpu.cfs_period_us", "100000") != 0
        || write_at(group_fd[CPU], "cpu.cfs_quota_us", "100000") != 0)
        return CPU;
    if (make_group(CPUACCT, POOL, 0, 0) != 0)
        return CPUACCT;
    if (make_group(PIDS, POOL, "pids.max", "100") != 0)
        return PIDS;
    return make_memory_group() != 0 ? MEMORY : -1;
}

/* Open the caller's directories (MEMORY CPU CPUACCT PIDS) and make the groups: 0, or -1 with
 * the reason on stderr (no limited variants then). */
int limits_open(char *const dirs[HIERARCHIES])
{
    const char *what = "exec_floor: limited variants skipped: cannot open ";
    int h = 0;
    while (h < HIERARCHIES
           && (parent_fd[h] = open(dirs[h], O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0)
        h++;
    if (h == HIERARCHIES) {
        h = make_groups();
        if (h < 0)
            return 0;
        what = "exec_floor: limited variants skipped: cannot make a limited group in ";
    }
    say(what, dirs[h], " (errno ", errno);
    limits_close();
    return -1;
}

/* The guard's clone child, pid 1 of a new PID namespace: into the tree's groups; the program
 * cloned there; the usage guard's directories put where it finds them (after the program's
 * clone, which inherits none: the originals are O_CLOEXEC, dup2's copies not); its exec. */
static int limited_child(void *unused)
{
    (void)unused;
    for (int h = 0; h < HIERARCHIES; h++)
        if ((h != CPU || join_cpu) && write_at(group_fd[h], "tasks", "0") != 0)
            _exit(125);
    if (start_program() < 0)
        _exit(126);
    if (dup2(group_fd[CPUACCT], USAGE_FD) < 0 || dup2(group_fd[MEMORY], USAGE_FD + 1) < 0
        || dup2(group_fd[PIDS], USAGE_FD + 2) < 0)
        _exit(126);
    return exec_argv(self_path, "usage");
}

/* One limited sample (with_cpu: limited_ns, else limited_ns_nocpu): its time. */
long limited_sample(int with_cpu)
{
    char buf[32];
    long start, end;
    int status;
    join_cpu = with_cpu;
    if (write_at(group_fd[CPUACCT], "cpuacct.usage", "0") != 0)
        fail("cpuacct.usage's reset", " (errno ", errno);
    start = now_ns();
    status = overlapped_tree(limited_child, CLONE_NEWPID);
    if (remove_group(MEMORY, TREE) != 0)
        fail("the memory group's rmdir", " (errno ", errno);
    end = now_ns();
    if (status != 0)
        fail("the tree's guard or its clone child", " (exit status ", status);
    if (read_at(group_fd[CPUACCT], "cpuacct.usage", buf, sizeof buf, 0) <= 0
        || number_at(buf) <= 0)
        fail("the tree's CPU time, not in its cpuacct group", " (errno ", errno);
    if (make_memory_group() != 0)
        fail("the next memory group", " (errno ", errno);
    return end - start;
}

/* ---- the usage guard -------------------------------------------------------------------- */

/* "usage": the limited tree's guard, the init of its PID namespace, in its groups. Reaps the
 * tree as "adopt" does, then reads its usage; 0, or which check failed (5-8). */
int usage_main(void)
{
    char buf[512];
    reap_all();
    /* a header line and a row per CPU (their user and system times are sampled at the tick,
     * 5.16+: mostly 0 for a tree this short; limited_sample checks cpuacct.usage instead) */
    if (read_at(USAGE_FD, "cpuacct.usage_all", buf, sizeof buf, 1) <= 0
        || strchr(buf, '\n') == 0 || strchr(buf, '\n')[1] == '\0')
        return 5;
    if (read_at(USAGE_FD + 1, "memory.max_usage_in_bytes", buf, sizeof buf, 0) <= 0
        || number_at(buf) <= 0)
        return 6;
    if (read_at(USAGE_FD + 1, "memory.oom_control", buf, sizeof buf, 0) <= 0)
        return 7;
    if (read_at(USAGE_FD + 2, "pids.peak", buf, sizeof buf, 0) <= 0 || number_at(buf) < 2)
        return 8;
    return 0;
}
