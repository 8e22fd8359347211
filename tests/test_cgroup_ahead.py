"""Directories made ahead for the next cgroup-mode tree (``_kernel/cgroup_ahead``): taken by
the next start, fresh, locked by this process alone, never taken after a move, and removed at
exit or swept once their process is gone."""

from __future__ import annotations

import os
import secrets
import signal
import sys
from collections.abc import Iterator

import pytest

import oracle
import tether
from tether._kernel import cgroup, cgroup_ahead


@pytest.fixture
def root() -> Iterator[str]:
    """A cgroup root of this test's own (so no other test's directory made ahead is used),
    with nothing made ahead for it yet; removed at the end."""
    why = cgroup.cgroup_unavailable_reason()
    if why is not None:
        pytest.skip(f"cgroup v2 is not writable here: {why}")
    path = os.path.join(cgroup.cgroup_root(), f"tether-ahead-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(path, 0o755)
    try:
        yield path
    finally:
        cgroup_ahead.drain()
        cgroup.kill_and_remove(path, 5.0)
        oracle.reap_until(5.0)


def _trees(root: str) -> set[str]:
    parent = os.path.join(root, cgroup.PARENT_NAME)
    if not os.path.isdir(parent):
        return set()
    return {os.path.join(parent, n) for n in os.listdir(parent) if n.startswith("t-")}


def _run(root: str) -> None:
    with tether.spawn(["true"], contain="cgroup", cgroup_root=root) as child:
        assert child.wait() == 0


def _tree_of_next_start(root: str) -> tuple[str, set[str]]:
    """Start a tree that stays up; returns its directory and the directories there were
    just before it (made ahead ones included)."""
    before = _trees(root)
    child = tether.spawn(["sh", "-c", "echo up; exec sleep 300"], contain="cgroup",
                         cgroup_root=root, stdout=tether.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"up\n"
    tree = [p for p in _trees(root) if oracle.cgroup_locked(p) and cgroup.populated(p)]
    child.kill()
    child.wait()
    child.__exit__(None, None, None)
    (path,) = tree
    return path, before


def test_a_process_first_cgroup_tree_makes_nothing_ahead(root: str) -> None:
    _run(root)
    assert _trees(root) == set()


def test_a_cgroup_start_makes_the_next_trees_directory_ahead_and_the_next_start_takes_it(
        root: str) -> None:
    _run(root)
    _run(root)
    (ahead,) = _trees(root)
    assert oracle.cgroup_locked(ahead) is True  # so no sweep takes it
    assert not cgroup.populated(ahead)
    assert cgroup.sweep(os.path.dirname(ahead)) == []
    tree, before = _tree_of_next_start(root)
    assert before == {ahead}
    assert tree == ahead, "the directory made ahead was not taken"
    assert not os.path.exists(tree)  # removed with its tree


def test_a_directory_made_ahead_is_not_taken_after_this_process_moved(root: str) -> None:
    _run(root)
    _run(root)
    (ahead,) = _trees(root)
    own = cgroup.own_cgroup()
    cgroup.move_self(own)  # (to where it is: still a move, which may change the nesting)
    tree, _ = _tree_of_next_start(root)
    assert tree != ahead
    assert not os.path.exists(ahead), "the stale directory made ahead was left behind"


def test_directories_made_ahead_are_removed_at_exit(root: str) -> None:
    script = ("import sys, tether\n"
              "for _ in range(3):\n"
              "    tether.spawn(['true'], contain='cgroup', cgroup_root=sys.argv[1]).wait()\n")
    with tether.spawn([sys.executable, "-c", script, root]) as child:
        assert child.wait() == 0
    assert _trees(root) == set()


def test_directories_made_ahead_are_swept_once_their_process_is_gone(root: str) -> None:
    script = ("import sys, tether\n"
              "for _ in range(3):\n"
              "    tether.spawn(['true'], contain='cgroup', cgroup_root=sys.argv[1]).wait()\n"
              "print('ready', flush=True)\nsys.stdin.read()\n")
    with tether.spawn([sys.executable, "-c", script, root], stdin=tether.PIPE,
                      stdout=tether.PIPE) as child:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        (ahead,) = _trees(root)
        assert cgroup.sweep(os.path.dirname(ahead)) == [], "a locked one was swept"
        child.kill()
        child.wait()
    assert cgroup.sweep(os.path.dirname(ahead)) == [ahead]


def test_a_forked_child_neither_takes_nor_holds_the_parents_directory_made_ahead(
        root: str) -> None:
    _run(root)
    _run(root)
    (ahead,) = _trees(root)

    def child_start() -> None:
        # The fork's copy of the lock fd is closed: the directory is not locked by us here.
        # (Run in the child, a failure shows as its exit status.)
        tree = tether.spawn(["sh", "-c", "exec sleep 300"], contain="cgroup", cgroup_root=root)
        with tree:
            if ahead not in _trees(root) or cgroup.populated(ahead):
                os._exit(3)
            tree.kill()
            tree.wait()
        os._exit(0)

    forked = tether.run_in_fork(child_start)
    assert forked.pidfd.wait().returncode == 0
    assert oracle.cgroup_locked(ahead) is True  # still ours, after the child's exit
    tree, _ = _tree_of_next_start(root)
    assert tree == ahead


def test_ctrl_c_while_the_next_directory_is_made_ahead_leaves_only_the_kept_one(
        root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A Ctrl-C whose handler runs just after the mkdir, before the directory is kept: a
    # locked directory and its fd in locals, lost until exit (an unlocked one once the
    # process is gone, swept only by another process's start).
    _run(root)
    real_mkdir = os.mkdir

    def interrupted_mkdir(path: str, mode: int = 0o777) -> None:
        real_mkdir(path, mode)
        signal.raise_signal(signal.SIGINT)

    before = oracle.open_fds()
    monkeypatch.setattr(cgroup.os, "mkdir", interrupted_mkdir)
    with pytest.raises(KeyboardInterrupt):
        cgroup_ahead.make_next(root)
    monkeypatch.undo()
    (ahead,) = _trees(root)
    assert oracle.cgroup_locked(ahead) is True
    assert len(oracle.open_fds() - before) == 1  # its lock, which the drain releases
    cgroup_ahead.drain()
    assert _trees(root) == set()
    assert oracle.open_fds() == before
