/*
 * guard_usage.c — the tree's final usage, read from its own cgroups (limits) once the tree
 * has ended, for MSG_EXITED's tail (guard_proto.h, struct tether_guard_usage).
 *
 * Why here and not in the parent: the parent used to read these four files after our exit,
 * in Python, on the path of every limited tree's wait() (about 110 us of its CPU); read here,
 * through the directory fds we hold already, they cost a few syscalls on our way out and
 * travel in the report we send anyway. Read after the end: every process of the tree has
 * exited (pidns: reaped to ECHILD; cgroup mode: "populated 0"), so each counter holds its
 * final value (the peaks are high-water marks; CPU time is charged at each exit). Our own
 * CPU from here to our exit is not in it: a few microseconds of the guard, not of the tree.
 *
 * The same files, in the same order of preference, as controllers.py's LimitedTree.usage,
 * which still reads a live tree's usage and a final one the guard could not report.
 */
#include "guard.h"

#include <fcntl.h>
#include <string.h>

/* Read the file `name` of directory dirfd into buf (NUL-terminated); its length, or -1. One
 * read: these files are a line or a few (cgroupfs hands a short file over whole). */
static ssize_t read_at(int dirfd, const char *name, char *buf, size_t size)
{
    ssize_t n;
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    do
        n = read(fd, buf, size - 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return n;
}

/* The decimal number at p (-1 if there is none). */
static int64_t number_at(const char *p)
{
    int64_t v = 0;
    if (*p < '0' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9')
        v = v * 10 + (*p++ - '0');
    return v;
}

/* A one-number file (memory.max_usage_in_bytes, pids.peak): its value, or -1. */
static int64_t file_number(int dirfd, const char *name)
{
    char buf[32];
    return read_at(dirfd, name, buf, sizeof buf) > 0 ? number_at(buf) : -1;
}

/* The value of line "key N" in a keyed file (cpu.stat, memory.events), or -1. */
static int64_t keyed_number(int dirfd, const char *name, const char *key)
{
    char buf[512];
    size_t klen = strlen(key);
    const char *p = buf;
    if (read_at(dirfd, name, buf, sizeof buf) <= 0)
        return -1;
    while (p != NULL && *p != '\0') {
        if (strncmp(p, key, klen) == 0 && p[klen] == ' ')
            return number_at(p + klen + 1);
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return -1;
}

/* v1 cpuacct.usage_all (4.11+): a header line, then "cpu user_ns system_ns" per CPU, summed
 * as it streams past (a row per CPU may be more than any buffer of ours). 0 once read. */
static int cpuacct_all(int dirfd, int64_t *user, int64_t *system)
{
    char buf[512];
    int64_t field[3] = {0, 0, 0};
    int column = 0, line = 0, digits = 0;
    ssize_t n, i;
    int fd = openat(dirfd, "cpuacct.usage_all", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    *user = *system = 0;
    for (;;) {
        do
            n = read(fd, buf, sizeof buf);
        while (n < 0 && errno == EINTR);
        if (n <= 0)
            break;
        for (i = 0; i < n; i++) {
            char c = buf[i];
            if (line > 0 && c >= '0' && c <= '9' && column < 3) {
                field[column] = field[column] * 10 + (c - '0');
                digits = 1;
                continue;
            }
            if (digits && column < 3)
                column++;
            digits = 0;
            if (c == '\n') {
                if (line++ > 0 && column == 3) {
                    *user += field[1];
                    *system += field[2];
                }
                field[0] = field[1] = field[2] = 0;
                column = 0;
            }
        }
    }
    close(fd);
    return n < 0 ? -1 : 0;
}

/* The CPU time of the tree: v1 cpuacct (usage_all, else usage_user and usage_sys, in ns), or
 * v2 cpu.stat (user_usec, system_usec). */
static void cpu_usage(int dirfd, struct tether_guard_usage *u)
{
    if (cpuacct_all(dirfd, &u->user_ns, &u->system_ns) == 0)
        return;
    u->user_ns = file_number(dirfd, "cpuacct.usage_user");
    u->system_ns = file_number(dirfd, "cpuacct.usage_sys");
    if (u->user_ns >= 0 || u->system_ns >= 0)
        return;
    u->user_ns = keyed_number(dirfd, "cpu.stat", "user_usec");
    u->system_ns = keyed_number(dirfd, "cpu.stat", "system_usec");
    if (u->user_ns > 0)
        u->user_ns *= 1000;
    if (u->system_ns > 0)
        u->system_ns *= 1000;
}

/* Fill *u from the --usage-* directories; 1 if the guard was given any (a tail to send). */
int read_tree_usage(struct tether_guard_usage *u)
{
    u->user_ns = u->system_ns = u->memory_peak = u->oom_kills = u->pids_peak = -1;
    if (g.usage_cpu_fd < 0 && g.usage_memory_fd < 0 && g.usage_pids_fd < 0)
        return 0;
    if (g.usage_cpu_fd >= 0)
        cpu_usage(g.usage_cpu_fd, u);
    if (g.usage_memory_fd >= 0) {
        /* v1 first: a v2 directory has neither file, a v1 one both. */
        u->memory_peak = file_number(g.usage_memory_fd, "memory.max_usage_in_bytes");
        u->oom_kills = keyed_number(g.usage_memory_fd, "memory.oom_control", "oom_kill");
        if (u->memory_peak < 0)
            u->memory_peak = file_number(g.usage_memory_fd, "memory.peak");
        if (u->oom_kills < 0)
            u->oom_kills = keyed_number(g.usage_memory_fd, "memory.events", "oom_kill");
    }
    if (g.usage_pids_fd >= 0)
        u->pids_peak = file_number(g.usage_pids_fd, "pids.peak");
    return 1;
}
