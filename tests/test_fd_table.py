"""The clone shares the parent's fd table and the child's first step unshares only its low fds
(``fd_table.c``, ``clone.c`` unshare_low_fds): where the kernel has CLOSE_RANGE_UNSHARE this
is the path every spawn takes, so a child inherits exactly what a copied table gave it, the
parent's fds are never touched by a child (not while another thread opens and closes fds
either), and a tree's long-lived fds sit above the numbers spawns hand their children.
Each test that spawns runs with the table shared and with it copied (the fallback)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

import oracle
import tether
from tether._kernel import cgroup_ahead, core, features

PY = sys.executable

FD_TABLE = oracle.CHILD_FD_TABLE


@pytest.fixture(params=["shared", "copied"])
def fd_table(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "shared" and not features.fd_table_shared()[0]:
        pytest.skip(f"this kernel cannot unshare part of a table: {features.fd_table_shared()}")
    features.force_fd_table_copy(request.param == "copied")
    try:
        yield request.param
    finally:
        features.force_fd_table_copy(False)


def test_clones_share_the_table_where_close_range_exists() -> None:
    """close_range came with CLOSE_RANGE_UNSHARE (5.9): where one works, the probe says the
    other does, and spawns share the table."""
    if not core.close_range_supported():
        pytest.skip("no close_range here: clones copy the fd table")
    assert features.fd_table_shared() == (True, 0)


def test_a_guarded_trees_fds_live_above_the_spawns_fds(mode: str) -> None:
    """The guard's pidfd, the lifeline's write end, the control socket and the program's
    pidfd are moved up to TREE_FD_BASE, out of the low numbers the next spawn's fds take."""
    before = oracle.baseline_fds()
    with tether.spawn(["sleep", "300"], contain=mode):
        cgroup_ahead.drain()  # the next cgroup-mode tree's directory is the process's
        held = oracle.open_fds() - before
        assert len(held) == 4
        assert min(held) >= core.TREE_FD_BASE, sorted(held)


@pytest.mark.parametrize("how", ["spawn_lifelined", "contain=None"])
def test_a_bare_trees_fds_live_above_the_spawns_fds(how: str) -> None:
    before = oracle.baseline_fds()
    if how == "spawn_lifelined":
        spawned = tether.spawn_lifelined(["sleep", "300"])
        held = oracle.open_fds() - before
        spawned.pidfd.send_signal(9)
        spawned.pidfd.wait()
        spawned.pidfd.close()
        spawned.lifeline.close()
    else:
        with tether.spawn(["sleep", "300"], contain=None):
            held = oracle.open_fds() - before
    assert len(held) == 2
    assert min(held) >= core.TREE_FD_BASE, sorted(held)


def _identity(fd: int) -> tuple[int, int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, fcntl.fcntl(fd, fcntl.F_GETFD)


def _churn(stop: threading.Event, opened: list[int]) -> None:
    """Open, duplicate (low and above TREE_FD_BASE) and close inheritable fds, as fast as
    possible, until stopped; counts its rounds in ``opened``."""
    while not stop.is_set():
        fd = os.open("/dev/null", os.O_RDONLY)  # inheritable: no O_CLOEXEC
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, core.TREE_FD_BASE + 64)
        low = os.dup(fd)
        os.set_inheritable(low, True)
        for each in (fd, high, low):
            os.close(each)
        opened.append(1)


@pytest.mark.parametrize("contain", ["group", None])
def test_a_thread_churning_fds_leaks_nothing_into_children(fd_table: str,
                                                           contain: str | None) -> None:
    """While another thread opens and closes inheritable fds (low ones, where the spawn's own
    fds are, and high ones), every child finds exactly its stdio, its lifeline and its
    pass_fds, and the parent's own fds keep their files and their close-on-exec flags: a
    child that closed, dup'd or marked anything in a table it still shared with us would
    show here (close_other_fds marks every fd it does not keep close-on-exec)."""
    null = os.open("/dev/null", os.O_RDONLY)  # inheritable, low
    passed = os.open("/dev/null", os.O_RDONLY)  # the child's pass_fd
    high = fcntl.fcntl(null, fcntl.F_DUPFD, core.TREE_FD_BASE + 8)  # inheritable, high
    cloexec = fcntl.fcntl(null, fcntl.F_DUPFD_CLOEXEC, 3)
    ours = [0, 1, 2, null, passed, high, cloexec]
    before = {fd: _identity(fd) for fd in ours}
    stop, rounds = threading.Event(), []  # type: ignore[var-annotated]
    churner = threading.Thread(target=_churn, args=(stop, rounds))
    churner.start()
    try:
        reports = []
        for _ in range(6):
            r, w = os.pipe2(os.O_CLOEXEC)
            with tether.spawn([PY, "-I", "-S", "-c", FD_TABLE], stdout=w, pass_fds=(passed,),
                              contain=contain) as child:
                os.close(w)
                with os.fdopen(r, "rb") as out:
                    report = json.loads(out.read())
                reports.append((report["fds"], report["lifeline"].split(":")[0]))
                assert child.wait() == 0
    finally:
        stop.set()
        churner.join()
    try:
        assert rounds, "the churning thread never ran"
        for fds, lifeline in reports:
            assert fds == sorted({0, 1, 2, passed, int(lifeline)}), fds
        assert {fd: _identity(fd) for fd in ours} == before
    finally:
        for fd in (null, passed, high, cloexec):
            os.close(fd)


def test_a_pipes_parent_end_lives_above_the_spawns_fds() -> None:
    """The parent's end of a PIPE lives as long as the tree may: it is moved up too, or every
    live tree with a pipe would push the next spawn's fds (and its copy) up with it."""
    with tether.spawn(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      contain=None) as child:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdin.fileno() >= core.TREE_FD_BASE
        assert child.stdout.fileno() >= core.TREE_FD_BASE
        child.stdin.close()
        assert child.stdout.read() == b""


def test_the_drop_in_popens_pipe_ends_live_above_the_spawns_fds() -> None:
    """The stdlib makes the drop-in's pipes; their parent's ends are moved up all the same."""
    import tether.subprocess

    with tether.subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE) as proc:
        ends = [proc.stdin.fileno(), proc.stdout.fileno(), proc.stderr.fileno()]
        assert min(ends) >= core.TREE_FD_BASE, ends
        assert proc.communicate(b"through") == (b"through", b"")
