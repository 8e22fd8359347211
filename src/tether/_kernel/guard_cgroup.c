/*
 * guard_cgroup.c — the tree's cgroup (cgroup mode): cgroup.events, cgroup.kill, cgroup.freeze,
 * the members of nested cgroups, and the removal of the directory when the tree has ended;
 * and the per-tree cgroups of limits (v1 per controller), which the guard joins itself.
 */
#include "guard.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* cgroup files (cgroup mode). Reached through the directory fd, never re-resolved by path,    */
/* except for the final rmdir, which needs the path.                                            */
/* ------------------------------------------------------------------------------------------ */

static int line_value(const char *text, const char *key)
{
    size_t klen = strlen(key);
    const char *p = text;
    while (*p != '\0') {
        if (strncmp(p, key, klen) == 0 && p[klen] == ' ')
            return p[klen + 1] == '1';
        p = strchr(p, '\n');
        if (p == NULL)
            break;
        p++;
    }
    return -1;
}

/* Re-read cgroup.events: refreshes populated/frozen and re-arms its POLLPRI notification. */
void cg_read_events(void)
{
    char buf[160];
    ssize_t n;
    int v;
    do
        n = pread(g.events_fd, buf, sizeof buf - 1, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return;
    buf[n] = '\0';
    v = line_value(buf, "populated");
    if (v >= 0)
        g.populated = v;
    v = line_value(buf, "frozen");
    if (v >= 0)
        g.frozen = v;
}

struct linux_dirent64 {
    uint64_t ino;
    int64_t off;
    unsigned short reclen;
    unsigned char type;
    char name[];
};

/* Call visit(listing_fd, name, depth, arg) for each sub-directory of dirfd (nested cgroups
 * the program made; only root can). Returns how many visits returned non-zero. */
static int cg_each_subdir(int dirfd, int (*visit)(int, const char *, int, int), int depth,
                          int arg)
{
    char buf[512];
    ssize_t n;
    int hits = 0;
    /* A fresh open of ".": its own directory offset, whatever the caller's fd has read. */
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || depth > CGROUP_MAX_DEPTH) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    for (;;) {
        ssize_t off = 0;
        do
            n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        while (n < 0 && errno == EINTR);
        if (n <= 0)
            break;
        while (off < n) {
            const struct linux_dirent64 *d = (const void *)(buf + off);
            if (d->type == DT_DIR && strcmp(d->name, ".") != 0 && strcmp(d->name, "..") != 0)
                hits += visit(fd, d->name, depth, arg) != 0;
            off += d->reclen;
        }
    }
    close(fd);
    return hits;
}

static void signal_one_pid(pid_t pid, int sig)
{
    /* Race-free only because the cgroup is frozen: a frozen task cannot exit by itself, so
     * the number read from cgroup.procs still names that task when we open it. */
    int pidfd = sys_pidfd_open(pid);
    if (pidfd < 0)
        return;
    (void)sys_pidfd_send_signal(pidfd, sig, 0);
    /* Frozen, it handles neither until the thaw; then the signal comes first. */
    if (ends_program(sig))
        (void)sys_pidfd_send_signal(pidfd, SIGCONT, 0);
    close(pidfd);
}

static int signal_nested(int dirfd, const char *name, int depth, int sig);

/* Signal every pid in dirfd's cgroup.procs and, depth first, in every nested cgroup below it
 * (cgroup.freeze and cgroup.kill act on the whole subtree; so must we). */
static void cg_signal_members(int dirfd, int depth, int sig)
{
    char buf[512];
    ssize_t n;
    long pid = -1;
    int fd = openat(dirfd, "cgroup.procs", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        for (;;) {
            ssize_t i;
            do
                n = read(fd, buf, sizeof buf);
            while (n < 0 && errno == EINTR);
            if (n <= 0)
                break;
            for (i = 0; i < n; i++) { /* one pid per line; a number may span two reads */
                if (buf[i] >= '0' && buf[i] <= '9') {
                    pid = (pid < 0 ? 0 : pid * 10) + (buf[i] - '0');
                } else if (pid >= 0) {
                    signal_one_pid((pid_t)pid, sig);
                    pid = -1;
                }
            }
        }
        if (pid >= 0)
            signal_one_pid((pid_t)pid, sig);
        close(fd);
    }
    (void)cg_each_subdir(dirfd, signal_nested, depth + 1, sig);
}

static int signal_nested(int dirfd, const char *name, int depth, int sig)
{
    int sub = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sub >= 0) {
        cg_signal_members(sub, depth, sig);
        close(sub);
    }
    return 0;
}

/* Signal every member of the cgroup: freeze, list, signal through fresh pidfds, thaw. */
void cg_signal_frozen(int sig)
{
    struct pollfd pfd[2];
    if (tether_write_text_at(g.cgroup_fd, "cgroup.freeze", "1") < 0)
        return;
    for (;;) {
        int n = 1;
        cg_read_events();
        if (g.frozen == 1 || g.populated == 0)
            break;
        pfd[0].fd = g.events_fd;
        pfd[0].events = POLLPRI;
        if (g.lifeline >= 0 && sig != SIGKILL) {
            /* Do not sit here while the parent dies: the main loop kills the tree instead
             * (unless this already is that kill: cgroup.kill missing, before 5.14). */
            pfd[1].fd = g.lifeline;
            pfd[1].events = POLLIN;
            n = 2;
        }
        /* No deadline: only a task in uninterruptible sleep delays the freeze, and it would
         * delay its own death just as much. */
        if (poll(pfd, (nfds_t)n, -1) < 0 && errno != EINTR)
            goto thaw; /* never signal by number unfrozen */
        if (n == 2 && pfd[1].revents != 0)
            goto thaw;
    }
    cg_signal_members(g.cgroup_fd, 0, sig);
thaw:
    (void)tether_write_text_at(g.cgroup_fd, "cgroup.freeze", "0");
}

void cg_kill(void)
{
    ssize_t n = -1;
    /* Nothing left to kill: the program was the tree's last live member, the usual end
     * (cgroup.events says "populated 0" as soon as it has exited, before we reap it). No
     * member can come meanwhile: only a live member's fork adds one. */
    cg_read_events();
    if (g.populated == 0)
        return;
    /* Opened here, not at setup: most trees end empty, and never need it. ENOENT: before
     * 5.14, freeze instead. */
    if (g.cgkill_fd < 0)
        g.cgkill_fd = openat(g.cgroup_fd, "cgroup.kill", O_WRONLY | O_CLOEXEC);
    if (g.cgkill_fd >= 0) {
        /* cgroup.kill (5.14) SIGKILLs the whole subtree and keeps killing what forks
         * meanwhile, setsid'd daemons included. */
        do
            n = pwrite(g.cgkill_fd, "1", 1, 0);
        while (n < 0 && errno == EINTR);
    }
    if (n < 0)
        cg_signal_frozen(SIGKILL);
}

/* Remove a nested cgroup (the program made it) after its own nested ones; 1 if removed. */
static int remove_nested(int dirfd, const char *name, int depth, int unused)
{
    int sub = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    (void)unused;
    if (sub >= 0) {
        /* Again until a pass removes nothing: removing entries while listing them may make
         * the listing skip some. */
        while (cg_each_subdir(sub, remove_nested, depth + 1, 0) > 0)
            ;
        close(sub);
    }
    return unlinkat(dirfd, name, AT_REMOVEDIR) == 0;
}

/* Wait up to ms for cgroup.events to change (re-armed by the read). */
static void cg_wait_events(int ms)
{
    if (g.events_fd >= 0) {
        struct pollfd pfd = {g.events_fd, POLLPRI, 0};
        cg_read_events();
        (void)poll(&pfd, 1, ms);
    } else {
        struct timespec ts = {0, ms * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Remove the tree's cgroup directory: 0 once it is gone, else -errno.
 *
 * The one retry policy, the same as cgroup.py's (_kill_and_remove, which CgroupTree.remove
 * and the start-up sweep use on a directory that no guard removed):
 *   - ENOENT counts as removed; any error but EBUSY is final;
 *   - EBUSY means a member is still on its way out (the directory becomes removable once
 *     every member has exited, zombies included): try again after a wait for cgroup.events
 *     to change (its "populated 0"), until CG_REMOVE_TIMEOUT_MS have passed (5 s, as in
 *     cgroup.py).
 * A try that finds the directory busy removes, depth first, the nested cgroups the program
 * made (only root can), and goes again at once if it removed some. The rmdir comes first:
 * almost no tree has nested cgroups, and listing the directory (an open and three getdents)
 * cost every tree's exit ~15 us before the one rmdir it needed. The one deliberate difference: the guard waits
 * at most CG_REMOVE_WAIT_MS (2 ms) per try where cgroup.py waits 10 ms. The guard is on every
 * cgroup tree's exit path, and the populated notification is rate-limited (one per 10 ms per
 * file), so waiting for the event alone could cost each such tree 10 ms; cgroup.py only runs
 * where no guard did the removal. EINTR is not a policy matter: the same try again, as
 * Python's os.rmdir does by itself (PEP 475). */
int cg_remove(int parent_gone)
{
    int64_t deadline;
    if (g.contain != CONTAIN_CGROUP || g.cgroup_path == NULL)
        return 0;
    deadline = now_ms() + CG_REMOVE_TIMEOUT_MS;
    if (g.keep_cgroup && !parent_gone) {
        /* Limits: the parent reads the tree's final usage there, then removes it. Still
         * "populated 0" before the report, as a removal would have waited for. */
        cg_read_events();
        while (g.populated != 0 && now_ms() < deadline)
            cg_wait_events(CG_REMOVE_WAIT_MS);
        return g.populated == 0 ? 0 : -EBUSY;
    }
    for (;;) {
        int nested;
        if (rmdir(g.cgroup_path) == 0 || errno == ENOENT)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno != EBUSY)
            return -errno;
        /* Busy: nested cgroups (rmdir says EBUSY for those too), or members still exiting. */
        nested = g.cgroup_fd >= 0 ? cg_each_subdir(g.cgroup_fd, remove_nested, 1, 0) : 0;
        if (nested > 0)
            continue;
        if (now_ms() >= deadline)
            return -EBUSY;
        cg_wait_events(CG_REMOVE_WAIT_MS);
    }
}

/* Whether the parent is gone, now that the tree has ended: its lifeline said EOF *and* its
 * control socket has hung up. A live parent cuts the lifeline too (abandon, a failed start,
 * a dropped Child), but keeps the socket until it has reaped us, then reads the tree's final
 * usage and removes or pools the directories itself; a dead one closed both. The kernel
 * closes a dying process's fds one after the other, so when lifeline EOF is what ended the
 * tree, the socket gets PARENT_HUP_GRACE_MS to follow (only a live parent's failed start
 * ever waits that long; abandon sends MSG_KILL_TREE first). */
int parent_gone(void)
{
    struct pollfd pfd;
    if (g.lifeline >= 0)
        return 0;
    if (g.control < 0)
        return 1;
    pfd.fd = g.control;
    pfd.events = 0; /* POLLHUP is always reported */
    pfd.revents = 0;
    while (poll(&pfd, 1, g.lifeline_ended ? PARENT_HUP_GRACE_MS : 0) < 0 && errno == EINTR)
        ;
    return (pfd.revents & POLLHUP) != 0;
}

/* Remove one v1 directory we joined: out of it first (into its parent directory, v1 has no
 * no-internal-process rule), then the nested ones the program made (only root can), then
 * rmdir by the path the kernel gives for our fd; EBUSY while a member is still on its way
 * out, as in cg_remove (v1 has no "populated" notification: a plain wait). 0 once gone. */
static int remove_joined(int dirfd)
{
    char link[40] = "/proc/self/fd/", path[512];
    int64_t deadline = now_ms() + CG_REMOVE_TIMEOUT_MS;
    ssize_t n;
    int r;
    (void)fmt_u64(link + 14, (unsigned long long)dirfd);
    n = readlinkat(AT_FDCWD, link, path, sizeof path);
    if (n <= 0 || (size_t)n >= sizeof path)
        return n < 0 ? -errno : -ENAMETOOLONG;
    path[n] = '\0';
    r = (int)tether_write_text_at(dirfd, "../tasks", "0");
    if (r < 0)
        return r;
    for (;;) {
        struct timespec ts = {0, CG_REMOVE_WAIT_MS * 1000000L};
        int nested = cg_each_subdir(dirfd, remove_nested, 1, 0);
        if (rmdir(path) == 0 || errno == ENOENT)
            return 0;
        if (errno == EINTR || nested > 0)
            continue;
        if (errno != EBUSY || now_ms() >= deadline)
            return -errno;
        nanosleep(&ts, NULL);
    }
}

/* The parent is gone (parent_gone): nobody else will remove the per-tree v1 directories we
 * joined (a later process's first limited start would sweep them, a long-running one never
 * does), so we do, the pooled cpu/cpuacct ones too (the pool was the dead parent's). A v2
 * one we joined (pidns mode) stays: tether's parent directory has controllers enabled, so
 * the no-internal-process rule keeps us from moving out of it; the sweep removes it. */
void cg_remove_joined_v1(void)
{
    int i;
    for (i = 0; i < g.n_join; i++)
        if (g.join_v1[i])
            (void)remove_joined(g.join_fds[i]);
}
