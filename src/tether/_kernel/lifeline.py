"""Lifelines: a pipe per child whose write end only the parent holds.

The one rule this module owns: a lifeline write end exists in exactly one process, the
parent. Write ends are created O_CLOEXEC under the registry lock of ``tether._core`` and
closed by its atfork handler in every ``fork()``ed child, so a forked sibling (even one made
from another thread, that never execs) can never keep someone else's lifeline open. When the
parent dies, by any means, the kernel closes the write end and the child reads EOF at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
from typing import Final, final

from tether._kernel import core as _core
from tether._kernel.pidfd import NoPublicConstructor

__all__ = ["LIFELINE_ENV", "LifelineWriter", "attach", "lifeline_fd"]

LIFELINE_ENV: Final = "TETHER_LIFELINE_FD"

# fcntl(2): F_SETSIG picks the signal that O_ASYNC I/O readiness sends (instead of SIGIO).
_F_SETSIG: Final = 10


@final
class LifelineWriter(metaclass=NoPublicConstructor):
    """The parent's end of one child's lifeline.

    Guarantee: while this end is open in this process only, the child sees EOF exactly when
    it is closed, whether by :meth:`close`, garbage collection, or the death of this process;
    no forked child of this process keeps it open.
    """

    __slots__ = ("__weakref__", "_fd", "_generation")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._generation = _core.fork_generation()

    @property
    def closed(self) -> bool:
        """True once cut, and in any forked child (where the atfork handler closed it)."""
        return self._fd < 0 or self._generation != _core.fork_generation()

    def fileno(self) -> int:
        """The write end's fd (borrowed)."""
        if self.closed:
            raise ValueError("operation on a closed LifelineWriter")
        return self._fd

    def close(self) -> None:
        """Cut the lifeline: the child sees EOF. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0 and self._generation == _core.fork_generation():
            _core.lifeline_release(fd)

    def __enter__(self) -> LifelineWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # The same as close(): dropping the handle cuts the lifeline.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.close()

    def __repr__(self) -> str:
        return f"<tether.LifelineWriter {'closed' if self.closed else f'fd={self._fd}'}>"


def new_lifeline() -> tuple[int, LifelineWriter]:
    """Create a lifeline pipe: (read end fd for the child, writer kept by the parent)."""
    read_fd, write_fd = _core.lifeline_pipe()
    return read_fd, LifelineWriter._create(write_fd)


def lifeline_fd() -> int | None:
    """The lifeline fd announced to this process in ``TETHER_LIFELINE_FD``, if any."""
    raw = os.environ.get(LIFELINE_ENV)
    if raw is None:
        return None
    try:
        fd = int(raw)
    except ValueError:
        raise ValueError(f"{LIFELINE_ENV}={raw!r} is not an fd number") from None
    if fd < 0:
        raise ValueError(f"{LIFELINE_ENV}={raw!r} is not an fd number")
    return fd


_attached_fd: int | None = None


def attach(fd: int | None = None) -> bool:
    """Honour the lifeline in a child: when the parent dies, this process group dies.

    Call it early in a Python program started by tether (``run_in_fork`` children are
    attached already). On EOF of the lifeline the kernel itself sends SIGKILL to this
    process's group (or to this process alone if it does not lead its group): the read end
    is put in O_ASYNC mode with F_SETSIG=SIGKILL and F_SETOWN=-pgid, so no watcher thread and
    no busy loop are needed, and the cascade works even while this process is blocked or
    stuck. Returns False if no lifeline was announced, True once armed.

    Guarantee: after this returns, the death of the parent (by any means, SIGKILL included)
    kills this process group within the time the kernel takes to deliver a signal. Caveat: the
    group is bound when attach() runs; a later setpgid()/setsid() moves this process out of
    it, and descendants that leave the group are not reached (use the guard's cgroup or pidns
    containment for those).
    """
    global _attached_fd
    if fd is None:
        fd = lifeline_fd()
        if fd is None:
            return False
    if _attached_fd == fd:
        return True
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise ValueError(f"lifeline fd {fd} is not open in this process") from None
        raise
    pgrp = os.getpgrp()
    owner = -pgrp if pgrp == os.getpid() else os.getpid()
    # Keep the fd out of programs this process execs: the lifeline is ours.
    fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    fcntl.fcntl(fd, _F_SETSIG, signal.SIGKILL)
    fcntl.fcntl(fd, fcntl.F_SETOWN, owner)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_ASYNC | os.O_NONBLOCK)
    _attached_fd = fd
    # The parent may already be gone: O_ASYNC only signals on a new event, so look once.
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if poller.poll(0):
        try:
            data = os.read(fd, 1)
        except BlockingIOError:
            data = b"x"
        if data == b"":
            _die(owner)
    return True


def _die(owner: int) -> None:
    # Our own group (or ourselves): reached through the kernel's notion of "my group", and
    # this process is still alive, so the number cannot have been reused.
    if owner < 0:
        os.killpg(0, signal.SIGKILL)  # noqa: TET201  own group, never a foreign number
    os.kill(os.getpid(), signal.SIGKILL)  # noqa: TET201  ourselves
    os._exit(137)
