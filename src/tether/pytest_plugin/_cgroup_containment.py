"""The cgroup v2 containment: pytest moves itself into a fresh cgroup per scope.

The one rule this module owns: while a scope is active, pytest itself is a member of that
scope's cgroup (so everything it forks lands there and stays there however it daemonizes),
and a scope is judged only once pytest has left it -- by its own files: ``populated 0`` means
nothing leaked; otherwise it is frozen (so each member's number stays its own while it is
named), listed, killed and removed. Every cgroup operation is ``tether._kernel.cgroup``'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

from tether._kernel import cgroup
from tether._kernel.cgroup import PARENT_NAME, ROOT_ENV, cgroup_root
from tether.pytest_plugin._containment import (
    FREEZE_TIMEOUT,
    KILL_TIMEOUT,
    Containment,
    Leak,
    Scope,
)
from tether.pytest_plugin._pidfds import command_line, own_child_pidfd, pidfd_or_none
from tether.pytest_plugin._resources import TestCgroups

__all__ = ["CGROUP_BLIND_SPOTS", "SESSION_PREFIX", "CgroupContainment"]

#: What the cgroup containment cannot see (printed in the report header).
CGROUP_BLIND_SPOTS: Final = (
    "processes that move themselves out of the test's cgroup (root only), and processes "
    "started on a test's behalf by something already running (a service manager, a server, "
    "a forkserver)"
)
SESSION_PREFIX: Final = "pytest-"
#: Where process-lifetime helpers (multiprocessing's forkserver and resource tracker) live
#: once taken out of the scope that started them; killed with the session.
HELPERS_NAME: Final = "helpers"


class CgroupContainment(Containment):
    """A cgroup per scope under one session directory; pytest moves itself into the active
    one. The session directory is flock()ed for the session's life, so a later run can tell a
    directory left by a pytest that died (SIGKILL) from a live one and remove it."""

    def __init__(self, origin: str, session: str, lock_fd: int) -> None:
        self.origin = origin  # where pytest lives between tests (where it started)
        self.session = session
        self.lock_fd = lock_fd
        self.count = 0
        self.current: str = origin
        self.env_before = os.environ.get(ROOT_ENV)
        self.helpers = ""  # made when the first helper is kept
        #: --tether-limits/--tether-heaviest: each test's controller cgroups.
        self.resources: TestCgroups | None = None

    @classmethod
    def start(cls) -> CgroupContainment:
        origin = cgroup.own_cgroup()
        parent = os.path.join(cgroup_root(), PARENT_NAME)
        if origin.startswith(parent + os.sep):
            # pytest already runs inside a tether tree: nest there, so that tree's
            # cgroup.kill still reaches pytest (and everything it contains) mid-test.
            parent = os.path.join(origin, PARENT_NAME)
        # Sessions of a pytest that died; never fail this run over another's debris.
        cgroup.sweep(parent, SESSION_PREFIX)
        # Private: a child forked by a test (and leaked, or still exiting when pytest dies)
        # must not keep the session directory "live" for the next run's sweep.
        session, lock_fd = cgroup.create_locked(parent, SESSION_PREFIX, private=True)
        try:
            # Probe the one privilege we need beyond mkdir: moving pytest, there and back.
            cgroup.move_self(session)
            cgroup.move_self(origin)
        except BaseException:
            _move_self_quietly(origin)
            try:
                cgroup.remove(session, 0.0)
            except OSError:
                pass  # the next run's sweep removes it
            cgroup.release_lock(lock_fd)
            raise
        return cls(origin, session, lock_fd)

    def header(self) -> list[str]:
        return [
            f"tether: leak check via cgroup v2 at {self.session} (a cgroup t-<n> per test; "
            f"pytest waits in {self.origin} between tests)",
            f"tether: cannot see: {CGROUP_BLIND_SPOTS}",
        ]

    def open(self, label: str, *, fixture: bool) -> Scope:
        self.count += 1
        path = os.path.join(self.session, f"{'f' if fixture else 't'}-{self.count}")
        cgroup.create(path)  # covered by the session's lock
        scope = Scope(label, path=path)
        if self.resources is not None and not fixture:
            self.resources.open(scope)
        return scope

    def activate(self, scope: Scope | None) -> None:
        target = self.origin if scope is None else scope.path
        if target == self.current:
            return
        cgroup.move_self(target)
        self.current = target
        if self.resources is not None:
            self.resources.activate(scope)
        if scope is None:
            _restore_env(ROOT_ENV, self.env_before)
        else:
            # tether.spawn(contain="cgroup") makes its tree cgroups under this root: inside
            # the scope, so they are judged (and killed) with it.
            os.environ[ROOT_ENV] = scope.path

    def close(
        self, scope: Scope, others: Sequence[Scope], test: Scope | None = None
    ) -> list[Leak]:
        if scope.closed:
            return []
        scope.closed = True
        if self.current == scope.path or self.current.startswith(scope.path + os.sep):
            raise RuntimeError(f"tether: refusing to kill {scope.path}: pytest is in it")
        leaks: list[Leak] = []
        if cgroup.populated(scope.path) and not cgroup.wait_empty(scope.path, self.grace):
            leaks = self._kill(scope.path)
        if self.resources is not None:
            scope.verdict = self.resources.close(scope)
        # False (still busy after the timeout: a member stuck exiting): session end retries.
        cgroup.remove(scope.path, KILL_TIMEOUT)
        return leaks

    def _kill(self, path: str) -> list[Leak]:
        # Freeze first: a frozen process cannot exit by itself, so each number read from
        # cgroup.procs still names the same process while we read its command line and open
        # a pidfd on it. cgroup.kill works on frozen members.
        cgroup.freeze(path, FREEZE_TIMEOUT)
        leaks: list[Leak] = []
        pidfds: list[int] = []
        try:
            for pid in cgroup.members(path):
                leaks.append(Leak(pid, command_line(pid)))
                fd = pidfd_or_none(pid)
                if fd is not None:
                    pidfds.append(fd)
            cgroup.kill(path)
            cgroup.wait_empty(path, KILL_TIMEOUT)
            # Never reaped here: pytest's own children are waited for by the code that
            # started them (multiprocessing, a Popen), which a reap would answer ECHILD.
        finally:
            for fd in pidfds:
                os.close(fd)
        return leaks

    def empty(self, scope: Scope) -> bool:
        return not cgroup.populated(scope.path)

    def keep(self, pids: Sequence[int]) -> None:
        for pid in pids:
            fd = own_child_pidfd(pid)  # an unreaped child of ours: the number is pinned
            if fd is None:
                continue
            try:
                if not self.helpers:
                    self.helpers = os.path.join(self.session, HELPERS_NAME)
                    cgroup.create(self.helpers)
                cgroup.move_process(pid, self.helpers)
                if self.resources is not None:
                    self.resources.keep(pid)
            except ProcessLookupError:
                pass  # exited meanwhile (a zombie leaves its cgroup)
            finally:
                os.close(fd)

    def shutdown(self) -> None:
        try:
            self.activate(None)
            if self.current == self.origin:  # never cgroup.kill a tree pytest is in
                cgroup.kill_and_remove(self.session, KILL_TIMEOUT)
        finally:
            cgroup.release_lock(self.lock_fd)
            self.lock_fd = -1


def _move_self_quietly(directory: str) -> None:
    try:
        cgroup.move_self(directory)
    except OSError:
        pass


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
