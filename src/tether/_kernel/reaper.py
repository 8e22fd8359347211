"""Dropped children: the pidfds of our children that nobody will wait for, reaped later.

The one rule this module owns: a child of ours whose handle was dropped (or closed while the
child ran) is never left a zombie, and its pidfd is closed once it has been reaped -- with no
helper thread and no SIGCHLD handler. The pidfds are kept here and each is reaped with a
non-blocking ``waitid(P_PIDFD)`` at the next spawn (:func:`reap_dropped`, called by the clone
site) and at interpreter exit, as the stdlib does with ``subprocess._active``. Only our own
children are adopted, and only through a pidfd, so a reap can never touch another process.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import select
from collections.abc import Callable
from typing import Final, NamedTuple

from tether._kernel.deadline import Deadline

__all__ = ["EXIT_GRACE", "adopt", "adopted", "reap_dropped"]

#: How long interpreter exit waits, at most, for dropped trees that are being ended (their
#: guard was told to end them; that takes milliseconds unless someone stopped it).
EXIT_GRACE: Final = 5.0


class _Dropped(NamedTuple):
    fd: int
    on_reaped: Callable[[], None] | None
    ending: bool


# A deque, not a list behind a lock: adopt() runs in __del__ (any thread, at any allocation),
# where taking a lock the interrupted code may hold would deadlock; append and popleft are
# atomic, so each entry is handled by one caller at a time.
_dropped: collections.deque[_Dropped] = collections.deque()


def adopt(fd: int, on_reaped: Callable[[], None] | None = None, *, ending: bool = False) -> None:
    """Take ownership of ``fd``, the pidfd of a child of ours that nobody will wait for: it
    is reaped and closed (and ``on_reaped`` called) once the child has exited. ``ending``:
    the child was told to end (interpreter exit waits a little for it, see EXIT_GRACE)."""
    _dropped.append(_Dropped(fd, on_reaped, ending))


def adopted() -> int:
    """How many dropped children are waiting to be reaped."""
    return len(_dropped)


def reap_dropped() -> None:
    """Reap every dropped child that has exited (never blocks on a running one)."""
    for _ in range(len(_dropped)):
        try:
            entry = _dropped.popleft()
        except IndexError:
            return
        if not _reap(entry):
            _dropped.append(entry)


def _reap(entry: _Dropped) -> bool:
    """Reap ``entry`` if its child has exited; True once it is done with (fd closed)."""
    try:
        res = os.waitid(os.P_PIDFD, entry.fd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        res = None  # reaped already (a waiter on a dup of this pidfd), or not ours (a fork)
    else:
        if res is None or res.si_pid == 0:
            return False
    os.close(entry.fd)
    if entry.on_reaped is not None:
        # The dropped tree's own cleanup (its cgroup directory): a failure there must not
        # fail the unrelated spawn that happens to run it.
        with contextlib.suppress(OSError):
            entry.on_reaped()
    return True


def _reap_at_exit() -> None:
    """At interpreter exit: wait (at most EXIT_GRACE) for the dropped trees being ended,
    then reap whatever has exited."""
    deadline = Deadline.after(EXIT_GRACE)
    poller = select.poll()
    pending = {e.fd for e in list(_dropped) if e.ending}
    for fd in pending:
        poller.register(fd, select.POLLIN)  # a pidfd turns readable when its process exits
    while pending and not deadline.expired:
        for fd, _ in poller.poll(deadline.poll_ms()):
            poller.unregister(fd)
            pending.discard(fd)
    reap_dropped()


def _forget_in_child() -> None:
    # A forked child inherits the list, not the children: they are its parent's to reap.
    while _dropped:
        with contextlib.suppress(IndexError, OSError):
            os.close(_dropped.popleft().fd)


atexit.register(_reap_at_exit)
os.register_at_fork(after_in_child=_forget_in_child)
