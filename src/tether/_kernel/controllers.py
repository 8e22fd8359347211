"""Per-controller cgroups of a tree: where each controller is, its limits, its accounting.

The one rule this module owns: limits and accounting work per controller -- through cgroup
v2 where the v2 hierarchy has the controller, through that controller's v1 hierarchy
otherwise (the hybrid layout: v2 mounted with no controllers, memory/cpu/pids on v1). A
tree's v1 directories (``v1_dirs``: 0700, flocked, ``t-<random>`` below ``<this process's v1
cgroup>/tether``, so a tree started inside a tether tree nests in it; made ahead where they
can be), written with the limits before the guard starts, joined by the
guard itself (it moves itself, never another pid, before it clones the program), read for
:class:`Usage` and removed here once the guard has been reaped (cpu and cpuacct ones
are kept for the next tree instead: ``v1_pool``). The lock fds go to the guard
too, so a directory stays locked while the guard lives; one whose owners are all gone is
removed by the next start's sweep. Every cgroup *file* write of this module is here; the v2
directory itself is ``cgroup.CgroupTree``'s.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from typing import Final

from tether._kernel import core, v1_dirs, v1_pool
from tether._kernel.cgroup import (
    CgroupTree,
    cgroup_root,
    cgroup_unavailable_reason,
    kill,
    populated,
    release_lock,
    remove,
    rmdir_quiet,
    wait_empty,
    write_file,
)
from tether._kernel.errors import Unsupported
from tether._kernel.limit_files import Writes, checked_writes
from tether._kernel.limits import Limits, Usage

__all__ = [
    "V1_SUBDIR_ENV",
    "LimitedTree",
    "controller_places",
    "forget_layout",
    "own_v1_cgroups",
]

#: A directory below this process's own v1 cgroup to put trees in (tests: a private one).
V1_SUBDIR_ENV: Final = "TETHER_CGROUP_V1_SUBDIR"
#: The controllers a tree's accounting and limits use, v2 names (v1 "cpuacct" is CPU time).
CONTROLLERS: Final = ("memory", "cpu", "cpuacct", "pids", "io")
#: The ones :class:`Usage` reads (memory peak and OOM kills, CPU time, process count); the
#: others get a directory only for a limit of theirs (each v1 one costs a mkdir and an rmdir).
ACCOUNTING: Final = frozenset(("memory", "cpuacct", "pids"))
_V1_NAME: Final = {"io": "blkio"}
_layout: dict[str, dict[str, str]] = {}
_layout_lock = threading.Lock()


# -- where the controllers are -----------------------------------------------------------


def _v1_mounts() -> dict[str, str]:
    """controller -> this process's own cgroup directory in the v1 hierarchy that has it."""
    mounts: dict[str, tuple[str, str]] = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, extra = left.split(" "), right.split()
                if len(extra) < 3 or extra[0] != "cgroup":
                    continue
                for option in extra[2].split(","):
                    mounts.setdefault(option, (fields[4], fields[3]))
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            own = {name: path for line in f if not line.startswith("0::")
                   for name, path in _own_v1_lines(line)}
    except (OSError, ValueError):
        return {}
    dirs: dict[str, str] = {}
    for controller in CONTROLLERS:
        name = _V1_NAME.get(controller, controller)
        if name not in mounts or name not in own:
            continue
        point, mount_root = mounts[name]
        relative = os.path.relpath(own[name], mount_root) if mount_root != "/" else own[name]
        dirs[controller] = os.path.normpath(point + "/" + relative.lstrip("./"))
    return dirs


def _own_v1_lines(line: str) -> list[tuple[str, str]]:
    _, names, path = line.rstrip("\n").split(":", 2)
    # "cpu,cpuacct" co-mounted: one entry per controller.
    return [(name, path) for name in names.split(",")]


def _v2_controllers(root: str) -> set[str]:
    try:
        with open(os.path.join(root, "cgroup.controllers"), encoding="ascii") as f:
            return set(f.read().split())
    except OSError:
        return set()


def controller_places(cgroup_root_arg: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """controller -> "v2" or the v1 directory trees get theirs under (absent: nowhere).
    CPU time (``cpuacct``) is on v2 wherever v2 is usable (``cpu.stat`` needs no
    controller)."""
    v2_root = cgroup_root(cgroup_root_arg) if cgroup_unavailable_reason(cgroup_root_arg) is None \
        else None
    key = v2_root or ""
    with _layout_lock:
        cached = _layout.get(key)
        if cached is not None:
            return cached
    on_v2 = _v2_controllers(v2_root) if v2_root is not None else set()
    places: dict[str, str] = {}
    for controller, directory in _v1_mounts().items():
        subdir = os.environ.get(V1_SUBDIR_ENV, "").strip("/")
        places[controller] = os.path.join(directory, subdir) if subdir else directory
    for controller in on_v2:
        if controller in CONTROLLERS:
            places[controller] = "v2"
    if "cpu" in on_v2:
        places["cpuacct"] = "v2"
    with _layout_lock:
        _layout[key] = places
    return places


def own_v1_cgroups() -> dict[str, str]:
    """v1 directory trees get theirs under -> this process's own cgroup in that hierarchy
    (where it goes back to after joining a tree's, as the pytest plugin does per test)."""
    own = _v1_mounts()
    return {where: own[c] for c, where in controller_places().items()
            if where != "v2" and c in own}


def forget_layout() -> None:
    """Drop the cached layout (a test that changes TETHER_CGROUP_V1_SUBDIR)."""
    with _layout_lock:
        _layout.clear()


# -- a tree's cgroups ----------------------------------------------------------------------------


class LimitedTree(CgroupTree):
    """A tree's cgroups when it has :class:`Limits`: its v2 directory (``fd``/``path``; in
    cgroup mode the containment one, else one the guard joins, or none: fd -1) and one locked
    directory per v1 hierarchy. ``join`` are the fds the guard moves itself into."""

    __slots__ = ("entries", "final", "join", "limits", "places", "v1", "v1_controllers",
                 "v1_writes")

    def __init__(self, path: str, fd: int, limits: Limits, places: dict[str, str]) -> None:
        super().__init__(path, fd)
        self.limits = limits
        self.places = places
        self.v1: dict[str, tuple[str, int]] = {}  # v1 directory -> (path, lock fd)
        self.entries: dict[str, v1_pool.PooledDir] = {}  # every v1 one
        self.v1_writes: dict[str, dict[str, str]] = {}  # v1 directory -> file -> value
        self.v1_controllers: dict[str, set[str]] = {}  # v1 directory -> its controllers
        self.join: list[int] = []
        self.final: Usage | None = None

    @classmethod
    def make(cls, limits: Limits, mode: str,
             cgroup_root_arg: str | os.PathLike[str] | None) -> LimitedTree:
        """Check that every limit has its controller here, then make and write the tree's
        directories. ``Unsupported`` (naming what is missing) before anything exists."""
        places = controller_places(cgroup_root_arg)
        writes = checked_writes(limits, places, guard_inside=mode != "cgroup")
        needs_v2 = mode == "cgroup" or any(
            places.get(c) == "v2" for _, c, _, _ in writes)
        v2_root = cgroup_root(cgroup_root_arg) if needs_v2 else None
        return cls("", -1, limits, places)._filled(writes, v2_root, join_v2=mode != "cgroup")

    @classmethod
    def beside(cls, limits: Limits, v2_path: str) -> LimitedTree:
        """The limits and accounting cgroups for a v2 directory someone else made and
        removes (the pytest plugin's per-test cgroup, which pytest itself joins, so it is
        not counted in ``pids``): v2 limits are written into ``v2_path``, v1 ones into fresh
        locked directories (``v1``) the caller moves its process into. ``Unsupported``,
        naming what is missing, before anything exists."""
        places = controller_places()
        writes = checked_writes(limits, places, guard_inside=True)
        tree = cls(v2_path, -1, limits, places)  # fd -1: remove() leaves v2_path alone
        return tree._filled(writes)

    def _filled(self, writes: list[tuple[str, str, Writes, Writes]], v2_root: str | None = None,
                *, join_v2: bool = False) -> LimitedTree:
        """This tree with its directories made (a v2 one under ``v2_root`` if given, which
        the guard joins if ``join_v2``; the v1 ones made or taken) and its limits written; on
        any error (or an interrupt) everything made so far is discarded first."""
        try:
            if v2_root is not None:
                v2 = CgroupTree.create(v2_root)
                self.path, self.fd = v2.path, v2.fd
                if join_v2:
                    self.join.append(self.fd)
            self._make_v1_dirs(ACCOUNTING | {c for _, c, _, _ in writes})
            self._write_limits(writes)
        except BaseException:
            self.discard()
            raise
        return self

    @property
    def cpu_group(self) -> bool:
        """The tree runs in a cpu group of its own (its cpu controller's limits: cpus,
        cpu_weight): the overlapped start then polls for its program's exec before it sleeps
        (launch_early.c, early_close)."""
        return self.limits.cpus is not None or self.limits.cpu_weight is not None

    def hand_over(self) -> None:
        """Keep every lock (the v2 directory's and the v1 ones) until remove(): the guard
        holds them while it lives, but the final Usage is read after it has exited, and an
        unlocked, emptied directory is any sweep's to remove before that read."""

    def prepare_next(self) -> None:
        """Make the next limited tree's v1 directories ready, with this tree's limits
        (``v1_dirs.prepare``), once this tree's guard has been started: the mkdirs, resets and
        writes run while its program starts."""
        v1_dirs.prepare({where: (self.v1_controllers[where], self.v1_writes.get(where, {}))
                         for where in self.v1})

    def _make_v1_dirs(self, needed: frozenset[str]) -> None:
        # From its mkdir (or its taking from the pool) until this tree holds it, a directory
        # is a path and an fd in locals: no signal handler runs in between (a Ctrl-C there
        # would lose it; one that comes is handled right after, and make() then discards the
        # tree with it).
        held = core.hold_signals()
        try:
            for controller in CONTROLLERS:
                where = self.places.get(controller) if controller in needed else None
                if where is None or where == "v2" or where in self.v1:
                    continue
                entry = v1_dirs.take(where)
                self.v1[where] = (entry.path, entry.fd)
                self.entries[where] = entry
                self.v1_controllers[where] = v1_pool.controllers_at(self.places, where)
                self.join.append(entry.fd)
        finally:
            core.release_signals(held)

    def _dir(self, controller: str) -> tuple[str, int] | None:
        """The controller's directory of this tree and its open fd (-1: none of ours)."""
        where = self.places.get(controller)
        if where == "v2":
            return (self.path, self.fd) if self.path else None
        return self.v1.get(where) if where is not None else None

    def _write_limits(self, writes: list[tuple[str, str, Writes, Writes]]) -> None:
        v2_controllers = {c for _, c, _, _ in writes if self.places.get(c) == "v2"}
        if v2_controllers:
            _enable_controllers(self.path, v2_controllers)
        held: set[tuple[str, str]] = set()  # (a write that would not change the file)
        for where, entry in self.entries.items():
            self.v1_writes[where] = rewritten = {
                n: v for _, c, _, v1 in writes if self.places[c] == where for n, v in v1}
            held |= {(entry.path, name) for name in v1_pool.reset(
                entry, self.v1_controllers[where], rewritten)}
            entry.ready = False  # (this tree is about to enter it)
        for field, controller, v2_files, v1_files in writes:
            place = self._dir(controller)
            assert place is not None
            directory, dir_fd = place
            files = v2_files if self.places[controller] == "v2" else v1_files
            for name, value in files:
                if (directory, name) in held:
                    continue
                try:
                    _write(directory, dir_fd, name, value)
                except FileNotFoundError:
                    raise Unsupported(errno.ENOENT, f"Limits.{field} needs {name}, which "
                                      f"{directory} lacks (kernel or accounting option)") from None
                except OSError as exc:
                    raise OSError(exc.errno, f"Limits.{field}: writing {value} to {name} "
                                  f"failed: {exc.strerror}", directory) from None

    # -- reading --------------------------------------------------------------------------

    def usage(self) -> Usage:
        """What the tree has used so far (every process in its cgroups), or once it has
        ended, what it used (read before the directories were removed)."""
        if self.final is not None:
            return self.final
        cpu = self._dir("cpuacct")
        user = system = 0.0
        if cpu is not None and self.places.get("cpuacct") == "v2":
            stat = _keyed(cpu, "cpu.stat")
            user, system = stat.get("user_usec", 0) / 1e6, stat.get("system_usec", 0) / 1e6
        elif cpu is not None:
            user, system = _cpuacct_seconds(cpu)
        memory, v2_memory = self._dir("memory"), self.places.get("memory") == "v2"
        peak = oom = None
        if memory is not None:
            peak = _number(memory, "memory.peak" if v2_memory else "memory.max_usage_in_bytes")
            oom = self.oom_kills()
        pids = self._dir("pids")
        pids_peak = _number(pids, "pids.peak") if pids is not None else None
        return Usage(user=user, system=system, memory_peak=peak, oom_kills=oom,
                     pids_peak=pids_peak)

    def usage_fds(self) -> list[tuple[str, int]]:
        """(kind, directory fd) for the guard's --usage-cpu/-memory/-pids: the directories
        :meth:`usage` reads, where this tree holds an fd on each (else none: the parent
        reads them all itself)."""
        dirs = [("cpu", self._dir("cpuacct")), ("memory", self._dir("memory")),
                ("pids", self._dir("pids"))]
        if any(place is not None and place[1] < 0 for _, place in dirs):
            return []
        return [(kind, place[1]) for kind, place in dirs if place is not None]

    def keep_final(self, user_ns: int, system_ns: int, memory_peak: int, oom_kills: int,
                   pids_peak: int) -> None:
        """Keep the final usage the guard read from :meth:`usage_fds` (-1: not counted
        there), as :meth:`usage` would have read it: ``remove`` then reads nothing."""
        self.final = Usage(user=max(user_ns, 0) / 1e9, system=max(system_ns, 0) / 1e9,
                           memory_peak=memory_peak if memory_peak >= 0 else None,
                           oom_kills=oom_kills if oom_kills >= 0 else None,
                           pids_peak=pids_peak if pids_peak >= 0 else None)

    def oom_kills(self) -> int | None:
        """How many processes the OOM killer has killed inside the tree (None: not counted
        here). v2 ``memory.events``, v1 ``memory.oom_control`` (4.13+)."""
        if self.final is not None:
            return self.final.oom_kills
        memory = self._dir("memory")
        if memory is None:
            return None
        name = "memory.events" if self.places.get("memory") == "v2" else "memory.oom_control"
        return _keyed(memory, name).get("oom_kill")

    # -- ending ---------------------------------------------------------------------------

    def discard(self) -> None:
        """Remove directories no process ever entered, release the locks. Idempotent."""
        super().discard()
        for path, fd in self.v1.values():
            rmdir_quiet(path)
            release_lock(fd)
        self.v1.clear()
        self.entries.clear()

    def remove(self, timeout: float = 5.0) -> None:
        """Keep the final :class:`Usage` (the guard's report, else read here once what is left
        in the v2 directory is killed), then remove every directory (the v2 one after killing
        what is left in it; a v1 one once the last member has left, or after the guard's
        report, an emptied one later: ``v1_pool.retire``). Idempotent."""
        reported = self.final is not None  # (the guard's report: the tree ended in order)
        if self.final is None and (self.fd >= 0 or self.v1):
            # The guard could not report (killed, or its cgroup not emptied): what is left of
            # the tree in our v2 directory ends first, or it could run and fork after the read.
            if self.fd >= 0 and populated(self.path):
                with contextlib.suppress(FileNotFoundError):
                    kill(self.path)
                    wait_empty(self.path, timeout)
            try:
                self.final = self.usage()
            except OSError:
                self.final = Usage(user=0.0, system=0.0)
        try:
            super().remove(timeout)
        finally:
            peak = self.final.pids_peak if self.final is not None else None
            while self.v1:
                self._remove_v1(reported, peak, timeout)

    def _remove_v1(self, reported: bool, peak: int | None, timeout: float) -> None:
        # Let go of one v1 directory: to a pool, or removed now. Until a pool keeps it or
        # the removal's `finally` holds it, it is a path and an fd in locals: no signal
        # handler runs in between (a Ctrl-C during retire's read lost it with its fd).
        held, released = core.hold_signals(), False
        try:
            where, (path, fd) = self.v1.popitem()
            entry = self.entries.pop(where)
            if v1_pool.reusable_after(self.v1_controllers[where], peak) and \
                    v1_pool.release(where, entry):
                return
            if reported and v1_pool.retire(entry):
                return  # (removed while the next limited tree's program runs)
            try:
                released = True
                core.release_signals(held)  # (a Ctrl-C held off is raised here, or later)
                # The guard was reaped: only stragglers of a killed tree may still be
                # exiting, and cgroups the tree made inside go first.
                if not remove(path, timeout):
                    raise OSError(errno.EBUSY, f"cgroup still busy after {timeout} s", path)
            finally:
                release_lock(fd)
        finally:
            if not released:
                core.release_signals(held)


def _enable_controllers(tree_dir: str, controllers: set[str]) -> None:
    """``+c`` in cgroup.subtree_control of every ancestor of ``tree_dir`` below the v2 root,
    top down. Those are tether's empty parent directories (no internal process)."""
    chain: list[str] = []
    parent = os.path.dirname(tree_dir)
    while os.path.exists(os.path.join(parent, "cgroup.subtree_control")):
        chain.append(parent)
        if not os.path.exists(os.path.join(os.path.dirname(parent), "cgroup.subtree_control")):
            break
        parent = os.path.dirname(parent)
    text = " ".join("+" + c for c in sorted(controllers))
    for directory in reversed(chain):
        try:
            write_file(os.path.join(directory, "cgroup.subtree_control"), text)
        except OSError as exc:
            if directory == chain[-1]:
                continue  # the v2 root: the controllers are on already or not ours to set
            raise Unsupported(exc.errno, f"cannot enable {text} in {directory}: "
                              f"{exc.strerror}") from None


# -- files ---------------------------------------------------------------------------------------

# A tree's directory is (path, fd): its lock fd where it has one (-1: none), through which
# a file is opened by its name alone (no walk of the path: about 2-4 us less per file here).
_Place = tuple[str, int]


def _open(place: _Place, name: str, flags: int) -> int:
    directory, dir_fd = place
    if dir_fd >= 0:
        return os.open(name, flags | os.O_CLOEXEC, dir_fd=dir_fd)
    return os.open(f"{directory}/{name}", flags | os.O_CLOEXEC)


def _write(directory: str, dir_fd: int, name: str, value: str) -> None:
    if dir_fd >= 0:
        write_file(name, value, dir_fd=dir_fd)
    else:
        write_file(f"{directory}/{name}", value)


def _read(place: _Place, name: str, *, whole: bool = False) -> str | None:
    # Raw fd calls, not open(): a tree's end reads four of these, and the text layer's
    # set-up cost more than the reads themselves (benchmarks: spawn with limits). One read
    # holds a one-line file; ``whole`` reads on to EOF (a row per CPU).
    try:
        fd = _open(place, name, os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        data = chunk = os.read(fd, 4096)
        while whole and chunk:
            chunk = os.read(fd, 65536)
            data += chunk
        return data.decode("ascii")
    except (FileNotFoundError, ProcessLookupError):
        return None
    finally:
        os.close(fd)


def _cpuacct_seconds(place: _Place) -> tuple[float, float]:
    """User and system CPU seconds of a v1 cpuacct directory: its split from one read of
    cpuacct.usage_all (4.11+; a "cpu user system" row per CPU, in ns), else usage_user and
    usage_sys, scaled to its total (cpuacct.usage). The split is counted in timer ticks (a
    short tree reads 0), the total by the scheduler: as the kernel scales v2's cpu.stat, and
    as the guard reads it (guard_usage.c, scale_to_total), no tick at all is user time."""
    text = _read(place, "cpuacct.usage_all", whole=True)
    if text is None:
        user = _number(place, "cpuacct.usage_user") or 0
        system = _number(place, "cpuacct.usage_sys") or 0
    else:
        user = system = 0
        for row in text.splitlines()[1:]:
            _, user_ns, system_ns = row.split()
            user, system = user + int(user_ns), system + int(system_ns)
    total = _number(place, "cpuacct.usage")
    if total is not None:
        user = min(total, int(total * (user / (user + system)))) if user + system else total
        system = total - user
    return user / 1e9, system / 1e9


def _number(place: _Place, name: str) -> int | None:
    text = _read(place, name)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _keyed(place: _Place, name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(place, name) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out
