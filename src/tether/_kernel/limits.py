"""Limits and Usage: what a whole tree may use, and what it used, as frozen values.

The one rule this module owns: a :class:`Limits` value is checked when it is made, so a bad
one (negative, zero pids, an unknown unit) raises ``ValueError``/``TypeError`` before any
process or cgroup exists. Where each limit is written (cgroup v2 or a v1 hierarchy) is
``controllers``' job.
"""

from __future__ import annotations

import math
import re
from typing import Final, Literal

from tether._kernel.record import frozen_record

__all__ = ["Limits", "Usage", "format_bytes", "parse_size"]

_UNITS: Final = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A byte count from ``512M``, ``1.5G``, ``64MiB``, ``100k`` or ``4096`` (binary units,
    as systemd and cgroup files take them). ``ValueError`` for anything else."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (want a number with an optional unit "
                         "K, M, G or T, e.g. 512M)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: int) -> str:
    """``64 MiB``, ``1.5 GiB``: a byte count for humans."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Limits.{name} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"Limits.{name} must be {bound}, not {value}")


@frozen_record
class Limits:
    """Resource limits for a whole tree (every process in it, daemons included).

    ``memory`` (bytes; ``memory.max``, v1 ``memory.limit_in_bytes``: past it the kernel
    OOM-kills inside the tree, never outside), ``memory_high`` (bytes; the throttle point,
    v2 only), ``swap`` (bytes of swap on top of ``memory``), ``cpus`` (CPUs' worth of time per
    period, e.g. 1.5; ``cpu.max``, v1 CFS quota), ``pids`` (processes at once, the guard not
    counted; ``pids.max``), ``cpu_weight`` (1-10000, ``cpu.weight``, v1 ``cpu.shares``),
    ``io_weight`` (1-10000, ``io.weight``, v1 ``blkio.weight``). None: no limit. An empty
    ``Limits()`` asks for the tree's own cgroups (and so its full :class:`Usage`) only.

    Checked when made: a bad value raises ValueError/TypeError before anything starts. A
    limit whose controller this machine lacks raises :class:`tether.Unsupported` at spawn,
    naming it; none is ever ignored."""

    memory: int | None = None
    memory_high: int | None = None
    swap: int | None = None
    cpus: float | None = None
    pids: int | None = None
    cpu_weight: int | None = None
    io_weight: int | None = None

    def __post_init__(self) -> None:
        _check_int("memory", self.memory, 1)
        _check_int("memory_high", self.memory_high, 1)
        _check_int("swap", self.swap, 0)
        _check_int("pids", self.pids, 1)
        _check_int("cpu_weight", self.cpu_weight, 1, 10000)
        _check_int("io_weight", self.io_weight, 1, 10000)
        if self.cpus is not None:
            if isinstance(self.cpus, bool) or not isinstance(self.cpus, int | float):
                raise TypeError(f"Limits.cpus must be a number, not {type(self.cpus).__name__}")
            if not math.isfinite(self.cpus) or self.cpus < 0.01:
                raise ValueError(f"Limits.cpus must be at least 0.01, not {self.cpus}")
        if self.swap is not None and self.memory is None:
            raise ValueError("Limits.swap needs Limits.memory (swap is counted on top of it)")

    @classmethod
    def parse(cls, memory: str | None = None, cpus: str | None = None,
              pids: str | None = None) -> Limits:
        """From human units, as ``tether run --memory 512M --cpus 1.5 --pids 200`` takes
        them."""
        try:
            cpu_value = float(cpus) if cpus is not None else None
            pid_value = int(pids) if pids is not None else None
        except ValueError as exc:
            raise ValueError(f"bad limit: {exc}") from None
        return cls(memory=parse_size(memory) if memory is not None else None,
                   cpus=cpu_value, pids=pid_value)

    def describe(self) -> str:
        """``memory limit 64 MiB, 1.5 cpus``: the limits set, for messages."""
        parts = []
        if self.memory is not None:
            parts.append(f"memory limit {format_bytes(self.memory)}")
        if self.cpus is not None:
            parts.append(f"{self.cpus:g} cpus")
        if self.pids is not None:
            parts.append(f"pids limit {self.pids}")
        return ", ".join(parts)


#: Where a Usage's figures come from: the tree's own cgroups (every process of the tree,
#: daemons included), or the guard's RUSAGE_CHILDREN (every descendant it reaped).
UsageSource = Literal["cgroup", "rusage"]


@frozen_record
class Usage:
    """What a whole tree used: ``user``/``system`` CPU seconds, ``memory_peak`` (bytes, the
    tree's high-water mark), ``oom_kills`` (the OOM killer's kills inside the tree),
    ``pids_peak`` (most processes at once). None where this kernel or layout does not count
    it. ``source`` says what the figures cover: "cgroup" (the tree's cgroups: every process
    of it, daemons and reaped grandchildren included, the guard too) or "rusage" (a tree
    without cgroups of its own, once ended: the guard's ``RUSAGE_CHILDREN``, i.e. the CPU of
    every descendant that was reaped, to the millisecond, and as ``memory_peak`` the peak RSS
    of the largest single process, not of the tree; ``oom_kills`` and ``pids_peak`` None).
    A descendant nobody reaped (a daemon that left a process group) is not in it."""

    user: float
    system: float
    memory_peak: int | None = None
    oom_kills: int | None = None
    pids_peak: int | None = None
    source: UsageSource = "cgroup"

    @property
    def cpu(self) -> float:
        """user + system seconds."""
        return self.user + self.system

    def __str__(self) -> str:
        parts = [f"cpu {self.cpu:.3f}s (user {self.user:.3f}s, sys {self.system:.3f}s)"]
        if self.memory_peak is not None and self.source == "rusage":
            parts.append(f"peak RSS {format_bytes(self.memory_peak)} (largest process)")
        elif self.memory_peak is not None:
            parts.append(f"peak memory {format_bytes(self.memory_peak)}")
        if self.pids_peak is not None:
            parts.append(f"peak pids {self.pids_peak}")
        if self.oom_kills:
            parts.append(f"oom kills {self.oom_kills}")
        return ", ".join(parts)
