"""The guard's wire format as the parent reads and writes it: one message at a time.

The one rule this module owns: the format is ``_kernel/guard_proto.h``'s, taken from the
extension (``core.GUARD_MSG_*``): C holds the only copy, and a mismatch fails at import.
"""

from __future__ import annotations

# socket.py's enum set-up costs ~2 ms of every start; its C module has all we use.
import _socket as socket
import errno
import struct
from typing import Final

from tether._kernel import core
from tether._kernel.fds import recv_with_fds

__all__ = [
    "DONTWAIT", "MSG", "MSG_EXITED", "MSG_FAILED", "MSG_KILL_TREE", "MSG_PROGRAM",
    "MSG_SIGNAL_TREE", "MSG_STARTED", "MSG_STOPPED", "announcement_error", "read_message",
]

MSG: Final = struct.Struct(core.GUARD_MSG_FORMAT)
assert MSG.size == core.GUARD_MSG_SIZE, "guard_proto.h: the format does not match the struct"
MSG_STARTED, MSG_FAILED, MSG_EXITED, MSG_PROGRAM = (
    core.GUARD_MSG_STARTED, core.GUARD_MSG_FAILED, core.GUARD_MSG_EXITED, core.GUARD_MSG_PROGRAM)
MSG_SIGNAL_TREE, MSG_KILL_TREE = core.GUARD_MSG_SIGNAL_TREE, core.GUARD_MSG_KILL_TREE
MSG_STOPPED = core.GUARD_MSG_STOPPED
DONTWAIT: Final = int(socket.MSG_DONTWAIT)  # (an IntFlag's | costs microseconds a spawn)


def read_message(
        sock: socket.socket, flags: int, *, with_fds: bool) -> tuple[bytes, list[int], int]:
    """One message: (data, fds passed with it, message flags); b"" once the guard is gone.
    ``with_fds`` until the start is read: the program's announcement carries its pidfd."""
    for _ in range(3):
        try:
            if with_fds:
                return recv_with_fds(sock, MSG.size, flags)
            return sock.recv(MSG.size, flags), [], 0
        except ConnectionResetError:
            # The guard exited with a command of ours still unread (a terminate() racing with
            # the end, or any command to a program that could not start): the kernel then
            # reports ECONNRESET, once, ahead of the reports still queued. Read on.
            continue
    return b"", [], 0


def announcement_error(msg_flags: int) -> OSError:
    """Why a program's announcement (MSG_PROGRAM) came without its pidfd: the error that
    ending its tree raises to the caller."""
    if msg_flags & socket.MSG_CTRUNC:
        return OSError(errno.EMFILE, "the program's pidfd could not be received from the "
                       "tether guard (at the open-file limit?); its tree was ended")
    return OSError(errno.EPROTO, "the program's announcement carried no pidfd; the tree "
                   "was ended")
