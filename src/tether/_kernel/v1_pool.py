"""Emptied v1 directories of ended trees, kept locked for this process's next limited tree.

The one rule this module owns: a v1 directory is reused only when nothing of the previous
tree can show in the next one. So only the hierarchies whose every counter can be reset are
pooled: cpu (limits only) and cpuacct (``cpuacct.usage`` is reset by writing 0, which resets
``usage_user``/``usage_sys`` too). Not pids: ``pids.peak`` cannot be reset. Not memory:
``memory.usage_in_bytes`` of an emptied directory keeps the dead tree's kernel memory charged
(measured: 70-250 KiB after ``/bin/true``; ``force_empty`` does not free it and costs more
than the rmdir it would save), which would count in the next tree's peak and limit. Not
blkio. A directory goes back only once it has no member, and every limit file the previous
tree wrote is written again or reset to its default (``dirty``). A mkdir plus an rmdir per
hierarchy is most of what limits add to a spawn (benchmarks: spawn, ``pidns with limits``).
The pool stays locked by this process (the sweep skips it) and is removed at exit; if the
process dies, the lock goes with it and the next start's sweep removes the directories.

The hierarchies that cannot be reused get *fresh* directories made ahead instead (at most
``FRESH_SIZE`` per hierarchy, never entered by any tree: ``v1_dirs.replenish``), kept and
removed here alike.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Final

from tether._kernel.cgroup import write_file

__all__ = [
    "PooledDir", "acquire", "add_fresh", "controllers_at", "drain", "poolable", "release",
    "reset", "take_fresh", "wants_fresh",
]

#: Directories kept per hierarchy (a process with this many limited trees ending together).
POOL_SIZE: Final = 4
#: v1 controllers whose every counter :class:`~tether.Usage` reads can be reset.
_RESETTABLE: Final = frozenset(("cpu", "cpuacct"))
#: What a limit file of theirs holds in a fresh directory.
_DEFAULTS: Final = {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000",
                    "cpu.shares": "1024"}
#: Fresh directories kept made ahead per hierarchy that cannot be reused.
FRESH_SIZE: Final = 1
_pool: dict[str, list[PooledDir]] = {}
_fresh: dict[str, list[PooledDir]] = {}
_lock = threading.Lock()
#: Set by the drain at exit: a tree ended after it (a dropped one, reaped by the reaper's
#: atexit) has its directories removed, not kept in a pool nobody drains any more.
_closed = False


class PooledDir:
    """One tree's directory in a v1 hierarchy: its lock fd and the limit files written into
    it (file -> value); ``reused``: it served an earlier tree. (No dataclass: ``tether run``
    must not import dataclasses.)"""

    __slots__ = ("dirty", "fd", "path", "reused")

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd
        self.dirty: dict[str, str] = {}
        self.reused = False


def controllers_at(places: dict[str, str], where: str) -> set[str]:
    """The controllers of v1 hierarchy ``where`` (``places``: ``controller_places()``)."""
    return {c for c, w in places.items() if w == where}


def poolable(controllers: set[str]) -> bool:
    """Whether a v1 hierarchy with these controllers may be reused."""
    return bool(controllers) and controllers <= _RESETTABLE


def acquire(where: str) -> PooledDir | None:
    """A pooled directory of hierarchy ``where`` (not reset yet: see :func:`reset`), or
    None."""
    with _lock:
        free = _pool.get(where)
        entry = free.pop() if free else None
    if entry is not None:
        entry.reused = True
    return entry


def take_fresh(where: str) -> PooledDir | None:
    """A fresh directory of hierarchy ``where``, made ahead (no tree ever entered it), or
    None."""
    with _lock:
        free = _fresh.get(where)
        return free.pop() if free else None


def wants_fresh(where: str) -> bool:
    """Whether hierarchy ``where`` has fewer fresh directories made ahead than it keeps."""
    with _lock:
        return len(_fresh.get(where, ())) < FRESH_SIZE


def add_fresh(where: str, entry: PooledDir) -> bool:
    """Keep a fresh directory for the next tree; False (the caller removes it) if full, or
    once the pool has been drained at exit."""
    return _keep(_fresh, where, entry, FRESH_SIZE)


def reset(entry: PooledDir, controllers: set[str], rewritten: dict[str, str]) -> set[str]:
    """Make a reused directory read as a fresh one before the next tree's limits are
    written (``rewritten``: file -> value, what those write): the previous tree's other
    limit files back to their defaults, the CPU time counter to 0. Returns the files of
    ``rewritten`` that hold their value already (a default, or the previous tree's same
    limit), which need no write."""
    held = {name for name, value in rewritten.items()
            if entry.dirty.get(name, _DEFAULTS.get(name)) == value}
    if entry.reused:
        for name, default in _DEFAULTS.items():
            if name not in rewritten and entry.dirty.get(name, default) != default:
                write_file(name, default, dir_fd=entry.fd)
        if "cpuacct" in controllers:
            write_file("cpuacct.usage", "0", dir_fd=entry.fd)
    entry.dirty = dict(rewritten)
    return held


def release(where: str, entry: PooledDir) -> bool:
    """Put an ended tree's directory back once its final usage has been read; False (the
    caller removes it) if it still has a member, the pool is full or it has been drained at
    exit."""
    if _read("cgroup.procs", entry.fd) != "":
        return False
    return _keep(_pool, where, entry, POOL_SIZE)


def _keep(kept: dict[str, list[PooledDir]], where: str, entry: PooledDir, size: int) -> bool:
    """Add ``entry`` to ``kept[where]``; False if it holds ``size`` already, or once the
    pools have been drained at exit."""
    with _lock:
        free = kept.setdefault(where, [])
        if _closed or len(free) >= size:
            return False
        free.append(entry)
    return True


def drain() -> None:
    """Remove every pooled and fresh directory and release its lock (at exit; tests)."""
    entries = _take_all()
    for entry in entries:
        try:
            os.rmdir(entry.path)
        except OSError:
            pass  # unlocked now: the next start's sweep removes it
        os.close(entry.fd)


def _take_all() -> list[PooledDir]:
    """Every pooled and fresh directory, out of the pools (the caller owns their locks)."""
    with _lock:
        entries = [e for kept in (_pool, _fresh) for free in kept.values() for e in free]
        _pool.clear()
        _fresh.clear()
    return entries


def _drain_at_exit() -> None:
    global _closed
    with _lock:
        _closed = True
    drain()


def _forget_in_child() -> None:
    # A forked child shares the parent's directories: two trees must never get one.
    entries = _take_all()
    for entry in entries:
        os.close(entry.fd)



def _read(name: str, dir_fd: int) -> str | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, 64).decode("ascii")
    except OSError:
        return None
    finally:
        os.close(fd)


atexit.register(_drain_at_exit)
os.register_at_fork(after_in_child=_forget_in_child)
