/*
 * guard_attrs.h — subprocess's process attributes on the guard's command line (--umask,
 * --setsid, --fds, --signals, --uid, --gid, --groups), for the program's clone. The guard
 * parses them (guard_start.c's parse_args) and hands them to the clone child (clone.c),
 * which applies them; the guard itself keeps its own ids, umask and session.
 */
#ifndef TETHER_GUARD_ATTRS_H
#define TETHER_GUARD_ATTRS_H

#include "clone.h"

/* 1 if OPT is an attribute option (VALUE taken), 0 if it is not one, -1 if VALUE is bad. */
int guard_parse_attr(const char *opt, const char *value);

/* 1 with --fds inherit (close_fds=False): the program's clone closes no fd. */
int guard_attrs_inherit_fds(void);

/* Copy the attributes into the program's plan. With --fds inherit, the guard's own fds that
 * are not close-on-exec (the control socket, its lifeline, the cgroup directory; -1: none)
 * become so first. 0, or an errno. */
int guard_apply_attrs(struct tether_plan *plan, int control, int lifeline, int cgroup_fd);

#endif /* TETHER_GUARD_ATTRS_H */
