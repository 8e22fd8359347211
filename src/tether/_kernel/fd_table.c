/*
 * fd_table.c — what a clone costs in fds (part of the extension, tether._kernel.core;
 * declarations: fd_table.h). Two rules, one owner each:
 *
 *   - Sharing. A vfork-style clone copies the whole fd table (a reference on every open file),
 *     and the child's exec closes every copy it does not keep: with 3,000 live trees (12,000
 *     fds) that is the better part of a guarded start, which waits for its guard's exec. Where
 *     the kernel has CLOSE_RANGE_UNSHARE (5.9), the clone shares the table instead
 *     (CLONE_FILES) and the child's first step takes a private copy of only the fds below the
 *     spawn's highest one (clone.c, unshare_low_fds; the kernel copies below the range it
 *     closes). Probed once, for real, by a child; cached here.
 *   - Placement. That copy is small only if the fds a spawn hands its child (stdio, the
 *     lifeline's read end, the failure pipe, the guard's control end) sit below every live
 *     tree's fds. The kernel hands out the lowest free number, so the fds a tree keeps for its
 *     whole life (the pidfds, the lifeline's write end, the control socket) are moved up to
 *     TETHER_TREE_FD_BASE or above, leaving the low numbers to the short-lived ones.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clone.h"
#include "fd_table.h"

#ifndef SYS_close_range
#define SYS_close_range 436 /* since 5.9 */
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1) /* since 5.9 */
#endif
#ifndef P_PIDFD
#define P_PIDFD 3 /* since 5.4 */
#endif

/* -1: not probed yet; 0: the clone copies the table; 1: it shares it and the child unshares.
 * Written under sharing_lock (release), read without it (acquire) on every spawn. */
static int sharing = -1;
static int sharing_errno = 0;
static pthread_mutex_t sharing_lock = PTHREAD_MUTEX_INITIALIZER;

/* The probe's child shares our table (CLONE_FILES). Its unshare names a range no fd can be
 * in, so even a kernel that ignored the flag would close nothing of ours; then, in what must
 * now be its own table, it closes the probe pipe's read end, which we check is still ours. */
static int probe_child(void *arg)
{
    int fd = *(const int *)arg;
    if (syscall(SYS_close_range, ~0U, ~0U, CLOSE_RANGE_UNSHARE) != 0)
        return errno > 0 && errno < 256 ? errno : EINVAL;
    (void)syscall(SYS_close, fd);
    return 0;
}

/* 0: sharing works; a positive errno: it does not (cached); a negative one: a transient
 * failure (EAGAIN, EMFILE, ENOMEM), not cached. */
static int probe_sharing(int method)
{
    int pipefd[2], pidfd = -1, still_ours;
    struct stat before, after;
    siginfo_t info;
    long pid;
    if (pipe2(pipefd, O_CLOEXEC) != 0)
        return -errno;
    if (fstat(pipefd[0], &before) != 0) {
        int err = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        return -err;
    }
    pid = tether_clone_raw(method, CLONE_FILES, -1, probe_child, &pipefd[0], &pidfd);
    if (pid < 0) {
        close(pipefd[0]);
        close(pipefd[1]);
        return pid == -EINVAL || pid == -ENOSYS || pid == -EPERM ? (int)-pid : (int)pid;
    }
    memset(&info, 0, sizeof info);
    while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED) != 0 && errno == EINTR)
        ;
    close(pidfd);
    close(pipefd[1]);
    still_ours = fstat(pipefd[0], &after) == 0 && after.st_ino == before.st_ino
                 && after.st_dev == before.st_dev;
    if (still_ours)
        close(pipefd[0]);
    if (info.si_code != CLD_EXITED)
        return EINVAL;
    if (info.si_status != 0)
        return info.si_status;
    return still_ours ? 0 : EINVAL; /* the child's close reached our table: never share it */
}

int tether_fd_sharing(int method)
{
    int answer = __atomic_load_n(&sharing, __ATOMIC_ACQUIRE);
    if (answer >= 0)
        return answer;
    if (method != TETHER_CLONE_CLONE3 && method != TETHER_CLONE_LEGACY)
        return 0; /* no clone to probe with (preexec_fn's fork execs in place): ask later */
    pthread_mutex_lock(&sharing_lock);
    answer = sharing;
    if (answer < 0) {
        int r = probe_sharing(method);
        if (r >= 0) {
            sharing_errno = r;
            answer = r == 0;
            __atomic_store_n(&sharing, answer, __ATOMIC_RELEASE);
        } else {
            answer = 0; /* this spawn copies the table; the next one asks again */
        }
    }
    pthread_mutex_unlock(&sharing_lock);
    return answer;
}

int tether_fd_above_spawns(int fd)
{
    int moved;
    if (fd < 0 || fd >= TETHER_TREE_FD_BASE)
        return fd;
    /* EINVAL (RLIMIT_NOFILE at or below the base) or EMFILE (nothing free up there): the fd
     * stays where it is, which costs the later spawns' copies, never correctness. */
    moved = fcntl(fd, F_DUPFD_CLOEXEC, TETHER_TREE_FD_BASE);
    if (moved < 0)
        return fd;
    close(fd);
    return moved;
}

/* core.fd_table_sharing(method) -> (shared, errno): probed (once) with that clone method. */
PyObject *core_fd_table_sharing(PyObject *self, PyObject *arg)
{
    long method = PyLong_AsLong(arg);
    int answer;
    (void)self;
    if (method == -1 && PyErr_Occurred())
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    answer = tether_fd_sharing((int)method);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("Oi", answer ? Py_True : Py_False, sharing_errno);
}

/* core.force_fd_table_sharing(False): every later clone copies the table (tests of the
 * fallback); None: forget the answer and probe again. Sharing cannot be forced on. */
PyObject *core_force_fd_table_sharing(PyObject *self, PyObject *arg)
{
    (void)self;
    if (arg != Py_None && arg != Py_False) {
        PyErr_SetString(PyExc_ValueError, "only False (copy) or None (probe again)");
        return NULL;
    }
    pthread_mutex_lock(&sharing_lock);
    sharing_errno = 0;
    __atomic_store_n(&sharing, arg == Py_None ? -1 : 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&sharing_lock);
    Py_RETURN_NONE;
}

/* core.keep_above_spawns(fd) -> fd: tether_fd_above_spawns for an fd Python received. */
PyObject *core_keep_above_spawns(PyObject *self, PyObject *arg)
{
    long fd = PyLong_AsLong(arg);
    (void)self;
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(tether_fd_above_spawns((int)fd));
}

PyObject *core_close_range_supported(PyObject *self, PyObject *noargs)
{
    long r;
    (void)self;
    (void)noargs;
    /* Closing a range that holds no open fd is a no-op where the syscall exists. */
    r = syscall(SYS_close_range, ~0U - 1, ~0U, 0);
    if (r == 0)
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}
