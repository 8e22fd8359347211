/*
 * lifeline_registry.c — every lifeline write end of this process, closed in every fork()ed
 * child (part of the extension, tether._kernel.core; declarations: lifeline_registry.h).
 *
 * Each write end is created and registered under one mutex, and a pthread_atfork child
 * handler closes all of them, so one child's writer can never keep another child's lifeline
 * open (the orphan bug the doctrine was born from; KERNEL-FACTS.md section 4: a leaked write
 * end delayed EOF by the forked sibling's whole lifetime).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fd_table.h"
#include "lifeline_registry.h"

/* Every open lifeline write end of this process. Guarded by registry_lock, which the atfork
 * prepare handler also takes: a fork() therefore never happens between pipe2() and the
 * registration of its write end. The critical sections never need the GIL (a thread that
 * holds the GIL may block here, but never the other way round). */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static int *registry = NULL;
static size_t registry_len = 0;
static size_t registry_cap = 0;
/* slot_of[fd]: fd's index in registry plus one (0: not registered), so that a release finds
 * its entry at once: a scan of the whole registry cost each of 3,000 live trees' exits a walk
 * of up to 3,000 entries, cold in the cache, under the lock a fork() waits for. */
static size_t *slot_of = NULL;
static size_t slot_cap = 0;
/* Bumped in every fork()ed child: a LifelineWriter made before the fork sees the mismatch and
 * knows its fd number no longer belongs to it. */
static volatile unsigned long fork_generation = 0;

/* fd itself if it is above 2, else a close-on-exec duplicate above 2 (the original closed);
 * -1 with errno set if that fails (the original is closed then too). A parent whose stdio is
 * closed must not find a lifeline end at 0-2: there it would pose as its stdio, and the
 * caller's own dup2() onto "its" stdout would silently cut a child's lifeline. */
static int above_stdio(int fd)
{
    int moved, err;
    if (fd > 2)
        return fd;
    moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    err = errno;
    close(fd);
    errno = err;
    return moved;
}

static void atfork_prepare(void) { pthread_mutex_lock(&registry_lock); }

static void atfork_parent(void) { pthread_mutex_unlock(&registry_lock); }

static void atfork_child(void)
{
    size_t i;
    for (i = 0; i < registry_len; i++) {
        close(registry[i]);
        slot_of[registry[i]] = 0;
    }
    registry_len = 0;
    fork_generation++;
    pthread_mutex_unlock(&registry_lock);
}

/* Room in slot_of for fd (the lock held); ENOMEM if there is none. */
static int slot_room(int fd)
{
    size_t cap = slot_cap ? slot_cap : 256, *grown;
    if ((size_t)fd < slot_cap)
        return 0;
    while (cap <= (size_t)fd)
        cap *= 2;
    grown = realloc(slot_of, cap * sizeof *slot_of);
    if (grown == NULL)
        return ENOMEM;
    memset(grown + slot_cap, 0, (cap - slot_cap) * sizeof *slot_of);
    slot_of = grown;
    slot_cap = cap;
    return 0;
}

/* Register fd (the lock held, room made in registry): 0, or ENOMEM. */
static int registry_add(int fd)
{
    int err = slot_room(fd);
    if (err == 0) {
        registry[registry_len++] = fd;
        slot_of[fd] = registry_len;
    }
    return err;
}

/* Unregister fd (the lock held): 1 if it was registered, else 0. */
static int registry_remove(int fd)
{
    size_t slot;
    if (fd < 0 || (size_t)fd >= slot_cap || (slot = slot_of[fd]) == 0)
        return 0;
    slot_of[fd] = 0;
    registry[slot - 1] = registry[--registry_len];
    if (slot - 1 < registry_len)
        slot_of[registry[slot - 1]] = slot;
    return 1;
}

int lifeline_registry_pipe(int fds[2], int write_end_above_spawns)
{
    int err = 0;
    pthread_mutex_lock(&registry_lock);
    if (registry_len == registry_cap) {
        size_t cap = registry_cap ? registry_cap * 2 : 64;
        int *grown = realloc(registry, cap * sizeof(int));
        if (grown == NULL)
            err = ENOMEM;
        else {
            registry = grown;
            registry_cap = cap;
        }
    }
    if (err == 0) {
        if (pipe2(fds, O_CLOEXEC) != 0)
            err = errno;
        else if ((fds[0] = above_stdio(fds[0])) < 0) {
            err = errno;
            close(fds[1]);
        } else if ((fds[1] = above_stdio(fds[1])) < 0) {
            err = errno;
            close(fds[0]);
        } else {
            if (write_end_above_spawns)
                fds[1] = tether_fd_above_spawns(fds[1]);
            if ((err = registry_add(fds[1])) != 0) {
                close(fds[0]);
                close(fds[1]);
            }
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return err;
}

PyObject *core_lifeline_pipe(PyObject *self, PyObject *noargs)
{
    int fds[2];
    int err;
    (void)self;
    (void)noargs;
    Py_BEGIN_ALLOW_THREADS
    err = lifeline_registry_pipe(fds, 1);
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("ii", fds[0], fds[1]);
}

void lifeline_registry_drop(int fd)
{
    pthread_mutex_lock(&registry_lock);
    if (registry_remove(fd))
        close(fd);
    pthread_mutex_unlock(&registry_lock);
}

PyObject *core_lifeline_release(PyObject *self, PyObject *arg)
{
    long fd = PyLong_AsLong(arg);
    int found = 0;
    int rc = 0;
    (void)self;
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&registry_lock);
    found = fd <= INT_MAX && registry_remove((int)fd);
    /* Close under the lock: a fork() must not see the number registered but closed (and maybe
     * reused by an unrelated fd that the atfork handler would then close). */
    if (found)
        rc = close((int)fd);
    pthread_mutex_unlock(&registry_lock);
    Py_END_ALLOW_THREADS
    if (!found) {
        PyErr_SetString(PyExc_ValueError, "not a registered lifeline write end");
        return NULL;
    }
    if (rc != 0 && errno != EINTR)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

PyObject *core_fork_generation(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromUnsignedLong(fork_generation);
}

int lifeline_registry_init(void)
{
    static int atfork_done = 0;
    if (atfork_done)
        return 0;
    if (pthread_atfork(atfork_prepare, atfork_parent, atfork_child) != 0)
        return -1;
    atfork_done = 1;
    return 0;
}
