"""How the parent waits for a guard's reports. The start report, read by launch() before any
other thread can hold the Guard, is read by blocking in the read itself (no poll). The
blocking wait for a guarded tree's end (tether._tree.guard_end, in C: core.await_end) sleeps
on the guard's pidfd: it turns readable only once the guard has sent its last report and exited, so
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

import pytest

import oracle
import tether
from tether._kernel import core
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
    """A stand-in for guarded's ``select`` (the start's wait): every poller calls
    ``on_poll(its fds)`` before it may sleep (a poll with a timeout other than 0)."""

    class Poller:
        def __init__(self) -> None:
            self._real = select.poll()
            self._fds: list[int] = []

        def register(self, fd: int, events: int) -> None:
            self._fds.append(fd)
            self._real.register(fd, events)

        def poll(self, timeout: int | None = None) -> list[tuple[int, int]]:
            if timeout != 0:
                on_poll(self._fds)
            return self._real.poll(timeout)

    return types.SimpleNamespace(poll=Poller, POLLIN=select.POLLIN)


def _watch_end_sleeps(monkeypatch: pytest.MonkeyPatch,
                      on_sleep: Callable[[list[int]], None]) -> None:
    """Call ``on_sleep(the fds it sleeps on)`` before every end wait's sleep in C
    (``core.await_end`` with a timeout other than 0), before it may sleep."""
    real = core.await_end

    def await_end(guard_fd: int, program_fd: int, sock_fd: int, on_sock: bool,
                  timeout_ms: int, spin_ns: int) -> int:
        if timeout_ms != 0:
            on_sleep([fd for fd in (guard_fd, program_fd, sock_fd if on_sock else -1)
                      if fd >= 0])
        return real(guard_fd, program_fd, sock_fd, on_sock, timeout_ms, spin_ns)

    monkeypatch.setattr(core, "await_end", await_end)


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

    _watch_end_sleeps(monkeypatch, on_poll)
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

    _watch_end_sleeps(monkeypatch, on_poll)
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
    _watch_end_sleeps(monkeypatch, polled.append)
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
    # run(["true"]): the start (MSG_PROGRAM, and MSG_STARTED if the guard sent it by then)
    # read at launch, the end (MSG_EXITED, in C: core.read_end) read once the guard has
    # exited, a MSG_STARTED still queued ahead of it consumed there (the program is known: it
    # says nothing new); no read that finds nothing (EAGAIN), and no report handed to
    # Python's handling that it would only drop.
    from tether._kernel import core
    from tether._tree import guard_wire

    kinds: list[object] = []
    ends: list[object] = []
    real_start = core.read_start_reports
    real_end = core.read_end

    def counted_start(*args: int) -> tuple[tuple[bytes, int, int, int], ...]:
        try:
            reports = real_start(*args)
        except BlockingIOError:
            kinds.append("EAGAIN")
            raise
        kinds.extend(guard_wire.MSG.unpack(data)[0] if data else "EOF"
                     for data, _, _, _ in reports)
        return reports

    def counted_end(*args: int) -> object:
        got = real_end(*args)
        if got is None:
            ends.append("EAGAIN")
        elif isinstance(got, bytes):
            ends.append(guard_wire.MSG.unpack(got)[0] if got else "EOF")
        else:
            ends.append(guard_wire.MSG_EXITED)
        return got

    monkeypatch.setattr(core, "read_start_reports", counted_start)
    monkeypatch.setattr(core, "read_end", counted_end)
    assert tether.run(["true"], contain=mode).returncode == 0
    assert kinds in ([guard_wire.MSG_PROGRAM], [guard_wire.MSG_PROGRAM, guard_wire.MSG_STARTED])
    assert ends == [guard_wire.MSG_EXITED]
    assert oracle.no_descendants()


def test_an_event_loops_wakeup_reads_the_end_and_reaps_the_guard_in_one_c_call(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # tether.aio wakes on the guard's pidfd, readable once the guard has reported and exited:
    # its pump then reads MSG_EXITED and reaps the guard in the same C call (core.read_end),
    # as the blocking wait does; no read in vain, and no reap left to Python.
    import asyncio

    import tether.aio
    from tether._tree import guard_end

    ends: list[object] = []
    real_end = core.read_end

    def counted_end(sock_fd: int, guard_fd: int, out: list[tuple[int, ...]],
                    *skip_started: bool) -> object:
        got = real_end(sock_fd, guard_fd, out, *skip_started)
        ends.append(out[-1][4] if got is True else got)  # (MSG_EXITED: the guard's si_code)
        return got

    def no_python_reap(*args: object, **kwargs: object) -> None:
        raise AssertionError("the guard was reaped the Python way")

    monkeypatch.setattr(core, "read_end", counted_end)
    monkeypatch.setattr(guarded, "reap_quietly", no_python_reap)
    monkeypatch.setattr(guard_end.core, "reap_exiting", no_python_reap)
    assert asyncio.run(tether.aio.run(["true"], contain=mode)).returncode == 0
    # (None: a pump that found nothing new, as the first one may, before the exit)
    assert [got for got in ends if got is not None] == [os.CLD_EXITED]
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


def test_a_ctrl_c_as_the_end_is_read_is_raised_once_the_end_is_recorded(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # core.read_end consumes MSG_EXITED and reaps the guard in one call; a signal handler
    # that ran before the caller has recorded them would lose the report and the guard's
    # reap (the guard's usage then, and below Linux 6.15 the program's status). So it
    # returns with every signal held, and the Ctrl-C comes once the end is recorded.
    import signal

    child, guard, gate_w = _gated_child(mode)
    real = core.read_end

    def interrupted_after(sock_fd: int, guard_fd: int, out: list[object],
                          *skip_started: bool) -> object:
        got = real(sock_fd, guard_fd, out, *skip_started)
        if out:  # (MSG_EXITED read: every signal held, the SIGINT pending until released)
            signal.raise_signal(signal.SIGINT)
        return got

    monkeypatch.setattr(core, "read_end", interrupted_after)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        os.close(gate_w)
        with pytest.raises(KeyboardInterrupt):
            child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert guard.ended and guard.spawned.pidfd.closed
    assert child.wait() == 7
    assert child.usage().source in ("rusage", "cgroup")
    assert guard.guard_exit is not None and guard.guard_exit.code == 0
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()
    assert oracle.no_descendants()


def test_a_wait_that_reaps_the_guard_leaves_its_pidfd_to_a_watcher_still_borrowing_it(
        mode: str) -> None:
    # core.read_end reaps the guard through the waiter's borrowed pidfd, and the handle is
    # closed then: an event loop's watch on the same fd (watch_fd, no dup) keeps the number
    # until it is done with it, as with any other close.
    child, guard, gate_w = _gated_child(mode)
    watched = guard.watch_fd()
    os.close(gate_w)
    assert child.wait() == 7
    assert guard.spawned.pidfd.closed and guard.guard_exit == tether.Exit(code=0, signal=None)
    assert _fd_target(watched) == "anon_inode:[pidfd]"
    guard.end_watch()
    assert _fd_target(watched) != "anon_inode:[pidfd]"
    assert oracle.no_descendants()
