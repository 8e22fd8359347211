"""What each limit writes: the cgroup files and values of a :class:`~tether.Limits`, per
cgroup version.

The one rule this module owns: a limit is one or more file writes in its controller's
directory, the v2 file where the controller is on cgroup v2, the v1 one otherwise; a limit
whose controller is nowhere tether can use here, or that has no file in that version, is
``Unsupported`` before anything is made (``checked_writes``). Where the directories are and
the writes themselves are ``controllers``'.
"""

from __future__ import annotations

import errno
from typing import Final

from tether._kernel.errors import Unsupported
from tether._kernel.limits import Limits

__all__ = ["Writes", "checked_writes", "limit_writes"]

_CFS_PERIOD_US: Final = 100_000

# field -> (controller, [(v2 file, value)], [(v1 file, value)]); an empty list: not there.
Writes = list[tuple[str, str]]


def limit_writes(limits: Limits, guard_inside: bool) -> list[tuple[str, str, Writes, Writes]]:
    """(field, controller, v2 writes, v1 writes) per limit set; ``guard_inside``: the guard
    joins the tree's pids cgroup itself (every mode but cgroup), so pids.max counts it."""
    out: list[tuple[str, str, Writes, Writes]] = []
    if limits.memory is not None:
        out.append(("memory", "memory", [("memory.max", str(limits.memory))],
                    [("memory.limit_in_bytes", str(limits.memory))]))
    if limits.memory_high is not None:
        out.append(("memory_high", "memory", [("memory.high", str(limits.memory_high))], []))
    if limits.swap is not None and limits.memory is not None:
        out.append(("swap", "memory", [("memory.swap.max", str(limits.swap))],
                    [("memory.memsw.limit_in_bytes", str(limits.memory + limits.swap))]))
    if limits.cpus is not None:
        quota = max(1000, round(limits.cpus * _CFS_PERIOD_US))
        out.append(("cpus", "cpu", [("cpu.max", f"{quota} {_CFS_PERIOD_US}")],
                    [("cpu.cfs_period_us", str(_CFS_PERIOD_US)),
                     ("cpu.cfs_quota_us", str(quota))]))
    if limits.pids is not None:
        # The guard is a member where it joined the cgroup itself: not counted.
        out.append(("pids", "pids", [("pids.max", str(limits.pids + guard_inside))],
                    [("pids.max", str(limits.pids + 1))]))
    if limits.cpu_weight is not None:
        shares = max(2, limits.cpu_weight * 1024 // 100)
        out.append(("cpu_weight", "cpu", [("cpu.weight", str(limits.cpu_weight))],
                    [("cpu.shares", str(shares))]))
    if limits.io_weight is not None:
        out.append(("io_weight", "io", [("io.weight", f"default {limits.io_weight}")],
                    [("blkio.weight", str(min(1000, max(10, limits.io_weight // 10))))]))
    return out


def checked_writes(limits: Limits, places: dict[str, str],
                   guard_inside: bool) -> list[tuple[str, str, Writes, Writes]]:
    """:func:`limit_writes`, once every limit's controller is known to be somewhere usable
    (``places``: ``controllers.controller_places()``) with a file for it there."""
    writes = limit_writes(limits, guard_inside)
    for field, controller, v2_files, v1_files in writes:
        where = places.get(controller)
        if where is None or (where == "v2" and not v2_files) or (
                where != "v2" and not v1_files):
            kind = "v2" if where == "v2" else "v1" if where else "any"
            raise Unsupported(errno.EOPNOTSUPP, f"Limits.{field} needs the {controller} "
                              f"controller, which this machine has on no {kind} cgroup "
                              "hierarchy tether can use here (see `tether doctor`)")
    return writes
