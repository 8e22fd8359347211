"""The kernel oracle the scenario tests trust: a child subreaper.

The test process is made a child subreaper (PR_SET_CHILD_SUBREAPER), so every descendant
orphaned during a test is reparented to it. ``waitid(P_ALL, WEXITED|WNOHANG)`` answering
ECHILD then means *no descendant is left*, live or zombie, with no /proc scan involved.
Waiting is driven by SIGCHLD (blocked and taken with sigtimedwait), not by sleeps.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass, field

PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class Reaped:
    """What the oracle saw: pids reaped (with their si_code/si_status), and whether the last
    answer was ECHILD (no descendant left) and when."""

    pids: dict[int, tuple[int, int]] = field(default_factory=dict)
    empty: bool = False
    elapsed: float = 0.0


def _reap_available(seen: Reaped) -> bool:
    """Reap every exited descendant; True once waitid says ECHILD."""
    while True:
        try:
            res = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return True
        if res is None or res.si_pid == 0:
            return False
        seen.pids[res.si_pid] = (res.si_code, res.si_status)


def reap_until(timeout: float, *, until_pid: int | None = None) -> Reaped:
    """Reap descendants until none is left (ECHILD), or until ``until_pid`` has been reaped,
    or until ``timeout`` seconds passed. Returns what was seen."""
    seen = Reaped()
    start = time.monotonic()
    deadline = start + timeout
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        while True:
            seen.empty = _reap_available(seen)
            seen.elapsed = time.monotonic() - start
            if seen.empty or (until_pid is not None and until_pid in seen.pids):
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


def open_fds() -> set[int]:
    """The fd numbers open in this process (our own fd table, not another process's state).
    The listing's own directory fd is closed by the time we check each entry, so it drops."""
    import fcntl

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
    import fcntl

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
