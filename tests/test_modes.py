"""tether._tree.modes: which containment modes are available, and what "auto" picks.

"Available" is tried, not guessed: a user who cannot write a cgroup gets
:class:`tether.Unsupported` from ``contain="cgroup"`` and a fallback from "auto", a delegated
subtree works as its user and is picked by "auto", and a limit reached now (a namespace
count) is never remembered as "unavailable for ever". The unprivileged cases run for real, as
uid 65534 in a forked child, in a cgroup root and a user namespace of the test's own.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import oracle
import tether
from conftest import rmdir_cgroup_tree
from tether._kernel import cgroup, cgroup_ahead
from tether._tree import modes

NOBODY = 65534
CLONE_NEWUSER = 0x10000000


def _in_fork(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``body`` in a forked child; its result (or its traceback) comes back as JSON."""
    r, w = os.pipe()

    def child() -> None:
        os.close(r)
        try:
            result = body()
        except BaseException:
            result = {"error": traceback.format_exc()}
        os.write(w, json.dumps(result).encode())

    try:
        forked = tether.run_in_fork(child)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    assert forked.pidfd.wait().code == 0
    forked.lifeline.close()
    forked.pidfd.close()
    result: dict[str, Any] = json.loads(data)
    assert "error" not in result, result["error"]
    return result


@pytest.fixture
def guard_for_anyone() -> Iterator[str]:
    """A copy of the guard where any uid may run it (the checkout may be under a private
    home)."""
    directory = tempfile.mkdtemp(prefix="tether-guard-")
    os.chmod(directory, 0o755)
    copy = os.path.join(directory, "_guard")
    shutil.copy2(modes.GUARD_PATH, copy)
    os.chmod(copy, 0o755)
    try:
        yield copy
    finally:
        shutil.rmtree(directory)


def _become_nobody(guard: str) -> None:
    """In a forked child: drop to uid/gid 65534 for good, and forget what root probed."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    # setuid() from root clears "dumpable" (making /proc/self/*_map root's); a process that
    # was always unprivileged is dumpable.
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    modes.GUARD_PATH = guard  # type: ignore[misc]
    modes.forget_probes()


@pytest.fixture
def private_root() -> Iterator[str]:
    """A cgroup of this test's own under this run's root, removed (empty) at the end."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    why = cgroup.cgroup_unavailable_reason()
    if why is not None:
        pytest.skip(f"cgroup v2 is not writable here: {why}")
    path = os.path.join(cgroup.cgroup_root(), f"tether-modes-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(path, 0o755)
    try:
        yield path
    finally:
        rmdir_cgroup_tree(path)


def _no_pidns() -> str:
    return "stubbed out by the test"


# -- cgroup: tried, not guessed ---------------------------------------------------------------


def test_a_user_who_cannot_write_the_cgroup_gets_unsupported_and_auto_falls_back(
    private_root: str, guard_for_anyone: str
) -> None:
    # root's tree parent exists already: mkdir of it says EEXIST, which is no permission.
    assert cgroup.cgroup_root(private_root) == private_root
    assert os.path.isdir(os.path.join(private_root, cgroup.PARENT_NAME))

    def as_nobody() -> dict[str, Any]:
        _become_nobody(guard_for_anyone)
        result: dict[str, Any] = {"reason": cgroup.cgroup_unavailable_reason(private_root)}
        try:
            tether.spawn(["true"], contain="cgroup", cgroup_root=private_root).wait()
            result["cgroup"] = "started"
        except OSError as exc:
            result["cgroup"] = type(exc).__name__
        # The fallback order without pidns (stubbed: it is available to this user here).
        modes.pidns_unavailable_reason = _no_pidns  # type: ignore[assignment]
        result["auto"] = modes.resolve_mode("auto", private_root)
        with tether.spawn(["true"], contain="auto", cgroup_root=private_root) as child:
            result["auto_ran"] = [child.contain, child.wait()]
        return result

    result = _in_fork(as_nobody)
    assert result["reason"] is not None and "not writable" in result["reason"], result
    assert result["cgroup"] == "Unsupported"
    assert result["auto"] == "group"
    assert result["auto_ran"] == ["group", 0]
    assert oracle.reap_until(10.0).empty


def _delegate(directory: str, uid: int) -> None:
    """What systemd's Delegate=yes does: the directory and its delegation files to ``uid``."""
    os.chown(directory, uid, uid)
    for name in ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
        os.chown(os.path.join(directory, name), uid, uid)


def test_a_delegated_subtree_works_as_its_user_and_is_picked_by_auto(
    private_root: str, guard_for_anyone: str
) -> None:
    delegated = os.path.join(private_root, "delegated")
    os.mkdir(delegated, 0o755)
    _delegate(delegated, NOBODY)
    # The user's processes run inside their subtree, as systemd places a user's session.
    session = os.path.join(delegated, "session")
    os.mkdir(session, 0o755)
    _delegate(session, NOBODY)

    def as_nobody() -> dict[str, Any]:
        cgroup.move_self(session)
        _become_nobody(guard_for_anyone)
        result: dict[str, Any] = {"reason": cgroup.cgroup_unavailable_reason(delegated)}
        done = tether.run(["cat", "/proc/self/cgroup"], contain="cgroup",
                          cgroup_root=delegated, capture_output=True, text=True)
        result["cgroup"] = done.stdout
        modes.pidns_unavailable_reason = _no_pidns  # type: ignore[assignment]
        with tether.spawn(["sh", "-c", "setsid sleep 300 & echo up"], contain="auto",
                          cgroup_root=delegated, stdout=subprocess.PIPE) as child:
            assert child.stdout is not None
            result["auto"] = [child.contain, child.stdout.readline().decode()]
        cgroup_ahead.drain()  # (what the second start made ahead: removed at exit)
        result["left"] = sorted(os.listdir(os.path.join(delegated, cgroup.PARENT_NAME)))
        return result

    result = _in_fork(as_nobody)
    assert result["reason"] is None
    tree = f"/delegated/{cgroup.PARENT_NAME}/{cgroup.TREE_PREFIX}"
    v2 = [line for line in result["cgroup"].splitlines() if line.startswith("0::")]
    assert len(v2) == 1 and tree in v2[0], result
    assert result["auto"] == ["cgroup", "up\n"]  # and the setsid sleep died with the tree:
    assert oracle.reap_until(10.0).empty
    assert [n for n in result["left"] if n.startswith(cgroup.TREE_PREFIX)] == []


# -- pidns: a limit reached now is not "unavailable" for ever -----------------------------------


def _own_user_namespace() -> None:
    """In a forked child: become root of a user namespace of our own, whose namespace limits
    (/proc/sys/user/*) are ours to set without touching the machine's."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.geteuid(), os.getegid()  # unmapped (65534) once inside, until mapped
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")
    modes.forget_probes()


def _limit_pid_namespaces(count: int) -> None:
    with open("/proc/sys/user/max_pid_namespaces", "w") as f:
        f.write(str(count))


def test_a_pid_namespace_limit_is_never_cached_and_raises_unsupported() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to map itself into a user namespace of its own")
    modes.forget_probes()
    if modes.pidns_unavailable_reason() is not None:
        pytest.skip(f"pidns unavailable here: {modes.pidns_unavailable_reason()}")

    def in_own_namespace() -> dict[str, Any]:
        _own_user_namespace()
        result: dict[str, Any] = {}
        _limit_pid_namespaces(0)
        result["at_limit"] = modes.pidns_unavailable_reason()
        _limit_pid_namespaces(100)
        result["raised"] = modes.pidns_unavailable_reason()
        result["auto"] = modes.resolve_mode("auto")
        _limit_pid_namespaces(0)  # the probe said yes (cached); the start itself hits it
        try:
            tether.run(["true"], contain="pidns")
            result["spawn"] = "ran"
        except OSError as exc:
            result["spawn"] = [type(exc).__name__, exc.errno, str(exc)]
        _limit_pid_namespaces(100)
        result["after"] = tether.run(["sh", "-c", "echo $$"], contain="pidns",
                                     capture_output=True).stdout.decode()
        return result

    result = _in_fork(in_own_namespace)
    assert result["at_limit"] is not None and "limit" in result["at_limit"], result
    assert result["raised"] is None
    assert result["auto"] == "pidns"
    name, err, message = result["spawn"]
    assert (name, err) == ("Unsupported", 28), result  # ENOSPC, typed and explained
    assert "max_pid_namespaces" in message
    assert result["after"] == "2\n"  # the program, under its guard (PID 1)
    assert oracle.reap_until(10.0).empty
