/*
 * guard_attrs.c — the program's process attributes, from the guard's command line (the
 * contract: guard_attrs.h). Serialised by tether._kernel.attrs.ProcessAttrs.guard_options.
 */
#include "guard_attrs.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>

#define MAX_GROUPS 64 /* ProcessAttrs.guard_options refuses more */

/* Only the attribute fields of the plan are used. */
static struct tether_plan attrs;
static gid_t groups[MAX_GROUPS];

/* A decimal id (0 .. 2^32-2); -1 if S is not one. *end_out: the first byte after it. */
static long long parse_id(const char *s, const char **end_out)
{
    long long v = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9' && v <= 0xfffffffeLL)
        v = v * 10 + (*p++ - '0');
    if (end_out != NULL)
        *end_out = p;
    if (p == s || v > 0xfffffffeLL || (end_out == NULL && *p != '\0'))
        return -1;
    return v;
}

static int parse_groups(const char *s)
{
    const char *p = s;
    int n = 0;
    attrs.set_groups = 1;
    attrs.groups = groups;
    while (strcmp(s, "-") != 0 && *p != '\0') {
        const char *end;
        long long v = parse_id(p, &end);
        if (v < 0 || n >= MAX_GROUPS || (*end != ',' && *end != '\0'))
            return -1;
        groups[n++] = (gid_t)v;
        p = end + (*end == ',');
    }
    attrs.n_groups = n;
    return 1;
}

int guard_parse_attr(const char *opt, const char *value)
{
    long long v = parse_id(value, NULL);
    if (strcmp(opt, "--groups") == 0)
        return parse_groups(value);
    if (strcmp(opt, "--setsid") == 0)
        attrs.new_session = strcmp(value, "1") == 0;
    else if (strcmp(opt, "--fds") == 0)
        attrs.inherit_fds = strcmp(value, "inherit") == 0;
    else if (strcmp(opt, "--signals") == 0)
        attrs.keep_ignored = strcmp(value, "keep") == 0;
    else if (strcmp(opt, "--umask") != 0 && strcmp(opt, "--uid") != 0 &&
             strcmp(opt, "--gid") != 0)
        return 0;
    else if (v < 0)
        return -1;
    else if (opt[2] == 'u' && opt[3] == 'm') {
        attrs.set_umask = 1;
        attrs.umask = (mode_t)v;
    } else if (opt[2] == 'u') {
        attrs.set_uid = 1;
        attrs.uid = (uid_t)v;
    } else {
        attrs.set_gid = 1;
        attrs.gid = (gid_t)v;
    }
    return 1;
}

int guard_attrs_inherit_fds(void)
{
    return attrs.inherit_fds;
}

int guard_apply_attrs(struct tether_plan *plan, int control, int lifeline, int cgroup_fd)
{
    int own[3], i;
    plan->set_umask = attrs.set_umask;
    plan->umask = attrs.umask;
    plan->new_session = attrs.new_session;
    plan->inherit_fds = attrs.inherit_fds;
    plan->keep_ignored = attrs.keep_ignored;
    plan->set_groups = attrs.set_groups;
    plan->groups = attrs.groups;
    plan->n_groups = attrs.n_groups;
    plan->set_gid = attrs.set_gid;
    plan->gid = attrs.gid;
    plan->set_uid = attrs.set_uid;
    plan->uid = attrs.uid;
    own[0] = control;
    own[1] = lifeline;
    own[2] = cgroup_fd;
    for (i = 0; attrs.inherit_fds && i < 3; i++)
        if (own[i] >= 0 && fcntl(own[i], F_SETFD, FD_CLOEXEC) != 0)
            return errno;
    return 0;
}
