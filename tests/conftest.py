"""Shared fixtures: the subreaper oracle, a leak check on every test, and the clone-method
switch that re-runs the core suites with the legacy clone fallback forced on."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import oracle
import tether
from tether._kernel import core as _core
from tether._kernel import features as _features


def pytest_configure(config: pytest.Config) -> None:
    oracle.become_subreaper()


def _tether_cgroups() -> set[str]:
    from tether._kernel.cgroup import PARENT_NAME, cgroup_root, cgroup_unavailable_reason

    if cgroup_unavailable_reason() is not None:
        return set()
    parent = os.path.join(cgroup_root(), PARENT_NAME)
    try:
        return {n for n in os.listdir(parent) if n.startswith("t-")}
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def _no_leaked_descendants(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test must leave no descendant behind (the subreaper oracle, not /proc), and no
    tree cgroup directory, failing tests included."""
    cgroups_before = _tether_cgroups()
    yield
    seen = oracle.reap_until(2.0)
    if not seen.empty:
        pytest.fail(
            f"{request.node.nodeid} left descendants running (still not ECHILD after 2 s; "
            f"reaped meanwhile: {sorted(seen.pids)})"
        )
    left = {name for name in _tether_cgroups() - cgroups_before if _unowned(name)}
    if left:
        pytest.fail(f"{request.node.nodeid} left cgroup directories: {sorted(left)}")


def _unowned(name: str) -> bool:
    """A tree directory whose lock nobody holds. Our descendants are all gone by now (checked
    just before), so a directory still locked belongs to another tether user of this machine
    (a concurrent test run), not to this test."""
    from tether._kernel.cgroup import PARENT_NAME, cgroup_root

    return oracle.cgroup_locked(os.path.join(cgroup_root(), PARENT_NAME, name)) is False


CLONE_METHODS = {"clone3": _core.CLONE_CLONE3, "legacy": _core.CLONE_LEGACY}


@pytest.fixture(params=sorted(CLONE_METHODS))
def each_clone_method(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once with clone3 and once with the legacy clone(CLONE_PIDFD) fallback
    forced, as trio re-runs its suite with the pidfd fast path off."""
    name: str = request.param
    if _features.clone_method() == _core.CLONE_LEGACY and name == "clone3":
        pytest.skip("clone3 is blocked here (the fallback is what this machine uses)")
    _features.force_clone_method(CLONE_METHODS[name])
    try:
        yield name
    finally:
        _features.force_clone_method(None)


def require_mode(mode: str) -> None:
    from tether._kernel.cgroup import cgroup_unavailable_reason
    from tether._tree.guarded import pidns_unavailable_reason

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
