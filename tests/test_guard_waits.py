"""How the parent waits for a guard's reports. The start report, read by launch() before any
other thread can hold the Guard, is read by blocking in the read itself (no poll). The
blocking wait for a guarded tree's end (tether._tree.guarded.Guard.wait) sleeps on the
guard's pidfd: it turns readable only once the guard has sent its last report and exited, so
the waiter wakes once, finds MSG_EXITED (status and usage in one message) queued and reaps
the guard without blocking. The pidfd is borrowed like the control socket: another thread
that reads the end meanwhile (and so closes the handle) leaves the fd open to the waiter.
Oracle: this process is a child subreaper (tests/oracle.py)."""

from __future__ import annotations

import os
import select
import socket
import threading
import types
from collections.abc import Callable
from typing import Any

import pytest

import oracle
import tether
from tether._tree import guarded
from tether._tree.guarded import Guard

GATED = ["sh", "-c", "read x; exit 7"]  # exits 7 once its stdin reaches EOF


def _gated_child(mode: str) -> tuple[tether.Child, Guard, int]:
    gate_r, gate_w = os.pipe()
    try:
        child = tether.spawn(GATED, stdin=gate_r, contain=mode)
    finally:
        os.close(gate_r)
    assert isinstance(child._tree, Guard)
    return child, child._tree, gate_w


def _poll_module(on_poll: Callable[[list[int]], None]) -> types.SimpleNamespace:
    """A stand-in for guarded's ``select``: every poller calls ``on_poll(its fds)`` before it
    may sleep (a poll with a timeout other than 0)."""

    class Poller:
        def __init__(self) -> None:
            self._real = select.poll()
            self._fds: list[int] = []

        def register(self, fd: int, events: int) -> None:
            self._fds.append(fd)
            self._real.register(fd, events)

        def unregister(self, fd: int) -> None:
            self._fds.remove(fd)
            self._real.unregister(fd)

        def poll(self, timeout: int | None = None) -> list[tuple[int, int]]:
            if timeout != 0:  # (a spin's polls do not sleep)
                on_poll(self._fds)
            return self._real.poll(timeout)

    return types.SimpleNamespace(poll=Poller, POLLIN=select.POLLIN)


def _fd_target(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return None


def test_the_wait_for_the_end_sleeps_on_the_guards_and_the_programs_pidfds_once(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Once: woken by the guard's exit, or by the program's (early_wake), after which it
    # polls without sleeping until the guard has reported and exited; only a guard slower
    # than that spin (a loaded machine) is slept on again, with its reports.
    child, guard, gate_w = _gated_child(mode)
    guard_pidfd, program_pidfd = guard.spawned.pidfd.fileno(), child.pidfd.fileno()
    sock = guard.sock.fileno()
    polled: list[list[int]] = []

    def on_poll(fds: list[int]) -> None:
        polled.append(list(fds))
        if len(polled) == 1:
            os.close(gate_w)  # the program exits only once the waiter sleeps

    monkeypatch.setattr(guarded, "select", _poll_module(on_poll))
    assert child.wait() == 7
    assert polled in ([[guard_pidfd, program_pidfd]],
                      [[guard_pidfd, program_pidfd], [guard_pidfd, sock]])
    assert child.usage().source in ("rusage", "cgroup")
    assert oracle.no_descendants()


def test_a_wait_keeps_its_borrowed_guard_pidfd_while_another_thread_reads_the_end(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The end read by another thread (poll()) closes the handle's pidfd. A waiter that has
    # taken the fd number and not yet slept on it must still find the guard's pidfd there,
    # never a number reused for some other file (on which it could sleep for ever).
    child, guard, gate_w = _gated_child(mode)
    sleeping, go = threading.Event(), threading.Event()
    borrowed: list[int] = []

    def on_poll(fds: list[int]) -> None:
        borrowed.extend(fds)
        sleeping.set()
        go.wait()

    monkeypatch.setattr(guarded, "select", _poll_module(on_poll))
    results: list[object] = []
    waiter = threading.Thread(target=lambda: results.append(child.wait()))
    waiter.start()
    try:
        assert sleeping.wait(60)
        pidfd_fd = borrowed[0]
        assert _fd_target(pidfd_fd) == "anon_inode:[pidfd]"
        os.close(gate_w)
        select.select([pidfd_fd], [], [], 60)  # the guard has reported and exited
        assert child.poll() == 7  # this thread reads the end and releases the guard
        assert guard.spawned.pidfd.closed
        r, w = os.pipe()  # a new file cannot take the borrowed number
        os.close(r)
        os.close(w)
        assert pidfd_fd not in (r, w)
        assert _fd_target(pidfd_fd) == "anon_inode:[pidfd]"
    finally:
        go.set()
        waiter.join(60)
    assert results == [7]
    assert _fd_target(pidfd_fd) != "anon_inode:[pidfd]"  # the last borrower closed it
    assert oracle.no_descendants()


def test_launch_reads_the_start_report_without_polling(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    polled: list[list[int]] = []
    monkeypatch.setattr(guarded, "select", _poll_module(polled.append))
    with tether.spawn(["true"], contain=mode) as child:
        assert polled == []  # started: the program's pidfd is ours
        assert child.pidfd.wait().code == 0
    assert oracle.no_descendants()


def test_launch_reads_the_start_report_under_a_process_wide_socket_timeout(mode: str) -> None:
    # socket.setdefaulttimeout(0) makes every new socket non-blocking, the guard's control
    # socket included: the start must then be awaited by polling, not read at once.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.0)
    try:
        child = tether.spawn(["true"], contain=mode)
    finally:
        socket.setdefaulttimeout(previous)
    with child:
        assert child.wait() == 0
    assert oracle.no_descendants()


def test_a_zero_timeout_wait_reads_an_end_already_reported(mode: str) -> None:
    # wait(0) does not sleep, but it must still read what the guard has said: a tree that
    # has ended is reported as ended, not as a timeout.
    child, guard, gate_w = _gated_child(mode)
    os.close(gate_w)
    select.select([guard.spawned.pidfd.fileno()], [], [], 60)  # reported, and exited
    assert guard.wait(0)
    assert child.wait(timeout=0) == 7
    assert oracle.no_descendants()


def test_a_run_reads_each_report_once_and_never_in_vain(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # run(["true"]): the start (MSG_PROGRAM, MSG_STARTED) read at launch, the end
    # (MSG_EXITED) read once the guard has exited; no read that finds nothing (EAGAIN).
    from tether._kernel import core
    from tether._tree import guard_wire

    kinds: list[object] = []
    real = guard_wire.read_message
    real_start = core.read_start_reports

    def counted_start(*args: int) -> tuple[tuple[bytes, int, int, int], ...]:
        try:
            reports = real_start(*args)
        except BlockingIOError:
            kinds.append("EAGAIN")
            raise
        kinds.extend(guard_wire.MSG.unpack(data)[0] if data else "EOF"
                     for data, _, _, _ in reports)
        return reports

    def counted(*args: Any, **kwargs: Any) -> tuple[bytes, list[int], int]:
        try:
            data, fds, flags = real(*args, **kwargs)
        except BlockingIOError:
            kinds.append("EAGAIN")
            raise
        kinds.append(guard_wire.MSG.unpack(data)[0] if data else "EOF")
        return data, fds, flags

    monkeypatch.setattr(guard_wire, "read_message", counted)
    monkeypatch.setattr(core, "read_start_reports", counted_start)
    assert tether.run(["true"], contain=mode).returncode == 0
    assert kinds == [guard_wire.MSG_PROGRAM, guard_wire.MSG_STARTED, guard_wire.MSG_EXITED]
    assert oracle.no_descendants()


STOPS_ITSELF = """\
import os, signal, sys
if os.fork() == 0:  # continues the program whenever it has stopped itself
    parent = os.getppid()
    while True:
        os.kill(parent, signal.SIGCONT)
for _ in range(20000):
    os.kill(os.getpid(), signal.SIGSTOP)
sys.exit(3)
"""


def test_a_wait_reads_a_job_control_trees_stop_reports_as_they_come() -> None:
    # With job control the guard reports each stop of the program (MSG_STOPPED). A wait that
    # slept on the guard's pidfd alone left them queued: once the socket was full the guard
    # blocked in its send and never exited, and the wait never woke (found by a hostile
    # review: a program stopped and continued some thousands of times hung wait() for good).
    import sys

    from tether._kernel.spec import SpawnSpec
    from tether._tree.child import start_child
    from tether._tree.modes import resolve_mode

    child = start_child(SpawnSpec.build([sys.executable, "-c", STOPS_ITSELF]),
                        resolve_mode("group"), job_control=True)
    with child:
        assert child.wait(timeout=60) == 3
        assert child.stops
    assert oracle.no_descendants()
