"""Containment under attack: the parent is SIGKILLed and nothing of its tree may be left,
in every mode; daemons that setsid and double-fork are caught in cgroup and pidns modes.
Oracle: the test process is a child subreaper; ECHILD means no descendant is left."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

import oracle
import tether
from conftest import first_line

PY = sys.executable

PARENT = """
import os, sys, tether
mode, cmd = sys.argv[1], sys.argv[2]
child = tether.spawn(['sh', '-c', cmd], contain=mode)
os.write(1, b'%d\\n' % child.pid)
import time
time.sleep(300)
"""


def _start_parent(mode: str, cmd: str, env: dict[str, str]) -> tuple[tether.Spawned, int]:
    r, w = os.pipe()
    try:
        parent = tether.spawn_lifelined([PY, "-c", PARENT, mode, cmd], stdout=w, env=env)
    finally:
        os.close(w)
    try:
        # Bounded: the tree holds the pipe too (it inherits stdout), and a tree that outlived
        # a parent that died would keep it open for ever.
        line = first_line(r)
    finally:
        os.close(r)
    assert line.endswith(b"\n"), f"the parent died (or hung) before starting its tree: {line!r}"
    return parent, int(line)


def _kill_parent_and_check_tree_gone(parent: tether.Spawned) -> oracle.Reaped:
    parent.pidfd.send_signal(signal.SIGKILL)
    assert parent.pidfd.wait().signal == signal.SIGKILL
    return oracle.reap_until(10.0)


def test_parent_sigkill_leaves_no_descendant(mode: str, python_env: dict[str, str]) -> None:
    parent, _ = _start_parent(mode, "sleep 300 & sleep 300", python_env)
    result = _kill_parent_and_check_tree_gone(parent)
    assert result.empty, f"{mode}: descendants left 10 s after the parent's SIGKILL"


DAEMON = "setsid sh -c 'sleep 300 & exit 0' & sleep 300"


@pytest.mark.parametrize("mode", ["cgroup", "pidns"], indirect=True)
def test_setsid_double_forked_daemon_is_killed_on_parent_death(
    mode: str, python_env: dict[str, str]
) -> None:
    parent, _ = _start_parent(mode, DAEMON, python_env)
    result = _kill_parent_and_check_tree_gone(parent)
    assert result.empty, f"{mode}: the setsid daemon survived its parent"


@pytest.mark.parametrize("mode", ["cgroup", "pidns"], indirect=True)
def test_setsid_double_forked_daemon_is_killed_by_kill(mode: str) -> None:
    child = tether.spawn(["sh", "-c", DAEMON + " & echo up; wait"], contain=mode,
                         stdout=subprocess.PIPE)
    with child:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        child.kill()
        child.wait()
    assert oracle.reap_until(10.0).empty


@pytest.mark.parametrize("mode", ["cgroup", "pidns"], indirect=True)
def test_setsid_daemon_is_ended_when_program_exits(mode: str) -> None:
    child = tether.spawn(["sh", "-c", "setsid sh -c 'sleep 300 & exit 0'; exit 0"],
                         contain=mode)
    with child:
        assert child.wait() == 0
    assert oracle.reap_until(10.0).empty


def test_cgroup_directory_is_removed_after_parent_sigkill(python_env: dict[str, str]) -> None:
    from conftest import require_mode

    require_mode("cgroup")
    from tether._kernel.cgroup import PARENT_NAME, cgroup_root

    parent_dir = os.path.join(cgroup_root(), PARENT_NAME)
    before = set(os.listdir(parent_dir))
    parent, _ = _start_parent("cgroup", "sleep 300", python_env)
    assert len(set(os.listdir(parent_dir)) - before) == 1
    assert _kill_parent_and_check_tree_gone(parent).empty
    # The guard removes the directory before it exits, and it has exited (ECHILD above).
    assert set(os.listdir(parent_dir)) - before == set()


def test_nested_cgroups_the_program_made_are_removed_with_its_tree() -> None:
    from conftest import require_mode

    require_mode("cgroup")
    from tether._kernel.cgroup import PARENT_NAME, cgroup_root

    parent_dir = os.path.join(cgroup_root(), PARENT_NAME)
    before = set(os.listdir(parent_dir))
    # The program makes a cgroup inside its tree's, moves a sleep there and exits: the guard
    # must kill the sleep, and remove the nested cgroup before its own directory.
    prog = ('read d; mkdir "$d/nested" || exit 1; sleep 300 & '
            'echo $! > "$d/nested/cgroup.procs" || exit 1; echo moved')
    child = tether.spawn(["sh", "-c", prog], contain="cgroup", stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    with child:
        from tether._kernel import cgroup_ahead

        cgroup_ahead.drain()  # (the next tree's directory, made ahead, is not this one)
        (tree,) = set(os.listdir(parent_dir)) - before
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(os.path.join(parent_dir, tree).encode() + b"\n")
        child.stdin.close()
        assert child.stdout.readline() == b"moved\n"
        assert child.wait() == 0
        cgroup_ahead.drain()  # (and the one the wait made ahead)
        assert set(os.listdir(parent_dir)) - before == set()
    assert oracle.reap_until(10.0).empty


def test_stale_cgroup_directory_is_swept_by_the_next_start() -> None:
    from conftest import require_mode

    require_mode("cgroup")
    from tether._kernel import cgroup as _cgroup

    parent_dir = os.path.join(_cgroup.cgroup_root(), _cgroup.PARENT_NAME)
    stale = os.path.join(parent_dir, "t-stale-test")
    os.mkdir(stale)  # nobody holds its lock: a tree whose parent and guard both died
    try:
        removed = _cgroup.sweep(parent_dir)
        assert stale in removed
        assert not os.path.exists(stale)
    finally:
        if os.path.exists(stale):
            os.rmdir(stale)


def test_auto_picks_the_strongest_available_mode() -> None:
    from tether._kernel.cgroup import cgroup_unavailable_reason
    from tether._tree.modes import pidns_unavailable_reason, resolve_mode

    expected = "pidns" if pidns_unavailable_reason() is None else (
        "cgroup" if cgroup_unavailable_reason() is None else "group")
    assert resolve_mode("auto") == expected
    with tether.spawn(["true"], contain="auto") as child:
        assert child.contain == expected
        assert child.wait() == 0


def test_pidns_unprivileged_maps_the_caller_to_itself() -> None:
    """The CLONE_NEWUSER|CLONE_NEWPID path, exercised for real by dropping to uid 65534 in a
    forked child (the guard is copied where that user may run it: /root is private here)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another uid for the unprivileged path")
    import shutil
    import tempfile

    from tether._tree import modes as _guard

    guard_dir = tempfile.mkdtemp(prefix="tether-guard-")  # under /tmp: reachable by any uid
    os.chmod(guard_dir, 0o755)
    guard_copy = os.path.join(guard_dir, "_guard")
    shutil.copy2(_guard.GUARD_PATH, guard_copy)
    os.chmod(guard_copy, 0o755)
    r, w = os.pipe()

    def as_nobody() -> None:
        os.close(r)
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        # setuid() from root clears "dumpable", which makes /proc/self/*_map root-owned; a
        # process that was always unprivileged is dumpable. Restore what it would have.
        import ctypes

        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
        _guard.GUARD_PATH = guard_copy  # type: ignore[misc]
        _guard.forget_probes()
        why = _guard.pidns_unavailable_reason()
        if why is not None:
            os.write(w, f"unavailable {why}".encode())
            return
        result = tether.run(["sh", "-c", "echo $(id -u) $$; sleep 300 & exit 0"],
                            capture_output=True, contain="pidns")
        os.write(w, b"ran " + result.stdout)

    try:
        child = tether.run_in_fork(as_nobody)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            report = f.read().decode()
        assert child.pidfd.wait().code == 0
    finally:
        shutil.rmtree(guard_dir)
    if report.startswith("unavailable"):
        pytest.skip(f"unprivileged user+PID namespaces unavailable here: {report}")
    assert report == "ran 65534 2\n"
    assert oracle.reap_until(10.0).empty


def test_the_open_file_limit_during_a_cgroup_launch_leaves_no_directory_and_says_emfile() -> None:
    """RLIMIT_NOFILE reached at each step of Guard.launch in turn (1, 2, ... fds free): the
    error is EMFILE (not a failure to open cgroup.events while cleaning up), and the tree's
    directory is gone. In a forked child, whose fd table is its own to fill."""
    from conftest import require_mode, rmdir_cgroup_tree

    require_mode("cgroup")
    import json
    import resource
    import secrets

    from tether._kernel import cgroup as _cgroup

    root = os.path.join(_cgroup.cgroup_root(), f"tether-emfile-{secrets.token_hex(4)}")
    os.mkdir(root, 0o755)
    parent = os.path.join(root, _cgroup.PARENT_NAME)
    r, w = os.pipe()

    def at_the_limit() -> None:
        os.close(r)
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(oracle.open_fds()) + 32, hard))
        _cgroup.cgroup_root(root)  # probed (and its parent made) before the fds run out
        fillers: list[int] = []
        attempts = []
        for free in range(1, 12):
            while True:
                try:
                    fillers.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
                except OSError:
                    break
            for _ in range(free):
                os.close(fillers.pop())
            try:
                child = tether.spawn(["true"], contain="cgroup", cgroup_root=root)
                child.wait()
                attempts.append([free, "ran"])
            except OSError as exc:
                attempts.append([free, exc.errno, str(exc)])
            attempts[-1].append(sorted(n for n in os.listdir(parent) if n.startswith("t-")))
        for fd in fillers:
            os.close(fd)
        os.write(w, json.dumps(attempts).encode())

    try:
        forked = tether.run_in_fork(at_the_limit)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            attempts = json.loads(f.read())
        assert forked.pidfd.wait().code == 0
        forked.lifeline.close()
        forked.pidfd.close()
    finally:
        rmdir_cgroup_tree(root)
    failed = [a for a in attempts if a[1] != "ran"]
    assert failed, f"no launch reached the limit: {attempts}"
    for attempt in failed:
        assert attempt[1] == errno.EMFILE and "cgroup.events" not in attempt[2], attempt
    assert [a for a in attempts if a[-1]] == [], "a tree directory was left"
    assert oracle.reap_until(10.0).empty
