"""Emptied v1 directories of ended trees, kept locked for this process's next limited tree.

The one rule this module owns: a v1 directory is reused only when nothing of the previous
tree can show in the next one. So only the hierarchies whose every counter can be reset are
pooled: cpu (limits only) and cpuacct (``cpuacct.usage`` is reset by writing 0, which resets
``usage_user``/``usage_sys`` too). pids only after a tree whose ``pids.peak`` stayed at
``PIDS_FLOOR`` (it cannot be reset, but every tree reaches that peak: the guard joins the
directory before it clones the program, so the next tree's peak reads true). Not memory:
``memory.usage_in_bytes`` of an emptied directory keeps the dead tree's kernel memory charged
(measured: 70-250 KiB after ``/bin/true``; ``force_empty`` does not free it and costs more
than the rmdir it would save), which would count in the next tree's peak and limit. Not
blkio. A directory is taken again only once it has no member (a pids one only while its
peak is still the floor: ``reusable_now``), and every limit file the previous tree wrote is
written again or reset to its default (``dirty``). A mkdir plus an rmdir per hierarchy is most
of what limits add to a spawn (benchmarks: spawn, ``pidns with limits``).
The pool stays locked by this process (the sweep skips it) and is removed at exit; if the
process dies, the lock goes with it and the next start's sweep removes the directories.

An ended tree's directory that cannot be reused (memory; pids past the floor) is *retired*
instead of removed on the way out of the tree's wait: emptied and locked, it is removed by
the next limited tree's preparation, while that tree's program runs (``remove_retired``), or
at exit, at most ``RETIRED_SIZE`` at a time (the rmdir of a used memory directory costs about
50 us here).

The hierarchies that cannot be reused get *fresh* directories made ahead instead (at most
``FRESH_SIZE`` per hierarchy, never entered by any tree: ``v1_dirs.prepare``), kept and
removed here alike.

Made ahead, or put back, a directory is *ready* once it has been made or checked empty and
reset, and the limits of the tree whose start prepared it written (``dirty``), all while
that tree's program started (``v1_dirs.prepare``): the next tree with the same limits then
takes it and writes nothing. Only files with a known default (``_DEFAULTS``) are written
ahead, so that a next tree without that limit can put it back. A directory put back by an
ended tree is not ready: the check that it has no member left and its reset wait for the
next start's preparation (or for the tree that takes it first).
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Final

from tether._kernel.cgroup import remove, write_file

__all__ = [
    "PIDS_FLOOR", "PooledDir", "acquire", "add_fresh", "add_ready", "ahead", "controllers_at",
    "discard", "drain", "has_ready", "poolable", "release", "remove_retired", "reset",
    "retire", "reusable_after", "reusable_now", "take_fresh", "take_unready",
]

#: Directories kept per hierarchy (a process with this many limited trees ending together).
POOL_SIZE: Final = 4
#: v1 controllers whose every counter :class:`~tether.Usage` reads can be reset.
_RESETTABLE: Final = frozenset(("cpu", "cpuacct"))
#: What a limit file holds in a fresh directory (written back where a later tree has no such
#: limit; the only files written ahead). memory.limit_in_bytes reads as a large number, but
#: -1 sets it back to that.
_DEFAULTS: Final = {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000",
                    "cpu.shares": "1024", "memory.limit_in_bytes": "-1", "pids.max": "max"}
#: Fresh directories kept made ahead per hierarchy that cannot be reused.
FRESH_SIZE: Final = 1
#: The ``pids.peak`` every tree reaches: its guard and its program.
PIDS_FLOOR: Final = 2
#: Ended trees' directories kept for removal off their wait's path (see the module's doc).
RETIRED_SIZE: Final = 8
_pool: dict[str, list[PooledDir]] = {}
_fresh: dict[str, list[PooledDir]] = {}
_retired: dict[str, list[PooledDir]] = {"": []}
_lock = threading.Lock()
#: Set by the drain at exit: a tree ended after it (a dropped one, reaped by the reaper's
#: atexit) has its directories removed, not kept in a pool nobody drains any more.
_closed = False


class PooledDir:
    """One tree's directory in a v1 hierarchy: its lock fd and the limit files written into
    it (file -> value); ``reused``: it served an earlier tree; ``ready``: no tree has entered
    it since it was made or reset, and ``dirty`` is what its limit files hold; ``peaked``:
    False once it is known to have no ``pids.peak`` (not a pids hierarchy). (No dataclass:
    ``tether run`` must not import dataclasses.)"""

    __slots__ = ("dirty", "fd", "path", "peaked", "ready", "reused")

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd
        self.dirty: dict[str, str] = {}
        self.reused = False
        self.ready = True
        self.peaked = True


def controllers_at(places: dict[str, str], where: str) -> set[str]:
    """The controllers of v1 hierarchy ``where`` (``places``: ``controller_places()``)."""
    return {c for c, w in places.items() if w == where}


def poolable(controllers: set[str]) -> bool:
    """Whether a v1 hierarchy with these controllers may be reused."""
    return bool(controllers) and controllers <= _RESETTABLE


def reusable_after(controllers: set[str], pids_peak: int | None) -> bool:
    """Whether an ended tree's directory in a v1 hierarchy with these controllers may be
    reused, the tree's final ``pids_peak`` given."""
    return poolable(controllers) or (
        controllers == {"pids"} and pids_peak is not None and pids_peak <= PIDS_FLOOR)


def acquire(where: str, *, ready: bool = False) -> PooledDir | None:
    """A pooled directory of hierarchy ``where`` with no member, ready ones first (else
    :func:`reset` resets it), or None; with ``ready``, a ready one only. One that still has
    a member (someone moved a process into it after its tree ended), or whose pids peak went
    past the floor after all (:func:`reusable_now`), is removed or, busy, left to the sweep."""
    while True:
        with _lock:
            free = _pool.get(where, [])
            ready_ones = [e for e in free if e.ready]
            entry = ready_ones[-1] if ready_ones else None if ready or not free else free[-1]
            if entry is not None:
                free.remove(entry)
        if entry is None or entry.ready or reusable_now(entry):
            return entry
        discard(entry)


def take_unready(where: str) -> PooledDir | None:
    """A pooled directory of ``where`` put back by an ended tree and not made ready yet (by
    :func:`v1_dirs.prepare`), or None if none is, or one is ready already."""
    with _lock:
        free = _pool.get(where, [])
        if not free or any(e.ready for e in free):
            return None
        return free.pop()


def has_ready(where: str) -> bool:
    """Whether hierarchy ``where`` has a ready directory (pooled, or fresh made ahead)."""
    with _lock:
        return any(e.ready for e in _pool.get(where, ())) or bool(_fresh.get(where))


def add_ready(where: str, entry: PooledDir) -> bool:
    """Keep a ready directory of a reusable hierarchy (made ahead, or reset ahead); False (the
    caller removes it) if the pool is full or drained."""
    entry.ready = True
    return _keep(_pool, where, entry, POOL_SIZE)


def reusable_now(entry: PooledDir) -> bool:
    """Whether a directory put back by an ended tree may serve the next one: it has no member
    (no one moved a process in), and in a pids hierarchy its peak is still the floor. The
    peak the tree was put back on can be older than its end: a member that had left the
    tree's v2 directory (so cgroup.kill did not end it) stays in this one and may fork after
    the final read. Checked here, when no member is left, it is final."""
    if _read("cgroup.procs", entry.fd) != "":
        return False
    peak = _read("pids.peak", entry.fd, entry) if entry.peaked else None
    return peak is None or int(peak) <= PIDS_FLOOR


def discard(entry: PooledDir) -> None:
    """Remove a directory the pools will not keep (or leave it, busy, to the sweep) and
    release its lock."""
    try:
        os.rmdir(entry.path)
    except OSError:
        pass  # unlocked now: the next start's sweep removes it
    os.close(entry.fd)


def take_fresh(where: str) -> PooledDir | None:
    """A fresh directory of hierarchy ``where``, made ahead (no tree ever entered it), or
    None."""
    with _lock:
        free = _fresh.get(where)
        return free.pop() if free else None


def add_fresh(where: str, entry: PooledDir) -> bool:
    """Keep a fresh directory for the next tree; False (the caller removes it) if full, or
    once the pool has been drained at exit."""
    return _keep(_fresh, where, entry, FRESH_SIZE)


def reset(entry: PooledDir, controllers: set[str], rewritten: dict[str, str]) -> set[str]:
    """Make a reused or prepared directory read as a fresh one with the next tree's limits
    (``rewritten``: file -> value, what those write): the limit files written before and not
    now back to their defaults, the CPU time counter of a reused one not ready yet to 0.
    Returns the files of ``rewritten`` that hold their value already (a default, or the same
    limit written before), which need no write."""
    held = {name for name, value in rewritten.items()
            if entry.dirty.get(name, _DEFAULTS.get(name)) == value}
    for name, value in entry.dirty.items():
        if name not in rewritten and value != _DEFAULTS.get(name, value):
            write_file(name, _DEFAULTS[name], dir_fd=entry.fd)
    if entry.reused and not entry.ready and "cpuacct" in controllers:
        write_file("cpuacct.usage", "0", dir_fd=entry.fd)
    entry.dirty = dict(rewritten)
    return held


def ahead(writes: dict[str, str]) -> dict[str, str]:
    """Of a tree's limit writes in one hierarchy, the ones a directory made ready for the next
    tree may hold already (those with a default to go back to)."""
    return {name: value for name, value in writes.items() if name in _DEFAULTS}


def release(where: str, entry: PooledDir) -> bool:
    """Put an ended tree's directory back once its final usage has been read, not ready (see
    :func:`acquire` and ``v1_dirs.prepare``); False (the caller removes it) if the pool is
    full or it has been drained at exit."""
    entry.ready = False
    entry.reused = True
    return _keep(_pool, where, entry, POOL_SIZE)


def retire(entry: PooledDir) -> bool:
    """Keep an ended tree's directory that will not be reused (its final usage read) for
    :func:`remove_retired`; False (the caller removes it now, waiting for what is left to
    exit) if a member is left in it, if full, or once the pools have been drained at exit."""
    return _read("cgroup.procs", entry.fd) == "" and _keep(_retired, "", entry, RETIRED_SIZE)


def remove_retired() -> None:
    """Remove the retired directories (the next limited tree's preparation, while its program
    runs), with the cgroups the tree made inside, deepest first. One a process was moved into
    since is left, unlocked, to a later sweep. One at a time, each out of the pool only once
    removed: a Ctrl-C meanwhile leaves the rest retired (locked, removed later), not out of
    every pool with its fd open."""
    while True:
        with _lock:
            if not _retired[""]:
                return
            entry = _retired[""][-1]
        try:
            _remove_quietly(entry)
        finally:
            with _lock:
                ours = entry in _retired[""]  # (another thread's otherwise)
                if ours:
                    _retired[""].remove(entry)
            if ours:
                os.close(entry.fd)


def _remove_quietly(entry: PooledDir) -> None:
    """rmdir ``entry``'s directory, nested cgroups first; one still busy (or gone) is left:
    once its lock is released, the next start's sweep removes it."""
    try:
        remove(entry.path, 0.0)
    except OSError:
        pass


def _remove_retired(entry: PooledDir) -> None:
    try:
        _remove_quietly(entry)
    finally:
        os.close(entry.fd)


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
    """Remove every pooled, fresh and retired directory and release its lock (at exit;
    tests)."""
    for entry in _take_all():
        _remove_retired(entry)


def _take_all() -> list[PooledDir]:
    """Every pooled, fresh and retired directory, out of the pools (the caller owns their
    locks)."""
    with _lock:
        entries = [e for kept in (_pool, _fresh, _retired) for free in kept.values()
                   for e in free]
        _pool.clear()
        _fresh.clear()
        _retired[""] = []
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



def _read(name: str, dir_fd: int, lacking: PooledDir | None = None) -> str | None:
    """The file `name` of a directory (one read), or None; `lacking`, if the file does not
    exist, is marked as a directory without it (`peaked`)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        if lacking is not None:
            lacking.peaked = False  # (not a pids hierarchy: not looked for again)
        return None
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
