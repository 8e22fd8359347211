"""File descriptors passed between processes and switched between modes.

The one rule this module owns: an fd that tether receives is close-on-exec from the moment it
exists (MSG_CMSG_CLOEXEC), so no program this process starts later can inherit it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from typing import Final

__all__ = ["recv_with_fds", "set_nonblocking"]

_FD_SPACE: Final = socket.CMSG_SPACE(struct.calcsize("i"))


def recv_with_fds(
    sock: socket.socket, size: int, flags: int = 0
) -> tuple[bytes, list[int], int]:
    """One message, the fds passed with it (SCM_RIGHTS), received close-on-exec, and the
    message flags (MSG_CTRUNC: an fd was dropped, e.g. at the open-file limit).

    ``socket.recv_fds`` does not ask for MSG_CMSG_CLOEXEC, so the fds it returns would be
    inherited by anything the caller later forks and execs; these never are. Room is made
    for one fd (all that tether's senders pass)."""
    data, ancdata, msg_flags, _addr = sock.recvmsg(
        size, _FD_SPACE, flags | socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
    return data, fds, msg_flags


def set_nonblocking(fd: int) -> None:
    """Put ``fd``'s open file description in O_NONBLOCK mode (a no-op if it is already)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not flags & os.O_NONBLOCK:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
