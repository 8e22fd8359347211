"""File descriptors passed between processes and switched between modes.

The one rule this module owns: an fd that tether receives is close-on-exec from the moment it
exists (MSG_CMSG_CLOEXEC), so no program this process starts later can inherit it, and it is
kept above the numbers later spawns hand their children (``core.keep_above_spawns``: their
clones then copy only those, see ``fd_table.c``).
"""

from __future__ import annotations

# socket.py's enum set-up costs ~2 ms of every start; its C module has all we use.
import _socket as socket
import fcntl
import os
import struct
from typing import Final

from tether._kernel import core as _core

__all__ = [
    "above_spawns", "above_stdio", "recv_with_fds", "send_own_pidfd", "set_nonblocking",
    "socketpair_above_stdio",
]

_FD_SPACE: Final = socket.CMSG_SPACE(struct.calcsize("i"))
_CMSG_CLOEXEC: Final = int(socket.MSG_CMSG_CLOEXEC)  # (an IntFlag's | costs microseconds)


def send_own_pidfd(sock: socket.socket) -> None:
    """A forked child's side of :func:`recv_with_fds`: send a pidfd of this very process
    (message ``b"P"``, SCM_RIGHTS) and close ``sock``. Its parent gets a handle that cannot
    name another process, without ever turning our pid into one."""
    own = os.pidfd_open(os.getpid())  # noqa: TET401  our own pid cannot be stale
    try:
        sock.sendmsg([b"P"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", own))])
    finally:
        os.close(own)
    sock.close()


def recv_with_fds(
    sock: socket.socket, size: int, flags: int = 0
) -> tuple[bytes, list[int], int]:
    """One message, the fds passed with it (SCM_RIGHTS), received close-on-exec (and moved
    above the spawns' fds: each is a pidfd kept as long as its process), and the message
    flags (MSG_CTRUNC: an fd was dropped, e.g. at the open-file limit).

    ``socket.recv_fds`` does not ask for MSG_CMSG_CLOEXEC, so the fds it returns would be
    inherited by anything the caller later forks and execs; these never are. Room is made
    for one fd (all that tether's senders pass)."""
    data, ancdata, msg_flags, _addr = sock.recvmsg(
        size, _FD_SPACE, flags | _CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
    moved: list[int] = []
    try:
        for fd in fds:
            moved.append(above_spawns(fd))
    except BaseException:
        for fd in moved + fds[len(moved) + 1:]:
            os.close(fd)
        raise
    return data, moved, msg_flags


def above_stdio(fd: int) -> int:
    """Consume ``fd``: itself if it is above 2, else a close-on-exec duplicate above 2 (the
    original is closed, on failure too). tether's own fds never sit at 0-2, where a process
    whose stdio is closed would get them: there they would pose as its stdio (to it, and to
    the children that inherit it)."""
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def above_spawns(fd: int) -> int:
    """Consume ``fd``, one this process keeps for as long as a tree lives (a pidfd, a PIPE's
    end): :func:`above_stdio`, and moved up to ``core.TREE_FD_BASE`` where there is room, out
    of the low numbers a spawn hands its child (``fd_table.c``: a clone then copies only
    those). Close-on-exec, as every fd tether makes."""
    return _core.keep_above_spawns(above_stdio(fd))


def socketpair_above_stdio(kind: int) -> tuple[socket.socket, socket.socket]:
    """An AF_UNIX socketpair (close-on-exec) whose fds are both above 2."""
    pair = list(socket.socketpair(socket.AF_UNIX, kind))
    try:
        for i, sock in enumerate(pair):
            if sock.fileno() <= 2:
                moved = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)
                try:
                    replacement = socket.socket(fileno=moved)
                except BaseException:
                    os.close(moved)
                    raise
                sock.close()
                pair[i] = replacement
    except BaseException:
        for sock in pair:
            sock.close()
        raise
    return pair[0], pair[1]


def set_nonblocking(fd: int) -> None:
    """Put ``fd``'s open file description in O_NONBLOCK mode (a no-op if it is already)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not flags & os.O_NONBLOCK:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
