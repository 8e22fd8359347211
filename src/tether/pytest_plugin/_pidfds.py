"""Pidfds on the processes a test left behind, which the leak check knows only by number.

The one rule this module owns: a number becomes a pidfd, or a command line, only while it is
pinned -- it names a frozen cgroup member (a frozen process cannot exit by itself) or an
unreaped child of pytest (checked through the pidfd itself, so whichever process the pidfd
opened is the one that was checked). Everything after that goes through the pidfd.
"""

from __future__ import annotations

import errno
import os
import select
import shlex
import signal
from collections.abc import Sequence

from tether._kernel.deadline import Deadline

__all__ = [
    "await_exits",
    "command_line",
    "has_exited",
    "is_own_unreaped_child",
    "own_child_pidfd",
    "pidfd_or_none",
    "reap_if_own_child",
    "stop",
]


def pidfd_or_none(pid: int) -> int | None:
    """A pidfd on ``pid``, or None if no process has that number."""
    try:
        # The caller has pinned the number (a frozen cgroup member, or a candidate that is
        # checked to be our own unreaped child right after).
        return os.pidfd_open(pid)  # noqa: TET401  number pinned or verified just after
    except (ProcessLookupError, FileNotFoundError):
        return None  # gone, or a thread id rather than a process
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


def own_child_pidfd(pid: int) -> int | None:
    """A pidfd on ``pid`` if that number names an unreaped child of pytest, else None.

    Race-free: whatever process the pidfd opened, ``waitid(P_PIDFD)`` then answers for that
    very process, and answers ECHILD unless it is our child."""
    fd = pidfd_or_none(pid)
    if fd is not None and not is_own_unreaped_child(fd):
        os.close(fd)
        return None
    return fd


def is_own_unreaped_child(fd: int) -> bool:
    """Whether the pidfd's process is a child of pytest that nobody has reaped yet (so its
    number cannot have been recycled)."""
    try:
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def has_exited(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def stop(fds: Sequence[int], timeout: float) -> None:
    """SIGSTOP our children ``fds`` and wait until each has stopped (or exited).

    A process stops only on its way back to user space, so the wait is event-driven: the
    kernel sends pytest a SIGCHLD for each stop, taken here with sigtimedwait while blocked.
    Another thread of pytest may take that signal first, hence the short cap per wait."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    consumed = False
    try:
        for fd in fds:
            try:
                signal.pidfd_send_signal(fd, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        pending = list(fds)
        deadline = Deadline.after(timeout)
        while True:
            pending = [fd for fd in pending if not _stopped_or_exited(fd)]
            remaining = deadline.remaining()
            if not pending or remaining == 0.0:
                return
            cap = 0.01 if remaining is None else min(remaining, 0.01)
            if signal.sigtimedwait({signal.SIGCHLD}, cap) is not None:
                consumed = True
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if consumed and callable(signal.getsignal(signal.SIGCHLD)):
            # Someone handles SIGCHLD (e.g. an asyncio child watcher): give back what we took.
            signal.raise_signal(signal.SIGCHLD)


def _stopped_or_exited(fd: int) -> bool:
    try:
        return os.waitid(
            os.P_PIDFD, fd, os.WSTOPPED | os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # reaped meanwhile by its owner


def await_exits(fds: Sequence[int], timeout: float) -> None:
    """Wait until every pidfd in ``fds`` says its process exited, or ``timeout`` passed."""
    poller = select.poll()
    waiting = set(fds)
    for fd in waiting:
        poller.register(fd, select.POLLIN)
    deadline = Deadline.after(timeout)
    while waiting and not deadline.expired:
        for fd, _events in poller.poll(deadline.poll_ms()):
            poller.unregister(fd)
            waiting.discard(fd)


def reap_if_own_child(fd: int) -> None:
    """Reap the pidfd's process if it is pytest's child and has exited (else nothing). Only
    for adopted orphans: a child pytest created itself is waited for by whoever started it."""
    try:
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        pass  # not ours (an orphan's parent reaps it), or already reaped by its owner


def command_line(pid: int) -> str:
    """The command line of ``pid`` for the report (read only while the number is pinned)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:  # noqa: TET601  pinned pid, report only
            raw = f.read()
    except OSError:
        raw = b""
    args = [os.fsdecode(arg) for arg in raw.split(b"\0") if arg]
    if args:
        return shlex.join(args)
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:  # noqa: TET601  pinned pid, report only
            return f"[{os.fsdecode(f.read().strip())}]"
    except OSError:
        return "[command line unavailable]"
