"""Lifelines: a pipe per child whose write end only the parent holds.

The one rule this module owns: a lifeline write end exists in exactly one process, the
parent. Write ends are created O_CLOEXEC under the registry lock of ``tether._core`` and
closed by its atfork handler in every ``fork()``ed child, so a forked sibling (even one made
from another thread, that never execs) can never keep someone else's lifeline open. When the
parent dies, by any means, the kernel closes the write end and the child reads EOF at once.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import stat
from typing import Final, final

from tether._kernel import core as _core
from tether._kernel.errors import Unsupported
from tether._kernel.pidfd import NoPublicConstructor

__all__ = ["LIFELINE_ENV", "LifelineWriter", "attach", "lifeline_fd"]

LIFELINE_ENV: Final = _core.LIFELINE_ENV  # "TETHER_LIFELINE_FD" (guard_proto.h)

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
        # The same as close(): dropping the handle cuts the lifeline. (try, not
        # contextlib.suppress: every dropped handle runs this, on the way out of a wait.)
        try:
            self.close()
        except (OSError, ValueError, AttributeError):
            pass

    def __repr__(self) -> str:
        return f"<tether.LifelineWriter {'closed' if self.closed else f'fd={self._fd}'}>"


def new_lifeline() -> tuple[int, LifelineWriter]:
    """Create a lifeline pipe: (read end fd for the child, writer kept by the parent)."""
    read_fd, write_fd = _core.lifeline_pipe()
    return read_fd, LifelineWriter._create(write_fd)


def _parse(raw: str) -> tuple[int, tuple[int, int] | None]:
    """``N`` (the first release's form) or ``N:<st_dev>:<st_ino>``: (fd, identity or None)."""
    parts = raw.split(":")
    if len(parts) not in (1, 3) or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(
            f"{LIFELINE_ENV}={raw!r} is neither an fd number nor FD:ST_DEV:ST_INO"
        )
    fd = int(parts[0])
    return fd, ((int(parts[1]), int(parts[2])) if len(parts) == 3 else None)


# The lifeline this process armed: (pid, fd, the pipe's (st_dev, st_ino)). The pid tells a
# fork()ed child, which inherits this record, that the arming was its parent's, not its own.
_armed: tuple[int, int, tuple[int, int]] | None = None


def lifeline_fd() -> int | None:
    """This process's lifeline fd: the one :func:`attach` armed, else the number announced
    in ``TETHER_LIFELINE_FD`` (not yet checked), else None."""
    if _armed is not None and _armed[0] == os.getpid():
        return _armed[1]
    raw = os.environ.get(LIFELINE_ENV)
    return None if raw is None else _parse(raw)[0]


def attach(fd: int | None = None) -> bool:
    """Honour the lifeline in a child: when the parent dies, this process group dies.

    Call it early in a Python program started by tether (``run_in_fork`` children are
    attached already). On EOF of the lifeline the kernel itself sends SIGKILL to this
    process's group (or to this process alone if it does not lead its group): the lifeline
    is reopened as an open file description of this process's own, put in O_ASYNC mode with
    F_SETSIG=SIGKILL and F_SETOWN=-pgid, so no watcher thread and no busy loop are needed,
    and the cascade works even while this process is blocked or stuck. Every process that
    calls attach() on a lifeline it shares with others (workers that inherited one fd) is
    armed: F_SETOWN belongs to an open file description, and each caller has its own.

    ``TETHER_LIFELINE_FD`` is checked before it is trusted: the fd it names must be a pipe's
    read end, and the very pipe it describes when it carries the identity
    (``N:<st_dev>:<st_ino>``, what tether announces); a bare number, as the first release
    wrote it, is checked for being a pipe's read end. The variable is removed from this
    process's environment, so programs started from here never inherit it (their fd N is
    something else). An explicit ``fd`` gets the same pipe check.

    Returns False if no lifeline was announced, True once armed (again on a second call; in
    a fork()ed child of an attached process, the child arms itself). Raises ValueError if the
    variable is malformed or names an fd that is not that lifeline, and
    :class:`tether.Unsupported` if the lifeline cannot be given an open file description
    of its own (``/proc/self/fd`` not reachable) while another process already armed it.

    Guarantee: after this returns, the death of the parent (by any means, SIGKILL included)
    kills this process group within the time the kernel takes to deliver a signal. Caveat: the
    group is bound when attach() runs; a later setpgid()/setsid() moves this process out of
    it, and descendants that leave the group are not reached (use the guard's cgroup or pidns
    containment for those).
    """
    global _armed
    identity: tuple[int, int] | None = None
    if fd is None:
        raw = os.environ.pop(LIFELINE_ENV, None)  # never passed on, whatever comes next
        if raw is None:
            if _armed is None:
                return False
            if _armed[0] == os.getpid():
                return True
            _, fd, identity = _armed  # fork()ed from an attached process: arm our own
        else:
            fd, identity = _parse(raw)
    elif isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise ValueError(f"attach() needs an fd number, not {fd!r}")
    if _armed is not None and _armed[0] == os.getpid() and _armed[1] == fd:
        return True
    st = _check_lifeline(fd, identity)
    owner = _arm(fd)
    _armed = (os.getpid(), fd, (st.st_dev, st.st_ino))
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


def _check_lifeline(fd: int, identity: tuple[int, int] | None) -> os.stat_result:
    """fstat ``fd``: a pipe's read end, and the pipe ``identity`` names if given."""
    try:
        st = os.fstat(fd)
        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise ValueError(f"lifeline fd {fd} is not open in this process") from None
        raise
    if not stat.S_ISFIFO(st.st_mode) or access != os.O_RDONLY:
        raise ValueError(f"fd {fd} is not a lifeline: not the read end of a pipe "
                         f"({LIFELINE_ENV} inherited from an ancestor whose fd {fd} it was?)")
    if identity is not None and (st.st_dev, st.st_ino) != identity:
        raise ValueError(f"fd {fd} is not the lifeline {LIFELINE_ENV} describes (another "
                         f"pipe: the variable was inherited from an ancestor?)")
    return st


def _arm(fd: int) -> int:
    """Put the lifeline at ``fd`` on an open file description of this process's own, armed to
    SIGKILL our group (or us) on EOF; return the owner given to F_SETOWN."""
    pgrp = os.getpgrp()
    owner = -pgrp if pgrp == os.getpid() else os.getpid()
    try:
        # The pipe opened anew: the same pipe, a new open file description (fifo_open).
        own = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        # Only the inherited description is left: arm it if nobody else did (we are then
        # its only user so far); never take it from a process that armed it before us.
        current = fcntl.fcntl(fd, fcntl.F_GETOWN)
        if current not in (0, owner):
            raise Unsupported(
                exc.errno or errno.EACCES,
                f"attach(): the lifeline at fd {fd} is shared with a process that armed it, "
                f"and /proc/self/fd/{fd} could not be reopened to give this process its own "
                f"open file description ({exc.strerror})",
            ) from None
    else:
        try:
            os.dup2(own, fd, inheritable=False)  # the lifeline is ours: kept out of exec'd programs
        finally:
            os.close(own)
    fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    fcntl.fcntl(fd, _F_SETSIG, signal.SIGKILL)
    fcntl.fcntl(fd, fcntl.F_SETOWN, owner)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_ASYNC | os.O_NONBLOCK)
    return owner


def _die(owner: int) -> None:
    # Our own group (or ourselves): reached through the kernel's notion of "my group", and
    # this process is still alive, so the number cannot have been reused.
    if owner < 0:
        os.killpg(0, signal.SIGKILL)  # noqa: TET201  own group, never a foreign number
    os.kill(os.getpid(), signal.SIGKILL)  # noqa: TET201  ourselves
    os._exit(137)
