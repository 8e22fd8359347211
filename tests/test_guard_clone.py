"""The guard's clone method: a parent forced onto the legacy clone(CLONE_PIDFD) fallback makes
its guards use it too, so the legacy re-runs of the suites (conftest's each_clone_method) test
the guard's clone path as well as the extension's.

The observable is the guard's start report (MSG_STARTED, b = the method that cloned the
program, guard_proto.h), and, to show that report is what really ran, a guard under a seccomp
filter that refuses the clone(2) syscall: with ``--clone legacy`` it can no longer start
anything, while its default clone3 path is untouched."""

from __future__ import annotations

import errno
import os
import platform
import shutil
import socket
import struct
import sys
from collections.abc import Iterator

import pytest

import tether
from tether._kernel import core, features
from tether._kernel.fds import recv_with_fds
from tether._tree import guard_wire
from tether._tree.guarded import Guard
from tether._tree.modes import guard_path

PY = sys.executable
TRUE = shutil.which("true") or "/bin/true"

# Runs argv[1:] under a seccomp filter that makes the legacy clone(2) syscall fail with EPERM
# (clone3 and everything else allowed). x86_64 and aarch64 only.
DENY_CLONE = r"""
import ctypes, os, platform, struct, sys
arch, nr = {"x86_64": (0xC000003E, 56), "aarch64": (0xC00000B7, 220)}[platform.machine()]
ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1
code = [
    (0x20, 0, 0, 4),      # ld arch
    (0x15, 0, 3, arch),   # not this arch: allow
    (0x20, 0, 0, 0),      # ld syscall nr
    (0x15, 0, 1, nr),     # clone(2)?
    (0x06, 0, 0, EPERM),
    (0x06, 0, 0, ALLOW),
]
buf = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in code))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(code), ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:
    sys.exit("seccomp: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.fixture
def forced_legacy() -> Iterator[None]:
    features.force_clone_method(core.CLONE_LEGACY)
    try:
        yield
    finally:
        features.force_clone_method(None)


@pytest.fixture
def start_reports(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every guard start report, as (kind, a, b): a spy on Guard's message handler (the start
    is read with the start's reports, or, where the overlapped start knew the exec from the
    program's exec pipe, later with the end's, where core.read_end would skip a MSG_STARTED
    that says nothing new to Guard: here it is handed over, so the spy sees it)."""
    reports: list[tuple[int, int, int]] = []
    real = Guard._handle
    real_end = core.read_end

    def read_end_handing_over(sock_fd: int, guard_fd: int, out: list[object],
                              skip_started: bool = False) -> object:
        return real_end(sock_fd, guard_fd, out, False)  # type: ignore[arg-type]

    def spy(self: Guard, data: bytes, *args: object) -> bool:
        if len(data) >= core.GUARD_MSG_SIZE:
            kind, a, b, *_ = guard_wire.MSG.unpack(data[:core.GUARD_MSG_SIZE])
            if kind in (core.GUARD_MSG_STARTED, core.GUARD_MSG_FAILED):
                reports.append((kind, a, b))
        return real(self, data, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Guard, "_handle", spy)
    monkeypatch.setattr(core, "read_end", read_end_handing_over)
    return reports


def _require_clone3() -> None:
    if features.clone_method() != core.CLONE_CLONE3:
        pytest.skip("clone3 is blocked here: the guard's legacy clone is its only path")


def _guard_first_report(opts: list[str], *, deny_clone: bool = False) -> tuple[int, int, int, str]:
    """Start the guard directly over `true` (as Guard.launch does, without the Python side);
    return its first report (kind, a, b) and what it wrote on stderr."""
    parent_sock, guard_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe()
    argv = [guard_path(), "--control", str(guard_sock.fileno()), *opts, "--", TRUE, "true"]
    if deny_clone:
        argv = [PY, "-c", DENY_CLONE, *argv]
    try:
        with parent_sock:
            try:
                spawned = tether.spawn_lifelined(
                    argv, pass_fds=[guard_sock.fileno()], stderr=err_w)
            finally:
                guard_sock.close()
                os.close(err_w)
            while True:  # past the program's own announcement (MSG_PROGRAM), if any
                data, fds, _ = recv_with_fds(parent_sock, core.GUARD_MSG_SIZE, 0)
                for fd in fds:
                    os.close(fd)
                if data[:4] != struct.pack("=I", core.GUARD_MSG_PROGRAM):
                    break
            spawned.pidfd.wait()  # `true` is quick; the guard reports its exit and is done
            spawned.pidfd.close()
            spawned.lifeline.close()
        with os.fdopen(err_r, "rb") as f:
            err_r = -1
            stderr = f.read().decode(errors="replace")
    finally:
        if err_r >= 0:
            os.close(err_r)
    assert len(data) == core.GUARD_MSG_SIZE, f"no report from the guard; stderr: {stderr!r}"
    kind, a, b, *_ = guard_wire.MSG.unpack(data)
    return kind, a, b, stderr


def test_forced_legacy_parent_makes_the_guard_clone_with_legacy(
    forced_legacy: None, start_reports: list[tuple[int, int, int]]
) -> None:
    assert tether.run([TRUE]).returncode == 0
    assert [(kind, b) for kind, _, b in start_reports] == [
        (core.GUARD_MSG_STARTED, core.CLONE_LEGACY)]


def test_guard_clones_with_clone3_when_nothing_is_forced(
    start_reports: list[tuple[int, int, int]]
) -> None:
    _require_clone3()
    assert tether.run([TRUE]).returncode == 0
    assert [(kind, b) for kind, _, b in start_reports] == [
        (core.GUARD_MSG_STARTED, core.CLONE_CLONE3)]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="seccomp filter "
                    "written for x86_64 and aarch64 syscall numbers")
def test_guard_clone_legacy_really_is_the_clone_syscall() -> None:
    _require_clone3()
    # Without the filter, --clone legacy starts the program and says so.
    kind, _, b, _ = _guard_first_report(["--clone", "legacy"])
    assert (kind, b) == (core.GUARD_MSG_STARTED, core.CLONE_LEGACY)
    # With clone(2) refused, the default (clone3) path still starts it ...
    kind, _, b, stderr = _guard_first_report([], deny_clone=True)
    assert (kind, b) == (core.GUARD_MSG_STARTED, core.CLONE_CLONE3), stderr
    # ... and --clone legacy fails in the clone itself, with the filter's errno: it is the
    # legacy syscall the guard uses, with no silent way back to clone3.
    kind, stage, err, stderr = _guard_first_report(["--clone", "legacy"], deny_clone=True)
    assert (kind, stage, err) == (core.GUARD_MSG_FAILED, 101, errno.EPERM), stderr
    assert core.STAGES[stage] == "clone in the guard"


def test_guard_refuses_cgroup_mode_with_the_legacy_clone() -> None:
    # CLONE_INTO_CGROUP rides on clone3 only: the guard says so rather than start the program
    # outside the cgroup.
    kind, stage, err, stderr = _guard_first_report(["--contain", "cgroup", "--clone", "legacy"])
    assert (kind, stage, err) == (core.GUARD_MSG_FAILED, 100, errno.EINVAL)
    assert "cgroup mode needs clone3" in stderr


def test_forced_legacy_parent_refuses_cgroup_mode(forced_legacy: None) -> None:
    with pytest.raises(tether.Unsupported, match="clone3"):
        tether.spawn([TRUE], contain="cgroup")


def test_guard_rejects_an_unknown_clone_method() -> None:
    kind, stage, err, stderr = _guard_first_report(["--clone", "fork"])
    assert (kind, stage, err) == (core.GUARD_MSG_FAILED, 100, errno.EINVAL)
    assert "bad --clone" in stderr


def test_stage_table_holds_the_child_and_the_guard_stages() -> None:
    # The guard's setup stages (guard_proto.h) sit beside the child's (clone.h) in one table.
    assert core.STAGES[core.STAGE_EXEC] == "exec"
    assert core.STAGES[core.STAGE_CHDIR] == "chdir"
    assert {100, 101, 102, 103} <= core.STAGES.keys()
    assert guard_wire.MSG.size == core.GUARD_MSG_SIZE


def test_guard_reads_usage_only_from_the_cgroups_it_holds() -> None:
    # --usage-* names a directory the guard joined (--join-cgroup) or its cgroup mode one:
    # any other fd, or one of 0-2, is refused before the program exists.
    kind, stage, err, _ = _guard_first_report(["--usage-pids", "999"])
    assert (kind, stage, err) == (core.GUARD_MSG_FAILED, 100, errno.EBADF)
    kind, stage, err, stderr = _guard_first_report(["--usage-memory", "1"])
    assert (kind, stage, err) == (core.GUARD_MSG_FAILED, 100, errno.EINVAL)
    assert "bad fd for --usage-memory" in stderr


def test_guard_refuses_a_join_cgroup_fd_that_is_not_open() -> None:
    kind, stage, err, _ = _guard_first_report(["--join-cgroup", "999"])
    assert (kind, stage, err) == (core.GUARD_MSG_FAILED, 100, errno.EBADF)
