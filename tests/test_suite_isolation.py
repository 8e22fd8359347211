"""The suite's own cgroup directory (tests/conftest.py): a run sweeps what killed runs left,
and never a directory of a run that is still going (issue 11, "the test suite itself")."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator

import pytest

import oracle
import tether
from conftest import RUN_CGROUP_PREFIX, make_run_cgroup, rmdir_cgroup_tree
from tether._kernel import cgroup as _cgroup


@pytest.fixture
def runs_root() -> Iterator[str]:
    """A cgroup of this test's own, standing for the cgroup root that runs share."""
    why = _cgroup.cgroup_unavailable_reason()
    if why is not None:
        pytest.skip(f"cgroup v2 is not writable here: {why}")
    path = os.path.join(_cgroup.cgroup_root(), f"runs-{secrets.token_hex(4)}")
    os.mkdir(path, 0o755)
    try:
        yield path
    finally:
        if _cgroup.populated(path):
            _cgroup.kill(path)
            _cgroup.wait_empty(path, 10.0)
        rmdir_cgroup_tree(path)


def test_a_new_run_sweeps_a_killed_runs_directory_and_leaves_a_live_runs_alone(
        runs_root: str) -> None:
    # A killed run: its directory, unlocked, with a process of its still in a tree below it.
    dead = os.path.join(runs_root, f"{RUN_CGROUP_PREFIX}1-dead")
    os.makedirs(os.path.join(dead, "tether", "t-left"))
    left = tether.spawn_lifelined(["sleep", "300"])
    with open(os.path.join(dead, "tether", "t-left", "cgroup.procs"), "w") as f:
        f.write(str(left.pid))  # our unreaped child: the number names that very process
    live, live_lock = make_run_cgroup(runs_root)
    try:
        assert not os.path.exists(dead)
        assert left.pidfd.wait().signal == signal.SIGKILL
        mine, my_lock = make_run_cgroup(runs_root)  # a second run starting beside the first
        _cgroup.release_lock(my_lock)
        assert os.path.isdir(live) and oracle.cgroup_locked(live)
        assert os.path.basename(mine).startswith(RUN_CGROUP_PREFIX)
    finally:
        _cgroup.release_lock(live_lock)
        left.lifeline.close()
        left.pidfd.close()


def test_the_run_directory_lock_is_not_held_by_a_forked_child(runs_root: str) -> None:
    """A test's forked child that outlives a killed run must not make its directory look live."""
    path, lock = make_run_cgroup(runs_root)
    try:
        child = tether.run_in_fork(time.sleep, 300)  # lives until its lifeline is cut
        try:
            _cgroup.release_lock(lock)
            lock = -1
            assert oracle.cgroup_locked(path) is False
        finally:
            child.lifeline.close()
            child.pidfd.wait()
            child.pidfd.close()
    finally:
        if lock >= 0:
            _cgroup.release_lock(lock)
