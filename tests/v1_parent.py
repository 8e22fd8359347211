"""A private cgroup v1 parent for one test's limited trees (TETHER_CGROUP_V1_SUBDIR), so that a
second copy of the suite never shares its directories or its pools, and the per-tree
directories found below it. Shared by the limits tests (test_limits.py,
test_limits_orphaned.py, test_v1_pool.py)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import pytest

from tether._kernel import controllers, v1_pool


def tree_dirs(places: dict[str, str]) -> set[str]:
    """Every per-tree v1 directory below the private parents of ``places``."""
    found: set[str] = set()
    for where in set(places.values()) - {"v2"}:
        parent = os.path.join(where, "tether")
        with contextlib.suppress(FileNotFoundError):
            found |= {os.path.join(parent, n) for n in os.listdir(parent) if n.startswith("t-")}
    return found


@contextlib.contextmanager
def private_v1_parent(monkeypatch: pytest.MonkeyPatch, need: tuple[str, ...], *,
                      on_v1: bool) -> Iterator[dict[str, str]]:
    """The controllers' places, with this test's private v1 parent (inherited by processes
    the test starts); skips unless every controller of ``need`` is there (on a v1 hierarchy,
    if ``on_v1``). Afterwards the process's pools are drained and the private parents
    removed."""
    monkeypatch.setenv(controllers.V1_SUBDIR_ENV, f"tether-tests-{secrets.token_hex(4)}")
    controllers.forget_layout()
    found = controllers.controller_places()
    if any(found.get(c, "v2") == "v2" if on_v1 else c not in found for c in need):
        where = "on v1 hierarchies " if on_v1 else ""
        pytest.skip(f"{', '.join(need)} controllers {where}needed; this machine has {found}")
    try:
        yield found
    finally:
        v1_pool.drain()
        for where in set(found.values()) - {"v2"}:
            for path in (os.path.join(where, "tether"), where):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        controllers.forget_layout()
