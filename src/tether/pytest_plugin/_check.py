"""The leak check proper: the hooks that open a scope around each test and wide-scope fixture,
close it, and report what it left running.

The one rule this module owns: every scope opened here is closed exactly once -- at the test's
teardown, after the fixture's finalization, or at session end whatever happened -- and what its
``close`` found is reported against the test or fixture that opened it. Processes of a scope
still open (a module-scoped server) are never another scope's leaks.

Who owns a process: the test, for what starts while it runs; a fixture wider than a test, for
what starts while it sets up; the widest user fixture a function-scoped fixture requests
directly, for what that function-scoped fixture starts while it sets up and leaves running
(it caches it there: execnet's ``gw`` keeps gateways in the session-scoped ``group``). A test
marked ``tether_allow_leak``, or matched by the ``tether_allow_leak`` ini patterns, owns
nothing past its end: what it leaves running is kept, unreported, until the session ends.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Generator, Sequence
from typing import Any

import pytest

from tether._enforce import enforce
from tether.pytest_plugin._containment import Containment, Leak, Scope
from tether.pytest_plugin._helpers import process_lifetime_helpers

__all__ = ["ALLOW_MARKER", "LeakCheck"]

ALLOW_MARKER = "tether_allow_leak"


class LeakCheck:
    """The registered plugin object (only when the leak check is on). Its hooks take only the
    arguments they use (pluggy passes a subset of a hook's arguments)."""

    def __init__(
        self, containment: Containment, enforcing: bool, allowed: Sequence[str] = ()
    ) -> None:
        self.containment = containment
        self.enforcing = enforcing
        self.allow_patterns = list(allowed)  # node-id patterns (fnmatch) that may leak
        self.allow_test = False  # whether the current test may leak
        # Scopes of allowed tests, kept (unreported) until the session ends.
        self.allowed: list[Scope] = []
        # Scopes of function-scoped fixtures, by the wide fixture they cache processes in.
        self.cached: dict[pytest.FixtureDef[Any], list[Scope]] = {}
        self.test: Scope | None = None
        # Scopes processes currently go to, innermost last (a test, then fixtures it sets up).
        self.active: list[Scope] = []
        self.fixtures: dict[pytest.FixtureDef[Any], Scope] = {}
        # Fixture leaks found during a test; its teardown reports them.
        self.pending: list[str] = []
        self.shut = False

    # -- header ------------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        lines = self.containment.header()
        if self.enforcing:
            lines.append("tether: tether.enforce() is active for this run")
        return lines

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        if self.enforcing:
            # Only now, when tests start: pytest and its plugins may use subprocess while
            # they configure and collect (an audit hook cannot be lifted afterwards).
            enforce()
        return (yield)

    # -- tests -------------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            return (yield)
        finally:
            if self.test is not None:
                # Teardown never ran (KeyboardInterrupt, pytest.exit): still kill what the
                # test left, silently; the run is ending anyway, and an error here would
                # hide why. Session end retries whatever this could not do.
                scope, self.test = self.test, None
                try:
                    self._leave(scope)
                    self.containment.close(scope, self._others(scope))
                except (OSError, RuntimeError):
                    self.test = scope

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, object, object]:
        # Outermost, so every other plugin's setup code also runs contained.
        scope = self.containment.open(item.nodeid, fixture=False)
        self.test = scope
        self.allow_test = item.get_closest_marker(ALLOW_MARKER) is not None or any(
            fnmatch.fnmatchcase(item.nodeid, pattern) for pattern in self.allow_patterns)
        self._enter(scope)
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            result = yield
        except BaseException:
            # The teardown already failed: keep its error, add ours beside it.
            try:
                report = self._end_test()
            except (OSError, RuntimeError) as exc:
                report = f"tether: the leak check failed: {exc}"
            if report:
                item.add_report_section("teardown", "tether leak check", report)
            raise
        report = self._end_test()
        if report:
            pytest.fail(report, pytrace=False)
        return result

    def _end_test(self) -> str:
        messages, self.pending = self.pending, []
        scope, self.test = self.test, None
        if scope is not None:
            self._leave(scope)
            self.containment.keep(process_lifetime_helpers())
            if self.allow_test:
                # Opted out: what it leaves is nobody's leak; killed at session end.
                self.containment.settle(scope, self._others(scope))
                self.allowed.append(scope)
            else:
                leaks = self.containment.close(scope, self._others(scope))
                if leaks:
                    messages.insert(0, _describe(scope.label, leaks))
                if scope.verdict:
                    messages.insert(0, scope.verdict)
        return "\n".join(messages)

    # -- wide-scope fixtures -----------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any]
    ) -> Generator[None, object, object]:
        owner = None
        if fixturedef.scope == "function":
            owner = self._cache_owner(fixturedef)
            if owner is None:
                return (yield)  # its processes belong to the test
            label = (f"fixture {fixturedef.argname!r} (function scope, cached in "
                     f"{owner.argname!r})")
        else:
            label = f"fixture {fixturedef.argname!r} ({fixturedef.scope} scope)"
        scope = self.containment.open(label, fixture=True)
        if owner is None:
            self.fixtures[fixturedef] = scope
        self._enter(scope)
        try:
            return (yield)
        finally:
            self._leave(scope)
            self.containment.settle(scope, self._others(scope))
            if owner is not None:
                if self.containment.empty(scope):
                    self.containment.close(scope, self._others(scope))
                else:
                    self.cached.setdefault(owner, []).append(scope)

    def _cache_owner(self, fixturedef: pytest.FixtureDef[Any]) -> pytest.FixtureDef[Any] | None:
        """The widest open user fixture (not one of pytest's own) that ``fixturedef``
        requests directly: where a function-scoped fixture can cache what it starts."""
        best: pytest.FixtureDef[Any] | None = None
        for wide in self.fixtures:
            if wide.argname not in fixturedef.argnames:
                continue
            if getattr(wide.func, "__module__", "").startswith("_pytest"):
                continue
            if best is None or _WIDTH.get(wide.scope, 0) > _WIDTH.get(best.scope, 0):
                best = wide
        return best

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[Any]) -> None:
        scope = self.fixtures.pop(fixturedef, None)
        if scope is None:
            return
        self.containment.keep(process_lifetime_helpers())
        for owned in (*self.cached.pop(fixturedef, []), scope):
            leaks = self.containment.close(owned, self._others(owned), test=self.test)
            if leaks:
                when = ("after its teardown" if owned is scope
                        else f"after the teardown of {fixturedef.argname!r}")
                self.pending.append(_describe(f"{owned.label}, {when},", leaks))

    # -- session -----------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionfinish(
        self, session: pytest.Session, exitstatus: int
    ) -> Generator[None, object, object]:
        # After the runner's own sessionfinish, which tears down what is left of the fixtures.
        result = yield
        messages, self.pending = self.pending, []
        self.containment.keep(process_lifetime_helpers())
        for fixturedef, scope in list(self.fixtures.items()):
            for owned in (*self.cached.pop(fixturedef, []), scope):
                leaks = self.containment.close(owned, self._others(owned))
                if leaks:
                    messages.append(_describe(owned.label, leaks))
        self.fixtures.clear()
        allowed, self.allowed = self.allowed, []
        for scope in allowed:
            self.containment.close(scope, [])  # opted out: killed, not reported
        if messages:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.section("tether leak check", sep="=", red=True)
                for message in messages:
                    reporter.write_line(message)
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return result

    def shutdown(self) -> None:
        """Session end, whatever happened: pytest back where it started, every scope killed
        and removed, the process state (subreaper flag, environment) restored."""
        if self.shut:
            return
        self.shut = True
        self.active.clear()
        cached = [s for scopes in self.cached.values() for s in scopes]
        scopes = [s for s in (self.test, *cached, *self.fixtures.values(), *self.allowed)
                  if s is not None]
        self.test = None
        self.fixtures.clear()
        self.cached.clear()
        self.allowed.clear()
        # Never fail the run at exit: say what went wrong; a later run sweeps what is left.
        try:
            self.containment.activate(None)
            for scope in scopes:
                self.containment.close(scope, [])
        except (OSError, RuntimeError) as exc:
            print(f"tether: leak check cleanup failed: {exc}", file=sys.stderr)
        try:
            self.containment.shutdown()
        except (OSError, RuntimeError) as exc:
            print(f"tether: leak check cleanup failed: {exc}", file=sys.stderr)

    # -- helpers -----------------------------------------------------------------------------

    def _enter(self, scope: Scope) -> None:
        self.containment.activate(scope)
        self.active.append(scope)

    def _leave(self, scope: Scope) -> None:
        if scope in self.active:
            self.active.remove(scope)
        self.containment.activate(self.active[-1] if self.active else None)

    def _others(self, scope: Scope) -> list[Scope]:
        """The scopes still open besides ``scope`` (their processes are not its leaks)."""
        others = [s for s in self.fixtures.values() if s is not scope]
        others += [s for scopes in self.cached.values() for s in scopes if s is not scope]
        others += [s for s in self.allowed if s is not scope]
        if self.test is not None and self.test is not scope:
            others.append(self.test)
        return others


_WIDTH = {"function": 0, "class": 1, "module": 2, "package": 3, "session": 4}


def _describe(what: str, leaks: Sequence[Leak]) -> str:
    n = len(leaks)
    lines = [f"tether: {what} left {n} process{'es' if n != 1 else ''} running "
             f"(tether killed {'them' if n != 1 else 'it'}):"]
    lines += [f"    pid {leak.pid}: {leak.command}" for leak in leaks]
    return "\n".join(lines)
