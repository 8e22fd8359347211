"""The seam between the leak check and the mechanisms that contain tests: scopes and leaks.

The one rule this module owns: a :class:`Scope` is closed once, and ``close`` is the only call
that kills -- it ends whatever is left in the scope and returns it as :class:`Leak` values.
The cgroup v2 and child-subreaper containments implement :class:`Containment`; the leak check
(``_check``) speaks to them only through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

__all__ = [
    "DEFAULT_GRACE",
    "FREEZE_TIMEOUT",
    "KILL_TIMEOUT",
    "Containment",
    "Leak",
    "NoContainment",
    "Scope",
]

# How long a SIGKILLed leak may take to be gone (a process in uninterruptible sleep can take
# a while; past this the report says it is still exiting and session end tries again).
KILL_TIMEOUT: Final = 10.0
# How long leaks may take to stop (freeze or SIGSTOP) before their command lines are read.
FREEZE_TIMEOUT: Final = 2.0
# How long a scope may take to empty by itself before what is left is called a leak: a
# process already on its way out (a gateway's exit() returns before its remote is gone).
DEFAULT_GRACE: Final = 1.0


class Leak(NamedTuple):
    """A process a test (or fixture) left running: its pid and command line, as seen just
    before tether killed it."""

    pid: int
    command: str


@dataclass(eq=False)
class Scope:
    """Where the processes of one test, or of one wide-scope fixture's setup, are contained."""

    label: str  # names it in reports: a test's node id, or "fixture 'x' (module scope)"
    path: str = ""  # cgroup containment: the scope's cgroup directory
    start: int = 0  # subreaper containment: the PID cursor when the scope opened...
    settled: int = 0  # ... and when its fixture's setup was done
    owned: dict[int, int] = field(default_factory=dict)  # subreaper: pid -> pidfd
    closed: bool = False
    verdict: str = ""  # what else its close found (an OOM kill under --tether-limits)


class Containment:
    """How scopes are made, made current, and judged. ``activate(scope)`` makes processes
    that pytest starts from now on belong to ``scope`` (None: to no scope); ``settle`` is
    called when a fixture's setup is done; ``close`` waits up to ``grace`` seconds for the
    scope to empty, then kills what is left in it (it is not active) and returns what that
    was; ``keep`` takes process-lifetime helpers (pytest's own children, by pid) out of every
    scope, so that no scope's close counts or kills them."""

    grace: float = DEFAULT_GRACE

    def header(self) -> list[str]:
        raise NotImplementedError

    def open(self, label: str, *, fixture: bool) -> Scope:
        return Scope(label)

    def activate(self, scope: Scope | None) -> None:
        pass

    def settle(self, scope: Scope, others: Sequence[Scope]) -> None:
        pass

    def empty(self, scope: Scope) -> bool:
        """Whether nothing of ``scope`` is alive now (after ``settle``)."""
        return True

    def keep(self, pids: Sequence[int]) -> None:
        pass

    def close(
        self, scope: Scope, others: Sequence[Scope], test: Scope | None = None
    ) -> list[Leak]:
        """``others``: the scopes still open; ``test``: the open test, when ``scope`` is a
        fixture finalized during it (what that test started is its own, not the fixture's)."""
        scope.closed = True
        return []

    def shutdown(self) -> None:
        pass


class NoContainment(Containment):
    """Where neither mechanism works: the header says why, and nothing is checked."""

    def __init__(self, why: str) -> None:
        self.why = why

    def header(self) -> list[str]:
        return [f"tether: leak check unavailable ({self.why}); tests run unchecked"]
