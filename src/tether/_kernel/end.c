/*
 * end.c — the parent's end of a guarded tree, in C (core.await_end, core.read_end).
 *
 * The exit notice is paid for after the parent's wakeup: every microsecond between poll's
 * return and Child.wait()'s is latency, and on a cold CPU the Python that read the report,
 * reaped the guard and spun for it cost ~110 us (ARCHITECTURE.md, "The exit notice"). So the
 * sleep, the early wake's spin, the read of MSG_EXITED and the guard's reap run here, the
 * GIL released wherever they may wait. The fds stay their Python owners' (the socket object,
 * the Pidfds, borrowed by the caller for the call): nothing here closes one, and a report is
 * read only with the Guard's lock held (guarded.py), so it is consumed in exactly one place.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#include "core_convert.h"
#include "guard_proto.h"

#ifndef P_PIDFD
#define P_PIDFD 3 /* since 5.4 */
#endif

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* core_convert.h: poll(fds, 0) until one is ready, yielding the CPU in between (the process
 * waited for may be queued on ours), for at most spin_ns; the GIL is released by the caller.
 * 1 if one is ready. The early wake's and the overlapped start's (launch_early.c). */
int tether_spin_ready(struct pollfd *fds, nfds_t count, long long spin_ns)
{
    long long end = now_ns() + spin_ns;
    for (;;) {
        if (poll(fds, count, 0) > 0)
            return 1;
        if (now_ns() >= end)
            return 0;
        sched_yield();
    }
}

/* Nothing but the guard's MSG_STARTED is queued: a start the parent knew already from the
 * program's exec pipe (launch_early.c), not the end a spin waits for. Peeked, never read:
 * reports are read under the Guard's lock only (FIONREAD: every byte queued, on a SEQPACKET
 * socket). */
static int only_start_report(int sock_fd)
{
    struct tether_guard_msg msg;
    int queued = 0;
    if (recv(sock_fd, &msg, sizeof msg, MSG_PEEK | MSG_DONTWAIT) != (ssize_t)sizeof msg)
        return 0;
    return msg.type == TETHER_MSG_STARTED && ioctl(sock_fd, FIONREAD, &queued) == 0 &&
           queued == (int)sizeof msg;
}

/* The early wake's spin: tether_spin_ready on the guard's pidfd (fds[0]) and the socket (fds[1]),
 * where a socket holding only the start report is not ready. */
static int spin_for_end(struct pollfd *fds, long long spin_ns)
{
    long long end = now_ns() + spin_ns;
    for (;;) {
        fds[0].revents = fds[1].revents = 0;
        if (poll(fds, 2, 0) > 0 && (fds[0].revents || !only_start_report(fds[1].fd)))
            return 1;
        if (now_ns() >= end)
            return 0;
        sched_yield();
    }
}

/* core.await_end(guard_fd, program_fd, sock_fd, on_sock, timeout_ms, spin_ns) -> int: sleep
 * until the guard's pidfd (or, with on_sock, the socket) is readable, or timeout_ms (-1: no
 * limit) has passed. With program_fd >= 0, the program's exit wakes us too (the early wake,
 * early_wake.py): then the socket and the guard's pidfd are polled without sleeping for at
 * most spin_ns. Bits: END_READY (1) the end (or a report) is there to read, END_EARLY (2)
 * the early wake was used (program_fd is not to be polled again). 0: nothing yet (the
 * timeout, the spin, or a signal whose handler returned: the caller loops). A handler's
 * exception is raised. */
static PyObject *core_await_end(PyObject *self, PyObject *args)
{
    int guard_fd, program_fd, sock_fd, on_sock, timeout_ms, ready, err, result = 0;
    long long spin_ns;
    struct pollfd fds[3];
    nfds_t count = 1;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiipiL", &guard_fd, &program_fd, &sock_fd, &on_sock,
                          &timeout_ms, &spin_ns))
        return NULL;
    fds[0] = (struct pollfd){.fd = guard_fd, .events = POLLIN};
    fds[1] = (struct pollfd){.fd = sock_fd, .events = POLLIN};
    fds[2] = (struct pollfd){.fd = program_fd, .events = POLLIN};
    if (on_sock)
        count = 2;
    if (program_fd >= 0)
        fds[count++] = fds[2]; /* (last: a lone readiness of it is the early wake) */
    Py_BEGIN_ALLOW_THREADS
    ready = poll(fds, count, timeout_ms);
    err = errno;
    if (ready > 0 && program_fd >= 0 && fds[count - 1].revents && ready == 1) {
        /* The program has exited, the guard not yet: its report and exit are a few hundred
         * microseconds away. The socket joins the spin (the report comes first). */
        fds[1] = (struct pollfd){.fd = sock_fd, .events = POLLIN};
        result = 2 | spin_for_end(fds, spin_ns);
    } else if (ready > 0) {
        result = 1;
    }
    Py_END_ALLOW_THREADS
    if (ready < 0 && err == EINTR) {
        if (PyErr_CheckSignals() < 0)
            return NULL;
    } else if (ready < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(result);
}

/* Reap the guard through its pidfd without blocking, once the pidfd says it can (polled for
 * at most spin_ns, the GIL released: it sent its last report just before). Not waitid in the
 * loop: each call takes the tasklist lock that the guard's exit needs too. 0 if it is not
 * reapable yet (the caller waits the slow way), -1 with errno on an error (ECHILD). */
static int reap_guard(int guard_fd, long long spin_ns, siginfo_t *info)
{
    int rc = 0;
    struct pollfd guard = {.fd = guard_fd, .events = POLLIN};
    info->si_pid = 0;
    Py_BEGIN_ALLOW_THREADS
    if (tether_spin_ready(&guard, 1, spin_ns))
        rc = waitid((idtype_t)P_PIDFD, (id_t)guard_fd, info, WEXITED | WNOHANG);
    Py_END_ALLOW_THREADS
    return rc < 0 ? -1 : info->si_pid != 0;
}

/* The largest report: MSG_EXITED with its usage tail (guard_proto.h), in one packet. */
#define REPORT_MAX (sizeof(struct tether_guard_msg) + sizeof(struct tether_guard_usage))

/* One report, read without blocking into buf (REPORT_MAX bytes): its size (0 at the guard's
 * hang-up), or -1 with errno. */
static ssize_t recv_report(int sock_fd, char *buf)
{
    ssize_t got = -1;
    int tries;
    /* ECONNRESET: the guard exited with a command of ours unread; the kernel says so once,
     * ahead of the reports still queued. Read on. */
    for (tries = 0; tries < 3; tries++) {
        got = recv(sock_fd, buf, REPORT_MAX, MSG_DONTWAIT);
        if (got >= 0 || errno != ECONNRESET)
            return got;
    }
    return 0;
}

/* MSG_EXITED's usage tail as a tuple (guard_wire.USAGE's fields), or None without one. */
static PyObject *usage_tail(const char *buf, ssize_t got)
{
    struct tether_guard_usage u;
    if (got != (ssize_t)REPORT_MAX)
        Py_RETURN_NONE;
    memcpy(&u, buf + sizeof(struct tether_guard_msg), sizeof u);
    return Py_BuildValue("(LLLLL)", (long long)u.user_ns, (long long)u.system_ns,
                         (long long)u.memory_peak, (long long)u.oom_kills,
                         (long long)u.pids_peak);
}

/* core.read_end(sock_fd, guard_fd, out, skip_started=False): read one report without blocking
 * (the Guard's lock held); with skip_started (the caller knows the program started: its
 * MSG_STARTED, which the overlapped start leaves queued ahead of the end, says nothing new)
 * a MSG_STARTED is consumed and the next report read. None: nothing there. bytes: any other
 * report, b"" at the guard's hang-up, for the caller's generic handling. MSG_EXITED: True,
 * and appended to the list out a tuple, (status, user_ms, system_ms, maxrss_kib, guard_code,
 * guard_status, held, usage_tail: the tree's final usage, guard_wire.USAGE's fields, None
 * without it), with the guard reaped if its pidfd says it can be already
 * (guard_code the reap's si_code; 0: not yet, core.reap_exiting then spins for it once the
 * caller has recorded the report, so that its Python overlaps the guard's exit teardown; -1:
 * not ours to reap any more). The report is consumed, and maybe the guard reaped, with every
 * signal blocked (core.hold_signals): a Ctrl-C before the caller has recorded them would lose
 * the end. The tuple returns them still blocked: held is the mask for core.release_signals.
 * In a list the caller made before the call, not returned: a signal that came before they were
 * blocked (or to another thread since) runs its Python handler at the caller's first bytecode
 * after this call, and a returned tuple would be dropped there, the end and the mask with it. */
static PyObject *core_read_end(PyObject *self, PyObject *args)
{
    int sock_fd, guard_fd, reaped, err, skip_started = 0;
    ssize_t got;
    struct tether_guard_msg msg;
    char buf[REPORT_MAX];
    siginfo_t info = {0};
    PyObject *held, *released, *tail, *out, *end;
    if (!PyArg_ParseTuple(args, "iiO!|p", &sock_fd, &guard_fd, &PyList_Type, &out,
                          &skip_started))
        return NULL;
    held = core_hold_signals(self, NULL);
    if (held == NULL)
        return NULL;
    do {
        got = recv_report(sock_fd, buf);
        err = errno;
        memcpy(&msg, buf, sizeof msg);
    } while (skip_started && got == (ssize_t)sizeof msg && msg.type == TETHER_MSG_STARTED);
    if ((got == (ssize_t)sizeof msg || got == (ssize_t)REPORT_MAX)
            && msg.type == TETHER_MSG_EXITED) {
        reaped = reap_guard(guard_fd, 0, &info); /* (one look: see core.reap_exiting) */
        tail = usage_tail(buf, got);
        end = tail == NULL ? NULL : Py_BuildValue("(iiiiiiON)", msg.a, msg.b, msg.c, msg.d,
                                                  reaped < 0 ? -1 : reaped ? info.si_code : 0,
                                                  reaped > 0 ? info.si_status : 0, held, tail);
        if (end == NULL || PyList_Append(out, end) < 0) { /* (no memory: the end is lost) */
            Py_XDECREF(end);
            Py_XDECREF(core_release_signals(self, held));
            Py_DECREF(held);
            return NULL;
        }
        Py_DECREF(end);
        Py_DECREF(held);
        Py_RETURN_TRUE;
    }
    released = core_release_signals(self, held); /* (no end read: nothing to lose) */
    Py_DECREF(held);
    if (released == NULL)
        return NULL;
    Py_DECREF(released);
    if (got >= 0)
        return PyBytes_FromStringAndSize(buf, got);
    if (err == EAGAIN || err == EWOULDBLOCK)
        Py_RETURN_NONE;
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* core.reap_exiting(guard_fd, spin_ns) -> (si_code, si_status): reap_guard for the caller;
 * si_code 0: not reapable within spin_ns, -1: an error (ECHILD: not ours to reap any more). */
static PyObject *core_reap_exiting(PyObject *self, PyObject *args)
{
    int guard_fd, reaped;
    long long spin_ns;
    siginfo_t info = {0};
    (void)self;
    if (!PyArg_ParseTuple(args, "iL", &guard_fd, &spin_ns))
        return NULL;
    reaped = reap_guard(guard_fd, spin_ns, &info);
    return Py_BuildValue("(ii)", reaped < 0 ? -1 : reaped ? info.si_code : 0,
                         reaped > 0 ? info.si_status : 0);
}

/* core.spin_readable(fd, spin_ns) -> bool: tether_spin_ready for Python (the GIL released): True
 * once fd is readable within spin_ns (early_wake.spin_until_readable: the reap of a guard that
 * has sent its last report, ending.reap_quietly). */
static PyObject *core_spin_readable(PyObject *self, PyObject *args)
{
    int fd, ready;
    long long spin_ns;
    struct pollfd p = {.events = POLLIN};
    (void)self;
    if (!PyArg_ParseTuple(args, "iL", &fd, &spin_ns))
        return NULL;
    p.fd = fd;
    Py_BEGIN_ALLOW_THREADS
    ready = tether_spin_ready(&p, 1, spin_ns);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(ready);
}

static PyMethodDef end_methods[] = {
    {"await_end", core_await_end, METH_VARARGS,
     "Sleep until a guarded tree's end is there to read (end.c); END_READY | END_EARLY bits."},
    {"read_end", core_read_end, METH_VARARGS,
     "Read one report; at MSG_EXITED reap the guard too if it can be already (end.c)."},
    {"reap_exiting", core_reap_exiting, METH_VARARGS,
     "Reap a guard that has sent its last report, spinning for at most spin_ns (end.c)."},
    {"spin_readable", core_spin_readable, METH_VARARGS,
     "Poll an fd without sleeping for at most spin_ns; True once readable (end.c)."},
    {NULL, NULL, 0, NULL},
};

int tether_add_end(PyObject *module)
{
    if (PyModule_AddFunctions(module, end_methods) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "END_READY", 1) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "END_EARLY", 2);
}
