"""A tree's v1 directories: taken ready-made or made now, removed at the end, swept if orphaned.

The one rule this module owns: a per-tree v1 directory is locked (``cgroup.create_locked``)
from its mkdir until it is removed, whoever made it and whenever, so a sweep only ever takes
one whose owners are all gone. The mkdir is the costly part of a limited tree's start
(measured here: about 37 us in the memory hierarchy, 15 us in pids, plus Python's share), so
a limited tree takes a directory made *ahead* where it can: a reused one (``v1_pool`` says
which may be), else a fresh one, each made ready by the previous limited tree's start
(:func:`prepare`: made or reset, with that tree's limits written) while that tree's program
was starting, so no caller waits for it. A ready-made fresh directory was never entered, is
locked by this process, kept in ``v1_pool`` and removed at exit (or swept once this process
is gone).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from tether._kernel import v1_pool
from tether._kernel.cgroup import (
    PARENT_NAME,
    TREE_PREFIX,
    create_locked,
    stale,
    write_file,
)

__all__ = ["make", "prepare", "sweep", "take"]

_swept: set[str] = set()
_swept_lock = threading.Lock()
#: Whether this process has started a limited tree before: its first makes nothing ahead (a
#: one-off ``tether run --memory`` has no next tree; it would only remove them at exit).
_started_one = False


def take(where: str) -> v1_pool.PooledDir:
    """A locked directory for a new tree in v1 hierarchy ``where``: a pooled one (ready
    first), a fresh one made ahead, or one made now. ``v1_pool.reset`` it before its limits
    are written; at the end, ``v1_pool.release`` it if ``v1_pool.reusable_after`` says so."""
    return (v1_pool.acquire(where, ready=True) or v1_pool.take_fresh(where)
            or v1_pool.acquire(where) or make(where))


def make(where: str) -> v1_pool.PooledDir:
    """mkdir and lock a fresh ``<where>/tether/t-<random>``; the first call per parent in
    this process first sweeps that parent's orphaned directories."""
    parent = os.path.join(where, PARENT_NAME)
    _sweep_once(parent)
    return v1_pool.PooledDir(*create_locked(parent, TREE_PREFIX))


def prepare(hierarchies: Mapping[str, tuple[set[str], dict[str, str]]]) -> None:
    """Make the next limited tree's directory ready in each hierarchy ``where`` of
    ``hierarchies`` (-> its controllers, and the limit writes of the tree being started
    there), with those limits written (``v1_pool.ahead``), so that a next tree with the same
    limits writes nothing: a reusable hierarchy's directory put back by an ended tree is
    checked empty and reset, or else one is made; another hierarchy gets a fresh one where
    its made-ahead one has been taken. For a tree whose guard has just been started: this
    runs while its program starts. An optimisation only: a failure (EMFILE, a removed
    parent) leaves the pool short, and the next tree makes its directory itself, raising the
    error where it belongs."""
    global _started_one
    v1_pool.remove_retired()
    if not _started_one:
        _started_one = True
        return
    for where, (controllers, writes) in hierarchies.items():
        if v1_pool.has_ready(where):
            continue
        entry = v1_pool.take_unready(where)
        try:
            if entry is not None and not v1_pool.reusable_now(entry):
                v1_pool.discard(entry)
                entry = None
            if entry is None:
                entry = make(where)
            limits = v1_pool.ahead(writes)
            held = v1_pool.reset(entry, controllers, limits)
            for name, value in limits.items():
                if name not in held:
                    write_file(name, value, dir_fd=entry.fd)
        except OSError:
            if entry is not None:
                v1_pool.discard(entry)
            continue
        reused = entry.reused or v1_pool.poolable(controllers)
        kept = v1_pool.add_ready(where, entry) if reused else v1_pool.add_fresh(where, entry)
        if not kept:
            v1_pool.discard(entry)


def _sweep_once(parent: str) -> None:
    with _swept_lock:
        if parent in _swept:
            return
        _swept.add(parent)
    sweep(parent)


def sweep(parent: str) -> list[str]:
    """Remove the stale ``t-*`` v1 directories of ``parent`` that are empty (v1 has no
    cgroup.kill: the tree's v2 cgroup or PID namespace ended its members). What is still
    busy is left for a later sweep."""
    removed: list[str] = []
    for path in stale(parent, TREE_PREFIX):
        try:
            os.rmdir(path)
            removed.append(path)
        except OSError:
            pass
    return removed
