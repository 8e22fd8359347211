"""Dropped handles leave no zombie and no fd: what nobody waited for is reaped at the next
spawn and at interpreter exit, through the pidfds tether kept (no thread, no SIGCHLD)."""

from __future__ import annotations

import gc
import os
import select
import subprocess
import sys
import threading

import pytest

import oracle
import tether
from tether._kernel import cgroup_ahead
from tether._kernel import reaper as _reaper

PY = sys.executable


def _until_readable(fd: int) -> None:
    """Block until a pidfd (our own dup) turns readable: its process has exited."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    assert poller.poll(10_000), "the dropped process did not exit"
    os.close(fd)


def _next_spawn() -> None:
    s = tether.spawn_lifelined(["true"])
    s.pidfd.wait()
    s.pidfd.close()
    s.lifeline.close()


def _settled(before: set[int]) -> None:
    """What a test of a dropped handle checks once the next spawn has run: nothing of ours
    left unreaped, and our fd table as it was (but for the process-wide directory a cgroup
    start makes ahead for the next tree, drained first)."""
    assert not oracle.zombie_pending(), "a dropped child was left a zombie"
    cgroup_ahead.drain()
    assert oracle.open_fds() == before, "a dropped handle left an fd open"
    assert _reaper.adopted() == 0


def test_a_dropped_child_leaves_no_zombie_guard_and_no_fd_after_the_next_spawn(
    mode: str,
) -> None:
    _next_spawn()  # the first spawn of a mode opens what stays open (the cgroup parent)
    before = oracle.baseline_fds()
    child = tether.spawn(["sleep", "300"], contain=mode)
    guard = child._tree.spawned.pidfd._dup()  # a dup of the guard's pidfd, our barrier
    del child  # dropped without wait(): the guard ends the tree and exits
    gc.collect()
    _until_readable(guard)
    _next_spawn()
    _settled(before)


def test_a_dropped_contain_none_child_is_ended_and_reaped_at_the_next_spawn() -> None:
    before = oracle.baseline_fds()
    child = tether.spawn(["sleep", "300"], contain=None)
    program = child.pidfd._dup()
    del child  # dropping a Child ends its tree: the program is killed
    gc.collect()
    _until_readable(program)
    _next_spawn()
    _settled(before)


def test_closing_the_pidfd_of_a_running_child_leaves_no_zombie_once_it_exits() -> None:
    before = oracle.baseline_fds()
    gate_r, gate_w = os.pipe()
    try:
        s = tether.spawn_lifelined(["sh", "-c", "read x"], stdin=gate_r)
    finally:
        os.close(gate_r)
    probe = s.pidfd._dup()
    s.pidfd.close()  # while it runs: the handle is closed, the child is not ours to wait for
    os.close(gate_w)  # now it exits
    _until_readable(probe)
    s.lifeline.close()
    _next_spawn()
    _settled(before)


def test_a_spawned_dropped_by_a_thread_is_reaped_too() -> None:
    before = oracle.baseline_fds()
    probes: list[int] = []

    def drop() -> None:
        probes.append(tether.spawn_lifelined(["true"]).pidfd._dup())

    t = threading.Thread(target=drop)
    t.start()
    t.join()
    _until_readable(probes[0])
    _next_spawn()
    _settled(before)


AT_EXIT = r"""
import atexit, os, sys

def check():  # registered before tether's own handler, so it runs after it
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        print("no-child-left")
        return
    print("CHILD-LEFT")

atexit.register(check)
import tether
tether.spawn(["sleep", "300"], contain=sys.argv[1])  # dropped at once
tether.spawn(["sleep", "300"], contain=None)
"""


@pytest.mark.parametrize("contain", ["group", "none"])
def test_children_dropped_before_interpreter_exit_are_reaped_at_exit(
    contain: str, python_env: dict[str, str]
) -> None:
    script = AT_EXIT.replace('contain=sys.argv[1]', 'contain=None' if contain == "none"
                             else 'contain="group"')
    result = tether.run([PY, "-c", script], env=python_env, capture_output=True,
                        timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["no-child-left"], result.stderr
    assert isinstance(result, subprocess.CompletedProcess)
