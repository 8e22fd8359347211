"""The parent sleeps through a guarded start (``core.launch_guard(wait_mask=...)``, launch.c;
the guard's ``--start-fd``): it returns once the guard has reported the program's start, so
the caller reads the whole start in one go instead of waking at the guard's exec and again
at each report; a signal ends that sleep at once (Ctrl-C is never held up by a slow start),
and its handler runs only once the caller holds the fds (never at the C call's return).
Oracle: this process is a child subreaper (tests/oracle.py)."""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
from pathlib import Path

import pytest

import oracle
from tether._kernel import core
from tether._kernel.features import clone_method
from tether._tree.modes import guard_path

_MSG = struct.Struct(core.GUARD_MSG_FORMAT)


def _launch(path: bytes, head: tuple[bytes, ...], tail: tuple[bytes, ...],
            wait_mask: int | None) -> tuple[int, int, int, int, int, int, bool]:
    return core.launch_guard(
        path=path, head=head, tail=tail, env={b"PATH": os.environ["PATH"].encode()},
        cwd=None, stdin=-1, stdout=-1, stderr=-1, keep_fds=(), new_pgroup=True,
        extra_flags=0, method=clone_method(), wait_mask=wait_mask)


def _end(pid_fd: int, sock_fd: int, lifeline_fd: int) -> None:
    """Kill and reap a guard we launched by hand, and drop every fd the launch gave us."""
    signal.pidfd_send_signal(pid_fd, signal.SIGKILL)
    os.waitid(os.P_PIDFD, pid_fd, os.WEXITED)
    os.close(pid_fd)
    os.close(sock_fd)
    core.lifeline_release(lifeline_fd)


def test_a_launch_that_waits_returns_with_the_whole_start_already_reported() -> None:
    held = core.hold_signals()
    try:
        _, pid_fd, sock_fd, lifeline_fd, stage, _, _ = _launch(
            os.fsencode(guard_path()), (b"--contain", b"group"),
            (b"--", b"/bin/sleep", b"sleep", b"300"), wait_mask=held)
    finally:
        core.release_signals(held)
    assert pid_fd >= 0, f"the guard failed before its exec (stage {stage})"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, sock_fd)
    try:
        # No waiting here: both reports are queued by the time the launch returns.
        data, ancillary, _, _ = sock.recvmsg(_MSG.size, socket.CMSG_SPACE(4), socket.MSG_DONTWAIT)
        program_fd = struct.unpack("i", ancillary[0][2][:4])[0]
        assert _MSG.unpack(data)[0] == core.GUARD_MSG_PROGRAM
        started = _MSG.unpack(sock.recv(_MSG.size, socket.MSG_DONTWAIT))
        assert started[0] == core.GUARD_MSG_STARTED
        os.close(program_fd)
    finally:
        _end(pid_fd, sock.detach(), lifeline_fd)
    assert oracle.reap_until(10.0).empty  # the program died with its guard (PDEATHSIG)


def test_a_signal_ends_the_wait_for_the_start_at_once(tmp_path: Path) -> None:
    # A stand-in for the guard that holds the start pipe (it keeps every fd it is given) and
    # never reports: only the signal can end the wait. If the wait kept signals out, it
    # would last until the stand-in exits, which the assertion below would see; if it let
    # the handler run, KeyboardInterrupt would come out of the C call, fds unowned.
    stand_in = tmp_path / "never-reports"
    stand_in.write_text("#!/bin/sh\nexec sleep 20\n")
    stand_in.chmod(0o755)
    before = oracle.baseline_fds()
    held = core.hold_signals()
    try:
        signal.raise_signal(signal.SIGINT)  # pending until the wait lets it in
        _, pid_fd, sock_fd, lifeline_fd, _, _, _ = _launch(
            os.fsencode(stand_in), (), (), wait_mask=held)
        assert pid_fd >= 0
        still_running = select.select([pid_fd], [], [], 0)[0] == []
        _end(pid_fd, sock_fd, lifeline_fd)
        assert still_running, "the wait ended with the stand-in's exit, not with the signal"
    finally:
        with pytest.raises(KeyboardInterrupt):
            core.release_signals(held)
    assert oracle.no_descendants()
    assert oracle.open_fds() == before
