"""DirectTree: ``contain=None``, the Tree backend with no guard.

The one rule this module owns: the program is our own lifelined child, reached only through
its pidfd; its process group is reached through the leader's pidfd
(PIDFD_SIGNAL_PROCESS_GROUP, 6.9+), which names the group even once the leader is reaped.
The tree has "ended" when the program has exited: what it left in its group is ended by
:meth:`DirectTree.abandon`, not waited for.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from typing import final

from tether._kernel import core
from tether._kernel.errors import Unsupported
from tether._kernel.exit import Exit
from tether._kernel.limits import Usage
from tether._kernel.pidfd import Pidfd
from tether._kernel.spawn import Spawned

__all__ = ["DirectTree"]


@final
class DirectTree:
    """contain=None: no guard; the program itself is our lifelined child."""

    __slots__ = ("_generation", "spawned")

    @property
    def stops(self) -> list[int]:
        return []  # no guard to report the program's stops

    def __init__(self, spawned: Spawned) -> None:
        self.spawned = spawned
        self._generation = core.fork_generation()

    @property
    def program(self) -> Pidfd:
        return self.spawned.pidfd

    @property
    def program_pid(self) -> int:
        return self.spawned.pid

    @property
    def started(self) -> bool:
        return True  # the clone returned after the exec

    @property
    def start_error(self) -> OSError | None:
        return None  # raised by the clone itself

    def await_start(self) -> None:
        return None

    def check_start(self) -> None:
        return None

    def fileno(self) -> int:
        return self.spawned.pidfd.fileno()

    def watch_fd(self) -> int:
        pidfd = self.spawned.pidfd
        try:
            return -1 if pidfd.poll() is not None else pidfd._borrow()
        except ValueError:
            return -1  # closed by its user: nothing left to watch

    def end_watch(self) -> None:
        self.spawned.pidfd._end_borrow()

    def pump(self, *, stop_at_start: bool = False) -> bool:
        return self.spawned.pidfd.poll() is not None

    def wait(self, timeout: float | None) -> bool:
        from tether._kernel.errors import TimeoutExpired  # (its import costs start-up)

        try:
            self.spawned.pidfd.wait(timeout)
        except TimeoutExpired:
            return False
        return True

    def outcome(self) -> Exit | None:
        try:
            return self.spawned.pidfd.poll()
        except ValueError:
            return None  # closed by its user (on any thread)

    def signal_tree(self, sig: int) -> None:
        pidfd = self.spawned.pidfd
        if pidfd.closed:
            return
        try:
            # Through the leader's pidfd the group is reached even once the leader has been
            # reaped (while any member lives): a race-free group handle.
            pidfd.send_signal(sig, process_group=True)
        except ProcessLookupError:
            return  # the group is empty
        except Unsupported:
            if pidfd.poll() is not None:
                return  # leader reaped: its number could be reused, never signal by it
            # Before Linux 6.9: killpg by number, which is exact only because the leader is
            # our own unreaped child (polled just above): its number, which is the group's,
            # cannot have been recycled.
            os.killpg(pidfd.pid, sig)  # noqa: TET201  leader unreaped: number still ours

    def kill_tree(self) -> None:
        self.signal_tree(signal.SIGKILL)

    def usage(self) -> Usage:
        raise Unsupported(errno.EOPNOTSUPP, "usage() needs the tree's own cgroups, which "
                          "contain=None has not: spawn it with contain='cgroup' or 'pidns' "
                          "and limits= (tether.Limits() accounts without limiting)")

    def abandon(self) -> None:
        # Always, even after the program exited: the leader may be gone while its group
        # lives on, and the leader's pidfd still names the group.
        self.kill_tree()
        self.spawned.lifeline.close()
        try:
            self.spawned.pidfd.wait()
        except ValueError:
            pass  # closed by its user: the reaper has it

    def detach(self) -> None:
        lifeline = self.spawned.lifeline
        self.spawned.pidfd._drop(lifeline.close)  # and __del__ then leaves the tree alone

    def __del__(self) -> None:
        # Dropped without being waited for: end the tree, as abandon() does, but without
        # waiting; the program's pidfd is reaped at the next spawn or at interpreter exit.
        # In a forked child the tree is the parent's: leave it alone. With the pidfd closed
        # (detach(), or its user) the lifeline's owner decides: the reaper, or its own GC.
        spawned = getattr(self, "spawned", None)
        if spawned is None or getattr(self, "_generation", None) != core.fork_generation():
            return
        if spawned.pidfd.closed:
            return
        with contextlib.suppress(OSError, ValueError):
            self.kill_tree()
        spawned.lifeline.close()
        spawned.pidfd._drop(ending=True)
