"""Shared fixtures: the subreaper oracle (tests/oracle.py), a cgroup directory of this run's
own, a leak check on every test, and the clone-method switch that re-runs the core suites with
the legacy clone fallback forced on."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import oracle
import tether
from tether._kernel import cgroup as _cgroup
from tether._kernel import cgroup_ahead as _cgroup_ahead
from tether._kernel import core as _core
from tether._kernel import features as _features
from tether._kernel import reaper as _reaper
from tether._tree.modes import resolve_mode

# Locked by the run that made it (a name apart from the unlocked "tether-tests-" roots of
# older checkouts, which a sweep could not tell from a live run's).
RUN_CGROUP_PREFIX = "tether-testrun-"
# Suites of their own, run in a fresh directory by tests/test_plugin_corpus.py.
collect_ignore = ["plugin_corpus"]
_run_cgroup: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    oracle.become_subreaper()
    _enter_run_cgroup()


def pytest_unconfigure(config: pytest.Config) -> None:
    _leave_run_cgroup()


def _enter_run_cgroup() -> None:
    """Point every tree of this run, and of every child it starts, at a cgroup directory of
    the run's own (TETHER_CGROUP_ROOT). Another tether user of the machine (a second copy of
    this suite) then never shows up in the leak check's listing: not its live trees, and not
    a directory it has just made and not yet locked."""
    if _cgroup.cgroup_unavailable_reason() is not None:
        return
    path, lock = make_run_cgroup(_cgroup.cgroup_root())
    _run_cgroup["lock"] = lock
    _run_cgroup["dir"] = path
    _run_cgroup["env"] = os.environ.get(_cgroup.ROOT_ENV)
    os.environ[_cgroup.ROOT_ENV] = path


def make_run_cgroup(root: str) -> tuple[str, int]:
    """Sweep the directories that killed runs left under ``root``, then make this run's,
    locked (path, lock fd). A killed run's directory (and whatever still runs in it) has
    nobody holding its lock; a run still going holds its own, so the sweep never touches it.
    The lock is private: a forked child that outlives the run cannot keep it."""
    _cgroup.sweep(root, RUN_CGROUP_PREFIX)
    path, lock = _cgroup.create_locked(root, f"{RUN_CGROUP_PREFIX}{os.getpid()}-", private=True)
    # Tests that drop to uid 65534 make their directories below it; the lock is ours already.
    os.chmod(path, 0o755)
    return path, lock


def _leave_run_cgroup() -> None:
    path = _run_cgroup.pop("dir", None)
    if path is None:
        return
    previous = _run_cgroup.pop("env", None)
    if previous is None:
        os.environ.pop(_cgroup.ROOT_ENV, None)
    else:
        os.environ[_cgroup.ROOT_ENV] = previous
    rmdir_cgroup_tree(path)
    _cgroup.release_lock(_run_cgroup.pop("lock"))


def rmdir_cgroup_tree(path: str) -> None:
    """rmdir a cgroup directory and the (empty) ones below it, deepest first; one still busy
    is left as it is (never a reason to fail a run that is over)."""
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(dirpath, name))
    with contextlib.suppress(OSError):
        os.rmdir(path)


def first_line(fd: int, timeout: float = 60.0) -> bytes:
    """The first line written to the pipe ``fd`` (with its newline): what came before EOF,
    or before ``timeout`` (generous: a bound against hangs, not a measurement). Never blocks
    beyond it: the write end may be held by a process that outlived its tree, which must
    fail the test, not hang the run."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    got = b""
    while b"\n" not in got:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        got += chunk
    line, newline, _ = got.partition(b"\n")
    return line + newline


def _tether_cgroups() -> set[str]:
    """This run's tree directories (``t-*`` below its own cgroup directory)."""
    if _cgroup.cgroup_unavailable_reason() is not None:
        return set()
    parent = os.path.join(_cgroup.cgroup_root(), _cgroup.PARENT_NAME)
    try:
        return {n for n in os.listdir(parent) if n.startswith("t-")}
    except FileNotFoundError:
        return set()


# How long a test's trees may take to finish dying after it returned, on a loaded 2-vCPU
# machine: the check returns as soon as nothing is left, so only a leak waits this long.
LEFT_BEHIND_S = 10.0


@pytest.fixture(autouse=True)
def _no_leaked_descendants(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test must leave no descendant behind (the subreaper oracle, not /proc), and no
    tree cgroup directory, failing tests included. The directories listed are this run's
    only, so every new one is this test's, locked or not (its owners are all gone by now)."""
    cgroups_before = _tether_cgroups()
    yield
    seen = oracle.reap_until(LEFT_BEHIND_S)
    # The oracle reaped what this test dropped; close the pidfds the reaper kept for them, so
    # the next test's fd count does not change under it.
    _reaper.reap_dropped()
    if not seen.empty:
        pytest.fail(
            f"{request.node.nodeid} left descendants running (still not ECHILD after "
            f"{LEFT_BEHIND_S:g} s; "
            f"reaped meanwhile: {sorted(seen.pids)})"
        )
    # The directory this process made ahead for its next cgroup-mode tree is process-wide
    # (removed at exit), not the test's: drained here, as the v1 pool is around fd counts.
    _cgroup_ahead.drain()
    left = _tether_cgroups() - cgroups_before
    if left:
        pytest.fail(f"{request.node.nodeid} left cgroup directories: {sorted(left)}")


CLONE_METHODS = {"clone3": _core.CLONE_CLONE3, "legacy": _core.CLONE_LEGACY,
                 "clone3, fd table copied": _core.CLONE_CLONE3,
                 "clone3, guard starts the program": _core.CLONE_CLONE3}


@pytest.fixture
def no_leak() -> Iterator[None]:
    """The test's calls leave no fd (against a baseline taken after a collection) and no
    process (the subreaper oracle). The process-lifetime caches are filled first: "auto"
    (every call's default) probes the modes once per process and keeps one /dev/null fd for
    its probes; a test that happens to be the first to resolve it must not be charged."""
    resolve_mode("auto")
    before = oracle.baseline_fds()
    yield
    _cgroup_ahead.drain()  # (process-wide: see _no_leaked_descendants)
    assert oracle.open_fds() == before, "an fd leaked"
    assert oracle.no_descendants(), "a process was left"


@pytest.fixture(params=sorted(CLONE_METHODS))
def each_clone_method(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once with clone3 and once with the legacy clone(CLONE_PIDFD) fallback
    forced, as trio re-runs its suite with the pidfd fast path off; and once more with clone3
    copying the fd table, the fallback of a kernel without CLOSE_RANGE_UNSHARE (fd_table.c:
    the other two share it and the child unshares its low fds); and once with the guard
    starting the program after its exec, as it does for limited trees (the others clone the
    program beside the guard's exec: the overlapped start, launch_early.c)."""
    name: str = request.param
    if _features.clone_method() == _core.CLONE_LEGACY and name.startswith("clone3"):
        pytest.skip("clone3 is blocked here (the fallback is what this machine uses)")
    _features.force_clone_method(CLONE_METHODS[name])
    if name.endswith("copied"):
        _features.force_fd_table_copy(True)
    if name.endswith("the program"):
        _features.force_overlapped_start(False)
    try:
        yield name
    finally:
        _features.force_clone_method(None)
        _features.force_fd_table_copy(False)
        _features.force_overlapped_start(True)


def require_mode(mode: str) -> None:
    from tether._kernel.cgroup import cgroup_unavailable_reason
    from tether._tree.modes import pidns_unavailable_reason

    if mode == "cgroup":
        why = cgroup_unavailable_reason()
        if why is not None:
            pytest.skip(f"cgroup containment unavailable here: {why}")
    elif mode == "pidns":
        why = pidns_unavailable_reason()
        if why is not None:
            pytest.skip(f"pidns containment unavailable here: {why}")


@pytest.fixture(params=["group", "cgroup", "pidns"])
def mode(request: pytest.FixtureRequest) -> str:
    """Each containment mode in turn (skipped, with the reason, only where truly absent)."""
    name: str = request.param
    require_mode(name)
    return name


@pytest.fixture
def junk_program(tmp_path: Path) -> str:
    """An executable file that only exec itself refuses (its interpreter does not exist):
    spawn's own checks pass, the failure comes back from the child (ENOENT)."""
    junk = tmp_path / "junk"
    junk.write_bytes(b"#!/nonexistent/interpreter\n")
    junk.chmod(0o755)
    return str(junk)


@pytest.fixture
def python_env() -> dict[str, str]:
    """The environment for Python children: they must import this same tether."""
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(tether.__file__))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
