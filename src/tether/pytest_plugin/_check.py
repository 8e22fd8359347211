"""The leak check proper: the hooks that open a scope around each test and wide-scope fixture,
close it, and report what it left running.

The one rule this module owns: every scope opened here is closed exactly once -- at the test's
teardown, after the fixture's finalization, or at session end whatever happened -- and what its
``close`` found is reported against the test or fixture that opened it. Processes of a scope
still open (a module-scoped server) are never another scope's leaks.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Sequence
from typing import Any

import pytest

from tether._enforce import enforce
from tether.pytest_plugin._containment import Containment, Leak, Scope

__all__ = ["LeakCheck"]


class LeakCheck:
    """The registered plugin object (only when the leak check is on). Its hooks take only the
    arguments they use (pluggy passes a subset of a hook's arguments)."""

    def __init__(self, containment: Containment, enforcing: bool) -> None:
        self.containment = containment
        self.enforcing = enforcing
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
            leaks = self.containment.close(scope, self._others(scope))
            if leaks:
                messages.insert(0, _describe(scope.label, leaks))
        return "\n".join(messages)

    # -- wide-scope fixtures -----------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any]
    ) -> Generator[None, object, object]:
        if fixturedef.scope == "function":
            return (yield)  # its processes belong to the test
        scope = self.containment.open(
            f"fixture {fixturedef.argname!r} ({fixturedef.scope} scope)", fixture=True)
        self.fixtures[fixturedef] = scope
        self._enter(scope)
        try:
            return (yield)
        finally:
            self._leave(scope)
            self.containment.settle(scope, self._others(scope))

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[Any]) -> None:
        scope = self.fixtures.pop(fixturedef, None)
        if scope is None:
            return
        leaks = self.containment.close(scope, self._others(scope), test=self.test)
        if leaks:
            self.pending.append(_describe(f"{scope.label}, after its teardown,", leaks))

    # -- session -----------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionfinish(
        self, session: pytest.Session, exitstatus: int
    ) -> Generator[None, object, object]:
        # After the runner's own sessionfinish, which tears down what is left of the fixtures.
        result = yield
        messages, self.pending = self.pending, []
        for scope in list(self.fixtures.values()):
            leaks = self.containment.close(scope, self._others(scope))
            if leaks:
                messages.append(_describe(scope.label, leaks))
        self.fixtures.clear()
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
        scopes = [s for s in (self.test, *self.fixtures.values()) if s is not None]
        self.test = None
        self.fixtures.clear()
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
        if self.test is not None and self.test is not scope:
            others.append(self.test)
        return others


def _describe(what: str, leaks: Sequence[Leak]) -> str:
    n = len(leaks)
    lines = [f"tether: {what} left {n} process{'es' if n != 1 else ''} running "
             f"(tether killed {'them' if n != 1 else 'it'}):"]
    lines += [f"    pid {leak.pid}: {leak.command}" for leak in leaks]
    return "\n".join(lines)
