/*
 * launch_early.h — the parent's part of the overlapped start (launch_early.c), as launch.c
 * reaches it.
 */
#ifndef TETHER_LAUNCH_EARLY_H
#define TETHER_LAUNCH_EARLY_H

#include <Python.h>

#include "clone.h"
#include "guard_proto.h"

struct launch_early {
    int enabled;
    int abandoned;      /* a signal ended the wait for the program's exec: kept until it has
                         * (early_abandon, early_sweep) */
    int exec_seen;      /* the exec pipe said EOF with no failure record: the program exec'd */
    struct tether_early early;
    struct tether_plan program;
    int exec_pipe[2];   /* [0]: ours (the EOF we wait for) and the guard's (--exec-fd);
                         * [1]: the program's failure pipe */
    int lifeline[2];    /* the program's lifeline: [0] its, [1] the guard's; -1: none */
    int with_lifeline;
    int cpu_group;      /* the program runs in a cpu group of its own: early_close polls
                         * for its exec before it sleeps */
    char **envp;        /* the program's: the guard's entries, its lifeline's, NULL */
    size_t n_env;
    gid_t *groups;
    int *keep;          /* the program's pass_fds, sorted */
    int n_keep;
    int join[8];        /* a limited tree's cgroup directories (the guard's --join-cgroup) */
    char adopted[48];
    char exec_arg[16];
    char lifeline_arg[16];
    char lifeline_env[TETHER_LIFELINE_ENTRY_MAX];
    /* An abandoned launch's: the caller's memory and objects the program's plan points into,
     * freed with it; the next one abandoned. */
    void *held[3];
    PyObject *refs[3];
    unsigned long long exec_ino; /* the exec pipe's identity, checked before each sweep */
    struct launch_early *next;
};

/* launch.c: the lowest fd >= 3 no kept fd takes (with inherit_fds, no open fd either). */
TETHER_HIDDEN int lifeline_number(const int *keep, int n, int inherit_fds);

TETHER_HIDDEN void early_init(struct launch_early *le);
TETHER_HIDDEN int early_prepare(struct launch_early *le, PyObject *spec, char **envp,
                                int method);
TETHER_HIDDEN int early_open(struct launch_early *le, char **argv, int control);
TETHER_HIDDEN int early_fds(const struct launch_early *le, int out[4]);
TETHER_HIDDEN void early_args(struct launch_early *le, char **out);
TETHER_HIDDEN void early_close(struct launch_early *le, int signals);
TETHER_HIDDEN void early_free(struct launch_early *le);
TETHER_HIDDEN void early_abandon(struct launch_early *le, void *held[3], PyObject *refs[3]);
TETHER_HIDDEN void early_sweep(void);

#endif /* TETHER_LAUNCH_EARLY_H */
