"""The tether pytest plugin: every test runs contained, and a process it leaves running fails it.

The one rule this module owns: with ``--tether`` (or ``tether = true`` in the ini file), a
process that a test started -- through tether, ``subprocess``, ``os.fork``, or a daemon that
double-forked and called ``setsid`` -- and that is still alive when the test ends makes that
test fail with a teardown error naming the test and each leaked process (pid and command
line), and tether kills it. Without the option the plugin does nothing at all (it only offers
the ``tether_spawn`` fixture).

Containment, strongest first (the report header says which one a run uses):

* **cgroup v2** (a writable hierarchy, e.g. as root): pytest moves *itself* into a fresh
  cgroup ``<root>/tether/pytest-<random>/t-<n>`` for each test, so everything it forks lands
  there and stays there however it daemonizes. After the test pytest moves back to the cgroup
  it started in, and the test's cgroup is judged by its own files: ``cgroup.events``
  ``populated 0`` means nothing leaked; otherwise it is frozen (so the member list and each
  member's command line are exact: a frozen process cannot exit by itself, so its number
  cannot be recycled), listed from ``cgroup.procs``, killed with ``cgroup.kill``, awaited
  (``populated 0`` via POLLPRI) and removed. Fixtures of a wider scope than a test get a cgroup
  of their own while they set up, so a module-scoped server is not mistaken for a test's leak;
  it is judged when the fixture is finalized. ``TETHER_CGROUP_ROOT`` points into the active
  cgroup meanwhile, so ``tether.spawn(contain="cgroup")`` trees nest inside it.
* **child subreaper** (no writable cgroup, or ``--tether-containment=subreaper``): pytest
  becomes a child subreaper, so orphans (double-forked daemons) are re-parented to it. Linux
  has no call that lists a process's children (``/proc/PID/task/TID/children`` needs
  CONFIG_PROC_CHILDREN and is often missing), so the plugin probes the PID numbers allocated
  while the test ran -- the kernel's PID cursor, ``/proc/loadavg``, before and after -- and
  keeps only those that ``waitid(P_PIDFD, WNOHANG|WNOWAIT)`` proves are pytest's own unreaped
  children. A pidfd on an unreaped child pins its number, so naming and killing it is exact.
  Killing a leaked process orphans its own children to pytest, so the probe repeats until a
  round finds nothing alive. See :data:`SUBREAPER_BLIND_SPOTS` for what this cannot see.

Where the plugin cannot work at all it says so in the header and checks nothing; it never
fails a run for that. ``--tether-enforce`` additionally runs :func:`tether.enforce` from the
first test on, so the never-use primitives raise in test code.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import select
import shlex
import signal
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import pytest

from tether._enforce import enforce
from tether._kernel.cgroup import (
    PARENT_NAME,
    ROOT_ENV,
    _mounted_cgroup2,
    _populated,
    _write,
    cgroup_root,
    cgroup_unavailable_reason,
    wait_events,
)
from tether._tree.child import Child, spawn

__all__ = [
    "CGROUP_BLIND_SPOTS",
    "SUBREAPER_BLIND_SPOTS",
    "Leak",
    "tether_spawn",
]

#: What the cgroup containment cannot see (printed in the report header).
CGROUP_BLIND_SPOTS: Final = (
    "processes that move themselves out of the test's cgroup (root only), and processes "
    "started on a test's behalf by something already running (a service manager, a server, "
    "a forkserver)"
)
#: What the subreaper containment cannot see (printed in the report header).
SUBREAPER_BLIND_SPOTS: Final = (
    "orphans adopted by another subreaper that outlives the test (one started before it), "
    "and processes started on a test's behalf by something already running (a service "
    "manager, a server, a forkserver)"
)

_PLUGIN_NAME: Final = "tether-leak-check"
_CONTAINMENTS: Final = ("auto", "cgroup", "subreaper")
# How long a SIGKILLed leak may take to be gone (a process in uninterruptible sleep can take
# a while; past this the report says it is still exiting and session end tries again).
_KILL_TIMEOUT: Final = 10.0
_FREEZE_TIMEOUT: Final = 2.0
_MAX_KILL_ROUNDS: Final = 64

_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37


class Leak(NamedTuple):
    """A process a test (or fixture) left running: its pid and command line, as seen just
    before tether killed it."""

    pid: int
    command: str


# -- options -------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tether", "tether: fail tests that leak processes")
    group.addoption(
        "--tether", action="store_true", default=None,
        help="run every test contained and fail it if it leaves a process running "
        "(ini: tether = true)",
    )
    group.addoption(
        "--tether-enforce", action="store_true", default=None,
        help="also run tether.enforce() for the session: os.fork, subprocess, os.kill, "
        "/proc/<pid> ... raise DoctrineViolation in test code (implies --tether; "
        "ini: tether_enforce = true)",
    )
    group.addoption(
        "--tether-containment", choices=_CONTAINMENTS, default=None,
        help="how tests are contained: auto (cgroup v2 where writable, else subreaper), "
        "cgroup (fail if unavailable), subreaper (force the fallback) (ini: tether_containment)",
    )
    parser.addini("tether", "fail tests that leak processes (like --tether)", type="bool",
                  default=False)
    parser.addini("tether_enforce", "run tether.enforce() for the session (implies tether)",
                  type="bool", default=False)
    parser.addini("tether_containment", "auto, cgroup or subreaper (see --tether-containment)",
                  default="auto")


def _option(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name)
    return config.getini(name) if value is None else value


def pytest_configure(config: pytest.Config) -> None:
    enforcing = bool(_option(config, "tether_enforce"))
    if not (enforcing or _option(config, "tether")):
        return  # inert: no hooks registered, nothing touched
    wanted = str(_option(config, "tether_containment"))
    if wanted not in _CONTAINMENTS:
        raise pytest.UsageError(
            f"tether_containment must be one of {', '.join(_CONTAINMENTS)}, not {wanted!r}")
    containment = _choose_containment(wanted)
    check = _LeakCheck(containment, enforcing)
    # add_cleanup runs at unconfigure whatever happened (errors, KeyboardInterrupt).
    config.add_cleanup(check.shutdown)
    config.pluginmanager.register(check, _PLUGIN_NAME)


def _choose_containment(wanted: str) -> _Containment:
    why: str | None = None
    if wanted in ("auto", "cgroup"):
        why = cgroup_unavailable_reason()
        if why is None:
            try:
                return _CgroupContainment.start()
            except OSError as exc:
                why = f"cannot move pytest between cgroups: {exc}"
        if wanted == "cgroup":
            raise pytest.UsageError(f"--tether-containment=cgroup is unavailable: {why}")
        why = f"cgroup v2 unavailable: {why}"
    else:
        why = "forced by tether_containment=subreaper"
    try:
        return _SubreaperContainment.start(why)
    except OSError as exc:
        return _NoContainment(f"{why}; and no child subreaper either: {exc}")


# -- the fixture ---------------------------------------------------------------------------------


@pytest.fixture
def tether_spawn() -> Iterator[Callable[..., Child]]:
    """A function that starts a program with :func:`tether.spawn` (same arguments) and
    returns its :class:`tether.Child`; every child it started is killed and reaped, with its
    whole tree, when the test ends.

    Guarantee: each child is contained and lifelined by tether.spawn (it cannot outlive
    pytest), and is gone -- killed through its pidfd and guard, never by number -- before the
    test's leak check runs.
    """
    children: list[Child] = []

    def start(argv: Sequence[Any], **kwargs: Any) -> Child:
        child = spawn(argv, **kwargs)
        children.append(child)
        return child

    try:
        yield start
    finally:
        errors: list[BaseException] = []
        for child in reversed(children):
            try:
                child.__exit__(None, None, None)  # kill and reap the tree, close the pipes
            except BaseException as exc:  # finish the others before reporting
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise BaseExceptionGroup("tether_spawn: errors while ending children", errors)


# -- the plugin proper ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Scope:
    """Where the processes of one test, or of one wide-scope fixture's setup, are contained."""

    label: str  # names it in reports: a test's node id, or "fixture 'x' (module scope)"
    path: str = ""  # cgroup containment: the scope's cgroup directory
    start: int = 0  # subreaper containment: the PID cursor when the scope opened...
    settled: int = 0  # ... and when its fixture's setup was done
    owned: dict[int, int] = field(default_factory=dict)  # subreaper: pid -> pidfd
    closed: bool = False


class _LeakCheck:
    """The registered plugin object (only when the leak check is on)."""

    def __init__(self, containment: _Containment, enforcing: bool) -> None:
        self.containment = containment
        self.enforcing = enforcing
        self.test: _Scope | None = None
        # Scopes processes currently go to, innermost last (a test, then fixtures it sets up).
        self.active: list[_Scope] = []
        self.fixtures: dict[pytest.FixtureDef[Any], _Scope] = {}
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
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
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
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
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
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
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

    def pytest_fixture_post_finalizer(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> None:
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

    def _enter(self, scope: _Scope) -> None:
        self.containment.activate(scope)
        self.active.append(scope)

    def _leave(self, scope: _Scope) -> None:
        if scope in self.active:
            self.active.remove(scope)
        self.containment.activate(self.active[-1] if self.active else None)

    def _others(self, scope: _Scope) -> list[_Scope]:
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


# -- containments: one interface, three implementations ------------------------------------------


class _Containment:
    """How scopes are made, made current, and judged. ``activate(scope)`` makes processes
    that pytest starts from now on belong to ``scope`` (None: to no scope); ``settle`` is
    called when a fixture's setup is done; ``close`` kills what is left in a scope that is not
    active and returns what that was."""

    def header(self) -> list[str]:
        raise NotImplementedError

    def open(self, label: str, *, fixture: bool) -> _Scope:
        return _Scope(label)

    def activate(self, scope: _Scope | None) -> None:
        pass

    def settle(self, scope: _Scope, others: Sequence[_Scope]) -> None:
        pass

    def close(
        self, scope: _Scope, others: Sequence[_Scope], test: _Scope | None = None
    ) -> list[Leak]:
        """``others``: the scopes still open; ``test``: the open test, when ``scope`` is a
        fixture finalized during it (what that test started is its own, not the fixture's)."""
        scope.closed = True
        return []

    def shutdown(self) -> None:
        pass


class _NoContainment(_Containment):
    def __init__(self, why: str) -> None:
        self.why = why

    def header(self) -> list[str]:
        return [f"tether: leak check unavailable ({self.why}); tests run unchecked"]


# -- cgroup v2 -----------------------------------------------------------------------------------


class _CgroupContainment(_Containment):
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

    @classmethod
    def start(cls) -> _CgroupContainment:
        origin = _own_cgroup_dir()
        parent = os.path.join(cgroup_root(), PARENT_NAME)
        if origin.startswith(parent + os.sep):
            # pytest already runs inside a tether tree: nest there, so that tree's
            # cgroup.kill still reaches pytest (and everything it contains) mid-test.
            parent = os.path.join(origin, PARENT_NAME)
            os.makedirs(parent, exist_ok=True)
        _sweep_stale_sessions(parent)
        session, lock_fd = _create_locked(parent, "pytest-")
        try:
            # Probe the one privilege we need beyond mkdir: moving pytest, there and back.
            _move_self(session)
            _move_self(origin)
        except BaseException:
            _move_self_quietly(origin)
            os.close(lock_fd)
            _rmdir_quiet(session)
            raise
        return cls(origin, session, lock_fd)

    def header(self) -> list[str]:
        return [
            f"tether: leak check via cgroup v2 at {self.session} (a cgroup t-<n> per test; "
            f"pytest waits in {self.origin} between tests)",
            f"tether: cannot see: {CGROUP_BLIND_SPOTS}",
        ]

    def open(self, label: str, *, fixture: bool) -> _Scope:
        self.count += 1
        path = os.path.join(self.session, f"{'f' if fixture else 't'}-{self.count}")
        os.mkdir(path, 0o755)
        return _Scope(label, path=path)

    def activate(self, scope: _Scope | None) -> None:
        target = self.origin if scope is None else scope.path
        if target == self.current:
            return
        _move_self(target)
        self.current = target
        if scope is None:
            _restore_env(ROOT_ENV, self.env_before)
        else:
            # tether.spawn(contain="cgroup") makes its tree cgroups under this root: inside
            # the scope, so they are judged (and killed) with it.
            os.environ[ROOT_ENV] = scope.path

    def close(
        self, scope: _Scope, others: Sequence[_Scope], test: _Scope | None = None
    ) -> list[Leak]:
        if scope.closed:
            return []
        scope.closed = True
        if self.current == scope.path or self.current.startswith(scope.path + os.sep):
            raise RuntimeError(f"tether: refusing to kill {scope.path}: pytest is in it")
        leaks: list[Leak] = []
        if _populated(scope.path):
            leaks = self._kill(scope.path)
        # Still busy after the timeout (a member stuck exiting): session end tries again.
        _remove_tree(scope.path, _KILL_TIMEOUT)
        return leaks

    def _kill(self, path: str) -> list[Leak]:
        # Freeze first: a frozen process cannot exit by itself, so each number read from
        # cgroup.procs still names the same process while we read its command line and open
        # a pidfd on it. cgroup.kill works on frozen members.
        _write(os.path.join(path, "cgroup.freeze"), "1")
        wait_events(path, b"frozen 1", _FREEZE_TIMEOUT)
        leaks: list[Leak] = []
        pidfds: list[int] = []
        try:
            for pid in _members(path):
                leaks.append(Leak(pid, _command_line(pid)))
                fd = _pidfd_or_none(pid)
                if fd is not None:
                    pidfds.append(fd)
            _write(os.path.join(path, "cgroup.kill"), "1")
            wait_events(path, b"populated 0", _KILL_TIMEOUT)
            for fd in pidfds:
                _reap_if_own_child(fd)  # pytest's own children would stay zombies otherwise
        finally:
            for fd in pidfds:
                os.close(fd)
        return leaks

    def shutdown(self) -> None:
        try:
            self.activate(None)
            if self.current == self.origin:  # never cgroup.kill a tree pytest is in
                _kill_tree(self.session)
        finally:
            _lock_fds.discard(self.lock_fd)
            os.close(self.lock_fd)
            self.lock_fd = -1


def _own_cgroup_dir() -> str:
    """This process's cgroup v2 directory, from its own /proc/self/cgroup ("0::<path>")."""
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        relative = next((line[3:].rstrip("\n") for line in f if line.startswith("0::")), None)
    if relative is None:
        raise OSError(errno.ENOENT, "this process is in no cgroup v2 hierarchy")
    for mount in _mounted_cgroup2():
        candidate = os.path.normpath(mount + relative)
        if os.path.exists(os.path.join(candidate, "cgroup.procs")):
            return candidate
    raise OSError(errno.ENOENT, f"cannot find this process's cgroup {relative} in a mount")


def _move_self(directory: str) -> None:
    # Writing our pid to cgroup.procs moves every thread of pytest at once.
    _write(os.path.join(directory, "cgroup.procs"), str(os.getpid()))


def _move_self_quietly(directory: str) -> None:
    try:
        _move_self(directory)
    except OSError:
        pass


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _subdirs(path: str) -> list[str]:
    try:
        return [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _members(path: str) -> list[int]:
    """Every process in the cgroup ``path`` and its nested cgroups (depth first)."""
    pids: list[int] = []
    try:
        with open(os.path.join(path, "cgroup.procs"), encoding="ascii") as f:
            # 0 stands for a member outside our PID namespace: not one pytest started.
            pids = [pid for pid in map(int, f.read().split()) if pid > 0]
    except FileNotFoundError:
        return pids
    for sub in _subdirs(path):
        pids += _members(sub)
    return pids


def _remove_tree(path: str, timeout: float) -> bool:
    """rmdir ``path`` and the cgroups nested in it, deepest first; False if it is still busy
    after ``timeout`` (a member still exiting)."""
    deadline = time.monotonic() + timeout
    return _remove_tree_until(path, deadline)


def _remove_tree_until(path: str, deadline: float) -> bool:
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
        # EBUSY: nested cgroups (tether trees made inside the scope), or members that have
        # just been killed and are not quite gone.
        subdirs = _subdirs(path)
        for sub in subdirs:
            if not _remove_tree_until(sub, deadline):
                return False
        if not subdirs:
            if time.monotonic() >= deadline:
                return False
            if wait_events(path, b"populated 0", 0.01):
                # Empty, yet rmdir still said EBUSY: the kernel is finishing the members'
                # exit (seen for a few hundred microseconds). A bounded back-off, not a poll
                # of process state.
                time.sleep(0.001)


def _kill_tree(path: str) -> None:
    """Kill everything in the cgroup ``path`` (nested ones included) and remove it all."""
    if not os.path.isdir(path):
        return
    if _populated(path):
        _write(os.path.join(path, "cgroup.kill"), "1")
        wait_events(path, b"populated 0", _KILL_TIMEOUT)
    _remove_tree(path, _KILL_TIMEOUT)


def _create_locked(parent: str, prefix: str) -> tuple[str, int]:
    """mkdir a fresh ``<parent>/<prefix><random>`` and flock it; (path, lock fd)."""
    for _ in range(8):
        path = os.path.join(parent, prefix + secrets.token_hex(6))
        os.mkdir(path, 0o755)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # A concurrent sweep took the fresh, still unlocked directory for a stale one and
            # will remove it: take another name.
            os.close(fd)
            continue
        if os.path.isdir(path):
            _lock_fds.add(fd)
            return path, fd
        os.close(fd)  # swept between mkdir and flock
    raise OSError(errno.EAGAIN, f"could not create a locked cgroup under {parent}")


def _sweep_stale_sessions(parent: str) -> None:
    """Kill and remove ``pytest-*`` directories whose pytest is gone (their lock is free)."""
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return
    for name in names:
        if not name.startswith("pytest-"):
            continue
        path = os.path.join(parent, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _kill_tree(path)
        except BlockingIOError:
            pass  # a live pytest owns it
        except OSError:
            pass  # left for the next run; never fail this one over another's debris
        finally:
            os.close(fd)


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


# The session lock must be held by pytest alone: a child forked by a test (and leaked, or
# still exiting when pytest dies) would otherwise keep the directory "live" for the sweep.
_lock_fds: set[int] = set()


def _close_locks_in_child() -> None:
    for fd in _lock_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _lock_fds.clear()


os.register_at_fork(after_in_child=_close_locks_in_child)


# -- child subreaper -----------------------------------------------------------------------------


class _PidCursor:
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


class _SubreaperContainment(_Containment):
    """pytest as a child subreaper, plus a probe of the PIDs allocated during each scope."""

    def __init__(self, why: str, previous: int, cursor: _PidCursor) -> None:
        self.why = why
        self.previous = previous
        self.cursor = cursor

    @classmethod
    def start(cls, why: str) -> _SubreaperContainment:
        cursor = _PidCursor()
        previous = ctypes.c_int(0)
        _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.addressof(previous))
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        return cls(why, previous.value, cursor)

    def header(self) -> list[str]:
        return [
            f"tether: leak check via child subreaper ({self.why}): orphans come back to "
            "pytest; each test's new PIDs are probed with pidfds",
            f"tether: cannot see: {SUBREAPER_BLIND_SPOTS}",
        ]

    def open(self, label: str, *, fixture: bool) -> _Scope:
        return _Scope(label, start=self.cursor.now())

    def settle(self, scope: _Scope, others: Sequence[_Scope]) -> None:
        # A fixture's setup is done: the live children it made are its own from now on, so a
        # test that runs meanwhile does not take them for its leaks.
        excluded = _owned_pids(others)
        scope.settled = self.cursor.now()
        for pid in self.cursor.pids(scope.start, scope.settled):
            if pid in excluded or pid in scope.owned:
                continue
            fd = _own_child_pidfd(pid)
            if fd is None:
                continue
            if _has_exited(fd):
                os.close(fd)
            else:
                scope.owned[pid] = fd

    def close(
        self, scope: _Scope, others: Sequence[_Scope], test: _Scope | None = None
    ) -> list[Leak]:
        if scope.closed:
            return []
        scope.closed = True
        excluded = _owned_pids(others)
        if test is not None:
            # A fixture finalized during a test: the children that test made (after it
            # started, and after this fixture's setup) are the test's, judged at its end.
            # Children that appear later are orphans of what this fixture's close kills.
            cutoff = max(test.start, scope.settled)
            for pid in self.cursor.pids(cutoff, self.cursor.now()):
                fd = _own_child_pidfd(pid)
                if fd is not None:
                    excluded.add(pid)  # unreaped, so the number stays this process's
                    os.close(fd)
        try:
            return self._kill(scope.start, excluded)
        finally:
            for fd in scope.owned.values():
                os.close(fd)
            scope.owned.clear()

    def _kill(self, start: int, excluded: set[int]) -> list[Leak]:
        leaks: list[Leak] = []
        for _ in range(_MAX_KILL_ROUNDS):
            alive: dict[int, int] = {}
            try:
                for pid in self.cursor.pids(start, self.cursor.now()):
                    if pid in excluded:
                        continue
                    fd = _own_child_pidfd(pid)
                    if fd is None:
                        continue
                    if _has_exited(fd):
                        # An orphan that exited (pytest adopted it, so pytest must reap it) or
                        # a child the test never waited for.
                        _reap_if_own_child(fd)
                        os.close(fd)
                    else:
                        alive[pid] = fd
                if not alive:
                    return leaks
                # Stopped, as the cgroup containment freezes: no more forks, and one caught
                # half-way through execve() has finished it, so its command line is whole.
                # Our unreaped child's number cannot be recycled: reading by number is exact.
                _stop(list(alive.values()), _FREEZE_TIMEOUT)
                for pid, fd in alive.items():
                    # One that was already exiting does not stop but ends: no leak (the
                    # cgroup freezer likewise waits for such members to leave).
                    if not _has_exited(fd):
                        leaks.append(Leak(pid, _command_line(pid)))
                    try:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                # Their children are orphaned to pytest as they die: the next round finds them.
                _await_exits(list(alive.values()), _KILL_TIMEOUT)
                for fd in alive.values():
                    _reap_if_own_child(fd)
            finally:
                for fd in alive.values():
                    os.close(fd)
        return leaks

    def shutdown(self) -> None:
        _prctl(_PR_SET_CHILD_SUBREAPER, self.previous)


_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _owned_pids(scopes: Sequence[_Scope]) -> set[int]:
    """The pids that open fixture scopes own and that still name those processes."""
    pids: set[int] = set()
    for scope in scopes:
        for pid, fd in list(scope.owned.items()):
            if _is_own_unreaped_child(fd):
                pids.add(pid)  # unreaped: the number cannot have been recycled
            else:
                del scope.owned[pid]
                os.close(fd)
    return pids


# -- pidfds on our own children ------------------------------------------------------------------


def _pidfd_or_none(pid: int) -> int | None:
    try:
        # The caller has pinned the number (a frozen cgroup member, or a candidate that is
        # checked to be our own unreaped child right after).
        return os.pidfd_open(pid)  # noqa: TET401  number pinned or verified just after
    except (ProcessLookupError, FileNotFoundError):
        return None  # gone, or a thread id rather than a process
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


def _own_child_pidfd(pid: int) -> int | None:
    """A pidfd on ``pid`` if that number names an unreaped child of pytest, else None.

    Race-free: whatever process the pidfd opened, ``waitid(P_PIDFD)`` then answers for that
    very process, and answers ECHILD unless it is our child."""
    fd = _pidfd_or_none(pid)
    if fd is not None and not _is_own_unreaped_child(fd):
        os.close(fd)
        return None
    return fd


def _is_own_unreaped_child(fd: int) -> bool:
    try:
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _has_exited(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _stop(fds: Sequence[int], timeout: float) -> None:
    """SIGSTOP our children ``fds`` and wait until each has stopped (or exited).

    A process stops only on its way back to user space, so the wait is event-driven: the
    kernel sends pytest a SIGCHLD for each stop, taken here with sigtimedwait while blocked.
    Another thread of pytest may take that signal first, hence the short cap per wait."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    consumed = False
    try:
        for fd in fds:
            try:
                signal.pidfd_send_signal(fd, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        pending = list(fds)
        deadline = time.monotonic() + timeout
        while True:
            pending = [fd for fd in pending if not _stopped_or_exited(fd)]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                return
            if signal.sigtimedwait({signal.SIGCHLD}, min(remaining, 0.01)) is not None:
                consumed = True
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if consumed and callable(signal.getsignal(signal.SIGCHLD)):
            # Someone handles SIGCHLD (e.g. an asyncio child watcher): give back what we took.
            signal.raise_signal(signal.SIGCHLD)


def _stopped_or_exited(fd: int) -> bool:
    try:
        return os.waitid(
            os.P_PIDFD, fd, os.WSTOPPED | os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # reaped meanwhile by its owner


def _await_exits(fds: Sequence[int], timeout: float) -> None:
    poller = select.poll()
    waiting = set(fds)
    for fd in waiting:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        for fd, _events in poller.poll(max(1, int(remaining * 1000))):
            poller.unregister(fd)
            waiting.discard(fd)


def _reap_if_own_child(fd: int) -> None:
    try:
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        pass  # not ours (an orphan's parent reaps it), or already reaped by its owner


def _command_line(pid: int) -> str:
    """The command line of ``pid`` for the report (read only while the number is pinned)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:  # noqa: TET601  pinned pid, report only
            raw = f.read()
    except OSError:
        raw = b""
    args = [os.fsdecode(arg) for arg in raw.split(b"\0") if arg]
    if args:
        return shlex.join(args)
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:  # noqa: TET601  pinned pid, report only
            return f"[{os.fsdecode(f.read().strip())}]"
    except OSError:
        return "[command line unavailable]"
