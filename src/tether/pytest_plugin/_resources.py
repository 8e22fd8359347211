"""Per-test limits and accounting: ``--tether-limits`` and ``--tether-heaviest``.

The one rule this module owns: with either option, every test's cgroup gets the controllers'
cgroups too (``controllers.LimitedTree.beside`` its v2 directory: v2 limits written there,
and on hybrid hosts one locked v1 directory per hierarchy for memory, CPU time and pids),
pytest joins them with the v2 one for the test's whole run and leaves them with it, and they
are read once, at the test's teardown, before they are removed. An OOM kill counted there
fails the test, naming the limit. pytest itself is a member (as in the v2 cgroup): the limits
cover the test's in-process code too, and a test that allocates past ``memory`` in pytest's
own process gets pytest OOM-killed like any other member.
"""

from __future__ import annotations

from typing import Final

import pytest

from tether._kernel import cgroup
from tether._kernel.controllers import LimitedTree, own_v1_cgroups
from tether._kernel.limits import Limits, Usage, format_bytes
from tether.pytest_plugin._containment import Scope

__all__ = [
    "HeaviestReport", "TestCgroups", "add_resource_options", "resource_options", "unavailable",
]

_KEYS: Final = ("memory", "cpus", "pids")


def add_resource_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("tether")
    group.addoption(
        "--tether-limits", default=None, metavar="memory=1G,cpus=1.5,pids=500",
        help="limits for each test's cgroup (pytest, while it runs the test, and every "
        "process the test starts); an OOM kill fails the test. Implies --tether; needs the "
        "cgroup containment (ini: tether_limits)",
    )
    group.addoption(
        "--tether-heaviest", type=int, default=None, metavar="N",
        help="show the N heaviest tests by peak memory and by CPU, read from each test's "
        "cgroups (0: all). Implies --tether; needs the cgroup containment "
        "(ini: tether_heaviest)",
    )
    parser.addini("tether_limits", "limits for each test's cgroup (see --tether-limits)",
                  default="")
    parser.addini("tether_heaviest", "how many of the heaviest tests to show "
                  "(see --tether-heaviest)", default="")


def resource_options(config: pytest.Config) -> tuple[Limits | None, int | None]:
    """The limits (None: none asked for) and how many heaviest tests to show (None: no
    report); ``pytest.UsageError`` for a bad value."""
    text = config.getoption("tether_limits")
    if text is None:
        text = config.getini("tether_limits")
    limits = parse_limits(str(text)) if str(text).strip() else None
    count = config.getoption("tether_heaviest")
    if count is None and str(config.getini("tether_heaviest")).strip():
        try:
            count = int(config.getini("tether_heaviest"))
        except ValueError:
            count = -1
    if count is not None and count < 0:
        raise pytest.UsageError(f"tether_heaviest must be a count >= 0, not {count!r}")
    return limits, count


def parse_limits(text: str) -> Limits:
    """``memory=1G,cpus=1.5,pids=500`` (human units, as ``tether run`` takes them)."""
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in _KEYS:
            raise pytest.UsageError(
                f"tether_limits: {part!r} is not one of {', '.join(k + '=...' for k in _KEYS)}")
        values[key.strip()] = value.strip()
    try:
        return Limits.parse(**values)
    except (ValueError, TypeError) as exc:
        raise pytest.UsageError(f"tether_limits: {exc}") from None


class TestCgroups:
    """The controllers' cgroups of each open test scope, pytest's moves in and out of them,
    and what each test used."""

    __test__ = False  # not a test class, whatever pytest's collection thinks of the name

    def __init__(self, limits: Limits, session: str) -> None:
        self.limits = limits
        # Probe once, at configure: a limit this machine cannot set is a usage error now,
        # not a failure of every test.
        LimitedTree.beside(limits, session).remove()
        self.home = own_v1_cgroups()  # hierarchy -> where pytest lives between tests
        self.trees: dict[Scope, LimitedTree] = {}
        self.inside: LimitedTree | None = None
        self.used: list[tuple[str, Usage]] = []

    def open(self, scope: Scope) -> None:
        self.trees[scope] = LimitedTree.beside(self.limits, scope.path)

    def activate(self, scope: Scope | None) -> None:
        tree = self.trees.get(scope) if scope is not None else None
        if tree is self.inside:
            return
        for where, directory in self.home.items():
            target = tree.v1[where][0] if tree is not None and where in tree.v1 else directory
            cgroup.move_self(target)
        self.inside = tree

    def keep(self, pid: int) -> None:
        """A process-lifetime helper leaves the test's v1 cgroups with its v2 one."""
        for directory in self.home.values():
            cgroup.move_process(pid, directory)

    def close(self, scope: Scope) -> str:
        """Read what the test used, remove its cgroups; the OOM verdict ("" if none)."""
        tree = self.trees.pop(scope, None)
        if tree is None:
            return ""
        tree.remove()
        usage = tree.usage()
        self.used.append((scope.label, usage))
        if not usage.oom_kills:
            return ""
        n = usage.oom_kills
        memory = self.limits.memory
        limit = f" (memory limit {format_bytes(memory)})" if memory is not None else ""
        return (f"tether: {scope.label} hit its memory limit{limit}: the OOM killer killed "
                f"{n} process{'es' if n != 1 else ''} in the test's cgroup")

    def heaviest(self, count: int) -> list[str]:
        """The report: the ``count`` heaviest tests (0: all) by peak memory, then by CPU."""
        if not self.used:
            return []
        n = count or len(self.used)
        by_memory = sorted(self.used, key=lambda u: u[1].memory_peak or 0, reverse=True)[:n]
        by_cpu = sorted(self.used, key=lambda u: u[1].cpu, reverse=True)[:n]
        lines = ["by peak memory (pytest's own allocations during the test included):"]
        lines += [f"{_bytes(u.memory_peak):>11} {u.cpu:8.2f}s cpu  {label}"
                  for label, u in by_memory]
        lines.append("by CPU (user + system, every process of the test):")
        lines += [f"{u.cpu:8.2f}s cpu {_bytes(u.memory_peak):>11}  {label}"
                  for label, u in by_cpu]
        return lines


def _bytes(n: int | None) -> str:
    return "-" if n is None else format_bytes(n)


class HeaviestReport:
    """The registered plugin object for ``--tether-heaviest``: a summary section, like
    ``--durations``."""

    def __init__(self, cgroups: TestCgroups, count: int) -> None:
        self.cgroups = cgroups
        self.count = count

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        lines = self.cgroups.heaviest(self.count)
        what = f"{self.count} " if self.count else ""
        terminalreporter.section(f"tether: heaviest {what}tests", sep="=")
        for line in lines or ["no test ran contained"]:
            terminalreporter.write_line(line)


def unavailable(why: str) -> pytest.UsageError:
    """The usage error for resource options where tests cannot get their own cgroups."""
    return pytest.UsageError(
        f"--tether-limits/--tether-heaviest need the cgroup containment (a cgroup per test), "
        f"which this run does not have: {why}")
