"""A limited tree whose parent is gone leaves no cgroup directory: its guard, which ended the
tree on lifeline EOF, removes the per-tree directories it joined (the v1 ones on this hybrid
layout, the pooled cpu/cpuacct ones included) and, in cgroup mode, the tree's v2 directory.
Before, they stayed until a later process's first limited start swept them (guard_cgroup.c
cg_remove_joined_v1).

Each test starts its own parent process, which starts one limited tree and prints that
tree's directories and its guard's pid; the test then ends the parent and waits for that
guard to exit. The v1 parent directory is private to the test (TETHER_CGROUP_V1_SUBDIR)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tether._kernel import v1_pool
from v1_parent import private_v1_parent
from v1_parent import tree_dirs as _tree_dirs

PY = sys.executable

PARENT = """\
import sys, tether
child = tether.spawn(['sleep', '1000'], contain=sys.argv[1],
                     limits=tether.Limits(memory=256 << 20, cpus=1, pids=50))
tree = child._tree
dirs = [path for path, _ in tree.cgroup.v1.values()] + [tree.cgroup.path]
print(tree.spawned.pid, *[d for d in dirs if d], flush=True)
sys.stdin.readline()
"""


@pytest.fixture(autouse=True)
def places(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A private v1 parent per test, inherited by the parent process the test starts."""
    with private_v1_parent(monkeypatch, ("memory", "pids", "cpu", "cpuacct"),
                           on_v1=True) as found:
        try:
            yield found
        finally:
            v1_pool.drain()
            for path in _tree_dirs(found):  # (what a failed test left: not the next one's)
                with contextlib.suppress(OSError):
                    os.rmdir(path)


@pytest.fixture(params=["cgroup", "pidns"])
def limit_mode(request: pytest.FixtureRequest) -> str:
    # (group mode has no per-tree cgroup: limits there are Unsupported, test_limits.py)
    from conftest import require_mode

    require_mode(request.param)
    return str(request.param)


def _wait_exited(pidfd: int) -> None:
    """Until the process has exited (POLLIN on its pidfd); reaped if it is ours (the guard
    of a dead parent comes to the nearest subreaper, which may be this test's process)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    assert poller.poll(30_000), "the guard did not exit"
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED)


@pytest.mark.parametrize("end", ["sigkill", "normal exit"])
def test_a_limited_trees_directories_go_with_its_guard_when_the_parent_is_gone(
        places: dict[str, str], limit_mode: str, end: str) -> None:
    parent = subprocess.Popen([PY, "-c", PARENT, limit_mode], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    parent_fd = os.pidfd_open(parent.pid)
    try:
        assert parent.stdout is not None and parent.stdin is not None
        guard_pid, *dirs = parent.stdout.readline().split()
        # The guard is the parent's unreaped child, and ends only once the parent is gone.
        guard_fd = os.pidfd_open(int(guard_pid))
        try:
            assert len(dirs) >= 3 and all(os.path.isdir(d) for d in dirs), dirs
            if end == "sigkill":
                signal.pidfd_send_signal(parent_fd, signal.SIGKILL)
            else:
                parent.stdin.write(b"\n")
                parent.stdin.flush()
            assert parent.wait() == (-signal.SIGKILL if end == "sigkill" else 0)
            _wait_exited(guard_fd)
        finally:
            os.close(guard_fd)
    finally:
        os.close(parent_fd)
        parent.kill()  # (already reaped unless the test failed early)
        parent.wait()
    assert [d for d in dirs if os.path.exists(d)] == [], "a tree directory was left"
    assert _tree_dirs(places) == set(), "a per-tree v1 cgroup was left"


def test_a_live_parent_that_ends_its_tree_keeps_its_directories_for_the_final_usage(
        places: dict[str, str], limit_mode: str) -> None:
    # Leaving the with-block cuts the lifeline of a running tree (abandon): the guard sees
    # EOF there too, but the parent lives (its control socket is open), reads the final
    # usage from the directories, then removes them or pools the cpu/cpuacct ones.
    import tether

    burn = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
            "print('burnt', flush=True)\ntime.sleep(1000)\n")
    with tether.spawn([PY, "-c", burn], contain=limit_mode, limits=tether.Limits(),
                      stdout=tether.PIPE) as child:
        assert child.stdout is not None and child.stdout.readline() == b"burnt\n"
        cpuacct = child._tree.cgroup.v1[places["cpuacct"]][0]
    usage = child.usage()
    # (cpuacct's figure runs below the program's own process_time under load: half of it;
    # directories already gone read as 0.0)
    assert usage.user + usage.system >= 0.15, usage
    assert os.path.isdir(cpuacct), "the guard removed the pooled cpuacct directory"


def test_a_live_parent_that_only_cuts_the_lifeline_keeps_its_directories(
        places: dict[str, str], limit_mode: str) -> None:
    # Lifeline EOF alone ends the tree (as a failed start's cleanup does), with no
    # MSG_KILL_TREE before it: the guard gives the control socket its grace to hang up, and
    # a live parent's does not, so the directories stay for the parent to read and remove.
    import tether

    child = tether.spawn(["sleep", "1000"], contain=limit_mode, limits=tether.Limits())
    guard = child._tree
    dirs = [path for path, _ in guard.cgroup.v1.values()]
    guard.spawned.lifeline.close()
    poller = select.poll()
    poller.register(guard.spawned.pidfd.fileno(), select.POLLIN)
    assert poller.poll(30_000), "the guard did not exit"
    assert [d for d in dirs if not os.path.isdir(d)] == [], "the guard removed them"
    assert child.wait() == -signal.SIGKILL
    v1_pool.drain()  # (the parent pooled the cpu/cpuacct ones, and removed the others)
    assert _tree_dirs(places) == set()
