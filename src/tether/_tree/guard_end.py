"""The blocking wait for a guarded tree's end, after the wakeup in C, and the pump's reads
after the start (an event loop's wakeup on the guard's pidfd) through the same C read.

The one rule this module owns: once the end is there, the parent runs as little Python as it
can before ``wait()`` returns. The exit notice is paid for after the parent's wakeup, and on a
cold CPU each Python step of it (a lock, a method, a close) cost 5-15 µs (ARCHITECTURE.md,
"The exit notice"): the sleep, the early wake's spin, the read of MSG_EXITED and the guard's
reap are one C call each (``core.await_end``, ``core.read_end``: ``_kernel/end.c``), and what
they found is recorded, and the waiter's borrows given back, under one lock. A mixin of
:class:`tether._tree.guarded.Guard`, whose state it reads and records (the protocol's other
reports, and every other way a tree ends, stay there).
"""

from __future__ import annotations

# socket.py's enum set-up costs ~2 ms of every start; its C module has all we use.
import _socket as socket
import threading
from typing import Final

from tether._kernel import core
from tether._kernel.cgroup import CgroupTree
from tether._kernel.deadline import Deadline
from tether._kernel.exit import Exit
from tether._kernel.pidfd import Pidfd
from tether._kernel.spawn import Spawned
from tether._tree.early_wake import SPIN_NS, lend_program
from tether._tree.tree_cgroups import prepare_next_tree

__all__ = ["GuardEnd"]

#: What ``core.read_end`` gives for MSG_EXITED: status, user ms, system ms, maxrss KiB, the
#: guard's reap (si_code, si_status), the held signal mask, the usage tail (or None).
_EndRead = tuple[int, int, int, int, int, int, int, "tuple[int, ...] | None"]

END_READY: Final = core.END_READY
END_EARLY: Final = core.END_EARLY


class GuardEnd:
    """The end wait of a :class:`~tether._tree.guarded.Guard`, which sets every attribute
    below (the slots: those the end wait records too) and implements :attr:`ended`,
    :meth:`_handle`, :meth:`_release` and :meth:`_record_end`."""

    __slots__ = ("_borrowers", "_next_due", "_woke_early", "guard_exit")
    spawned: Spawned
    sock: socket.socket
    cgroup: CgroupTree | None
    guard_exit: Exit | None
    _lock: threading.RLock
    _borrowers: int
    _program: Pidfd | None
    _job_control: bool
    _woke_early: bool
    _next_due: bool

    @property
    def ended(self) -> bool:
        raise NotImplementedError

    def _handle(self, data: bytes, fds: list[int], msg_flags: int) -> bool:
        raise NotImplementedError

    def _release(self, *, exiting: bool = False) -> Exit | None:
        raise NotImplementedError

    def _record_end(self, status: int, user_ms: int, system_ms: int, maxrss_kib: int,
                    usage_tail: tuple[int, ...] | None) -> None:
        raise NotImplementedError

    def _await_end(self, deadline: Deadline) -> bool:
        """Sleep on the guard's pidfd, readable once the guard has reported and exited, so
        one wakeup finds MSG_EXITED and a reap that cannot block (ARCHITECTURE.md), on the
        program's, which wakes us at its exit, in parallel with the guard (early_wake), and
        on the socket where the guard reports stops (the only reports that can pile up: a
        full socket blocks the guard). After the wakeup one C call reads the end and, if it
        can already, reaps the guard (``core.read_end``), and the end is recorded and the
        borrows given back under one lock."""
        guard: Pidfd | None = self.spawned.pidfd
        with self._lock:
            self._next_tree()
            if self.ended:  # (no read first: the pidfd is readable at once)
                return True
            guard_fd = self.spawned.pidfd._borrow()  # (_release closes it)
            lent = None if self._woke_early else self._program
            program_fd = lend_program(lent)
            self._borrowers += 1  # (the socket: read here, polled with stops or after a spin)
            sock_fd = self.sock.fileno()
        try:
            while True:
                on_sock = self._job_control or self._woke_early
                woke = core.await_end(guard_fd, program_fd, sock_fd, on_sock,
                                      deadline.c_poll_ms(), deadline.spin_ns(SPIN_NS))
                if woke & END_EARLY:
                    self._woke_early = True  # (once per tree: a wait_tree guard waits on)
                    program_fd = -1
                if woke & END_READY:
                    with self._lock:
                        out: list[_EndRead] = []
                        try:  # (a handler's exception at the read's return: out has it)
                            got = self._read_end(sock_fd, guard_fd, out)
                        finally:
                            if out:  # (MSG_EXITED, read with every signal held)
                                end, reaped = out[0], False
                                try:
                                    reaped = self._end_read(guard_fd, *end[:6],
                                                            usage_tail=end[7])
                                    if reaped:
                                        guard = None  # (both borrows given back)
                                finally:  # (a Ctrl-C held off since is raised here)
                                    self._end_released(end[6], reaped=reaped)
                        if got:
                            return True
                if deadline.expired:
                    return False
        finally:
            if guard is not None:
                self._end_socket_borrow()
                guard._end_borrow()
            if lent is not None:
                lent._end_borrow()

    def _pump_end(self) -> bool:
        """What ``pump()`` reads once the start is known (the lock held), read as the blocking
        wait reads it: in C (``core.read_end``), MSG_EXITED with the guard's reap when it is
        reapable already (an event loop's wakeup: the guard's pidfd is readable), then
        recorded with signals held; True once the tree has ended. Under the lock no other
        thread closes the guard's pidfd, so the pump needs no borrow of its own."""
        self._next_tree()
        guard_fd = self.spawned.pidfd.fileno()
        out: list[_EndRead] = []
        try:
            return self._read_end(self.sock.fileno(), guard_fd, out)
        finally:
            if out:  # (MSG_EXITED, read with every signal held)
                end, reaped = out[0], False
                try:
                    reaped = self._end_read(guard_fd, *end[:6], usage_tail=end[7],
                                            borrowed=False)
                finally:  # (a Ctrl-C held off since is raised here)
                    self._end_released(end[6], reaped=reaped)

    def _next_tree(self) -> None:
        """The next tree's directories, made ahead once this tree's cgroups are joined (the
        lock held): at the first wait or pump, where the parent would otherwise only wait
        for this program, not on the way out of spawn() (``tree_cgroups.prepare_next_tree``:
        a limited tree's v1 ones, a cgroup-mode tree's next v2 one)."""
        if self._next_due:
            self._next_due = False
            prepare_next_tree(self.cgroup)

    def _read_end(self, sock_fd: int, guard_fd: int, out: list[_EndRead]) -> bool:
        """Read what the guard has said, in C (the lock held); True if the tree has ended.
        MSG_EXITED is put in ``out`` as ``core.read_end`` gave it, with signals held: the
        caller records it and releases them (:meth:`_end_released`), also if this raised."""
        while not self.ended:
            # (a MSG_STARTED left queued by the overlapped start is skipped in C once the
            # program is known: it would change nothing, see Guard._handle)
            got = core.read_end(sock_fd, guard_fd, out, self._program is not None)
            if got is None:
                return False
            if not isinstance(got, bytes):
                return True
            self._handle(got, [], 0)
        return True

    def _end_read(self, guard_fd: int, status: int, user_ms: int, system_ms: int,
                  maxrss_kib: int, guard_code: int, guard_status: int, *,
                  usage_tail: tuple[int, ...] | None, borrowed: bool = True) -> bool:
        """Record the end ``core.read_end`` read (the lock held) and the guard's reap, once
        made: there, or here in C (``core.reap_exiting``) after the recording, which then
        overlaps the guard's exit teardown. True once the guard is reaped and its pidfd
        closed, with what ``_release`` would drop (``borrowed``: and the waiter's borrows
        of that pidfd and of the socket given back); False: it is to be reaped the Python
        way."""
        self._record_end(status, user_ms, system_ms, maxrss_kib, usage_tail)
        spawned = self.spawned
        spawned.lifeline.close()
        if guard_code == 0:  # (still exiting)
            guard_code, guard_status = core.reap_exiting(guard_fd, SPIN_NS)
        if guard_code <= 0:
            return False
        guard_exit = Exit._from_waitid(guard_code, guard_status)
        if borrowed:
            self.guard_exit = spawned.pidfd._end_borrow_reaped(guard_exit)
            self._borrowers -= 1
        else:
            self.guard_exit = spawned.pidfd._close_reaped(guard_exit)
        if not self._borrowers:
            self.sock.close()
        if self.cgroup is not None:
            self.cgroup.remove()
        return True

    def _end_released(self, held: int, *, reaped: bool) -> None:
        """Release the signals ``core.read_end`` held once its end is recorded, and reap
        the guard the Python way (which may block: not with signals held) unless it was
        reaped in C; also if a signal held off until now raises at the release."""
        try:
            core.release_signals(held)
        finally:
            if not reaped:
                self.guard_exit = self._release(exiting=True)

    def _end_socket_borrow(self) -> None:
        with self._lock:
            self._borrowers -= 1
            if not self._borrowers and self.ended:
                self.sock.close()
