"""The kernel oracle every test trusts, the proof suites included: two observers, no /proc scan.

* **This process, a child subreaper** (``PR_SET_CHILD_SUBREAPER`` through
  ``tether._kernel.subreaper``, set once by tests/conftest.py): every descendant orphaned
  during a test is reparented to it, so ``waitid(P_ALL, WEXITED|WNOHANG)`` answering ECHILD
  means *no descendant is left*, live or zombie. :func:`reap_until` reaps, woken by SIGCHLD
  (blocked and taken with sigtimedwait), never by a sleep loop; :func:`no_descendants` and
  :func:`zombie_pending` ask once.
* **The init of a fresh PID namespace** (:func:`run_as_namespace_init`): a script that runs as
  PID 1 owns every number of its namespace (the PID-reuse tests force numbers with
  ``ns_last_pid``), and when it exits the kernel kills whatever is left in it.

Beside them, readings of kernel state this process owns: its own fd table
(:func:`open_fds`), a cgroup directory's lock and ``cgroup.events`` (:func:`cgroup_locked`,
:func:`cgroup_populated`); and :data:`CHILD_FD_TABLE`, a child's reading of its own.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from tether._kernel import core as _core
from tether._kernel.exit import Exit
from tether._kernel.spawn import clone_with_stdio
from tether._kernel.spec import SpawnSpec
from tether._kernel.subreaper import child_subreaper, set_child_subreaper

# -- the subreaper observer -----------------------------------------------------------------------


#: A Python child (``python -c CHILD_FD_TABLE``) that prints, as JSON, its own fd table (read
#: by itself from its /proc/self) and its lifeline's variable (``N:<st_dev>:<st_ino>``; null
#: without one): ``{"fds": [...], "lifeline": ...}``.
CHILD_FD_TABLE = (
    "import fcntl, json, os\n"
    "fds = []\n"
    "for n in os.listdir('/proc/self/fd'):\n"
    "    try:\n"
    "        fcntl.fcntl(int(n), fcntl.F_GETFD)\n"
    "    except OSError:\n"
    "        continue\n"
    "    fds.append(int(n))\n"
    "print(json.dumps({'fds': sorted(fds), 'lifeline': os.environ.get('TETHER_LIFELINE_FD')}))\n"
)

def become_subreaper() -> None:
    """Make this process a child subreaper: orphans of its descendants come back to it."""
    set_child_subreaper(True)
    assert child_subreaper()


@dataclass
class Reaped:
    """What the oracle saw: when each pid was reaped (``time.monotonic``) and how it ended
    (``si_code``, ``si_status``), and whether the last answer was ECHILD (no descendant left,
    live or zombie) and when that answer came."""

    at: dict[int, float] = field(default_factory=dict)
    status: dict[int, tuple[int, int]] = field(default_factory=dict)
    empty: bool = False
    empty_at: float | None = None

    @property
    def pids(self) -> frozenset[int]:
        """Every pid reaped so far."""
        return frozenset(self.status)


def _reap_available(seen: Reaped) -> bool:
    """Reap every exited descendant into ``seen``; True once waitid says ECHILD."""
    while True:
        try:
            res = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            seen.empty = True
            seen.empty_at = time.monotonic()
            return True
        if res is None or res.si_pid == 0:
            seen.empty = False
            return False
        seen.at[res.si_pid] = time.monotonic()
        seen.status[res.si_pid] = (res.si_code, res.si_status)


def reap_until(
    timeout: float,
    *,
    stop: Callable[[Reaped], bool] | None = None,
    into: Reaped | None = None,
) -> Reaped:
    """Reap descendants until none is left (ECHILD), ``stop(seen)`` is true, or ``timeout``
    seconds passed; return what was seen (added to ``into`` if given). One look is always
    taken, even with a timeout that is already over (zero or negative)."""
    seen = into if into is not None else Reaped()
    deadline = time.monotonic() + timeout
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        while True:
            if _reap_available(seen) or (stop is not None and stop(seen)):
                return seen
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return seen
            signal.sigtimedwait({signal.SIGCHLD}, remaining)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def no_descendants() -> bool:
    """True if this process has no child at all, live or zombie (reaping any zombies)."""
    return _reap_available(Reaped())


def zombie_pending() -> bool:
    """True if a child of ours has exited and nobody reaped it (WNOWAIT: nothing is reaped)."""
    try:
        res = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return res is not None and res.si_pid != 0


# -- the namespace observer -----------------------------------------------------------------------


def run_as_namespace_init(
    argv: Sequence[str], *, env: Mapping[str, str]
) -> tuple[Exit, bytes]:
    """Run ``argv`` as PID 1 of a fresh PID namespace; return how it ended and its stdout.

    Skips the test where this process may not make one (it needs root: CLONE_NEWPID, and
    writing ``ns_last_pid`` inside it). The init is started with the clone method in force;
    CLONE_NEWPID needs clone3, so a caller that forced the legacy fallback resets it first."""
    if os.geteuid() != 0:
        pytest.skip("a PID namespace of our own (CLONE_NEWPID, ns_last_pid) needs root")
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        init = clone_with_stdio(SpawnSpec.build(list(argv), env=dict(env), stdout=w),
                                extra_flags=_core.CLONE_NEWPID)
    except OSError as exc:
        os.close(r)
        if exc.errno in (errno.EPERM, errno.EINVAL):
            pytest.skip(f"no PID namespace here: {exc}")
        raise
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    exit_ = init.pidfd.wait()
    init.lifeline.close()
    init.pidfd.close()
    return exit_, out


# -- kernel state this process owns ---------------------------------------------------------------


def baseline_fds() -> set[int]:
    """open_fds() after a garbage collection: the "before" of a leak check. Objects that
    earlier tests left in reference cycles (an exception's traceback holding a handle) close
    their fds whenever the collector runs; that must not count against the code under test.
    (The "after" is taken without collecting: an fd that only a collection closes is a leak.)"""
    gc.collect()
    return open_fds()


def open_fds() -> set[int]:
    """The fd numbers open in this process (our own fd table, not another process's state).
    The listing's own directory fd is closed by the time we check each entry, so it drops."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            continue
        out.add(fd)
    return out


def cgroup_locked(path: str) -> bool | None:
    """Whether someone holds a tether cgroup directory's flock (a live tether parent or guard
    owns it); None if the directory is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock we may have taken
    return False


def cgroup_populated(path: str) -> bool:
    """Whether a cgroup (or one below it) has a live member, as its ``cgroup.events`` says;
    False if the directory is gone."""
    try:
        with open(os.path.join(path, "cgroup.events"), encoding="ascii") as f:
            return "populated 1" in f.read()
    except FileNotFoundError:
        return False
