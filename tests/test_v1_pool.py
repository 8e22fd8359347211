"""Reused v1 directories (``_kernel/v1_pool``): a tree never sees the previous one's limits or
CPU time."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

import tether
from tether._kernel import controllers as controllers_module
from tether._kernel import v1_dirs, v1_pool
from tether._kernel.controllers import LimitedTree
from v1_parent import private_v1_parent

T = TypeVar("T")


@pytest.fixture(autouse=True)
def places(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A private v1 parent per test, so no other test's (or suite copy's) pool is used."""
    with private_v1_parent(monkeypatch, ("cpu", "cpuacct"), on_v1=True) as found:
        yield found


def _tree_dirs(where: str) -> list[str]:
    parent = os.path.join(where, "tether")
    return sorted(os.path.join(parent, n) for n in os.listdir(parent) if n.startswith("t-"))


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def test_a_reused_directory_has_none_of_the_previous_trees_limits(
        places: dict[str, str]) -> None:
    first = LimitedTree.make(tether.Limits(cpus=0.5), "pidns", None)
    cpu_dir = first.v1[places["cpu"]][0]
    first.remove()
    second = LimitedTree.make(tether.Limits(cpu_weight=50), "pidns", None)
    try:
        assert second.v1[places["cpu"]][0] == cpu_dir, "the cpu directory was not reused"
        assert _read(os.path.join(cpu_dir, "cpu.cfs_quota_us")) == "-1"
        assert _read(os.path.join(cpu_dir, "cpu.shares")) == "512"
    finally:
        second.remove()


def test_a_reused_directory_starts_with_no_cpu_time(places: dict[str, str]) -> None:
    from conftest import require_mode

    require_mode("pidns")
    # v1 splits CPU time into user and system by scheduler ticks (4 ms here): on a loaded
    # machine the sum can fall short of the process's own clock by tens of ms, hence the
    # margins. A directory not reset would show the first tree's 0.4 s in the second.
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    # (A process's first limited tree prepares nothing ahead: run alone, this test's first
    # tree would be one, and the second tree's preparation would add a directory.)
    tether.run(["true"], contain="pidns", limits=tether.Limits())
    with tether.spawn([sys.executable, "-c", burn], contain="pidns",
                      limits=tether.Limits()) as first:
        first.wait()
    assert first.usage().user + first.usage().system >= 0.3
    pooled = _tree_dirs(places["cpuacct"])
    with tether.spawn(["true"], contain="pidns", limits=tether.Limits()) as second:
        assert _tree_dirs(places["cpuacct"]) == pooled, "the cpuacct directory was not reused"
        second.wait()
    assert second.usage().user + second.usage().system < 0.1


def test_a_limited_start_makes_the_next_trees_memory_and_pids_directories_ahead(
        places: dict[str, str]) -> None:
    from conftest import require_mode

    require_mode("pidns")
    for _ in range(2):  # (a process's first limited tree makes none: see the next test)
        with tether.spawn(["true"], contain="pidns", limits=tether.Limits()) as first:
            first.wait()
    v1_pool.drain()  # (so that what is made ahead below is all there is)
    # (Three processes at once: its pids directory is not reused, but removed.)
    with tether.spawn(["sh", "-c", "true & wait"], contain="pidns",
                      limits=tether.Limits()) as first:
        first.wait()
    v1_pool.remove_retired()  # (that tree's own, removed by the next tree's preparation)
    ahead = {c: _tree_dirs(places[c]) for c in ("memory", "pids")}
    assert all(len(dirs) == 1 for dirs in ahead.values()), ahead
    second = LimitedTree.make(tether.Limits(), "pidns", None)
    try:
        assert [second.v1[places[c]][0] for c in ("memory", "pids")] == [
            ahead["memory"][0], ahead["pids"][0]], "the directories made ahead were not taken"
    finally:
        second.remove()


def test_directories_made_ahead_are_swept_once_their_process_is_gone(
        places: dict[str, str]) -> None:
    from conftest import require_mode

    require_mode("pidns")
    script = ("import sys, tether\n"
              "for _ in range(2):  # (three processes: the pids directories are not reused)\n"
              "    tether.spawn(['sh', '-c', 'true & wait'], contain='pidns',\n"
              "                 limits=tether.Limits()).wait()\n"
              "from tether._kernel import v1_pool\n"
              "v1_pool.remove_retired()  # (the last tree's own)\n"
              "print('ready', flush=True)\nsys.stdin.read()\n")
    with tether.spawn([sys.executable, "-c", script], stdin=tether.PIPE,
                      stdout=tether.PIPE) as child:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        ahead = {c: _tree_dirs(places[c]) for c in ("memory", "pids")}
        assert all(len(dirs) == 1 for dirs in ahead.values()), ahead
        for c in ahead:
            assert v1_dirs.sweep(os.path.dirname(ahead[c][0])) == [], "a locked one was swept"
        left = {w: _tree_dirs(w) for w in set(places.values()) - {"v2"}  # (+ its pool's)
                if os.path.isdir(os.path.join(w, "tether"))}
        child.kill()
        child.wait()
    for c in ahead:
        assert ahead[c][0] in left[places[c]]
    for where, dirs in left.items():
        assert sorted(v1_dirs.sweep(os.path.join(where, "tether"))) == dirs


def test_reset_names_only_the_files_that_already_hold_the_value_written(
        places: dict[str, str]) -> None:
    first = LimitedTree.make(tether.Limits(cpus=0.5), "pidns", None)
    cpu_dir = first.v1[places["cpu"]][0]
    first.remove()
    entry = v1_pool.acquire(places["cpu"])
    assert entry is not None and entry.path == cpu_dir
    try:
        # The previous tree's quota, and the period it wrote (the default): both there.
        assert v1_pool.reset(entry, {"cpu"}, {"cpu.cfs_period_us": "100000",
                                              "cpu.cfs_quota_us": "50000"}) == {
            "cpu.cfs_period_us", "cpu.cfs_quota_us"}
        # Another quota is written.
        assert v1_pool.reset(entry, {"cpu"}, {"cpu.cfs_quota_us": "25000"}) == set()
    finally:
        assert v1_pool.release(places["cpu"], entry)


def test_a_reused_directory_gets_a_changed_limit_and_keeps_an_unchanged_one(
        places: dict[str, str]) -> None:
    for cpus, quota in ((0.5, "50000"), (0.5, "50000"), (0.25, "25000")):
        tree = LimitedTree.make(tether.Limits(cpus=cpus), "pidns", None)
        try:
            cpu_dir = tree.v1[places["cpu"]][0]
            assert _read(os.path.join(cpu_dir, "cpu.cfs_quota_us")) == quota
            assert _read(os.path.join(cpu_dir, "cpu.cfs_period_us")) == "100000"
        finally:
            tree.remove()


def test_a_process_first_limited_tree_makes_nothing_ahead(places: dict[str, str]) -> None:
    from conftest import require_mode

    require_mode("pidns")
    # (Three processes: its pids directory is removed, not kept for reuse.)
    script = ("import os, sys, tether\n"
              "tether.spawn(['sh', '-c', 'true & wait'], contain='pidns',\n"
              "             limits=tether.Limits()).wait()\n"
              "from tether._kernel import v1_pool\n"
              "v1_pool.remove_retired()  # (that tree's own, not made ahead)\n"
              "print(sum(n.startswith('t-') for w in sys.argv[1:]\n"
              "          for n in os.listdir(os.path.join(w, 'tether'))))\n")
    result = tether.run([sys.executable, "-c", script, places["memory"], places["pids"]],
                        capture_output=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"0\n"


def test_a_tree_dropped_and_reaped_at_exit_leaves_no_directory(places: dict[str, str]) -> None:
    # A dropped Child's guard is reaped at interpreter exit (reaper's atexit), and only then
    # is its tree's cpuacct directory put back into the pool: after the pool's own atexit
    # drain had run, so it stayed behind until another process's sweep (found by a hostile
    # review). Once the pool has been drained at exit it takes nothing back.
    from conftest import require_mode

    require_mode("pidns")
    script = ("import tether\n"
              "for _ in range(3):\n"
              "    tether.run(['true'], contain='pidns', limits=tether.Limits())\n"
              "child = tether.spawn(['sleep', '0.2'], contain='pidns', limits=tether.Limits())\n"
              "del child\n")
    assert tether.run([sys.executable, "-c", script]).returncode == 0
    left = {w: _tree_dirs(w) for w in set(places.values()) - {"v2"}
            if os.path.isdir(os.path.join(w, "tether"))}
    assert not any(left.values()), left


def _wheres(places: dict[str, str]) -> set[str]:
    """The v1 hierarchies where this test's private parent holds tree directories."""
    return {w for w in set(places.values()) - {"v2"} if os.path.isdir(f"{w}/tether")}


def _only_the_pools_hold_what_is_left(wheres: set[str], before: list[str] | None = None,
                                      ahead: set[str] | None = None) -> None:
    """After an interrupted start: every per-tree v1 directory left is one the pools hold
    (locked, removed at exit); given the fds and directories from before it, no fd is left
    but one per directory the pools gained (the discard may read the announcement first,
    which makes the next tree's directories ahead anew)."""
    left = {p for w in wheres for p in _tree_dirs(w)}
    kept = {e.path for pool in (v1_pool._pool, v1_pool._fresh, v1_pool._retired)
            for es in pool.values() for e in es}
    assert left == kept, left - kept
    if before is not None and ahead is not None:
        assert len(os.listdir("/proc/self/fd")) == \
            len(before) - len(ahead - left) + len(left - ahead)


@pytest.mark.parametrize("at", ["mkdir", "take"])
def test_ctrl_c_while_a_trees_v1_directory_is_taken_leaves_none(
        places: dict[str, str], monkeypatch: pytest.MonkeyPatch, at: str) -> None:
    # A Ctrl-C whose handler runs just after a v1 directory's mkdir, or just after a
    # directory made ahead was taken from the pool, and before the tree holds it: an
    # unlocked directory (swept only by another process's first start) or a locked one
    # and its fd, kept until exit (found by a hostile review, with a random timer).
    import signal

    from tether._kernel import cgroup

    for _ in range(2):  # (so that directories are made ahead)
        LimitedTree.make(tether.Limits(), "pidns", None).remove()
        v1_dirs.prepare({places[c]: ({c}, {}) for c in ("memory", "pids")})
    wheres = _wheres(places)
    if at == "mkdir":
        real_mkdir = os.mkdir

        def interrupted_mkdir(path: str, mode: int = 0o777) -> None:
            real_mkdir(path, mode)
            signal.raise_signal(signal.SIGINT)

        v1_pool.drain()
        monkeypatch.setattr(cgroup.os, "mkdir", interrupted_mkdir)
    else:
        real_take = v1_pool.take_fresh

        def interrupted_take(where: str) -> v1_pool.PooledDir | None:
            entry = real_take(where)
            signal.raise_signal(signal.SIGINT)
            return entry

        monkeypatch.setattr(v1_pool, "take_fresh", interrupted_take)
    before = os.listdir("/proc/self/fd")
    ahead = {p for w in wheres for p in _tree_dirs(w)}
    with pytest.raises(KeyboardInterrupt):
        LimitedTree.make(tether.Limits(), "pidns", None)
    monkeypatch.undo()
    _only_the_pools_hold_what_is_left(wheres, before, ahead)


def test_ctrl_c_just_after_a_limited_guard_is_launched_leaves_no_directory(
        places: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A Ctrl-C held off during the guard's launch is raised once its handles are owned; the
    # tree's v1 directories were then removed at once, while the guard, still ending the
    # tree on its cut lifeline, was in them: they stayed behind, unlocked (found by a
    # hostile review, with a random timer over limited spawns).
    import signal

    from conftest import require_mode
    from tether._kernel import core

    require_mode("pidns")
    real = core.launch_guard

    def interrupted_on_return(**kwargs: object) -> object:
        result = real(**kwargs)
        signal.raise_signal(signal.SIGINT)
        return result

    for _ in range(2):  # (so that directories are made ahead)
        tether.run(["true"], contain="pidns", limits=tether.Limits())
    monkeypatch.setattr(core, "launch_guard", interrupted_on_return)
    with pytest.raises(KeyboardInterrupt):
        tether.spawn(["sleep", "300"], contain="pidns", limits=tether.Limits())
    monkeypatch.undo()
    wheres = _wheres(places)
    _only_the_pools_hold_what_is_left(wheres)


def test_ctrl_c_just_after_a_limited_trees_cgroups_are_made_leaves_none(
        places: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Between LimitedTree.make() and the guard's options for it, the made tree was held by
    # nothing that would discard it (found by a hostile review, with a random timer).
    from conftest import require_mode
    from tether._tree import tree_cgroups

    require_mode("pidns")

    def interrupted(*args: object) -> object:
        raise KeyboardInterrupt

    for _ in range(2):  # (so that directories are made ahead)
        tether.run(["true"], contain="pidns", limits=tether.Limits())
    wheres = _wheres(places)
    before = os.listdir("/proc/self/fd")
    ahead = {p for w in wheres for p in _tree_dirs(w)}
    monkeypatch.setattr(tree_cgroups, "guard_cgroup_args", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tether.spawn(["true"], contain="pidns", limits=tether.Limits())
    monkeypatch.undo()
    _only_the_pools_hold_what_is_left(wheres, before, ahead)


def test_ctrl_c_as_a_limited_guard_is_handed_its_cgroups_leaves_none(
        places: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # From the guard's launch until the Guard object holds the tree (start_guard's
    # hand_over, its return, the Guard's construction), a Ctrl-C lost the limited tree's
    # cgroups: their lock fds and directories stayed (found by a hostile review, with a
    # random timer over limited spawns).
    import signal

    from conftest import require_mode

    require_mode("pidns")
    real = LimitedTree.hand_over

    def interrupted(self: LimitedTree) -> None:
        signal.raise_signal(signal.SIGINT)
        real(self)

    for _ in range(2):  # (so that directories are made ahead)
        tether.run(["true"], contain="pidns", limits=tether.Limits())
    wheres = _wheres(places)
    before = os.listdir("/proc/self/fd")
    ahead = {p for w in wheres for p in _tree_dirs(w)}
    monkeypatch.setattr(LimitedTree, "hand_over", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tether.spawn(["sleep", "300"], contain="pidns", limits=tether.Limits())
    monkeypatch.undo()
    _only_the_pools_hold_what_is_left(wheres, before, ahead)


def _writes_of_next_make(monkeypatch: pytest.MonkeyPatch, limits: tether.Limits) -> list[str]:
    """The cgroup files written while the next limited tree's directories are made."""
    from tether._kernel import cgroup

    written: list[str] = []
    real = cgroup.write_file

    def recording(path: str, text: str, *, dir_fd: int | None = None) -> None:
        written.append(path)
        real(path, text, dir_fd=dir_fd)

    monkeypatch.setattr(controllers_module, "write_file", recording)
    monkeypatch.setattr(v1_pool, "write_file", recording)
    tree = LimitedTree.make(limits, "pidns", None)
    monkeypatch.undo()
    tree.remove()
    return written


def test_a_tree_with_the_previous_trees_limits_finds_its_directories_ready(
        places: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The directories a limited start prepares for the next tree (while its own program
    # starts) carry its limits and a reset CPU time: the next tree with the same limits
    # writes no file before its guard starts.
    from conftest import require_mode

    require_mode("pidns")
    limits = tether.Limits(memory=256 << 20, cpus=0.5, pids=50)
    for _ in range(3):  # (a process's first limited tree prepares nothing)
        tether.run(["true"], contain="pidns", limits=limits)
    assert _writes_of_next_make(monkeypatch, limits) == []


def test_a_tree_without_the_limit_a_ready_directory_holds_gets_the_default(
        places: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import require_mode

    require_mode("pidns")
    for _ in range(3):
        tether.run(["true"], contain="pidns",
                   limits=tether.Limits(memory=256 << 20, cpus=0.5, pids=50))
    tree = LimitedTree.make(tether.Limits(), "pidns", None)
    try:
        for controller, name, default in (("memory", "memory.limit_in_bytes", None),
                                          ("pids", "pids.max", "max"),
                                          ("cpu", "cpu.cfs_quota_us", "-1")):
            if controller not in tree.places or tree.places[controller] not in tree.v1:
                continue
            value = _read(os.path.join(tree.v1[tree.places[controller]][0], name))
            if default is None:  # (memory: as large as the kernel counts, not 256 MiB)
                assert int(value) > 1 << 40, value
            else:
                assert value == default
    finally:
        tree.remove()


def test_a_pids_directory_is_reused_only_after_a_tree_that_stayed_at_the_floor(
        places: dict[str, str]) -> None:
    # pids.peak cannot be reset, but every tree reaches 2 (its guard and its program): a
    # directory whose peak stayed there reads true for the next tree; one that went higher
    # would not, and is removed.
    from conftest import require_mode

    require_mode("pidns")
    if places.get("pids", "v2") == "v2":
        pytest.skip("pids is not on a v1 hierarchy here")
    pids = places["pids"]
    for _ in range(2):  # (a process's first limited tree prepares nothing ahead)
        tether.run(["true"], contain="pidns", limits=tether.Limits())
    with tether.spawn(["true"], contain="pidns", limits=tether.Limits()) as floor:
        floor_dir = floor._tree.cgroup.v1[pids][0]
        floor.wait()
    assert floor.usage().pids_peak == 2
    assert floor_dir in _tree_dirs(pids), "the floor tree's pids directory was removed"
    with tether.spawn(["true"], contain="pidns", limits=tether.Limits()) as ready:
        ready.wait()  # (takes the one made ahead; the floor tree's is made ready meanwhile)
    with tether.spawn(["sh", "-c", "true & wait"], contain="pidns",
                      limits=tether.Limits()) as busier:
        busier_dir = busier._tree.cgroup.v1[pids][0]
        busier.wait()
    assert busier_dir == floor_dir, "the floor tree's pids directory was not reused"
    assert busier.usage().pids_peak == 3
    v1_pool.remove_retired()  # (what is not reused is removed by the next preparation)
    assert busier_dir not in _tree_dirs(pids), "a pids directory that went past 2 was kept"


def test_a_pids_directory_whose_peak_passed_the_floor_after_it_was_put_back_is_not_reused(
        places: dict[str, str]) -> None:
    # The peak a tree's pids directory is put back on can be older than the tree's end (the
    # guard's read, before a member that had left the tree's v2 directory forked; the
    # parent's, when it could only read a live tree). Here the tree reports a peak of 2, then
    # three processes pass through its directory: the pool must not hand it to a next tree,
    # whose pids_peak would read 3.
    if places.get("pids", "v2") == "v2":
        pytest.skip("pids is not on a v1 hierarchy here")
    pids = places["pids"]
    tree = LimitedTree.make(tether.Limits(pids=10), "pidns", None)
    pids_dir = tree.v1[pids][0]
    join = f"echo $$ > {pids_dir}/cgroup.procs && echo joined && exec sleep 60"
    members = []
    try:
        for _ in range(3):
            r, w = os.pipe()
            try:
                members.append(tether.spawn_lifelined(["sh", "-c", join], stdout=w))
            finally:
                os.close(w)
            with os.fdopen(r, "rb") as out:  # (the barrier: it is in the directory)
                assert out.readline() == b"joined\n"
    finally:
        for member in members:
            member.pidfd.send_signal(9)
            member.pidfd.wait()
    assert _read(os.path.join(pids_dir, "pids.peak")) == "3"
    tree.keep_final(0, 0, -1, -1, v1_pool.PIDS_FLOOR)  # what an earlier read said
    tree.remove()
    handed: dict[str, str] = {}
    while (entry := v1_pool.acquire(pids)) is not None:
        handed[entry.path] = _read(os.path.join(entry.path, "pids.peak"))
        v1_pool.discard(entry)
    assert all(int(peak) <= v1_pool.PIDS_FLOOR for peak in handed.values()), handed


def then_ctrl_c(function: Callable[..., T]) -> Callable[..., T]:
    """``function``, with a Ctrl-C (SIGINT, handled by Python at the next bytecode) after
    each call, returned or raised."""
    def interrupted(*args: object) -> T:
        try:
            return function(*args)
        finally:
            signal.raise_signal(signal.SIGINT)
    return interrupted


def test_ctrl_c_while_retired_directories_are_removed_leaves_none_unheld(
        places: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The retired directories are taken out of the pool all at once, then removed one by
    # one: a Ctrl-C whose handler runs after the first left every other one unlocked by
    # nobody and its fd open for good, held by no pool (removed neither at exit nor by a
    # sweep while this process lives).
    trees = [LimitedTree.make(tether.Limits(), "pidns", None) for _ in range(3)]
    for tree in trees:
        tree.keep_final(0, 0, 1 << 20, 0, 3)  # (as the guard reports: pids past the floor)
        tree.remove()
    retired = list(v1_pool._retired[""])
    assert len(retired) >= 3, retired  # (memory, and pids past its floor)
    wheres = _wheres(places)
    before = os.listdir("/proc/self/fd")
    monkeypatch.setattr(v1_pool, "remove", then_ctrl_c(v1_pool.remove))
    with pytest.raises(KeyboardInterrupt):
        v1_pool.remove_retired()
    monkeypatch.undo()
    _only_the_pools_hold_what_is_left(wheres)
    left = {p for w in wheres for p in _tree_dirs(w)}
    assert len(os.listdir("/proc/self/fd")) == len(before) - (len(retired) - len(
        {e.path for e in retired} & left))
    v1_pool.remove_retired()
    left = {e.path for e in retired} & {p for w in wheres for p in _tree_dirs(w)}
    for path in left:  # (so that a failure here leaves nothing for the next test)
        os.rmdir(path)
    assert not left


def test_ctrl_c_while_an_ended_trees_directory_is_retired_leaves_none_unheld(
        places: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # retire() reads the directory's cgroup.procs: a Ctrl-C whose handler runs there, after
    # the tree has let go of the directory and before a pool holds it, lost it with its fd.
    LimitedTree.make(tether.Limits(), "pidns", None).remove()  # (sweeps, imports)
    v1_pool.drain()
    before = os.listdir("/proc/self/fd")
    tree = LimitedTree.make(tether.Limits(), "pidns", None)
    tree.keep_final(0, 0, 1 << 20, 0, 3)  # (as the guard reports: pids past the floor)
    wheres = _wheres(places)
    monkeypatch.setattr(v1_pool, "_read", then_ctrl_c(v1_pool._read))
    with pytest.raises(KeyboardInterrupt):
        tree.remove()
    monkeypatch.undo()
    tree.remove()  # (idempotent: what the interrupt left)
    v1_pool.drain()
    left = {p for w in wheres for p in _tree_dirs(w)}
    for path in left:  # (so that a failure here leaves nothing for the next test)
        os.rmdir(path)
    assert left == set()
    assert os.listdir("/proc/self/fd") == before
