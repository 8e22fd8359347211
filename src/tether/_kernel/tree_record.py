"""What ``tether ps`` knows about a tree: a record kept on the tree's own cgroup v2 directory.

The one rule this module owns: a tree's record lives and dies with its v2 directory, as
``user.tether.*`` extended attributes on it (cgroupfs takes no files of ours, but kernfs
keeps ``user.`` xattrs on cgroup v2 directories since 5.7; verified on 6.18), written by the
parent right after it made the directory and before the guard exists. So there is no second
place to clean up and nothing to go stale: an ended tree's directory, and its record, are
gone. Who started the tree is the directory's owner (it is made 0700 by the starter). A
kernel or filesystem without those xattrs leaves the tree unrecorded (``tether ps`` shows it
without program and start time, and says so); the tree itself is never refused for that.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Sequence
from typing import Final

from tether._kernel.limits import Limits

__all__ = ["TreeRecord", "read_record", "write_record"]

_PREFIX: Final = "user.tether."
#: errnos meaning "this filesystem or kernel keeps no user xattrs here": record nothing.
_NO_XATTRS: Final = frozenset((errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENOSPC,
                               errno.E2BIG))


def write_record(path: str | int, argv: Sequence[bytes], limits: Limits | None,
                 v1_dirs: Sequence[str]) -> None:
    """Record ``argv``, the start time, the limits and the tree's v1 directories on the
    tree's v2 directory ``path`` (or an fd open on it: no path walk per attribute).
    Attributes with nothing to say (no limits, no v1 directories) are not written: a
    missing one reads as empty, and each write is a syscall on every start."""
    items = {
        "argv": b"\0".join(argv),
        "started": repr(time.time()).encode(),
    }
    if v1_dirs:
        items["v1"] = "\n".join(v1_dirs).encode()
    if limits is not None:
        items["limits"] = " ".join(
            f"{name}={value!r}" for name in ("memory", "cpus", "pids")
            if (value := getattr(limits, name)) is not None).encode()
    for name, value in items.items():
        try:
            os.setxattr(path, _PREFIX + name, value)
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                return
            raise


class TreeRecord:
    """A tree's record: ``argv`` (None: not recorded), ``started`` (Unix time), ``limits``
    (name -> value as written), ``v1`` (its v1 directories)."""

    __slots__ = ("argv", "limits", "started", "v1")

    def __init__(self, argv: list[str] | None, started: float | None,
                 limits: dict[str, float], v1: list[str]) -> None:
        self.argv = argv
        self.started = started
        self.limits = limits
        self.v1 = v1


def read_record(path: str) -> TreeRecord:
    """The record on ``path`` (fields None/empty where it has none)."""
    def get(name: str) -> bytes | None:
        try:
            return os.getxattr(path, _PREFIX + name)
        except OSError:
            return None

    argv_raw, started_raw = get("argv"), get("started")
    argv = [a.decode(errors="replace") for a in argv_raw.split(b"\0")] \
        if argv_raw is not None else None
    limits: dict[str, float] = {}
    for item in (get("limits") or b"").decode().split():
        key, _, value = item.partition("=")
        number = float(value)
        limits[key] = int(number) if key != "cpus" and number.is_integer() else number
    v1 = [d for d in (get("v1") or b"").decode().split("\n") if d]
    return TreeRecord(argv, float(started_raw) if started_raw else None, limits, v1)
