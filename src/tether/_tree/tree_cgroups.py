"""The cgroups a guarded tree gets, and the guard options that hand them over.

The one rule this module owns: a tree with :class:`~tether.Limits` gets its per-tree cgroups
(``controllers.LimitedTree``) and a tree in cgroup mode its containment directory, both made
before the guard exists; ``Guard.launch`` only passes on what this returns.
"""

from __future__ import annotations

import errno
import os
import signal

from tether._kernel import cgroup_ahead
from tether._kernel.cgroup import CgroupTree, cgroup_root
from tether._kernel.controllers import LimitedTree
from tether._kernel.errors import Unsupported
from tether._kernel.exit import Exit
from tether._kernel.limits import Usage
from tether._kernel.record import replace
from tether._kernel.spec import SpawnSpec
from tether._kernel.tree_record import write_record

__all__ = [
    "exit_with_cause", "guard_cgroup_args", "prepare_next_tree", "reported_exit",
    "require_tree_cgroup", "rusage_usage", "tree_cgroup", "tree_usage",
]


def require_tree_cgroup(spec: SpawnSpec, mode: str | None) -> None:
    """Limits need a per-tree cgroup: ``Unsupported`` for a mode without one, before anything
    is opened or started."""
    if spec.limits is not None and mode not in ("cgroup", "pidns"):
        raise Unsupported(errno.EOPNOTSUPP, f"limits need a per-tree cgroup, which "
                          f"contain={mode!r} has not: use contain='cgroup', 'pidns' or 'auto'")


def tree_cgroup(
    spec: SpawnSpec, mode: str, cgroup_root_arg: str | os.PathLike[str] | None
) -> tuple[CgroupTree | None, list[str], set[int]]:
    """The tree's cgroups, made and locked (None: the tree needs none), the guard's options
    for them and the fds those name (to pass to the guard)."""
    cgroup: CgroupTree | None = None
    if spec.limits is not None:
        cgroup = LimitedTree.make(spec.limits, mode, cgroup_root_arg)
    elif mode == "cgroup":
        root = cgroup_root(cgroup_root_arg)
        ahead = cgroup_ahead.take(root)  # (under Guard.launch's held signals)
        cgroup = CgroupTree(*ahead) if ahead is not None else CgroupTree.create(root)
        cgroup.root = root
    if cgroup is None:
        return None, [], set()
    try:  # (from the assignment on: a Ctrl-C must not lose the made tree)
        if cgroup.path:
            v1 = [p for p, _ in cgroup.v1.values()] if isinstance(cgroup, LimitedTree) else []
            write_record(cgroup.fd if cgroup.fd >= 0 else cgroup.path, spec.argv, spec.limits,
                         v1)
        opts, fds = guard_cgroup_args(cgroup, mode)
    except BaseException:
        cgroup.discard()
        raise
    return cgroup, opts, fds


def guard_cgroup_args(cgroup: CgroupTree | None, mode: str) -> tuple[list[str], set[int]]:
    """The guard's options for ``cgroup`` and the fds they name."""
    opts: list[str] = []
    fds: set[int] = set()
    if cgroup is None:
        return opts, fds
    if mode == "cgroup":
        opts += ["--cgroup-fd", str(cgroup.fd), "--cgroup-path", cgroup.path]
        fds.add(cgroup.fd)
    if isinstance(cgroup, LimitedTree):
        for fd in cgroup.join:
            opts += ["--join-cgroup", str(fd)]
            fds.add(fd)
        # The guard reads the final usage there and reports it (MSG_EXITED's tail).
        for kind, fd in cgroup.usage_fds():
            opts += [f"--usage-{kind}", str(fd)]
            fds.add(fd)
        if mode == "cgroup":
            # The final Usage is read from the directory once the guard is done with it.
            opts.append("--keep-cgroup")
    return opts, fds


def prepare_next_tree(cgroup: CgroupTree | None) -> None:
    """Once a tree's program has been announced (its guard has joined the tree's cgroups),
    make the next tree's fresh directories while this program starts on another CPU: a
    limited tree's v1 ones (``LimitedTree.prepare_next``), a cgroup-mode tree's v2 one
    (``cgroup_ahead.make_next``)."""
    if isinstance(cgroup, LimitedTree):
        cgroup.prepare_next()
    elif cgroup is not None and cgroup.root:
        cgroup_ahead.make_next(cgroup.root)


def reported_exit(exit_: Exit, cgroup: CgroupTree | None,
                  usage_tail: tuple[int, ...] | None) -> Exit:
    """The end the guard reported (MSG_EXITED): the tree's final usage it read (the
    report's tail, if any) kept as the tree's final :class:`Usage`, so that its directories
    need no read after the guard's exit; then ``exit_`` with its cause
    (:func:`exit_with_cause`)."""
    if usage_tail is not None and isinstance(cgroup, LimitedTree):
        cgroup.keep_final(*usage_tail)
    return exit_with_cause(exit_, cgroup)


def exit_with_cause(exit_: Exit, cgroup: CgroupTree | None) -> Exit:
    """``exit_``, marked ``oom_killed`` if the program died of SIGKILL while the tree's
    memory cgroup counted an OOM kill (the OOM killer's signal is SIGKILL)."""
    if exit_.signal != signal.SIGKILL or not isinstance(cgroup, LimitedTree):
        return exit_
    if not cgroup.oom_kills():
        return exit_
    return replace(exit_, oom_killed=True, memory_limit=cgroup.limits.memory)


def rusage_usage(user_ms: int, system_ms: int, maxrss_kib: int) -> Usage:
    """The guard's RUSAGE_CHILDREN at the end (carried by MSG_EXITED) as a :class:`Usage`."""
    # (every field by position: the record's quick way in, on every run()'s way out)
    return Usage(user_ms / 1000, system_ms / 1000, maxrss_kib << 10, None, None, "rusage")


def tree_usage(cgroup: CgroupTree | None, rusage: tuple[int, int, int] | None, *,
               ended: bool) -> Usage:
    """The tree's :class:`Usage`: from its own cgroups (live, or final once it has ended), or
    without them, once it has ended, the guard's report (``rusage``: user ms, system ms,
    maxrss KiB)."""
    if isinstance(cgroup, LimitedTree):
        return cgroup.usage()
    if rusage is not None:
        return rusage_usage(*rusage)
    if ended:
        raise Unsupported(errno.EOPNOTSUPP, "usage(): the tether guard ended without "
                          "reporting the tree's usage (it was killed)")
    raise Unsupported(errno.EOPNOTSUPP, "usage() of a running tree needs the tree's own "
                      "cgroups: spawn it with limits= (tether.Limits() accounts without "
                      "limiting); without them it is known once the tree has ended")
