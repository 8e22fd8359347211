"""The next cgroup-mode tree's directory, made while this process's last one starts.

The one rule this module owns: a directory made ahead is fresh (no process ever entered it),
locked by this process alone from its mkdir on (``create_locked(private=True)``: its lock fd
is closed in every child this process forks), kept for at most one next tree per cgroup
root, and removed at exit; if the process dies, the lock goes with it and a later start's
sweep removes it. Directories are never reused: a new tree gets a new directory, so its
``cpu.stat``, ``cgroup.events`` and record start empty and its cgroup id is its own.

Why: a cgroup-mode start paid for its directory on its own path: the mkdir, and the
``/proc/self/cgroup`` read that says where the directory goes (a tree started inside a tether
tree nests in it), each take the kernel's ``cgroup_mutex``, which every cgroup operation on
the machine also takes (measured: ~60 us alone, several times that while other processes
make and remove cgroups). Made when a start has been announced (``Guard._on_announced``:
the program then runs on another CPU), neither is on the next start's path. A process's first
cgroup-mode start makes nothing ahead (a one-off ``tether run`` has no next tree).

Where the directory goes was read when it was made: a directory made before this process
moved itself (``cgroup.move_self``, the pytest plugin's per-test cgroups) is never taken,
since the nesting may have changed; it is removed instead. A move made by another process
between two starts is not seen (nothing cheaper than the ``/proc/self/cgroup`` read this
saves could see it); such a tree is placed where the previous one was.
"""

from __future__ import annotations

import atexit
import os
import threading

from tether._kernel import core
from tether._kernel.cgroup import (
    PARENT_NAME,
    TREE_PREFIX,
    create_locked,
    moves,
    release_lock,
    rmdir_quiet,
    tree_parent,
)

__all__ = ["drain", "kept", "make_next", "take"]

#: cgroup root -> (path, lock fd, ``cgroup.moves()`` when it was made).
_ahead: dict[str, tuple[str, int, int]] = {}
_lock = threading.Lock()
#: Roots that have had a cgroup-mode start in this process (the first makes nothing ahead).
_started: set[str] = set()
#: Set by the drain at exit: nothing is made ahead after it.
_closed = False


def take(root: str) -> tuple[str, int] | None:
    """The directory made ahead for a tree under ``root`` (path, private lock fd: release
    it with ``cgroup.release_lock``), or None. Call with signals held: from here until the
    caller holds it, it is a path and an fd in locals."""
    with _lock:
        entry = _ahead.pop(root, None)
    if entry is None:
        return None
    path, fd, made_at = entry
    if made_at != moves():  # this process has moved since: the nesting may differ
        _remove(path, fd)
        return None
    return path, fd


def make_next(root: str) -> None:
    """Make the next tree's directory under ``root`` if none is kept, from this process's
    second cgroup-mode start on. An optimisation only: a failure (EMFILE, a removed parent)
    leaves none, and the next start makes its own, raising the error where it belongs."""
    with _lock:
        if root not in _started:
            _started.add(root)
            return
        if _closed or root in _ahead:
            return
    made_at = moves()
    # From the mkdir until it is kept, the directory is a path and an fd in locals: no signal
    # handler runs in between (a Ctrl-C is raised once it is kept, and it is removed at exit).
    held = core.hold_signals()
    try:
        try:
            parent = os.path.join(tree_parent(root), PARENT_NAME)
            path, fd = create_locked(parent, TREE_PREFIX, private=True)
        except OSError:
            return
        with _lock:
            keep = not _closed and root not in _ahead
            if keep:
                _ahead[root] = (path, fd, made_at)
        if not keep:
            _remove(path, fd)
    finally:
        core.release_signals(held)


def kept() -> set[str]:
    """The directories made ahead and kept now (for leak checks: they are this process's,
    bounded, and removed at exit)."""
    with _lock:
        return {path for path, _, _ in _ahead.values()}


def drain() -> None:
    """Remove every directory made ahead and release its lock (at exit; tests)."""
    with _lock:
        entries = list(_ahead.values())
        _ahead.clear()
    for path, fd, _ in entries:
        _remove(path, fd)


def _remove(path: str, fd: int) -> None:
    rmdir_quiet(path)  # (unlocked after a failure: a later start's sweep removes it)
    release_lock(fd)


def _drain_at_exit() -> None:
    global _closed
    with _lock:
        _closed = True
    drain()


def _forget_in_child() -> None:
    # The locks are closed in the child already (private); the directories stay the parent's.
    # A new lock too: another thread of the parent may have held it at the fork.
    global _lock
    _lock = threading.Lock()
    _ahead.clear()


atexit.register(_drain_at_exit)
os.register_at_fork(after_in_child=_forget_in_child)
