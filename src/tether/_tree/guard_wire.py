"""The guard's wire format as the parent reads and writes it: one message at a time.

The one rule this module owns: the format is ``_kernel/guard_proto.h``'s, taken from the
extension (``core.GUARD_MSG_*``): C holds the only copy, and a mismatch fails at import.
"""

from __future__ import annotations

# socket.py's enum set-up costs ~2 ms of every start; its C module has all we use.
import _socket as socket
import errno
import os
import struct
from collections.abc import Callable
from typing import Final

from tether._kernel import core

__all__ = [
    "DONTWAIT", "MSG", "MSG_EXITED", "MSG_FAILED", "MSG_KILL_TREE", "MSG_PROGRAM",
    "MSG_SIGNAL_TREE", "MSG_STARTED", "MSG_STOPPED", "USAGE", "announcement_error",
    "read_start_report", "unpack",
]

MSG: Final = struct.Struct(core.GUARD_MSG_FORMAT)
assert MSG.size == core.GUARD_MSG_SIZE, "guard_proto.h: the format does not match the struct"
#: MSG_EXITED's tail where the guard was given the tree's cgroups (--usage-*): the tree's
#: final usage (user ns, system ns, memory peak, OOM kills, pids peak; -1: not counted).
USAGE: Final = struct.Struct(core.GUARD_USAGE_FORMAT)
assert USAGE.size == core.GUARD_USAGE_SIZE, "guard_proto.h: the usage format does not match"
_MAX_SIZE: Final = MSG.size + USAGE.size
MSG_STARTED, MSG_FAILED, MSG_EXITED, MSG_PROGRAM = (
    core.GUARD_MSG_STARTED, core.GUARD_MSG_FAILED, core.GUARD_MSG_EXITED, core.GUARD_MSG_PROGRAM)
MSG_SIGNAL_TREE, MSG_KILL_TREE = core.GUARD_MSG_SIGNAL_TREE, core.GUARD_MSG_KILL_TREE
MSG_STOPPED = core.GUARD_MSG_STOPPED
DONTWAIT: Final = int(socket.MSG_DONTWAIT)  # (an IntFlag's | costs microseconds a spawn)
_STARTED: Final = MSG.pack(MSG_STARTED, 0, 0, 0, 0)[:4]  # (its kind, as it comes)


def unpack(data: bytes) -> tuple[tuple[int, int, int, int, int], tuple[int, ...] | None]:
    """A report's five fields (all 0 if it is malformed) and MSG_EXITED's usage tail (None:
    the report has none)."""
    if len(data) == MSG.size:
        return MSG.unpack(data), None
    if len(data) == _MAX_SIZE:
        return MSG.unpack_from(data), USAGE.unpack_from(data, MSG.size)
    return (0, 0, 0, 0, 0), None


def announcement_error(msg_flags: int) -> OSError:
    """Why a program's announcement (MSG_PROGRAM) came without its pidfd: the error that
    ending its tree raises to the caller."""
    if msg_flags & socket.MSG_CTRUNC:
        return OSError(errno.EMFILE, "the program's pidfd could not be received from the "
                       "tether guard (at the open-file limit?); its tree was ended")
    return OSError(errno.EPROTO, "the program's announcement carried no pidfd; the tree "
                   "was ended")


def read_start_report(
        sock: socket.socket, flags: int,
        handle: Callable[[bytes, list[int], int, int], bool]) -> bool:
    """Read the next report before the start is known, and the one after it if it was the
    program's announcement and the next is queued already (one C call,
    ``core.read_start_reports``: both are there together after an awaited launch), and act
    on each (``handle(data, fds, message flags, the sender's pid as we see it or 0)``: True
    once the tree has ended). The program's pidfd is a plain int from the read of the report
    that carries it (MSG_PROGRAM) until ``handle`` has stored it, and again while
    MSG_STARTED moves it to the program's handle: no signal handler runs meanwhile (a Ctrl-C
    there would lose it; one that comes is handled right after). The end's reports are acted
    on with signals as usual (their handling reaps the guard). The blocking wait for the
    report, if ``flags`` block, stays interruptible: it peeks (takes neither message nor
    fd)."""
    if not flags & DONTWAIT:
        try:
            sock.recv(1, socket.MSG_PEEK)  # (no room for ancillary data: no fd is made)
        except ConnectionResetError:
            pass  # (the read reads on past it)
    held = core.hold_signals()
    try:
        reports = core.read_start_reports(sock.fileno(), DONTWAIT)
        for at, (data, fd, msg_flags, sender) in enumerate(reports):
            if fd < 0 and data[:4] != _STARTED:
                break  # (handled below, with signals as usual)
            if handle(data, [fd] if fd >= 0 else [], msg_flags, sender):
                for _, later, _, _ in reports[at + 1:]:
                    if later >= 0:
                        os.close(later)
                return True
        else:
            return False
    finally:
        core.release_signals(held)
    data, _, msg_flags, sender = reports[at]
    return handle(data, [], msg_flags, sender)
