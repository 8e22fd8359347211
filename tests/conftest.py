"""Shared fixtures: the subreaper oracle, a leak check on every test, and the clone-method
switch that re-runs the core suites with the legacy clone fallback forced on."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import oracle
import tether
from tether import _core, _features


def pytest_configure(config: pytest.Config) -> None:
    oracle.become_subreaper()


@pytest.fixture(autouse=True)
def _no_leaked_descendants(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test must leave no descendant behind (the subreaper oracle, not /proc)."""
    yield
    seen = oracle.reap_until(2.0)
    if not seen.empty:
        pytest.fail(
            f"{request.node.nodeid} left descendants running (still not ECHILD after 2 s; "
            f"reaped meanwhile: {sorted(seen.pids)})"
        )


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


@pytest.fixture
def python_env() -> dict[str, str]:
    """The environment for Python children: they must import this same tether."""
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(tether.__file__))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
