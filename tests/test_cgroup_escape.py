"""cgroup mode also ends the program's process group (issue 11, item 6).

A member that writes its pid into another cgroup's ``cgroup.procs`` (root, or any user inside
a delegated subtree) leaves the tree's cgroup, and ``cgroup.kill`` no longer reaches it. If it
stayed in the program's process group, the guard still ends it: cgroup mode signals the
group as well when it kills the tree. (A process that moves *and* calls setsid() escapes
cgroup mode: the README says so; pidns holds against both.)"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

import tether
from conftest import require_mode
from oracle import reap_until
from tether._kernel import cgroup as _cgroup

PARENT = r"""
import sys, time, tether
dest = sys.argv[1]
script = 'sleep 300 & echo $! > "$0"/cgroup.procs && echo moved; wait'
child = tether.spawn(["sh", "-c", script, dest], contain="cgroup")  # held: the tree lives
time.sleep(300)
"""


@pytest.fixture
def elsewhere() -> Iterator[str]:
    """A cgroup of this test's own, outside any tree: where the member escapes to. Killed
    and removed at the end, whatever the verdict."""
    require_mode("cgroup")
    path = os.path.join(_cgroup.cgroup_root(), f"escape-{secrets.token_hex(4)}")
    os.mkdir(path, 0o755)
    try:
        yield path
    finally:
        if _cgroup.populated(path):
            _cgroup.kill(path)
            _cgroup.wait_empty(path, 5.0)
        reap_until(10.0)
        with contextlib.suppress(OSError):
            os.rmdir(path)


def test_a_member_that_left_the_cgroup_dies_with_the_parent(
    elsewhere: str, python_env: dict[str, str]
) -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        parent = tether.spawn_lifelined([sys.executable, "-c", PARENT, elsewhere],
                                        env=python_env, stdout=w)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as out, parent.pidfd, parent.lifeline:
        assert out.readline() == b"moved\n"
        assert _cgroup.populated(elsewhere)  # it did leave the tree's cgroup
        parent.pidfd.send_signal(signal.SIGKILL)
        parent.pidfd.wait()
        # The guard sees its lifeline's EOF and kills the cgroup *and* the group.
        seen = reap_until(5.0)
        assert seen.empty, "the member that moved to another cgroup outlived the parent"
        assert not _cgroup.populated(elsewhere)


def test_a_member_that_left_the_cgroup_dies_when_the_guard_is_killed(elsewhere: str) -> None:
    """The guard SIGKILLed: the parent ends the tree itself, the group as well as the cgroup."""
    script = 'sleep 300 & echo $! > "$0"/cgroup.procs && echo moved; wait'
    child = tether.spawn(["sh", "-c", script, elsewhere], contain="cgroup",
                         stdout=subprocess.PIPE)
    with child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"moved\n"
        child._tree.spawned.pidfd.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        with pytest.raises(ChildProcessError):
            child.wait()
    assert reap_until(5.0).empty, "the member that moved to another cgroup outlived the guard"
    assert not _cgroup.populated(elsewhere)
