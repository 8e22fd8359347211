"""The child-subreaper containment: the fallback where no cgroup v2 hierarchy is writable.

The one rule this module owns: a process is judged a scope's leak only if its number was
allocated while the scope was open *and* ``waitid(P_PIDFD, WNOHANG|WNOWAIT)`` proves it is
pytest's own unreaped child (pytest is a child subreaper, so orphans -- double-forked daemons
-- come back to it). Linux has no call that lists a process's children
(``/proc/PID/task/TID/children`` needs CONFIG_PROC_CHILDREN and is often missing), hence the
probe of the kernel's PID cursor. Killing a leak orphans its own children to pytest, so the
probe repeats until a round finds nothing alive.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, Final

from tether._kernel.deadline import Deadline
from tether._kernel.subreaper import child_subreaper, set_child_subreaper
from tether.pytest_plugin._containment import (
    FREEZE_TIMEOUT,
    KILL_TIMEOUT,
    Containment,
    Leak,
    Scope,
)
from tether.pytest_plugin._forks import ForkEvents
from tether.pytest_plugin._pidfds import (
    await_exits,
    command_line,
    has_exited,
    is_own_unreaped_child,
    own_child_pidfd,
    reap_if_own_child,
    stop,
)

__all__ = ["SUBREAPER_BLIND_SPOTS", "PidCursor", "SubreaperContainment"]

#: What the subreaper containment cannot see (printed in the report header).
SUBREAPER_BLIND_SPOTS: Final = (
    "orphans adopted by another subreaper that outlives the test (one started before it), "
    "and processes started on a test's behalf by something already running (a service "
    "manager, a server, a forkserver)"
)
_MAX_KILL_ROUNDS: Final = 64


class PidCursor:
    """The kernel's PID allocation cursor for this PID namespace (last field of
    /proc/loadavg), unwrapped into a count that only grows while pytest samples it often
    enough (at least once per pid_max process creations)."""

    def __init__(self) -> None:
        with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
            self.pid_max = int(f.read())
        self.wraps = 0
        self.last = self._read()

    @staticmethod
    def _read() -> int:
        with open("/proc/loadavg", encoding="ascii") as f:
            return int(f.read().rsplit(" ", 1)[1])

    def now(self) -> int:
        pid = self._read()
        if pid < self.last:
            self.wraps += 1  # allocation wrapped past pid_max
        self.last = pid
        return self.wraps * self.pid_max + pid

    def pids(self, after: int, upto: int) -> Iterator[int]:
        """The PID numbers handed out after cursor ``after`` up to cursor ``upto``."""
        if upto - after >= self.pid_max - 1:
            yield from range(1, self.pid_max)
            return
        low, high = after % self.pid_max, upto % self.pid_max
        if low <= high:
            yield from range(low + 1, high + 1)
        else:
            yield from range(low + 1, self.pid_max)
            yield from range(1, high + 1)


class SubreaperContainment(Containment):
    """pytest as a child subreaper, plus a probe of the PIDs allocated during each scope."""

    def __init__(self, why: str, previous: bool, cursor: PidCursor,
                 forks: ForkEvents | None, no_forks: str) -> None:
        self.why = why
        self.previous = previous
        self.cursor = cursor
        self.helpers: dict[int, int] = {}  # process-lifetime helpers: pid -> pidfd
        self.forks = forks  # who forked whom, to reap adopted orphans as they exit
        self.no_forks = no_forks  # why there is none
        self.sigchld: Any = None  # the SIGCHLD disposition ours replaced, while a scope runs
        self.handling = False

    @classmethod
    def start(cls, why: str) -> SubreaperContainment:
        cursor = PidCursor()
        forks: ForkEvents | None = None
        no_forks = ""
        try:
            forks = ForkEvents.subscribe()
        except OSError as exc:
            no_forks = f"no proc connector: {exc}"
        previous = child_subreaper()
        try:
            set_child_subreaper(True)
        except BaseException:
            if forks is not None:
                forks.close()
            raise
        return cls(why, previous, cursor, forks, no_forks)

    def header(self) -> list[str]:
        return [
            f"tether: leak check via child subreaper ({self.why}): orphans come back to "
            "pytest; each test's new PIDs are probed with pidfds",
            f"tether: cannot see: {SUBREAPER_BLIND_SPOTS}",
            "tether: orphans adopted by pytest are reaped as they exit (proc connector)"
            if self.forks is not None else
            f"tether: orphans adopted by pytest are reaped only at the end of a test "
            f"({self.no_forks})",
        ]

    def activate(self, scope: Scope | None) -> None:
        if self.forks is None:
            return
        if scope is not None and not self.handling:
            # The test's own code is running, with no loop of ours to poll from: only an
            # asynchronous handler can reap an orphan the moment it exits. It reaps nothing
            # but proven orphans and chains to the handler it replaced.
            handler = self._on_sigchld
            self.sigchld = signal.signal(signal.SIGCHLD, handler)  # noqa: TET501  see above
            signal.siginterrupt(signal.SIGCHLD, False)  # SA_RESTART, as with no handler
            self.handling = True
            self.reap_orphans()  # those that exited while no scope ran
        elif scope is None and self.handling:
            if signal.getsignal(signal.SIGCHLD) == self._on_sigchld:
                previous = signal.SIG_DFL if self.sigchld is None else self.sigchld
                signal.signal(signal.SIGCHLD, previous)  # noqa: TET501  restores theirs
            self.handling = False

    def _on_sigchld(self, signum: int, frame: FrameType | None) -> None:
        self.reap_orphans()
        if callable(self.sigchld):
            self.sigchld(signum, frame)  # whoever handled SIGCHLD before us still does

    def reap_orphans(self) -> None:
        """Reap the adopted orphans that have exited: children of pytest that another process
        created (the proc connector said so), which nobody in pytest will wait for."""
        if self.forks is None:
            return
        self.forks.drain()
        for pid in list(self.forks.exited_orphans):
            fd = own_child_pidfd(pid)
            if fd is None:
                self.forks.exited_orphans.discard(pid)  # not ours: its parent reaps it
                continue
            try:
                self.forks.drain()  # a fork event since? then the number is another's
                if pid in self.forks.exited_orphans and has_exited(fd):
                    reap_if_own_child(fd)
                    self.forks.exited_orphans.discard(pid)
            finally:
                os.close(fd)

    def open(self, label: str, *, fixture: bool) -> Scope:
        return Scope(label, start=self.cursor.now())

    def settle(self, scope: Scope, others: Sequence[Scope]) -> None:
        # A fixture's setup is done: the live children it made are its own from now on, so a
        # test that runs meanwhile does not take them for its leaks.
        excluded = _owned_pids(others) | _owned_pids([self._helper_scope()])
        scope.settled = self.cursor.now()
        scope.owned.update(self._live_children(
            scope.start, scope.settled, excluded | set(scope.owned)))

    def close(
        self, scope: Scope, others: Sequence[Scope], test: Scope | None = None
    ) -> list[Leak]:
        if scope.closed:
            return []
        scope.closed = True
        excluded = _owned_pids(others) | _owned_pids([self._helper_scope()])
        if test is not None:
            # A fixture finalized during a test: the children that test made (after it
            # started, and after this fixture's setup) are the test's, judged at its end.
            # Children that appear later are orphans of what this fixture's close kills.
            cutoff = max(test.start, scope.settled)
            for pid in self.cursor.pids(cutoff, self.cursor.now()):
                fd = own_child_pidfd(pid)
                if fd is not None:
                    excluded.add(pid)  # unreaped, so the number stays this process's
                    os.close(fd)
        try:
            return self._kill(scope.start, excluded)
        finally:
            for fd in scope.owned.values():
                os.close(fd)
            scope.owned.clear()

    def empty(self, scope: Scope) -> bool:
        return not scope.owned

    def keep(self, pids: Sequence[int]) -> None:
        for pid in pids:
            if pid in self.helpers:
                continue
            fd = own_child_pidfd(pid)
            if fd is not None:
                self.helpers[pid] = fd

    def _helper_scope(self) -> Scope:
        return Scope("process-lifetime helpers", owned=self.helpers)

    def _live_children(self, start: int, upto: int, excluded: set[int]) -> dict[int, int]:
        """Our live children numbered in (start, upto], not excluded, each with a pidfd.
        One that has exited is left unreaped: whoever started it may still wait for it."""
        alive: dict[int, int] = {}
        for pid in self.cursor.pids(start, upto):
            if pid in excluded:
                continue
            fd = own_child_pidfd(pid)
            if fd is None:
                continue
            if has_exited(fd):
                os.close(fd)
            else:
                alive[pid] = fd
        return alive

    def _kill(self, start: int, excluded: set[int]) -> list[Leak]:
        leaks: list[Leak] = []
        grace = Deadline.after(self.grace)
        for _ in range(_MAX_KILL_ROUNDS):
            self.reap_orphans()
            alive: dict[int, int] = {}
            try:
                alive = self._live_children(start, self.cursor.now(), excluded)
                if not alive:
                    return leaks
                if not grace.expired:
                    # Maybe on their way out: wait (bounded), then look again, since what
                    # they leave behind is orphaned to pytest as they exit.
                    await_exits(list(alive.values()), grace.remaining() or 0.0)
                    continue
                # Stopped, as the cgroup containment freezes: no more forks, and one caught
                # half-way through execve() has finished it, so its command line is whole.
                # Our unreaped child's number cannot be recycled: reading by number is exact.
                stop(list(alive.values()), FREEZE_TIMEOUT)
                for pid, fd in alive.items():
                    # One that was already exiting does not stop but ends: no leak (the
                    # cgroup freezer likewise waits for such members to leave).
                    if not has_exited(fd):
                        leaks.append(Leak(pid, command_line(pid)))
                    try:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                # Their children are orphaned to pytest as they die: the next round finds them.
                await_exits(list(alive.values()), KILL_TIMEOUT)
            finally:
                for fd in alive.values():
                    os.close(fd)
        return leaks

    def shutdown(self) -> None:
        self.activate(None)
        self.reap_orphans()
        if self.forks is not None:
            self.forks.close()
            self.forks = None
        for fd in self.helpers.values():
            os.close(fd)
        self.helpers.clear()
        set_child_subreaper(self.previous)


def _owned_pids(scopes: Sequence[Scope]) -> set[int]:
    """The pids that open fixture scopes own and that still name those processes."""
    pids: set[int] = set()
    for scope in scopes:
        for pid, fd in list(scope.owned.items()):
            if is_own_unreaped_child(fd):
                pids.add(pid)  # unreaped: the number cannot have been recycled
            else:
                del scope.owned[pid]
                os.close(fd)
    return pids
