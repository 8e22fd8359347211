"""Pidfd: the only handle tether ever gives for a process.

The one rule this module owns: a Pidfd is minted by tether's spawn path from a pidfd the
kernel returned atomically at creation (``clone3(CLONE_PIDFD)``) or that the process opened on
itself; there is no public constructor and no way to turn a PID number into one. Because a
pidfd names one process for ever, a signal sent through it can never reach a process that
later got the same number.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import struct
import threading
from collections.abc import Callable
from typing import Any, Final, NamedTuple, NoReturn, TypeVar, final

from tether._kernel import reaper
from tether._kernel.deadline import Deadline, check_timeout
from tether._kernel.errors import Unsupported
from tether._kernel.exit import Exit

__all__ = ["NoPublicConstructor", "Pidfd", "PidfdInfo"]

# pidfd_send_signal(2) scope flags (since kernel 6.9).
PIDFD_SIGNAL_THREAD: Final = 1
PIDFD_SIGNAL_THREAD_GROUP: Final = 2
PIDFD_SIGNAL_PROCESS_GROUP: Final = 4

# PIDFD_GET_INFO (since 6.13): _IOWR(0xFF, 11, struct pidfd_info); the struct size is part of
# the request number. We use 72 bytes (VER1: through coredump_mask + spare).
_INFO_FMT: Final = "=QQ11Ii2I"
_INFO_SIZE: Final = struct.calcsize(_INFO_FMT)
PIDFD_GET_INFO: Final = (3 << 30) | (_INFO_SIZE << 16) | (0xFF << 8) | 11
PIDFD_INFO_PID: Final = 0x1
PIDFD_INFO_CREDS: Final = 0x2
PIDFD_INFO_CGROUPID: Final = 0x4
PIDFD_INFO_EXIT: Final = 0x8  # since 6.15
PIDFD_INFO_COREDUMP: Final = 0x10  # since 6.16

_T = TypeVar("_T")

class NoPublicConstructor(type):
    """Metaclass: ``Cls(...)`` raises TypeError; tether makes instances with ``Cls._create``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor; "
            "handles are minted only by tether's spawn functions"
        )

    def _create(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


class PidfdInfo(NamedTuple):
    """What PIDFD_GET_INFO reports. ``pid``/``ppid`` are in the caller's PID namespace (0 once
    the process is reaped); ``exit`` is set only after the process was reaped and the kernel
    has PIDFD_INFO_EXIT (6.15+)."""

    pid: int
    tgid: int
    ppid: int
    ruid: int
    rgid: int
    euid: int
    egid: int
    cgroupid: int | None
    exit: Exit | None


@final
class Pidfd(metaclass=NoPublicConstructor):
    """A race-free handle on one process.

    Guarantee: every operation goes through the pidfd the kernel gave at creation, so a
    signal or wait can never reach another process, even one that got the same PID number.
    Every method may be called from any thread: a syscall on the pidfd runs under the
    handle's lock, and a blocking wait borrows the fd (a close() meanwhile closes the handle
    but leaves the fd to the last borrower), so no operation ever runs on a number this
    handle no longer owns.

    ``pid`` is the number for logs and humans; nothing in tether reaches a process by it.
    If this process is the child's parent, :meth:`wait` reaps it (the exit status is consumed
    in exactly one place and cached); otherwise the handle observes, and the exit status comes
    from the owner (the guard) or from PIDFD_INFO_EXIT. A child of ours whose handle is closed
    or dropped while it runs is reaped later (at the next spawn, or at interpreter exit).
    """

    __slots__ = (
        "__weakref__", "_borrowers", "_cmd", "_exit", "_fd", "_lock", "_parked", "_pid",
        "_reaper",
    )

    def __init__(self, fd: int, pid: int, *, reaper: bool, cmd: object = None) -> None:
        self._fd = fd
        self._pid = pid
        self._reaper = reaper
        self._cmd = cmd
        self._exit: Exit | None = None
        self._lock = threading.Lock()
        # Blocking waits and watchers (_borrow) on the fd, and what a close() during them
        # left for the last one to release: (fd, on_reaped, ending).
        self._borrowers = 0
        self._parked: tuple[int, Callable[[], None] | None, bool] | None = None

    # -- ownership ---------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The process ID, as a number for logs. Never use it to reach the process."""
        return self._pid

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._fd < 0

    def fileno(self) -> int:
        """Borrow the pidfd (for poll/epoll/asyncio). It stays owned by this handle, and the
        number is valid only until :meth:`close`: a caller that may race a close on another
        thread polls a dup of it instead."""
        with self._lock:
            return self._checked_fd()

    def _borrow(self) -> int:
        """Lend the pidfd itself to a watcher (an event loop's selector) until
        :meth:`_end_borrow`: a close() meanwhile, on any thread, parks the number instead of
        closing it, so it cannot be reused under the watcher; no dup, no extra fd."""
        with self._lock:
            fd = self._checked_fd()
            self._borrowers += 1
            return fd

    def _end_borrow(self) -> None:
        """The watcher is done with the number (unregistered it): if a close() was parked
        meanwhile and this was the last borrower, the fd is released now."""
        with self._lock:
            reaped = self._give_back_locked()
        if reaped is not None:
            reaped()

    def _give_back_locked(self) -> Callable[[], None] | None:
        # One borrow given back (the lock held): the last one releases a parked close, and
        # returns what to run once the lock is dropped (an event loop's reap callback).
        self._borrowers -= 1
        parked = self._parked if not self._borrowers else None
        if parked is None:
            return None
        self._parked = None
        return self._release_locked(*parked)

    def _end_borrow_reaped(self, exit_: Exit) -> Exit:
        """The borrower has reaped this child through the borrowed fd (``core.read_end``
        reaps a guard in the same C call that reads its last report): record ``exit_``,
        close the handle and give the borrow back, in one go; the fd is closed now, or by
        the last other borrower. Returns the recorded exit."""
        with self._lock:
            if self._exit is None:
                self._exit = exit_
            fd, self._fd = self._fd, -1
            if fd >= 0:
                self._parked = (fd, None, False)
            reaped = self._give_back_locked()
        if reaped is not None:
            reaped()
        return self._exit

    def _close_reaped(self, exit_: Exit) -> Exit:
        """The caller has reaped this child through the fd, holding it open meanwhile
        (``core.read_end`` under the guard's lock: a pump): record ``exit_`` and close the
        handle; the fd is closed now, or by the last borrower. Returns the recorded exit."""
        with self._lock:
            if self._exit is None:
                self._exit = exit_
            fd, self._fd = self._fd, -1
            if fd >= 0:
                if self._borrowers:
                    self._parked = (fd, None, False)
                else:
                    os.close(fd)
        return self._exit

    def _dup(self) -> int:
        """A private dup of the pidfd (CLOEXEC, never on fds 0-2), made under the lock: the
        caller owns it, and a concurrent close() of this handle cannot touch it."""
        with self._lock:
            return fcntl.fcntl(self._checked_fd(), fcntl.F_DUPFD_CLOEXEC, 3)

    def close(self) -> None:
        """Close the pidfd. An already-exited own child is reaped first; a running child
        keeps running (its lifeline, not this handle, decides its life) and is reaped once it
        has exited, at the next spawn or at interpreter exit: no zombie and no fd is left."""
        self._drop()

    def _drop(self, on_reaped: Callable[[], None] | None = None, *, ending: bool = False) -> None:
        """close(), with ``on_reaped`` run once an own child is reaped (now, or later by the
        reaper); ``ending``: the child was told to end (see reaper.adopt)."""
        with self._lock:
            fd = self._fd
            if fd < 0:
                return
            self._fd = -1
            if self._borrowers:
                self._parked = (fd, on_reaped, ending)  # released by the last borrower
                return
            reaped = self._release_locked(fd, on_reaped, ending)
        if reaped is not None:
            reaped()

    def _release_locked(
        self, fd: int, on_reaped: Callable[[], None] | None, ending: bool
    ) -> Callable[[], None] | None:
        """Give up ``fd``: closed, or (an own child still running) handed to the reaper.
        Returns ``on_reaped`` if it is to be run now (outside the lock)."""
        if self._reaper and self._exit is None:
            with contextlib.suppress(ChildProcessError):
                self._reap_locked(fd)
            if self._exit is None:
                reaper.adopt(fd, on_reaped, ending=ending)
                return None
        os.close(fd)
        return on_reaped

    def __enter__(self) -> Pidfd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Nobody else holds the handle any more, so no lock: a lock the interrupted code holds
        # (a GC pass can run at any allocation) would deadlock.
        fd = getattr(self, "_fd", -1)
        if fd < 0:
            return
        self._fd = -1
        if self._reaper and self._exit is None:
            try:
                running = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG) is None
            except OSError:
                running = False  # not ours to reap (a forked copy), or reaped already
            if running:
                # A dropped child must not become a zombie: reaped once it has exited.
                reaper.adopt(fd)
                return
        try:  # (not contextlib.suppress: every dropped handle runs this)
            os.close(fd)
        except OSError:
            pass

    def __repr__(self) -> str:
        if self._exit is not None:
            state = str(self._exit)
        elif self._fd < 0:
            state = "closed"
        else:
            state = "running"
        return f"<tether.Pidfd pid={self._pid} {state}>"

    def _checked_fd(self) -> int:
        fd = self._fd
        if fd < 0:
            raise ValueError("operation on a closed Pidfd")
        return fd

    # -- signals -----------------------------------------------------------------------------

    def send_signal(self, sig: int, *, process_group: bool = False) -> None:
        """Send ``sig`` through the pidfd (``pidfd_send_signal``).

        Raises ProcessLookupError once the process has been reaped: the kernel refuses a reaped
        pidfd, so the signal can never land on a process that reused the number. With
        ``process_group=True`` the signal goes to the whole process group that this process
        leads (PIDFD_SIGNAL_PROCESS_GROUP, Linux 6.9+; :class:`Unsupported` before that).
        An invalid signal raises OSError(EINVAL), as the kernel does, whatever its size.
        """
        if isinstance(sig, int) and not 0 <= sig < signal.NSIG:
            # Checked here: beyond a C int the stdlib would raise OverflowError instead.
            raise OSError(errno.EINVAL, f"invalid signal number: {sig}")
        with self._lock:  # the fd stays ours until the syscall has returned
            fd = self._checked_fd()
            if self._exit is not None and not process_group:
                raise ProcessLookupError(errno.ESRCH, f"process {self._pid} has been reaped")
            flags = PIDFD_SIGNAL_PROCESS_GROUP if process_group else 0
            try:
                signal.pidfd_send_signal(fd, sig, None, flags)
            except OSError as exc:
                if exc.errno == errno.EINVAL and process_group:
                    raise Unsupported(
                        errno.EINVAL, "PIDFD_SIGNAL_PROCESS_GROUP needs Linux 6.9"
                    ) from None
                raise

    # -- exit --------------------------------------------------------------------------------

    def poll(self) -> Exit | None:
        """The Exit if the process has ended (reaping it when it is our child), else None."""
        with self._lock:
            fd = self._checked_fd()
            if self._exit is not None:
                return self._exit
            if self._reaper:
                return self._reap_locked(fd)
            if not _reaped_by_its_parent(fd):
                return None
            return self._observed_locked(fd)

    def wait(self, timeout: float | None = None) -> Exit:
        """Block until the process ends and return its Exit; the same Exit on every call,
        from every thread.

        Waits on the pidfd itself (poll), with no sleep loop. A timeout raises
        :class:`tether.TimeoutExpired` (a :class:`subprocess.TimeoutExpired`).
        """
        timeout = check_timeout(timeout)
        with self._lock:
            fd = self._checked_fd()
            if self._exit is not None:
                return self._exit
            # The blocking part borrows the fd: close() on another thread meanwhile leaves it
            # open for us (no extra fd, so it works at the open-file limit too), and the wait
            # still ends with the Exit.
            self._borrowers += 1
        try:
            result = self._wait_on(fd, timeout)
        finally:
            self._end_borrow()
        if result is None:
            assert timeout is not None
            from tether._kernel.errors import TimeoutExpired  # (its import costs start-up)

            raise TimeoutExpired(self._timeout_cmd(), timeout)
        return result

    def _wait_on(self, fd: int, timeout: float | None) -> Exit | None:
        deadline = Deadline.after(timeout)
        poller = select.poll()
        if not self._reaper:
            # events=0: poll reports only POLLHUP, which a pidfd raises once it is reaped.
            poller.register(fd, 0)
            while not poller.poll(deadline.poll_ms()):
                if deadline.expired:
                    return self._exit
            with self._lock:
                return self._observed_locked(fd)
        if timeout is None:
            # Wait until reapable without reaping (WNOWAIT needs no lock, so pollers and other
            # waiters are never blocked behind us), then reap in the one place that does.
            with contextlib.suppress(ChildProcessError):  # reaped by another waiter meanwhile
                os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOWAIT)
        poller.register(fd, select.POLLIN)
        while True:
            with self._lock:
                result = self._reap_locked(fd)
            if result is not None or deadline.expired:
                return result
            poller.poll(deadline.poll_ms())

    def _timeout_cmd(self) -> str | list[str]:
        cmd = self._cmd
        if isinstance(cmd, list) and all(isinstance(a, str) for a in cmd):
            return cmd
        return str(cmd) if cmd is not None else repr(self)

    def _reap_locked(self, fd: int) -> Exit | None:
        """Reap our exited child through ``fd`` (the handle's, or a waiter's dup), never
        blocking; the lock is held."""
        if self._exit is not None:
            return self._exit
        try:
            res = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            # Someone else in this process reaped it (a stray waitpid(-1)). The status is
            # gone from waitid; the kernel may still tell us (PIDFD_INFO_EXIT, 6.15+).
            info_exit = self._info_exit_on(fd)
            if info_exit is None:
                raise
            self._exit = info_exit
            return info_exit
        if res is None or res.si_pid == 0:
            return None
        self._exit = Exit._from_waitid(res.si_code, res.si_status)
        return self._exit

    def _set_exit(self, exit_: Exit) -> None:
        """Record the exit an owner (the guard) reported for an observed process."""
        with self._lock:
            if self._exit is None:
                self._exit = exit_

    def _observed_locked(self, fd: int) -> Exit:
        """Exit of a process that is not our child, once its parent has reaped it: the
        owner's report, or the kernel's (PIDFD_INFO_EXIT); the lock is held."""
        if self._exit is None:
            result = self._info_exit_on(fd)
            if result is None:
                raise Unsupported(
                    errno.ENOSYS,
                    "the exit status of a process that is not our child needs "
                    "PIDFD_INFO_EXIT (Linux 6.15)",
                )
            self._exit = result
        return self._exit

    def _info_exit(self) -> Exit | None:
        with self._lock:
            if self._fd < 0:
                return self._exit
            return self._info_exit_on(self._fd)

    def _info_exit_on(self, fd: int) -> Exit | None:
        try:
            info = self._info_on(fd)
        except (Unsupported, ProcessLookupError):
            return None
        return info.exit

    def info(self) -> PidfdInfo:
        """PIDFD_GET_INFO (Linux 6.13+): ids, credentials, cgroup, and the exit status once the
        process is reaped (6.15+). Raises :class:`Unsupported` on older kernels and
        ProcessLookupError for a reaped process on kernels without PIDFD_INFO_EXIT."""
        with self._lock:
            return self._info_on(self._checked_fd())

    def _info_on(self, fd: int) -> PidfdInfo:
        want = PIDFD_INFO_PID | PIDFD_INFO_CREDS | PIDFD_INFO_CGROUPID | PIDFD_INFO_EXIT
        buf = bytearray(struct.pack(_INFO_FMT, want, *([0] * 15)))
        try:
            fcntl.ioctl(fd, PIDFD_GET_INFO, buf, True)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                raise Unsupported(exc.errno, "PIDFD_GET_INFO needs Linux 6.13") from None
            if exc.errno == errno.ESRCH:
                raise ProcessLookupError(
                    errno.ESRCH, f"process {self._pid} has been reaped"
                ) from None
            raise
        fields = struct.unpack(_INFO_FMT, buf)
        mask, cgroupid = fields[0], fields[1]
        pid, tgid, ppid, ruid, rgid, euid, egid = fields[2:9]
        exit_code = fields[13]
        exit_: Exit | None = None
        if mask & PIDFD_INFO_EXIT:
            exit_ = Exit._from_wait_status(exit_code & 0xFFFF)
        return PidfdInfo(
            pid=pid,
            tgid=tgid,
            ppid=ppid,
            ruid=ruid,
            rgid=rgid,
            euid=euid,
            egid=egid,
            cgroupid=cgroupid if mask & PIDFD_INFO_CGROUPID else None,
            exit=exit_,
        )


def _reaped_by_its_parent(fd: int) -> bool:
    poller = select.poll()
    # events=0: poll reports only POLLHUP, which a pidfd raises once the process is reaped.
    poller.register(fd, 0)
    return bool(poller.poll(0))


def pid_in_our_namespace(pidfd_fd: int, fallback: int) -> int:
    """The PID of ``pidfd_fd``'s process as this process sees it (a guard that is PID 1 of
    its own namespace reports the program's PID from inside it).

    Asked of the pidfd itself: PIDFD_GET_INFO (6.13+), else the pidfd's own fdinfo entry in
    this process's fd table (the Pid: line the kernel prints for a pidfd, 5.3+)."""
    buf = bytearray(struct.pack(_INFO_FMT, PIDFD_INFO_PID, *([0] * 15)))
    try:
        fcntl.ioctl(pidfd_fd, PIDFD_GET_INFO, buf, True)
        return int(struct.unpack(_INFO_FMT, buf)[2])
    except OSError:
        pass
    try:
        with open(f"/proc/self/fdinfo/{pidfd_fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return fallback
