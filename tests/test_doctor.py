"""tether doctor: every row says what the probe observed here, never what it presumes."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tether._kernel import core
from tether._tree import doctor


def rows_when(monkeypatch: pytest.MonkeyPatch, method: int, clone3_errno: int,
              legacy_errno: int) -> dict[str, doctor.Row]:
    """doctor's rows on a machine whose clone probe answered this (as under seccomp)."""
    monkeypatch.setattr(core, "clone_method", lambda: (method, clone3_errno, legacy_errno))
    rows, _ = doctor.probe_all()
    return {row.name: row for row in rows}


def test_both_clones_blocked_says_no_clone_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = rows_when(monkeypatch, core.CLONE_NONE, errno.EPERM, errno.EPERM)
    seccomp = rows["seccomp lets clone3 through"]
    assert not seccomp.here
    assert "legacy clone is used" not in seccomp.detail
    assert "works and is used" not in seccomp.detail
    assert "no clone is used" in seccomp.detail
    assert not rows["CLONE_PIDFD"].here
    assert rows["CLONE_PIDFD"].detail.count("EPERM") == 2


def test_clone3_einval_is_not_reported_as_let_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter (or an old kernel) answering clone3 with EINVAL: clone3 did not get
    through, whatever the reason; the row says EINVAL came back and the legacy clone ran."""
    rows = rows_when(monkeypatch, core.CLONE_LEGACY, errno.EINVAL, 0)
    seccomp = rows["seccomp lets clone3 through"]
    assert not seccomp.here
    assert "clone3 answered EINVAL" in seccomp.detail
    assert "legacy clone(CLONE_PIDFD) works and is used" in seccomp.detail
    assert rows["CLONE_PIDFD"].here


def test_clone3_blocked_with_eperm_legacy_used(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = rows_when(monkeypatch, core.CLONE_LEGACY, errno.EPERM, 0)
    assert rows["clone3"].detail == "clone3 answered EPERM"
    assert "legacy clone(CLONE_PIDFD) works and is used" in rows[
        "seccomp lets clone3 through"].detail


def test_rows_here_match_this_machines_probe() -> None:
    method, _, _ = core.clone_method()
    rows = {row.name: row for row in doctor.probe_all()[0]}
    assert rows["clone3"].here == (method == core.CLONE_CLONE3)
    assert rows["seccomp lets clone3 through"].here == (method == core.CLONE_CLONE3)


def test_guard_build_row_names_a_libc_build_as_such(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    guard = tmp_path / "_guard"
    guard.write_bytes(b"\x7fELF\0tether-guard-build: glibc static\0")
    monkeypatch.setattr(doctor, "guard_path", lambda: str(guard))
    row = doctor.guard_build_row()
    assert not row.here
    assert row.detail == "guard: glibc static"


def test_guard_build_row_says_libc_free(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    guard = tmp_path / "_guard"
    guard.write_bytes(b"\x7fELF\0tether-guard-build: libc-free (x86_64)\0")
    monkeypatch.setattr(doctor, "guard_path", lambda: str(guard))
    row = doctor.guard_build_row()
    assert row.here
    assert row.detail == "guard: libc-free (x86_64)"


def test_the_fd_table_row_says_which_path_spawns_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the probe's child could not unshare (a kernel before 5.9, a filter), spawns copy
    the table: the row says so and why; where it could, that they share it."""
    here = {row.name: row for row in doctor.probe_all()[0]}["CLOSE_RANGE_UNSHARE"]
    if core.close_range_supported():
        assert here.here and "share the fd table" in here.detail
    monkeypatch.setattr(core, "fd_table_sharing", lambda method: (False, errno.ENOSYS))
    row = {row.name: row for row in doctor.probe_all()[0]}["CLOSE_RANGE_UNSHARE"]
    assert not row.here
    assert "copy the whole fd table" in row.detail and "ENOSYS" in row.detail
