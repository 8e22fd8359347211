"""Proof-suite fixtures: the ``proof`` marker (``-m proof`` / ``-m 'not proof'``), a longer
hang timeout at full size, the pen (a private cgroup that every process of a proof test starts
in, killed at teardown), and the suites' numbers in the terminal summary. tests/conftest.py
applies here too: the subreaper oracle (tests/oracle.py), and the leak check after every
test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ._harness import FULL, RESULTS, Pen, PenUnavailable

HERE = os.path.dirname(os.path.abspath(__file__))
# The smoke sizes fit the suite-wide pytest-timeout (pyproject.toml). TETHER_FULL=1 runs
# 10-50x more trials per test (the soak took 395 s in the last full run, docs/proof.md), so
# each proof test then gets an hour before it counts as hung.
FULL_TIMEOUT_S = 3600


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "proof: a proof suite that tries to break a tether guarantee (docs/proof.md)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(HERE + os.sep):
            item.add_marker(pytest.mark.proof)
            if FULL and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(FULL_TIMEOUT_S))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RESULTS:
        terminalreporter.section(f"tether proof suites ({'full' if FULL else 'smoke'} sizes)")
        for line in RESULTS:
            terminalreporter.write_line(line)


@pytest.fixture
def pen() -> Iterator[Pen]:
    """A private cgroup for this test's processes; at teardown everything in it is killed
    and reaped, and it is removed (before the global leak check runs)."""
    try:
        p = Pen.create()
    except PenUnavailable as exc:
        pytest.skip(f"the proof suites need a writable cgroup v2 hierarchy: {exc}")
    try:
        yield p
    finally:
        p.destroy()
