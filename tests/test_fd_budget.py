"""The fds a live tree keeps open in the parent (ARCHITECTURE.md, "fd budget"): a guarded
tree keeps four in every mode (the guard's pidfd, the lifeline's write end, the control
socket, the program's pidfd), a bare one two. In cgroup mode the directory's lock is the
guard's to hold, not ours; the proofs that nothing is lost by that (parent SIGKILLed, guard
SIGKILLed, stale directories swept) are in test_contain.py and test_guard_protocol.py, and
the conftest leak check fails any test that leaves a directory behind."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess

import pytest

import oracle
import tether
from tether._kernel import cgroup, cgroup_ahead, v1_pool

N = 3  # trees at once: a per-tree cost, not a one-off cache


def _kinds(fds: set[int]) -> list[str]:
    """What each fd is: "pidfd", "pipe", "socket", "dir" (from fstat and the fd's link)."""
    kinds = []
    for fd in fds:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            kinds.append("pipe")
        elif stat.S_ISSOCK(mode):
            kinds.append("socket")
        elif stat.S_ISDIR(mode):
            kinds.append("dir")
        else:
            link = os.readlink(f"/proc/self/fd/{fd}")  # (a test's own fd table)
            kinds.append("pidfd" if "pidfd" in link else link)
    return sorted(kinds)


def _drain() -> None:
    v1_pool.drain()
    cgroup_ahead.drain()


def _held_per_tree(contain: str | None, **kwargs: object) -> list[str]:
    """The kinds of the fds that each of N live trees holds in the parent (not the v1 pool's
    or the directory made ahead for the next cgroup tree: process-wide, bounded, drained
    around the count)."""
    with tether.spawn(["true"], contain=contain, **kwargs) as warm:  # (process-wide caches)
        warm.wait()
    _drain()
    before = oracle.baseline_fds()
    with contextlib.ExitStack() as stack:
        for _ in range(N):
            stack.enter_context(tether.spawn(["sleep", "300"], contain=contain, **kwargs))
        _drain()  # (the directories each limited or cgroup start made ahead for the next)
        kinds = _kinds(oracle.open_fds() - before)
    _drain()
    assert oracle.open_fds() == before  # and `with` closes them all
    per_tree = kinds[::N]
    assert kinds == sorted(per_tree * N)
    return per_tree


def test_a_guarded_tree_holds_four_fds_in_the_parent(mode: str) -> None:
    assert _held_per_tree(mode) == ["pidfd", "pidfd", "pipe", "socket"]


def test_a_bare_tree_holds_two_fds_in_the_parent() -> None:
    assert _held_per_tree(None) == ["pidfd", "pipe"]


def test_a_cgroup_trees_directory_is_locked_by_its_guard_not_by_the_parent() -> None:
    from conftest import require_mode

    require_mode("cgroup")
    parent_dir = os.path.join(cgroup.cgroup_root(), cgroup.PARENT_NAME)
    before = set(os.listdir(parent_dir)) if os.path.isdir(parent_dir) else set()
    child = tether.spawn(["sh", "-c", "echo up; exec sleep 300"], contain="cgroup",
                         stdout=subprocess.PIPE)
    with child:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        cgroup_ahead.drain()  # (the next tree's directory, made ahead, is not this one)
        (name,) = set(os.listdir(parent_dir)) - before
        path = os.path.join(parent_dir, name)
        ours = {(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in oracle.open_fds()}
        directory = os.stat(path)
        assert (directory.st_dev, directory.st_ino) not in ours
        assert oracle.cgroup_locked(path) is True  # the guard's copy of the lock
        assert path not in cgroup.sweep(parent_dir)  # so no sweep takes a live tree
        assert child.poll() is None
        child.kill()
        assert child.wait() == -9
    assert not os.path.exists(path)


@pytest.mark.parametrize("contain", ["cgroup", "pidns"])
def test_a_tree_with_limits_keeps_its_cgroup_locks_while_it_lives(contain: str) -> None:
    # Its final Usage is read after the guard has exited: until then its directories are
    # ours to hold, or a sweep could remove them (emptied, unlocked) before that read.
    from conftest import require_mode

    require_mode(contain)
    try:
        kinds = _held_per_tree(contain, limits=tether.Limits(pids=64))
    except tether.Unsupported as exc:
        pytest.skip(f"limits unavailable here: {exc}")
    assert [k for k in kinds if k != "dir"] == ["pidfd", "pidfd", "pipe", "socket"]
    assert "dir" in kinds
