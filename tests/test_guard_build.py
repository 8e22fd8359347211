"""The guard's build: on x86_64 and aarch64 the installed guard links no libc, and the build
kind is read from the binary's own marker (what `tether doctor` and the benchmarks report)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tether._kernel.guard_build import UNKNOWN_BUILD, guard_build
from tether._tree.modes import guard_path

LIBC_FREE_MACHINES = {"x86_64": "x86_64", "aarch64": "aarch64"}


def test_installed_guard_links_no_libc() -> None:
    """The default build (no musl, no override) gives the freestanding guard where nolibc/
    has the architecture; a silent fall back to a libc build fails here."""
    arch = LIBC_FREE_MACHINES.get(os.uname().machine)
    if arch is None:
        pytest.skip(f"no libc-free runtime for {os.uname().machine}: the libc build is right")
    assert guard_build(guard_path()) == f"libc-free ({arch})"


def test_build_kind_is_the_marker_up_to_its_nul(tmp_path: Path) -> None:
    binary = tmp_path / "guard"
    binary.write_bytes(b"\x7fELF junk\0tether-guard-build: musl static\0more\0")
    assert guard_build(str(binary)) == "musl static"


def test_a_guard_without_the_marker_is_unknown(tmp_path: Path) -> None:
    binary = tmp_path / "guard"
    binary.write_bytes(b"\x7fELF an older guard\0")
    assert guard_build(str(binary)) == UNKNOWN_BUILD
