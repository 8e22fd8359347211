"""Containment modes: which one a caller asked for, which one "auto" means here, and what
each needs (the guard executable, clone3, a PID namespace the kernel lets us make).

The one rule this module owns: a mode that is asked for and unavailable raises
:class:`tether.Unsupported` naming what is missing; tether never degrades silently. Probes
are cached only when their answer cannot change for the life of the process.
"""

from __future__ import annotations

import errno
import os
from typing import Final, Literal, TypeAlias

from tether._kernel import core, features
from tether._kernel.cgroup import cgroup_unavailable_reason, forget_roots
from tether._kernel.errors import Unsupported
from tether._kernel.fds import above_stdio
from tether._kernel.spawn import clone_spec
from tether._kernel.spec import SpawnSpec

__all__ = [
    "GUARD_PATH", "MODES", "Contain", "Mode", "devnull", "forget_probes", "guard_mode_options",
    "guard_path",
    "pidns_unavailable_reason", "raise_namespace_limit", "resolve_mode",
]

GUARD_PATH: Final = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_kernel", "_guard")

Mode: TypeAlias = Literal["group", "cgroup", "pidns"]
#: What ``contain=`` takes: a mode, "auto" (the strongest available here) or None (no guard).
Contain: TypeAlias = Literal["group", "cgroup", "pidns", "auto"] | None
MODES: Final = ("group", "cgroup", "pidns", "auto", None)


def guard_path() -> str:
    if not os.access(GUARD_PATH, os.X_OK):
        raise Unsupported(
            errno.ENOENT,
            f"the tether guard executable is missing at {GUARD_PATH} (the package build "
            "compiles it; reinstall tether with a C compiler available)",
        )
    return GUARD_PATH


def guard_mode_options(mode: Mode) -> tuple[int, list[str]]:
    """What starting a guard in ``mode`` takes: (the namespace flags of its clone, its
    command-line options). Raises :class:`tether.Unsupported` if the mode cannot work here,
    before anything is created."""
    extra_flags = 0
    options = ["--contain", mode]
    if mode == "pidns":
        reason = pidns_unavailable_reason()
        if reason is not None:
            raise Unsupported(errno.EPERM, f"contain='pidns' is unavailable: {reason}")
        extra_flags = core.CLONE_NEWPID
        if os.geteuid() != 0:
            extra_flags |= core.CLONE_NEWUSER
            options += ["--userns", f"{os.geteuid()}:{os.getegid()}"]
    elif mode == "cgroup" and features.clone_method() != core.CLONE_CLONE3:
        raise Unsupported(
            errno.ENOSYS, "contain='cgroup' needs clone3 (CLONE_INTO_CGROUP, Linux 5.7), "
            "which is blocked here")
    if features.clone_method() == core.CLONE_LEGACY:
        # The guard clones the program as this process clones: legacy where clone3 is
        # refused (the guard inherits the same seccomp filter) or forced (the fallback's
        # tests, features.force_clone_method), so a forced run tests the guard's path too.
        options += ["--clone", "legacy"]
    return extra_flags, options


# -- containment modes ----------------------------------------------------------------------------

_pidns_probe: dict[bool, str | None] = {}


def pidns_unavailable_reason() -> str | None:
    """None if a guard can be PID 1 of a new PID namespace here, else why not. Probed by
    starting the guard with no arguments in a new namespace (it exits at once); the answer is
    cached unless it is a limit reached now (ENOSPC, EUSERS), which is asked again."""
    unprivileged = os.geteuid() != 0
    if unprivileged in _pidns_probe:
        return _pidns_probe[unprivileged]
    reason: str | None = None
    try:
        path = guard_path()
    except Unsupported as exc:
        return str(exc)
    flags = core.CLONE_NEWPID | (core.CLONE_NEWUSER if unprivileged else 0)
    spec = SpawnSpec(args=[path], argv=(os.fsencode(path),), executable=os.fsencode(path),
                     env={}, cwd=None, pass_fds=(), stdio=(-1, -1, -1))
    try:
        probe = clone_spec(spec, (devnull(), devnull(), devnull()), extra_flags=flags)
    except Unsupported as exc:
        reason = str(exc)
    except OSError as exc:
        if exc.errno in _NAMESPACE_LIMIT_ERRNOS:
            # A count limit (user.max_pid_namespaces, ...) reached now: it can be raised, and
            # namespaces end. Never cached.
            return _namespace_limit_reason(exc)
        if exc.errno not in (errno.EPERM, errno.EINVAL):
            raise
        reason = f"{_namespaces(unprivileged)} are not allowed here: {exc.strerror}"
    else:
        probe.lifeline.close()
        probe.pidfd.wait()
        probe.pidfd.close()
    _pidns_probe[unprivileged] = reason
    return reason


#: clone(CLONE_NEWPID|CLONE_NEWUSER) errors that mean "a limit on how many namespaces exist
#: is reached" (ENOSPC: max_pid_namespaces, max_user_namespaces, or the nesting depth;
#: EUSERS: the user-namespace nesting limit on kernels before 4.9). Transient.
_NAMESPACE_LIMIT_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EUSERS})


def _namespaces(unprivileged: bool) -> str:
    return ("user+PID namespaces (CLONE_NEWUSER|CLONE_NEWPID)" if unprivileged
            else "PID namespaces (CLONE_NEWPID)")


def _namespace_limit_reason(exc: OSError) -> str:
    what = _namespaces(os.geteuid() != 0)
    return (f"no more {what} can be made now ({exc.strerror}): a limit on how many may "
            "exist is reached (the sysctls user.max_pid_namespaces and "
            "user.max_user_namespaces, or 32 levels of nesting)")


def raise_namespace_limit(exc: BaseException) -> None:
    """If ``exc`` (from starting a pidns guard) says a namespace limit is reached, raise
    :class:`tether.Unsupported` explaining it instead of the bare ``OSError(ENOSPC)``."""
    if isinstance(exc, OSError) and exc.errno in _NAMESPACE_LIMIT_ERRNOS:
        raise Unsupported(
            exc.errno, f"contain='pidns' is unavailable: {_namespace_limit_reason(exc)}"
        ) from exc


def forget_probes() -> None:
    """Drop the cached probe answers: for a process whose privileges changed (setuid)."""
    _pidns_probe.clear()
    forget_roots()


_devnull_fd = -1


def devnull() -> int:
    global _devnull_fd
    if _devnull_fd < 0:
        _devnull_fd = above_stdio(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
    return _devnull_fd


def resolve_mode(
    contain: Contain | str, cgroup_root_arg: str | os.PathLike[str] | None = None
) -> Mode | None:
    """Validate ``contain`` and pick the mode for "auto": the strongest available here that
    keeps the program's credentials as they are. pidns as root; then cgroup (a delegated
    subtree for a user); then, for a user without one, pidns inside a user namespace (it
    contains as well, but setuid programs such as sudo do not work in one); then group. An
    explicit mode is checked when the tree is set up."""
    if contain not in MODES:
        raise ValueError(
            f"contain must be one of 'group', 'cgroup', 'pidns', 'auto' or None, not {contain!r}"
        )
    if contain != "auto":
        return contain
    if features.clone_method() == core.CLONE_CLONE3:
        root = os.geteuid() == 0
        if root and pidns_unavailable_reason() is None:
            return "pidns"
        if cgroup_unavailable_reason(cgroup_root_arg) is None:
            return "cgroup"
        if not root and pidns_unavailable_reason() is None:
            return "pidns"
    return "group"
