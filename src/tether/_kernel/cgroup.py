"""cgroup v2 trees: one directory per guarded tree, removed when the tree ends.

The one rule this module owns: a tree's directory lives exactly as long as somebody holds
its lock. The creator takes ``flock(LOCK_EX)`` on the directory fd and hands that same open
file to the guard (which uses it for CLONE_INTO_CGROUP), so the lock is held while the parent
*or* the guard lives. A directory whose lock can be taken belongs to a tree whose parent and
guard are both gone: the next tether start kills what is left in it (``cgroup.kill``) and
removes it. Nothing here reads /proc/PID; members are found only through the cgroup files.

Layout: ``<root>/tether/<tree>``, where ``<root>`` is the writable cgroup v2 hierarchy (found
in this process's mount table: ``/sys/fs/cgroup``, or ``/sys/fs/cgroup/unified`` in hybrid
layouts), or ``TETHER_CGROUP_ROOT``, or the ``cgroup_root`` argument. ``<root>/tether`` is
one long-lived, empty parent directory, like a systemd slice.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import select
import threading
import time
from typing import Final

from tether._kernel.deadline import poll_ms
from tether._kernel.errors import Unsupported

__all__ = ["CgroupTree", "cgroup_root", "cgroup_unavailable_reason"]

PARENT_NAME: Final = "tether"
ROOT_ENV: Final = "TETHER_CGROUP_ROOT"

_sweep_lock = threading.Lock()
_swept: set[str] = set()


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


def _find_root(explicit: str | os.PathLike[str] | None) -> tuple[str, str | None]:
    if explicit is None:
        explicit = os.environ.get(ROOT_ENV) or None
    key = None if explicit is None else os.fspath(explicit)
    cached = _root_cache.get(key)
    if cached is not None:
        # Only successes are cached (parsing the mount table and probing costs ~0.1 ms per
        # spawn); CgroupTree.create recreates the parent directory if it was removed since.
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
        if not os.path.exists(os.path.join(root, "cgroup.procs")):
            problems.append(f"{root} is not a cgroup v2 directory")
            continue
        parent = os.path.join(root, PARENT_NAME)
        try:
            os.mkdir(parent, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            problems.append(f"{root} is not writable ({exc.strerror}; needs root or a delegated "
                            "subtree)")
            continue
        if not os.path.exists(os.path.join(parent, "cgroup.kill")):
            problems.append(f"{root} has no cgroup.kill (Linux 5.14)")
            continue
        return "", root
    return "; ".join(problems), None


class CgroupTree:
    """One tree's cgroup directory: created locked, handed to the guard, removed at the end."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def create(cls, root: str) -> CgroupTree:
        parent = os.path.join(root, PARENT_NAME)
        _sweep_once(parent)
        for _ in range(8):
            path = os.path.join(parent, f"t-{secrets.token_hex(8)}")
            try:
                os.mkdir(path, 0o755)
            except FileNotFoundError:
                os.makedirs(parent, 0o755, exist_ok=True)  # removed since we looked
                os.mkdir(path, 0o755)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except BaseException:
                _rmdir_quiet(path)
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # A sweeper in another process took the fresh, unlocked directory for a stale
                # one; it will remove it. Take another name.
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                _rmdir_quiet(path)
                raise
            if os.path.isdir(path):
                # Locked and still there: no sweeper can remove it from now on.
                return cls(path, fd)
            os.close(fd)  # a sweeper removed it between mkdir and flock
        raise OSError(errno.EAGAIN, f"could not create a locked cgroup under {parent}")

    def kill(self) -> None:
        """SIGKILL every member (cgroup.kill, Linux 5.14)."""
        _write(os.path.join(self.path, "cgroup.kill"), "1")

    def populated(self) -> bool:
        return _populated(self.path)

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left, wait until empty, rmdir, and release the lock. Idempotent."""
        if self.fd < 0:
            return
        try:
            if os.path.isdir(self.path):
                _kill_and_remove(self.path, timeout)
        finally:
            os.close(self.fd)
            self.fd = -1

    def close_fd(self) -> None:
        """Drop our fd (the guard keeps the lock through its own copy)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _populated(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events"), encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "populated":
                    return value.strip() == "1"
    except FileNotFoundError:
        return False
    return False


def wait_events(path: str, wanted: bytes, timeout: float) -> bool:
    """Wait until the cgroup's cgroup.events shows ``wanted`` (e.g. b"populated 0" or
    b"frozen 1"): POLLPRI, re-reading the file after each event to re-arm it. True once
    seen (or the directory is gone), False on timeout."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        while True:
            os.lseek(fd, 0, os.SEEK_SET)
            if wanted in os.read(fd, 4096):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            poller.poll(max(1, poll_ms(remaining) or 1))
    finally:
        os.close(fd)


def _wait_empty(path: str, timeout: float) -> bool:
    return wait_events(path, b"populated 0", timeout)


def _kill_and_remove(path: str, timeout: float) -> None:
    if _populated(path):
        try:
            _write(os.path.join(path, "cgroup.kill"), "1")
        except FileNotFoundError:
            return
        _wait_empty(path, timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # EBUSY: members have not quite left yet (they leave as they exit).
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
            _wait_empty(path, 0.01)


def _sweep_once(parent: str) -> None:
    with _sweep_lock:
        if parent in _swept:
            return
        _swept.add(parent)
        sweep(parent)


def sweep(parent: str) -> list[str]:
    """Remove tree directories whose owners (parent and guard) are both gone; returns them."""
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        if not name.startswith("t-") or not os.path.isdir(path):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live parent or guard owns it
            try:
                _kill_and_remove(path, 5.0)
                removed.append(path)
            except OSError:
                pass
        finally:
            os.close(fd)
    return removed
