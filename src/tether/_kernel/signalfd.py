"""SignalFd: signals read as data from a file descriptor, inside a poll loop.

The one rule this module owns: a signal is handled where the program already waits (poll,
epoll, asyncio), never in an asynchronous handler that does work. The signals are blocked
in the calling thread and read from a ``signalfd``.

Python caveats, stated plainly:

* A blocked signal reaches the signalfd only if *every* thread blocks it. Threads inherit the
  mask of the thread that creates them, so create the SignalFd (which blocks in the calling
  thread) before starting threads; a thread started earlier keeps its old mask, and a signal
  the kernel delivers to that thread runs Python's handler (or the default action) instead.
* Python's own handlers are not called for a blocked signal: with SIGINT in the set, Ctrl-C
  no longer raises KeyboardInterrupt; it arrives as a SignalInfo to read.
* Children inherit the blocked mask across fork+exec; tether's spawn path resets the mask in
  every child it creates (subprocess does not).
* :meth:`close` restores the calling thread's previous mask; any signal still pending then is
  delivered the ordinary way.
"""

from __future__ import annotations

import os
import select
import signal
import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Final, NamedTuple, final

from tether._kernel import core as _core
from tether._kernel.deadline import Deadline, check_timeout
from tether._kernel.fds import above_stdio

__all__ = ["SignalFd", "SignalInfo"]

_SIGINFO: Final = struct.Struct("=IiiIIiIIIIiiQQQQ")
_SIGINFO_SIZE: Final = 128


class SignalInfo(NamedTuple):
    """One signal as the kernel reported it (struct signalfd_siginfo)."""

    signo: int
    code: int
    pid: int
    uid: int
    status: int

    @property
    def signal(self) -> signal.Signals:
        return signal.Signals(self.signo)


@final
class SignalFd:
    """Block ``signals`` in the calling thread and read them from a signalfd.

    Use ``fileno()`` in a poll/epoll loop (or ``loop.add_reader``), then :meth:`read`; or
    iterate (``for info in sigfd``) to block until each one. See the module notes for what
    Python's threads and handlers mean for delivery.
    """

    __slots__ = ("_fd", "_old_mask", "_owner", "signals")

    def __init__(self, signals: Iterable[int | signal.Signals]) -> None:
        sigs = sorted({int(s) for s in signals})
        if not sigs:
            raise ValueError("SignalFd needs at least one signal")
        for s in sigs:
            if s in (signal.SIGKILL, signal.SIGSTOP):
                raise ValueError(f"{signal.Signals(s).name} cannot be caught")
        self.signals = frozenset(sigs)
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
        self._owner = threading.get_ident()
        try:
            self._fd = above_stdio(
                _core.signalfd(-1, sigs, _core.SFD_CLOEXEC | _core.SFD_NONBLOCK))
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            raise

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("operation on a closed SignalFd")
        return self._fd

    def read(self, timeout: float | None = 0.0) -> SignalInfo | None:
        """The next pending signal, waiting up to ``timeout`` seconds (None: for ever);
        None if nothing arrived in time."""
        timeout = check_timeout(timeout)
        fd = self.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = Deadline.after(timeout)
        while True:
            try:
                data = os.read(fd, _SIGINFO_SIZE)
            except BlockingIOError:
                if deadline.expired:
                    return None
                poller.poll(deadline.poll_ms())
                continue
            fields = _SIGINFO.unpack_from(data)
            signo, _errno, code, pid, uid, _fd, _tid, _band, _ovr, _trap, status = fields[:11]
            return SignalInfo(signo=signo, code=code, pid=pid, uid=uid, status=status)

    def read_all(self) -> list[SignalInfo]:
        """Every signal pending now (never blocks)."""
        out: list[SignalInfo] = []
        while (info := self.read(0.0)) is not None:
            out.append(info)
        return out

    def __iter__(self) -> Iterator[SignalInfo]:
        while True:
            info = self.read(None)
            assert info is not None
            yield info

    def close(self) -> None:
        """Close the fd and restore the calling thread's previous signal mask."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        os.close(fd)
        if threading.get_ident() == self._owner:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)

    def __enter__(self) -> SignalFd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ", ".join(signal.Signals(s).name for s in sorted(self.signals))
        return f"<tether.SignalFd [{names}]{' closed' if self._fd < 0 else ''}>"
