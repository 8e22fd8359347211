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

/* The files the end reads, opened once the start is reported (open_tree_usage: we only
 * sleep then, while the program runs) and read at the end with pread at offset 0, which
 * makes cgroupfs generate the file afresh: two syscalls fewer per file on the way out of
 * every limited tree than an openat/read/close there. -1: not opened (the end opens it). */
enum { U_CPU_ALL, U_CPU_USER, U_CPU_SYS, U_CPU_STAT, U_CPU_TOTAL, U_MEM_MAX, U_MEM_OOM,
       U_MEM_PEAK, U_MEM_EVENTS, U_PIDS_PEAK, U_FILES };
static const char *const usage_names[U_FILES] = {
    "cpuacct.usage_all", "cpuacct.usage_user", "cpuacct.usage_sys", "cpu.stat",
    "cpuacct.usage", "memory.max_usage_in_bytes", "memory.oom_control", "memory.peak",
    "memory.events", "pids.peak"};
static int usage_files[U_FILES] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1};

/* The directory fd a file of usage_names is read through, or -1. */
static int usage_dir(int file)
{
    if (file <= U_CPU_TOTAL)
        return g.usage_cpu_fd;
    return file <= U_MEM_EVENTS ? g.usage_memory_fd : g.usage_pids_fd;
}

/* Open file `f` of usage_names ahead; *short_of_fds set if the fd limit refused it. */
static void open_ahead(int f, int *short_of_fds)
{
    usage_files[f] = openat(usage_dir(f), usage_names[f], O_RDONLY | O_CLOEXEC);
    if (usage_files[f] < 0 && (errno == EMFILE || errno == ENFILE))
        *short_of_fds = 1;
}

/* Open each file the end will read, in the order read_tree_usage prefers them, stopping at
 * the first of a kind that exists (a v1 directory has no v2 file, and the other way round).
 * If the fd limit refuses one, none is kept open: the end then opens each in turn, one fd at
 * a time, as it did before, instead of failing to open the ones refused here while those
 * read already still held their fds (a usage counter lost at a tight RLIMIT_NOFILE). */
void open_tree_usage(void)
{
    static const int first[][3] = {{U_CPU_ALL, U_CPU_USER, U_CPU_STAT}, {U_MEM_MAX, U_MEM_PEAK, -1},
                                   {U_MEM_OOM, U_MEM_EVENTS, -1}, {U_PIDS_PEAK, -1, -1}};
    int short_of_fds = 0;
    for (size_t k = 0; k < sizeof first / sizeof first[0]; k++)
        for (int i = 0; i < 3 && first[k][i] >= 0 && usage_dir(first[k][i]) >= 0; i++) {
            int f = first[k][i];
            open_ahead(f, &short_of_fds);
            if (usage_files[f] >= 0) {
                if (f == U_CPU_USER) /* usage_user comes with usage_sys */
                    open_ahead(U_CPU_SYS, &short_of_fds);
                if (f == U_CPU_ALL || f == U_CPU_USER) /* and v1's split with its total */
                    open_ahead(U_CPU_TOTAL, &short_of_fds);
                break;
            }
        }
    for (int f = 0; short_of_fds && f < U_FILES; f++)
        if (usage_files[f] >= 0) {
            close(usage_files[f]);
            usage_files[f] = -1;
        }
}

/* Read file `f` of usage_names into buf at offset off (NUL-terminated, a short file whole in
 * one read): through its open fd, else opened now; its length, or -1. */
static ssize_t read_file(int f, char *buf, size_t size, off_t off)
{
    ssize_t n;
    int fd = usage_files[f], opened = -1;
    if (fd < 0 && usage_dir(f) >= 0)
        fd = opened = openat(usage_dir(f), usage_names[f], O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    do
        n = pread(fd, buf, size - 1, off);
    while (n < 0 && errno == EINTR);
    if (opened >= 0)
        close(opened);
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
static int64_t file_number(int f)
{
    char buf[32];
    return read_file(f, buf, sizeof buf, 0) > 0 ? number_at(buf) : -1;
}

/* The value of line "key N" in a keyed file (cpu.stat, memory.events), or -1. */
static int64_t keyed_number(int f, const char *key)
{
    char buf[512];
    size_t klen = strlen(key);
    const char *p = buf;
    if (read_file(f, buf, sizeof buf, 0) <= 0)
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
static int cpuacct_all(int64_t *user, int64_t *system)
{
    char buf[512];
    int64_t field[3] = {0, 0, 0};
    int column = 0, line = 0, digits = 0;
    ssize_t n, i;
    off_t off = 0;
    *user = *system = 0;
    while ((n = read_file(U_CPU_ALL, buf, sizeof buf, off)) > 0) {
        off += n;
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
    return n < 0 ? -1 : 0;
}

/* v1's user/system split is counted in timer ticks (4 ms apart here: a short tree reads 0),
 * its total (cpuacct.usage) by the scheduler, in ns: the split is scaled to the total, as the
 * kernel scales v2's cpu.stat (cputime_adjust: no tick at all counts as user time). */
static void scale_to_total(int64_t *user, int64_t *system)
{
    int64_t total = file_number(U_CPU_TOTAL);
    int64_t u = *user > 0 ? *user : 0, s = *system > 0 ? *system : 0;
    if (total < 0)
        return;
    *user = u + s > 0 ? (int64_t)((double)total * ((double)u / (double)(u + s))) : total;
    if (*user > total)
        *user = total;
    *system = total - *user;
}

/* The CPU time of the tree: v1 cpuacct (usage_all, else usage_user and usage_sys, in ns, as
 * scale_to_total makes them), or v2 cpu.stat (user_usec, system_usec). */
static void cpu_usage(struct tether_guard_usage *u)
{
    if (cpuacct_all(&u->user_ns, &u->system_ns) != 0) {
        u->user_ns = file_number(U_CPU_USER);
        u->system_ns = file_number(U_CPU_SYS);
    }
    if (u->user_ns >= 0 || u->system_ns >= 0) {
        scale_to_total(&u->user_ns, &u->system_ns);
        return;
    }
    u->user_ns = keyed_number(U_CPU_STAT, "user_usec");
    u->system_ns = keyed_number(U_CPU_STAT, "system_usec");
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
        cpu_usage(u);
    if (g.usage_memory_fd >= 0) {
        /* v1 first: a v2 directory has neither file, a v1 one both. */
        u->memory_peak = file_number(U_MEM_MAX);
        u->oom_kills = keyed_number(U_MEM_OOM, "oom_kill");
        if (u->memory_peak < 0)
            u->memory_peak = file_number(U_MEM_PEAK);
        if (u->oom_kills < 0)
            u->oom_kills = keyed_number(U_MEM_EVENTS, "oom_kill");
    }
    if (g.usage_pids_fd >= 0)
        u->pids_peak = file_number(U_PIDS_PEAK);
    return 1;
}
