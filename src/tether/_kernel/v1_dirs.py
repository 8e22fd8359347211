"""A tree's v1 directories: taken ready-made or made now, removed at the end, swept if orphaned.

The one rule this module owns: a per-tree v1 directory is locked (``cgroup.create_locked``)
from its mkdir until it is removed, whoever made it and whenever, so a sweep only ever takes
one whose owners are all gone. The mkdir is the costly part of a limited tree's start
(measured here: about 37 us in the memory hierarchy, 15 us in pids, plus Python's share), so
a limited tree takes a directory made *ahead* where it can: a reused one of the hierarchies
``v1_pool`` may reuse (cpu, cpuacct), else a fresh one that the previous limited tree's start
made (:func:`replenish`) while that tree's guard was starting on another CPU, so no caller
waits for it. A ready-made fresh directory was never entered, is locked by this process,
kept in ``v1_pool`` and removed at exit (or swept once this process is gone).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterable

from tether._kernel import v1_pool
from tether._kernel.cgroup import (
    PARENT_NAME,
    TREE_PREFIX,
    create_locked,
    release_lock,
    rmdir_quiet,
    stale,
)

__all__ = ["make", "remove", "replenish", "sweep", "take"]

_swept: set[str] = set()
_swept_lock = threading.Lock()
#: Whether this process has started a limited tree before: its first makes nothing ahead (a
#: one-off ``tether run --memory`` has no next tree; it would only remove them at exit).
_started_one = False


def take(where: str, controllers: set[str]) -> tuple[v1_pool.PooledDir, bool]:
    """A locked directory for a new tree in v1 hierarchy ``where`` (which has
    ``controllers``), and whether it is a reusable one (``v1_pool.release`` it at the end,
    after ``v1_pool.reset`` at the start)."""
    reusable = v1_pool.poolable(controllers)
    entry = v1_pool.acquire(where) if reusable else v1_pool.take_fresh(where)
    return entry if entry is not None else make(where), reusable


def make(where: str) -> v1_pool.PooledDir:
    """mkdir and lock a fresh ``<where>/tether/t-<random>``; the first call per parent in
    this process first sweeps that parent's orphaned directories."""
    parent = os.path.join(where, PARENT_NAME)
    _sweep_once(parent)
    return v1_pool.PooledDir(*create_locked(parent, TREE_PREFIX))


def replenish(wheres: Iterable[str]) -> None:
    """Make the next limited tree's fresh directory in each hierarchy of ``wheres`` (not
    reusable ones) whose ready-made one has been taken. For a tree whose guard has just been
    started: the mkdirs run while the guard starts. An optimisation only: a failure (EMFILE,
    a removed parent) leaves the pool short, and the next tree makes its directory itself,
    raising the error where it belongs."""
    global _started_one
    if not _started_one:
        _started_one = True
        return
    for where in wheres:
        if not v1_pool.wants_fresh(where):
            continue
        try:
            entry = make(where)
        except OSError:
            continue
        if not v1_pool.add_fresh(where, entry):
            rmdir_quiet(entry.path)
            release_lock(entry.fd)


def remove(path: str, timeout: float) -> bool:
    """rmdir a v1 directory the guard has left (it was reaped: only stragglers of a killed
    tree may still be exiting). True once gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                if exc.errno == errno.EBUSY:
                    return False
                raise
        # v1 has no "populated" notification: a bounded back-off while members exit.
        time.sleep(0.001)


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
