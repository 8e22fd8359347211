"""cgroup v2 directories: every cgroup operation tether makes, in one place.

The one rule this module owns: a directory that tether creates lives exactly as long as
somebody holds its lock. The creator takes ``flock(LOCK_EX)`` on the directory fd (a tree's
creator hands that same open file to the guard, which uses it for CLONE_INTO_CGROUP), so the
lock is held while the parent *or* the guard lives. A directory whose lock can be taken
belongs to nobody: the next start kills what is left in it (``cgroup.kill``) and removes it.
Directories made inside a locked one are covered by its lock. Nothing here reads /proc/PID;
members are found only through the cgroup files.

Layout: ``<root>/tether/t-<random>`` per tree (and ``pytest-<random>`` per session of the
pytest plugin), where ``<root>`` is the writable cgroup v2 hierarchy (found in this process's
mount table: ``/sys/fs/cgroup``, or ``/sys/fs/cgroup/unified`` in hybrid layouts), or
``TETHER_CGROUP_ROOT``, or the ``cgroup_root`` argument. ``<root>/tether`` is one long-lived,
empty parent directory, like a systemd slice. Where the hierarchy is, and whether this
process may use it, is ``cgroup_probe``'s job (re-exported here).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import threading
import time
from collections.abc import Iterator

from tether._kernel.cgroup_probe import (
    PARENT_NAME,
    PRIVATE_MODE,
    ROOT_ENV,
    TREE_PREFIX,
    cgroup_root,
    cgroup_unavailable_reason,
    forget_roots,
    own_cgroup,
    own_cgroup_relative,
)
from tether._kernel.deadline import Deadline
from tether._kernel.fds import above_stdio

__all__ = [
    "PARENT_NAME",
    "ROOT_ENV",
    "TREE_PREFIX",
    "CgroupTree",
    "cgroup_root",
    "cgroup_unavailable_reason",
    "create",
    "create_locked",
    "forget_roots",
    "freeze",
    "kill",
    "kill_and_remove",
    "members",
    "move_self",
    "moves",
    "own_cgroup",
    "populated",
    "release_lock",
    "remove",
    "rmdir_quiet",
    "stale",
    "sweep",
    "tree_parent",
    "wait_empty",
    "wait_events",
    "write_file",
]

_sweep_lock = threading.Lock()
_swept: set[str] = set()


# -- creating ------------------------------------------------------------------------------------


class CgroupTree:
    """One tree's cgroup directory: created locked, handed to the guard, removed at the end."""

    __slots__ = ("fd", "handed_over", "path", "root")

    def __init__(self, path: str, fd: int, root: str = "") -> None:
        self.path = path
        self.fd = fd
        #: The cgroup root it was made under, for a cgroup-mode tree ("" otherwise): where
        #: the next such tree's directory is made ahead (``cgroup_ahead``).
        self.root = root
        #: Our lock fd was closed at hand_over(); the directory is still ours to remove.
        self.handed_over = False

    @classmethod
    def create(cls, root: str) -> CgroupTree:
        """A fresh, locked ``<root>/tether/t-<random>``; the first call per parent in this
        process first sweeps that parent's stale tree directories. A tree started inside a
        tether tree's cgroup goes inside that cgroup instead (``<own>/tether/t-<random>``),
        so the enclosing tree's cgroup.kill reaches it too."""
        parent = os.path.join(tree_parent(root), PARENT_NAME)
        _sweep_once(parent)
        return cls(*create_locked(parent, TREE_PREFIX))

    def hand_over(self) -> None:
        """The guard has been started with our lock fd (``--cgroup-fd``): its copy is the same
        open file, so it holds the same flock for as long as it lives, and it removes the
        directory when the tree ends. Close ours: the parent keeps one fd fewer per tree.
        If the guard dies first, the lock goes with it: remove() (and any sweep) then kills
        and removes what is left by path, which is what the guard's death calls for."""
        if self.fd >= 0:
            release_lock(self.fd)
            self.fd = -1
            self.handed_over = True

    def _release(self) -> None:
        if self.fd >= 0:
            release_lock(self.fd)
        self.fd = -1
        self.handed_over = False

    def discard(self) -> None:
        """Remove the directory of a launch that failed and release the lock. Opens no file
        when no process entered it: it must work at the open-file limit, which may be why the
        launch failed. One that a program entered (the overlapped start's, whose guard's exec
        failed after it: its clone child killed the program's group, but what left the group
        is still there) is killed and removed. Idempotent."""
        if self.fd < 0 and not self.handed_over:
            return
        try:
            os.rmdir(self.path)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                with contextlib.suppress(OSError):  # (else: a later start's sweep)
                    kill_and_remove(self.path, 5.0)
        finally:
            self._release()

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left, wait until empty, rmdir, and release the lock. Idempotent."""
        if self.fd < 0 and not self.handed_over:
            return
        try:
            if os.path.isdir(self.path) and not kill_and_remove(self.path, timeout):
                raise OSError(errno.EBUSY, f"cgroup still busy after {timeout} s", self.path)
        finally:
            self._release()


def tree_parent(root: str) -> str:
    """Where a new tree's ``tether/`` directory goes: this process's own cgroup if it lies
    inside a tether tree under ``root``, else ``root``. Nesting is what makes an outer
    cgroup.kill end an inner tree: a sibling directory would outlive the inner tree's parent
    and guard, which that kill takes first."""
    try:
        # The mount table is read only when the path can lie in a tether tree at all: this
        # runs on every cgroup-mode start that has no directory made ahead (cgroup_ahead),
        # which is almost never nested.
        if f"/{PARENT_NAME}/" not in own_cgroup_relative():
            return root
        own = own_cgroup()
    except OSError:
        return root
    return own if own.startswith(os.path.join(root, PARENT_NAME) + os.sep) else root


def create_locked(parent: str, prefix: str, *, private: bool = False) -> tuple[str, int]:
    """mkdir a fresh ``<parent>/<prefix><random>`` (and ``parent`` if missing) and flock it;
    returns (path, lock fd). From the moment this returns, no sweep can remove it.

    ``private``: the lock is this process's alone -- its fd is closed in every child this
    process forks, so a forked child that outlives us cannot make the directory look live.
    Release it with :func:`release_lock`."""
    for _ in range(8):
        # secrets.token_hex(8) is this; importing secrets (hashlib, hmac) costs every start-up.
        path = os.path.join(parent, prefix + os.urandom(8).hex())
        # 0700: the lock is taken on an open of the directory, so nobody else may open it.
        # Another user who could (0755) would lock fresh directories to make our creation
        # fail, or stale ones to keep them from ever being swept.
        try:
            os.mkdir(path, PRIVATE_MODE)
        except FileNotFoundError:
            os.makedirs(parent, 0o755, exist_ok=True)  # removed since we looked
            os.mkdir(path, PRIVATE_MODE)
        try:
            # Never at 0-2: it is passed on to the guard (--cgroup-fd).
            fd = above_stdio(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except FileNotFoundError:
            # A sweeper in another process took the fresh, unlocked directory for a stale
            # one and has removed it already. Take another name.
            continue
        except BaseException:
            rmdir_quiet(path)
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
            rmdir_quiet(path)
            raise
        if os.path.isdir(path):
            # Locked and still there: no sweeper can remove it from now on.
            if private:
                _private_locks.add(fd)
            return path, fd
        os.close(fd)  # a sweeper removed it between mkdir and flock
    raise OSError(errno.EAGAIN, f"could not create a locked cgroup under {parent}")


def release_lock(fd: int) -> None:
    """Close a lock fd from :func:`create_locked` (private or not)."""
    _private_locks.discard(fd)
    os.close(fd)


# A forked child runs no code of ours that could release these, so close them at the fork.
_private_locks: set[int] = set()


def _close_private_locks_in_child() -> None:
    for fd in _private_locks:
        try:
            os.close(fd)
        except OSError:
            pass
    _private_locks.clear()


os.register_at_fork(after_in_child=_close_private_locks_in_child)


def create(path: str) -> None:
    """mkdir the cgroup ``path`` inside a locked one: that lock covers it (a sweep of the
    locked directory removes it too)."""
    os.mkdir(path, 0o755)


def move_self(directory: str) -> None:
    """Move this process into the cgroup ``directory``: every thread at once, and every
    process it forks from now on starts there."""
    global _moves
    _moves += 1  # (before: a directory made ahead meanwhile is never taken)
    write_file(os.path.join(directory, "cgroup.procs"), str(os.getpid()))


_moves = 0


def moves() -> int:
    """How many times this process has moved itself (:func:`move_self`): what a directory
    made ahead for its next tree was placed by (``cgroup_ahead``) is stale once it changed."""
    return _moves


def move_process(pid: int, directory: str) -> None:
    """Move process ``pid`` into the cgroup ``directory``. By number: the caller must have
    pinned it (an unreaped child of ours, or a frozen member) so that it names that process."""
    write_file(os.path.join(directory, "cgroup.procs"), str(pid))


# -- reading -------------------------------------------------------------------------------------


def populated(path: str) -> bool:
    """Whether ``path`` or a cgroup nested in it has a live member (cgroup.events)."""
    try:
        with open(os.path.join(path, "cgroup.events"), encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "populated":
                    return value.strip() == "1"
    except FileNotFoundError:
        return False
    return False


def members(path: str) -> list[int]:
    """Every process in the cgroup ``path`` and its nested cgroups (depth first). Unless the
    cgroup is frozen, a member may exit and its number be reused right after this returns."""
    pids: list[int] = []
    try:
        with open(os.path.join(path, "cgroup.procs"), encoding="ascii") as f:
            # 0 stands for a member outside our PID namespace: not one we could name.
            pids = [pid for pid in map(int, f.read().split()) if pid > 0]
    except FileNotFoundError:
        return pids
    for sub in _subdirs(path):
        pids += members(sub)
    return pids


def wait_events(path: str, wanted: bytes, timeout: float | None) -> bool:
    """Wait until the cgroup's cgroup.events shows ``wanted`` (e.g. b"populated 0" or
    b"frozen 1"): POLLPRI, re-reading the file after each event to re-arm it. True once
    seen (or the directory is gone), False on timeout (None: wait for ever)."""
    return _wait_events(path, wanted, Deadline.after(timeout))


def _wait_events(path: str, wanted: bytes, deadline: Deadline) -> bool:
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
            if deadline.expired:
                return False
            poller.poll(deadline.poll_ms())
    finally:
        os.close(fd)


def wait_empty(path: str, timeout: float | None) -> bool:
    """Wait until no member of ``path`` (nested cgroups included) is alive: ``populated 0``."""
    return wait_events(path, b"populated 0", timeout)


# -- ending --------------------------------------------------------------------------------------


def freeze(path: str, timeout: float) -> bool:
    """Freeze ``path`` and its nested cgroups (cgroup.freeze, Linux 5.2) and wait until the
    kernel says ``frozen 1``; False if that took longer than ``timeout``. A frozen member
    cannot exit by itself, so its number stays its own until it is killed or thawed."""
    write_file(os.path.join(path, "cgroup.freeze"), "1")
    return wait_events(path, b"frozen 1", timeout)


def kill(path: str) -> None:
    """SIGKILL every member of ``path`` and its nested cgroups, frozen ones included
    (cgroup.kill, Linux 5.14). Returns at once; :func:`wait_empty` waits for them."""
    write_file(os.path.join(path, "cgroup.kill"), "1")


def remove(path: str, timeout: float) -> bool:
    """rmdir ``path`` and the cgroups nested in it, deepest first, on v2 or a v1 hierarchy.
    True once gone; False if it is still busy after ``timeout`` (a member still exiting).
    Other errors raise."""
    return _remove_until(path, Deadline.after(timeout))


def _remove_until(path: str, deadline: Deadline) -> bool:
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
        # EBUSY: nested cgroups, or members that have just been killed and are not quite gone
        # (they leave as they exit).
        subdirs = _subdirs(path)
        for sub in subdirs:
            if not _remove_until(sub, deadline):
                return False
        if not subdirs:
            if deadline.expired:
                return False
            if _wait_events(path, b"populated 0", Deadline.after(0.01)):
                # Empty (or v1, which has no cgroup.events), yet rmdir still said EBUSY: the
                # kernel is finishing the members' exit (seen for a few hundred
                # microseconds). A bounded back-off, not a poll of process state.
                time.sleep(0.001)


def kill_and_remove(path: str, timeout: float) -> bool:
    """Kill every member of ``path`` (nested cgroups included), wait until it is empty, and
    remove it all. True once gone; False if still busy after ``timeout``."""
    deadline = Deadline.after(timeout)
    if populated(path):
        try:
            kill(path)
        except FileNotFoundError:
            return True
        _wait_events(path, b"populated 0", deadline)
    return _remove_until(path, deadline)


def _sweep_once(parent: str) -> None:
    with _sweep_lock:
        if parent in _swept:
            return
        _swept.add(parent)
        sweep(parent)


def stale(parent: str, prefix: str = TREE_PREFIX) -> Iterator[str]:
    """The ``<prefix>*`` directories of ``parent`` whose lock nobody holds (their owners are
    all gone), one at a time, each locked by us while the caller handles it (removes it).
    Never fails over another's debris: a directory gone meanwhile, another user's, or still
    locked by a live owner is passed over."""
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        path = os.path.join(parent, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # gone already, or not ours to judge (another user's)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live owner holds it
            yield path
        finally:
            os.close(fd)


def sweep(parent: str, prefix: str = TREE_PREFIX) -> list[str]:
    """Kill and remove the stale ``<prefix>*`` directories of ``parent``; returns them. What
    cannot be removed now is left for a later sweep."""
    removed: list[str] = []
    for path in stale(parent, prefix):
        try:
            if kill_and_remove(path, 5.0):
                removed.append(path)
        except OSError:
            pass
    return removed


# -- files ---------------------------------------------------------------------------------------


def rmdir_quiet(path: str) -> None:
    """rmdir, where failing (busy, gone) is no error: a later sweep takes what is left."""
    try:
        os.rmdir(path)
    except OSError:
        pass


def write_file(path: str, text: str, *, dir_fd: int | None = None) -> None:
    """Write one cgroup control file (one write: the kernel acts on each write); ``path``
    relative to ``dir_fd`` where given (an open cgroup directory: no walk of its path)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _subdirs(path: str) -> list[str]:
    try:
        return [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
