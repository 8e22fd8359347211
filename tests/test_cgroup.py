"""tether._kernel.cgroup: locked creation, the sweep of unowned directories, and the ending of
a cgroup (freeze, kill, wait until empty, remove), each proven on a real cgroup v2 hierarchy.

Every test works in a private root of its own (``<root>/tether-test-<pid>-<random>``, passed
as the explicit root), never in the shared ``<root>/tether``: two runs of this suite on one
machine cannot see, lock or sweep each other's directories. The verdicts read the kernel's
own files (``cgroup.events``, ``cgroup.procs``, the flock) and pidfds; members are our own
children, so the subreaper oracle (conftest) proves none is left.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import oracle
import tether
from tether._kernel import cgroup


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def _events(path: str) -> dict[str, str]:
    with open(os.path.join(path, "cgroup.events"), encoding="ascii") as f:
        return dict(line.split() for line in f if line.strip())


def _locked(path: str) -> bool:
    locked = oracle.cgroup_locked(path)
    assert locked is not None, f"{path} is gone"
    return locked


@pytest.fixture
def private_root() -> Iterator[str]:
    """A cgroup of this test's own directly under the real root, usable as an explicit root.
    Skipped, with the reason, where cgroup v2 is not writable. At the end, whatever is left in
    it is killed and reaped and it is removed (without the module under test)."""
    why = cgroup.cgroup_unavailable_reason()
    if why is not None:
        pytest.skip(f"cgroup v2 is not writable here: {why}")
    path = os.path.join(cgroup.cgroup_root(), f"tether-test-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(path, 0o755)
    try:
        yield path
    finally:
        if os.path.isdir(path):
            if _events(path)["populated"] == "1":
                _write(os.path.join(path, "cgroup.kill"), "1")
            oracle.reap_until(5.0)  # every member is our child: reaped, it has left for good
            for directory, _, _ in os.walk(path, topdown=False):
                os.rmdir(directory)


@pytest.fixture
def parent(private_root: str) -> str:
    """``<private root>/tether``, as cgroup_root() makes it for trees."""
    assert cgroup.cgroup_root(private_root) == private_root
    return os.path.join(private_root, cgroup.PARENT_NAME)


def _member(path: str) -> tether.Spawned:
    """A ``sleep`` that is our child, moved into the cgroup ``path``. Its number is pinned (our
    unreaped child, held by a pidfd), so writing it to cgroup.procs moves that very process."""
    spawned = tether.spawn_lifelined(["sleep", "300"])
    _write(os.path.join(path, "cgroup.procs"), str(spawned.pid))
    return spawned


def _end(spawned: tether.Spawned) -> tether.Exit:
    """Kill (if still running) and reap a member; its exit."""
    try:
        spawned.pidfd.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        return spawned.pidfd.wait()
    finally:
        spawned.lifeline.close()
        spawned.pidfd.close()


# -- the root ------------------------------------------------------------------------------------


def test_a_directory_that_is_no_cgroup_is_unsupported_and_named(tmp_path: Path) -> None:
    reason = cgroup.cgroup_unavailable_reason(tmp_path)
    assert reason is not None and reason.startswith(f"{tmp_path} is not a cgroup v2 directory")
    with pytest.raises(tether.Unsupported, match="is not a cgroup v2 directory"):
        cgroup.cgroup_root(tmp_path)


def test_a_directory_that_only_looks_like_a_cgroup_is_rejected_before_anything_is_made(
    tmp_path: Path,
) -> None:
    for name in ("cgroup.procs", "cgroup.kill", "cgroup.events"):
        (tmp_path / name).write_text("")
    with pytest.raises(tether.Unsupported, match="is not a cgroup v2 directory"):
        cgroup.cgroup_root(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cgroup.events", "cgroup.kill", "cgroup.procs"]


def test_a_cgroup_v1_hierarchy_is_rejected_before_anything_is_made(tmp_path: Path) -> None:
    """A v1 hierarchy has cgroup.procs too; mounted in a mount namespace of a forked child's
    own (a named hierarchy, no controller), so no other user of the machine sees it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a cgroup v1 hierarchy")
    mount_point = tmp_path / "v1"
    mount_point.mkdir()
    r, w = os.pipe()

    def in_own_mount_namespace() -> None:
        import ctypes

        os.close(r)
        if ctypes.CDLL(None, use_errno=True).unshare(0x00020000) != 0:  # CLONE_NEWNS
            os.write(w, b"skip unshare(CLONE_NEWNS) refused")
            return
        tether.run(["mount", "--make-rprivate", "/"], check=True)
        name = f"name=tether-test-{secrets.token_hex(4)}"
        if tether.run(["mount", "-t", "cgroup", "-o", f"none,{name}", "cgroup",
                       str(mount_point)]).returncode != 0:
            os.write(w, b"skip cannot mount a cgroup v1 hierarchy here")
            return
        try:
            assert (mount_point / "cgroup.procs").exists()
            try:
                tether.spawn(["true"], contain="cgroup", cgroup_root=mount_point).wait()
                verdict = "accepted"
            except tether.Unsupported as exc:
                verdict = "rejected" if "not a cgroup v2 directory" in str(exc) else str(exc)
            made = sorted(p.name for p in mount_point.iterdir() if p.is_dir())
            for directory in made:  # (only if the check failed)
                for sub in sorted(mount_point.joinpath(directory).rglob("*"), reverse=True):
                    if sub.is_dir():
                        sub.rmdir()
                mount_point.joinpath(directory).rmdir()
            os.write(w, f"{verdict} {made}".encode())
        finally:
            tether.run(["umount", str(mount_point)])

    child = tether.run_in_fork(in_own_mount_namespace)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        verdict = f.read().decode()
    assert child.pidfd.wait().code == 0
    child.lifeline.close()
    child.pidfd.close()
    if verdict.startswith("skip"):
        pytest.skip(verdict)
    assert verdict == "rejected []"


def test_own_cgroup_follows_move_self(private_root: str) -> None:
    target = os.path.join(private_root, "moved")
    cgroup.create(target)

    def move_and_check() -> None:
        cgroup.move_self(target)
        sys.exit(0 if cgroup.own_cgroup() == target else 3)

    # In a forked child: moving this test process would move pytest itself.
    child = tether.run_in_fork(move_and_check)
    assert child.pidfd.wait().code == 0
    child.lifeline.close()
    child.pidfd.close()


# -- creating ------------------------------------------------------------------------------------


def test_create_locked_makes_a_fresh_directory_that_stays_locked(parent: str) -> None:
    path, fd = cgroup.create_locked(parent, "t-")
    try:
        assert os.path.dirname(path) == parent
        assert os.path.basename(path).startswith("t-")
        assert os.path.isfile(os.path.join(path, "cgroup.procs"))
        assert _locked(path)
        other, other_fd = cgroup.create_locked(parent, "t-")
        assert other != path
        cgroup.release_lock(other_fd)
        os.rmdir(other)
    finally:
        cgroup.release_lock(fd)
    assert not _locked(path)
    os.rmdir(path)


def test_create_locked_makes_a_missing_parent(private_root: str) -> None:
    parent = os.path.join(private_root, "not-yet")
    path, fd = cgroup.create_locked(parent, "pytest-")
    cgroup.release_lock(fd)
    assert os.path.dirname(path) == parent
    os.rmdir(path)


def test_a_private_lock_is_not_held_by_a_forked_child(parent: str) -> None:
    path, fd = cgroup.create_locked(parent, "pytest-", private=True)
    go_r, go_w = os.pipe()

    def lock_after_the_parent_released() -> None:
        os.close(go_w)
        os.read(go_r, 1)
        # flock conflicts between open files, so a copy of the lock fd kept by this child
        # would make this attempt fail.
        probe = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(3)

    child = tether.run_in_fork(lock_after_the_parent_released)
    os.close(go_r)
    cgroup.release_lock(fd)
    os.write(go_w, b"x")
    os.close(go_w)
    assert child.pidfd.wait().code == 0, "the forked child still held the session lock"
    child.lifeline.close()
    child.pidfd.close()
    os.rmdir(path)


def test_create_locked_survives_a_sweep_that_takes_its_fresh_directory(
    parent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's first-spawn sweep may find our directory between mkdir and flock,
    take it for a stale one, and remove it. Reproduced at the exact moment: right after
    the mkdir, a sweep (as that process would run it) removes the fresh directory."""
    real_mkdir = os.mkdir
    swept: list[str] = []

    def mkdir_then_swept(path: str, mode: int = 0o777) -> None:
        real_mkdir(path, mode)
        if not swept and os.path.dirname(path) == parent:
            swept.extend(cgroup.sweep(parent))

    monkeypatch.setattr(os, "mkdir", mkdir_then_swept)
    path, fd = cgroup.create_locked(parent, "t-")
    monkeypatch.undo()
    try:
        assert len(swept) == 1 and swept[0] != path, "the sweep did not take the first one"
        assert os.path.isdir(path) and _locked(path)
    finally:
        cgroup.release_lock(fd)
    os.rmdir(path)


def _as_nobody_lock(go: int, paths: int, answers: int, parent_ends: tuple[int, ...]) -> None:
    """In a forked child, as uid 65534: for each path read from ``paths``, try to open and
    lock it (keeping what it gets), answering b"L" (locked) or b"-"; until ``go`` closes."""
    for fd in parent_ends:
        os.close(fd)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    held: list[int] = []
    with os.fdopen(paths, "r") as f:
        for line in f:
            try:
                fd = os.open(line.rstrip("\n"), os.O_RDONLY | os.O_DIRECTORY)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(fd)
                os.write(answers, b"L")
            except OSError:
                os.write(answers, b"-")
    os.read(go, 1)


class _Attacker:
    """uid 65534 in a forked child, trying to lock whatever directory we name."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            pytest.skip("needs root to act as another user")
        go_r, self._go = os.pipe()
        paths_r, paths_w = os.pipe()
        self._answers, answers_w = os.pipe()
        self._child = tether.run_in_fork(_as_nobody_lock, go_r, paths_r, answers_w,
                                         (self._go, paths_w, self._answers))
        for fd in (go_r, paths_r, answers_w):
            os.close(fd)
        self._paths = os.fdopen(paths_w, "w")

    def try_lock(self, path: str) -> bool:
        self._paths.write(path + "\n")
        self._paths.flush()
        return os.read(self._answers, 1) == b"L"

    def leave(self) -> None:
        self._paths.close()
        os.close(self._go)
        assert self._child.pidfd.wait().code == 0
        os.close(self._answers)
        self._child.lifeline.close()
        self._child.pidfd.close()


@pytest.mark.parametrize("prefix", ["t-", "pytest-"], ids=["tree", "plugin session"])
def test_another_user_cannot_block_the_creation_of_a_locked_directory(
    parent: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack of issue 11: another user locks each fresh directory between our mkdir
    and our flock (caught with inotify there; here at the exact moment)."""
    attacker = _Attacker()
    real_mkdir = os.mkdir
    attacked: list[bool] = []

    def mkdir_then_attacked(path: str, mode: int = 0o777) -> None:
        real_mkdir(path, mode)
        if os.path.dirname(path) == parent:
            attacked.append(attacker.try_lock(path))

    try:
        monkeypatch.setattr(os, "mkdir", mkdir_then_attacked)
        path, fd = cgroup.create_locked(parent, prefix, private=prefix == "pytest-")
        monkeypatch.undo()
        cgroup.release_lock(fd)
        os.rmdir(path)
    finally:
        monkeypatch.undo()
        attacker.leave()
        cgroup.sweep(parent, prefix)  # what the attack left
    assert attacked == [False]


@pytest.mark.parametrize("prefix", ["t-", "pytest-"], ids=["tree", "plugin session"])
def test_another_user_cannot_keep_a_stale_directory_from_the_sweep(
    parent: str, prefix: str
) -> None:
    path, fd = cgroup.create_locked(parent, prefix)
    cgroup.release_lock(fd)  # its owner is gone: stale
    attacker = _Attacker()
    try:
        locked = attacker.try_lock(path)
        removed = cgroup.sweep(parent, prefix)
    finally:
        attacker.leave()
        cgroup.sweep(parent, prefix)
    assert not locked and removed == [path]


# -- the sweep -----------------------------------------------------------------------------------


def test_sweep_removes_only_unlocked_directories_with_its_prefix(parent: str) -> None:
    live, live_fd = cgroup.create_locked(parent, "t-")
    stale = os.path.join(parent, "t-stale")
    session = os.path.join(parent, "pytest-stale")
    os.mkdir(stale)  # nobody holds its lock: its owners are gone
    os.mkdir(session)
    try:
        assert cgroup.sweep(parent) == [stale]
        assert os.path.isdir(live) and _locked(live)
        assert os.path.isdir(session), "a directory of another prefix was swept"
        assert cgroup.sweep(parent, "pytest-") == [session]
    finally:
        cgroup.release_lock(live_fd)
    assert not os.path.exists(stale) and not os.path.exists(session)
    os.rmdir(live)


def test_sweep_kills_what_a_stale_directory_still_holds(parent: str) -> None:
    stale = os.path.join(parent, "t-stale")
    os.mkdir(stale)
    os.mkdir(os.path.join(stale, "nested"))
    member = _member(os.path.join(stale, "nested"))
    assert cgroup.sweep(parent) == [stale]
    assert not os.path.exists(stale)
    assert _end(member).signal == signal.SIGKILL


def test_cgroup_tree_create_sweeps_its_parent_and_remove_ends_the_tree(
    private_root: str, parent: str
) -> None:
    stale = os.path.join(parent, "t-stale")
    os.mkdir(stale)
    tree = cgroup.CgroupTree.create(private_root)
    assert not os.path.exists(stale), "the first tree under a parent sweeps it"
    assert os.path.dirname(tree.path) == parent and _locked(tree.path)
    member = _member(tree.path)
    tree.remove()
    assert tree.fd == -1 and not os.path.exists(tree.path)
    assert _end(member).signal == signal.SIGKILL
    tree.remove()  # idempotent


# -- reading -------------------------------------------------------------------------------------


def test_members_lists_nested_cgroups_too(private_root: str) -> None:
    nested = os.path.join(private_root, "nested")
    cgroup.create(nested)
    assert cgroup.members(private_root) == []
    assert not cgroup.populated(private_root)
    outer, inner = _member(private_root), _member(nested)
    try:
        assert cgroup.members(private_root) == [outer.pid, inner.pid]
        assert cgroup.members(nested) == [inner.pid]
        assert cgroup.populated(private_root)
    finally:
        _end(outer)
        _end(inner)


def test_wait_events_says_false_on_timeout_and_true_once_gone(private_root: str) -> None:
    assert not cgroup.wait_events(private_root, b"frozen 1", 0.05)
    assert cgroup.wait_events(os.path.join(private_root, "missing"), b"frozen 1", 0.05)


def test_wait_empty_returns_once_the_last_member_exited(private_root: str) -> None:
    member = _member(private_root)
    member.pidfd.send_signal(signal.SIGKILL)
    assert cgroup.wait_empty(private_root, 10.0)
    assert _events(private_root)["populated"] == "0"
    assert _end(member).signal == signal.SIGKILL


# -- ending --------------------------------------------------------------------------------------


def test_freeze_returns_once_every_member_is_frozen(private_root: str) -> None:
    nested = os.path.join(private_root, "nested")
    cgroup.create(nested)
    member = _member(nested)
    try:
        assert cgroup.freeze(private_root, 10.0)
        assert _events(private_root)["frozen"] == "1"
        assert _events(nested)["frozen"] == "1"
        assert member.pidfd.poll() is None, "a frozen member cannot exit by itself"
    finally:
        _end(member)  # SIGKILL ends a frozen process too


def test_kill_and_remove_ends_every_member_and_removes_it_all(private_root: str) -> None:
    path = os.path.join(private_root, "tree")
    nested = os.path.join(path, "nested")
    cgroup.create(path)
    cgroup.create(nested)
    outer, inner = _member(path), _member(nested)
    assert cgroup.kill_and_remove(path, 10.0)
    assert not os.path.exists(path)
    assert _end(outer).signal == signal.SIGKILL
    assert _end(inner).signal == signal.SIGKILL


def test_remove_says_false_while_a_member_is_alive(private_root: str) -> None:
    path = os.path.join(private_root, "busy")
    cgroup.create(path)
    member = _member(path)
    try:
        assert not cgroup.remove(path, 0.05)
        assert os.path.isdir(path)
    finally:
        _end(member)
    assert cgroup.remove(path, 10.0)
    assert not os.path.exists(path)
