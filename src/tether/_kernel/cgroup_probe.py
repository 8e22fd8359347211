"""cgroup v2: where the hierarchy is, and whether this process may make trees in it.

The one rule this module owns: "available" means tried, not guessed. A root is usable only
if it is on cgroup2 (checked before anything is created in it), this process can make a
directory in its ``tether`` parent (a ``FileExistsError`` on root's parent proves nothing),
and it may move a program there (a delegated subtree, used from inside). Only successes are
cached: a refusal may be lifted (a limit raised, a subtree delegated), and is asked again.
"""

from __future__ import annotations

import errno
import os
from typing import Final

from tether._kernel.errors import Unsupported

__all__ = [
    "PARENT_NAME",
    "PRIVATE_MODE",
    "ROOT_ENV",
    "TREE_PREFIX",
    "cgroup_root",
    "cgroup_unavailable_reason",
    "forget_roots",
    "own_cgroup",
    "own_cgroup_relative",
]

PARENT_NAME: Final = "tether"
ROOT_ENV: Final = "TETHER_CGROUP_ROOT"
TREE_PREFIX: Final = "t-"
#: Mode of every directory that is locked: the lock is taken on an open of the directory,
#: so no other user may be able to open it (see cgroup.create_locked).
PRIVATE_MODE: Final = 0o700


# -- where the hierarchy is ----------------------------------------------------------------------


def _mounted_cgroup2() -> list[str]:
    """cgroup2 mount points of this process's mount namespace, from its own mount table."""
    points: list[str] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    points.append(_unescape(left.split(" ")[4]))
    except OSError:
        return []
    return points


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and i + 3 < len(path) and path[i + 1 : i + 4].isdigit():
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def cgroup_root(explicit: str | os.PathLike[str] | None = None) -> str:
    """The writable cgroup v2 directory under which tether makes its trees.

    Raises :class:`tether.Unsupported` naming what is missing."""
    reason, root = _find_root(explicit)
    if root is None:
        raise Unsupported(errno.ENOTSUP, reason)
    return root


def cgroup_unavailable_reason(explicit: str | os.PathLike[str] | None = None) -> str | None:
    """None if cgroup containment works here, else why not."""
    reason, root = _find_root(explicit)
    return None if root is not None else reason


_root_cache: dict[str | None, str] = {}


def forget_roots() -> None:
    """Drop the cached answers of :func:`cgroup_root`: for a process whose privileges
    changed (setuid), so they are probed again as the new user."""
    _root_cache.clear()


def _find_root(explicit: str | os.PathLike[str] | None) -> tuple[str, str | None]:
    if explicit is None:
        explicit = os.environ.get(ROOT_ENV) or None
    key = None if explicit is None else os.fspath(explicit)
    cached = _root_cache.get(key)
    if cached is not None:
        # Only successes are cached (parsing the mount table and probing costs ~0.1 ms per
        # spawn); create_locked recreates the parent directory if it was removed since.
        return "", cached
    reason, root = _probe_root(explicit)
    if root is not None:
        _root_cache[key] = root
    return reason, root


def _probe_root(explicit: str | os.PathLike[str] | None) -> tuple[str, str | None]:
    if explicit is not None:
        candidates = [os.fspath(explicit)]
    else:
        candidates = _mounted_cgroup2()
        if not candidates:
            return "no cgroup v2 hierarchy is mounted (cgroup containment needs cgroup2)", None
    problems = []
    for root in candidates:
        problem = _unusable(root)
        if problem is None:
            return "", root
        problems.append(problem)
    return "; ".join(problems), None


def _unusable(root: str) -> str | None:
    """Why trees cannot be made under ``root`` by this process, or None. Nothing is created
    in a directory that is not cgroup v2 (a v1 hierarchy, a plain directory)."""
    fs_type = _fs_type(root)
    if fs_type != "cgroup2":
        on = f" (it is on {fs_type})" if fs_type else ""
        return f"{root} is not a cgroup v2 directory{on}"
    parent = os.path.join(root, PARENT_NAME)
    try:
        os.mkdir(parent, 0o755)
    except FileExistsError:
        pass  # says nothing about whether we may write in it: root's, perhaps
    except OSError as exc:
        return _not_writable(root, exc)
    if not os.path.exists(os.path.join(parent, "cgroup.kill")):
        return f"{root} has no cgroup.kill (Linux 5.14)"
    # Real writability: a tree directory of our own, made and removed as a tree's is (with
    # the tree prefix: if we die in between, the next sweep removes it).
    probe = os.path.join(parent, TREE_PREFIX + os.urandom(8).hex())
    try:
        os.mkdir(probe, PRIVATE_MODE)
    except OSError as exc:
        return _not_writable(parent, exc)
    try:
        os.rmdir(probe)
    except FileNotFoundError:
        pass  # a sweeper took it for a stale one
    return _migration_problem(parent)


def _not_writable(where: str, exc: OSError) -> str:
    return (f"{where} is not writable by this process ({exc.strerror}; cgroup containment "
            "needs root or a delegated subtree)")


def _migration_problem(parent: str) -> str | None:
    """Why this process may not move a program into a cgroup under ``parent``, or None.
    CLONE_INTO_CGROUP is a migration: it needs write access to cgroup.procs of the nearest
    cgroup above both this process's cgroup and the target (cgroup(7), "Delegation"). A
    delegated subtree passes when the process runs inside it, as systemd places it."""
    try:
        own = own_cgroup()
    except OSError:
        return None  # no v2 membership to compare; clone3 itself will say
    common = os.path.commonpath([os.path.realpath(own), os.path.realpath(parent)])
    procs = os.path.join(common, "cgroup.procs")
    if os.access(procs, os.W_OK, effective_ids=True):
        return None
    return (f"{parent} is writable, but this process (in {own}) may not move programs there: "
            f"{procs} is not writable (run inside the delegated subtree)")


def _fs_type(path: str) -> str | None:
    """The filesystem type of ``path``: the mount whose device is the path's, from this
    process's own mount table (every cgroup2 mount shares one superblock)."""
    try:
        dev = os.stat(path).st_dev
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                major, _, minor = left.split(" ")[2].partition(":")
                if os.makedev(int(major), int(minor)) == dev:
                    return right.split(" ", 1)[0]
    except (OSError, ValueError, IndexError):
        return None
    return None


def own_cgroup_relative() -> str:
    """This process's cgroup v2 path below its hierarchy's root ("0::<path>" in its own
    /proc/self/cgroup)."""
    # os.open/os.read, not open(): a text file object costs ~15 us more, on every cgroup-mode
    # start (the file is small: one line per hierarchy).
    fd = os.open("/proc/self/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
    finally:
        os.close(fd)
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise OSError(errno.ENOENT, "this process is in no cgroup v2 hierarchy")


def own_cgroup() -> str:
    """This process's cgroup v2 directory, from its own /proc/self/cgroup ("0::<path>")."""
    relative = own_cgroup_relative()
    for mount in _mounted_cgroup2():
        candidate = os.path.normpath(mount + relative)
        if os.path.exists(os.path.join(candidate, "cgroup.procs")):
            return candidate
    raise OSError(errno.ENOENT, f"cannot find this process's cgroup {relative} in a mount")
