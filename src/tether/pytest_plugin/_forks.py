"""Who forked whom: the kernel's process-events connector, read by the subreaper containment.

The one rule this module owns: an exited child of pytest is an *adopted orphan* -- one that
nobody in pytest will wait for, so pytest may reap it as it comes -- only if the kernel told
us, when it was created, that another process created it (a fork event naming a parent other
than pytest, Linux's proc connector, ``NETLINK_CONNECTOR``/``CN_IDX_PROC``). Nothing else is
reaped: pytest's own children are waited for by the code that started them. If an event was
lost (``ENOBUFS``), what we knew of the descendants is dropped, never guessed at.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Final

__all__ = ["ForkEvents"]

_NETLINK_CONNECTOR: Final = 11
_CN_IDX_PROC: Final = 1
_CN_VAL_PROC: Final = 1
_PROC_CN_MCAST_LISTEN: Final = 1
_NLMSG_DONE: Final = 3
_PROC_EVENT_FORK: Final = 0x00000001
_PROC_EVENT_EXIT: Final = 0x80000000
_NLMSG_HDR: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG: Final = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT_HDR: Final = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_IDS: Final = struct.Struct("=IIII")  # fork: parent pid/tgid, child pid/tgid; exit: pid/tgid...
_RCVBUF: Final = 4 << 20


class ForkEvents:
    """A subscription to the kernel's fork and exit events, kept to the descendants of
    pytest: which of them pytest created itself (``own``), and which exited and were created
    by another process (``exited_orphans``: candidates, still to be checked with a pidfd)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.me = os.getpid()
        self.own: set[int] = set()  # live processes pytest created itself
        self.descendants: set[int] = {self.me}  # created by pytest or by one of these
        self.exited_orphans: set[int] = set()

    @classmethod
    def subscribe(cls) -> ForkEvents:
        """Listen to the proc connector (needs CAP_NET_ADMIN and CONFIG_PROC_EVENTS);
        raises OSError where the kernel or the privileges do not allow it."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                             _NETLINK_CONNECTOR)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, _RCVBUF)  # SO_RCVBUFFORCE
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, _CN_IDX_PROC))
            op = struct.pack("=I", _PROC_CN_MCAST_LISTEN)
            cn = _CN_MSG.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(op), 0) + op
            sock.send(_NLMSG_HDR.pack(_NLMSG_HDR.size + len(cn), _NLMSG_DONE, 0, 0, 0) + cn)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def drain(self) -> None:
        """Take in every event queued so far."""
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # Events were lost: a descendant we do not know of could be taken for an
                # orphan, so forget them all; from now on only new ones are known.
                self.descendants = {self.me}
                self.exited_orphans.clear()
                continue
            self._take(data)

    def _take(self, data: bytes) -> None:
        offset = 0
        while offset + _NLMSG_HDR.size <= len(data):
            length = _NLMSG_HDR.unpack_from(data, offset)[0]
            if length < _NLMSG_HDR.size:
                return
            body = offset + _NLMSG_HDR.size + _CN_MSG.size
            if body + _EVENT_HDR.size + _IDS.size <= offset + length:
                what = _EVENT_HDR.unpack_from(data, body)[0]
                ids = _IDS.unpack_from(data, body + _EVENT_HDR.size)
                if what == _PROC_EVENT_FORK:
                    self._forked(parent=ids[1], pid=ids[2], tgid=ids[3])
                elif what == _PROC_EVENT_EXIT:
                    self._exited(pid=ids[0], tgid=ids[1])
            offset += (length + 3) & ~3

    def _forked(self, parent: int, pid: int, tgid: int) -> None:
        if pid != tgid:
            return  # a thread
        self.exited_orphans.discard(pid)  # the number now names another process
        if parent not in self.descendants:
            return  # not ours
        self.descendants.add(pid)
        if parent == self.me:
            self.own.add(pid)
        else:
            self.own.discard(pid)

    def _exited(self, pid: int, tgid: int) -> None:
        if pid != tgid or pid not in self.descendants:
            return
        self.descendants.discard(pid)
        if pid in self.own:
            self.own.discard(pid)
        else:
            self.exited_orphans.add(pid)

    def close(self) -> None:
        self.sock.close()
