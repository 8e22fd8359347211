/*
 * start_report.c — the parent's read of a guard's start (core.read_start_reports): the
 * program's announcement (MSG_PROGRAM, with its pidfd as SCM_RIGHTS and, on a socket with
 * SO_PASSCRED, its pid as the kernel translates it for us as SCM_CREDENTIALS), then
 * MSG_STARTED or MSG_FAILED, in one call.
 *
 * Why in C: read in Python, each report cost a recvmsg whose ancillary data became a list of
 * tuples, a struct unpack of the fd, and a duplicate above stdio, once per report. Both
 * reports are usually queued together (launch.c sleeps until the start is reported), so one
 * call reads what is there, up to the report that ends the start.
 *
 * Why SCM_CREDENTIALS: in pidns mode the program's own pid means nothing to us, and once the
 * guard has reaped it its pidfd cannot say either. The kernel keeps the sender's struct pid
 * with the message and translates it into the *receiver's* PID namespace at the read (also
 * after the program was reaped, and at any depth of nesting), so no /proc is read by anyone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core_convert.h"
#include "fd_table.h"
#include "guard_proto.h"

/* Room for what a start report can carry: one fd (tether's senders pass one; a second
 * would be cut, MSG_CTRUNC) and the sender's credentials. */
union report_control {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
};

/* One report from fd: its bytes into *msg (0: end of file), the fd it carried (-1: none;
 * above stdio and, where there is room, above the spawns' fds; close-on-exec), the message
 * flags and the sender's pid as we see it (0 if the socket does not pass credentials). The
 * byte count or -errno; ECONNRESET is read past, as end.c's recv_report does (a command
 * of ours the guard left unread). An fd that cannot be moved above stdio is dropped, and
 * flagged MSG_CTRUNC like one the kernel dropped. */
static long report_read(int fd, int flags, struct tether_guard_msg *msg, int *passed,
                        int *msg_flags, pid_t *sender)
{
    union report_control cm;
    struct iovec iov = {msg, sizeof *msg};
    struct msghdr mh;
    struct cmsghdr *c;
    ssize_t n;
    int tries = 0;
    *passed = -1;
    *sender = 0;
    do {
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cm.buf;
        mh.msg_controllen = sizeof cm.buf;
        n = recvmsg(fd, &mh, flags | MSG_CMSG_CLOEXEC);
    } while (n < 0 && (errno == EINTR || (errno == ECONNRESET && ++tries < 3)));
    if (n < 0)
        return errno == ECONNRESET ? 0 : -errno;
    *msg_flags = mh.msg_flags;
    for (c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS
            && c->cmsg_len >= CMSG_LEN(sizeof(int)))
            memcpy(passed, CMSG_DATA(c), sizeof(int));
        else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS
                 && c->cmsg_len >= CMSG_LEN(sizeof(struct ucred)))
            memcpy(sender, CMSG_DATA(c) + offsetof(struct ucred, pid), sizeof(pid_t));
    }
    if (*passed >= 0 && fd_above_stdio(passed) < 0) {
        /* Received at 0-2 (our stdio was closed) with no room above it (EMFILE): the report
         * is read, so raising would lose it and leave the tree running. It is a pidfd the
         * kernel could not give us, as MSG_CTRUNC says: the caller ends the tree, EMFILE. */
        close(*passed);
        *passed = -1;
        *msg_flags |= MSG_CTRUNC;
    }
    *passed = tether_fd_above_spawns(*passed); /* the program's pidfd: as long as the tree */
    return n;
}

/* core.read_start_reports(fd, flags) -> tuple of (data, fd or -1, msg flags, sender pid): the
 * next report on fd, read with flags, and if it was the program's announcement the one after
 * it too, if it is there already (MSG_STARTED or MSG_FAILED, queued together when launch.c
 * slept until the start was reported). data is b"" at the end of file. The first read's error
 * is raised (BlockingIOError: nothing there); the second one's ends the tuple early. The
 * caller holds signals while it takes the fds. */
PyObject *core_read_start_reports(PyObject *self, PyObject *args)
{
    struct tether_guard_msg msg;
    PyObject *items[2] = {NULL, NULL}, *out;
    int fd, flags, passed[2] = {-1, -1}, msg_flags = 0, count = 0;
    pid_t sender = 0;
    long n;
    (void)self;
    if (!PyArg_ParseTuple(args, "ii", &fd, &flags))
        return NULL;
    do {
        memset(&msg, 0, sizeof msg);
        Py_BEGIN_ALLOW_THREADS
        n = report_read(fd, count == 0 ? flags : flags | MSG_DONTWAIT, &msg, &passed[count],
                        &msg_flags, &sender);
        Py_END_ALLOW_THREADS
        if (n < 0 && count == 0) {
            errno = (int)-n;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (n < 0)
            break;
        items[count] = Py_BuildValue("(y#iii)", (const char *)&msg, (Py_ssize_t)n,
                                     passed[count], msg_flags, (int)sender);
        count++;
    } while (count < 2 && items[count - 1] != NULL && n == sizeof msg
             && msg.type == TETHER_MSG_PROGRAM);
    out = NULL;
    if (items[count - 1] != NULL)
        out = count == 2 ? PyTuple_Pack(2, items[0], items[1]) : PyTuple_Pack(1, items[0]);
    Py_XDECREF(items[0]);
    Py_XDECREF(items[1]);
    if (out == NULL) { /* (no memory: the fds are nobody's yet) */
        for (count = 0; count < 2; count++)
            if (passed[count] >= 0)
                close(passed[count]);
    }
    return out;
}
