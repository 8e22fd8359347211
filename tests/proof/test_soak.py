"""Soak: many spawns across every way tether makes a process (spawn_lifelined, spawn in the
group, cgroup and pidns modes, run_in_fork, run), from this test process, and nothing may
accumulate.

The guarantee under attack: a finished spawn leaves nothing behind in the parent. Sampled
50 times over the run, compared between the first and the last tenth of the samples:

* open fds (our own fd table): exactly equal;
* tether's per-tree cgroup directories: exactly equal (and zero);
* zombies: none pending, ever (``waitid(P_ALL, WNOHANG|WNOWAIT|WEXITED)``: nothing to reap);
* resident memory (``/proc/self/statm`` of this process): the last tenth's median may exceed
  the first tenth's by at most a small allowance for allocator noise (RSS_SLACK).

The same checker must report every one of those four against a deliberately leaky spawner.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final, Protocol

import tether
from oracle import open_fds, reap_until, zombie_pending

from ._harness import Pen, record, rss_bytes, size

SAMPLES: Final = 50
RSS_SLACK: Final = 4 << 20  # bytes the last tenth's median RSS may exceed the first tenth's by

# Cheap kinds more often; every kind many times.
SCHEDULE: Final = (
    "lifelined", "group", "pidns", "lifelined", "fork", "run", "lifelined", "group", "cgroup",
    "lifelined", "pidns", "fork", "lifelined", "group", "run", "lifelined", "pidns", "fork",
    "group", "cgroup",
)


class Spawner(Protocol):
    def one(self, i: int) -> str: ...


class TetherSpawner:
    """One finished spawn per call, each kind through tether's public API."""

    def __init__(self, pen: Pen) -> None:
        self.pen = pen

    def one(self, i: int) -> str:
        kind = SCHEDULE[i % len(SCHEDULE)]
        if kind == "lifelined":
            s = tether.spawn_lifelined(["true"])
            assert s.pidfd.wait().code == 0
            s.pidfd.close()
            s.lifeline.close()
        elif kind == "fork":
            s = tether.run_in_fork(int)
            assert s.pidfd.wait().code == 0
            s.pidfd.close()
            s.lifeline.close()
        elif kind == "run":
            assert tether.run(["true"]).returncode == 0
        else:
            with tether.spawn(["true"], contain=kind, cgroup_root=self.pen.path) as child:
                assert child.wait() == 0
        return kind


class LeakySpawner:
    """Broken on purpose, in every way the soak watches: never reaps (zombies), keeps an fd
    per spawn, keeps memory per spawn, and leaves a cgroup directory now and then."""

    def __init__(self, pen: Pen) -> None:
        self.pen = pen
        self.fds: list[int] = []
        self.ballast: list[bytes] = []
        self.dirs: list[str] = []

    def one(self, i: int) -> str:
        pid = os.posix_spawn("/bin/true", ["true"], os.environ)
        # Our own child, not reaped: its number cannot be stale. Test code only.
        self.fds.append(os.pidfd_open(pid))
        self.ballast.append(bytes([i % 251 + 1]) * (64 << 10))
        if i % 10 == 0:
            os.makedirs(self.pen.trees, exist_ok=True)
            path = os.path.join(self.pen.trees, f"t-leak-{i}")
            os.mkdir(path)
            self.dirs.append(path)
        return "leaky"

    def cleanup(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.ballast.clear()
        reap_until(5.0)
        for path in self.dirs:
            os.rmdir(path)


@dataclass
class Sample:
    done: int
    fds: int
    rss: int
    cgroups: int
    zombie: bool


@dataclass
class SoakReport:
    samples: list[Sample] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def windows(self) -> tuple[list[Sample], list[Sample]]:
        tenth = max(1, len(self.samples) // 10)
        return self.samples[:tenth], self.samples[-tenth:]

    def problems(self) -> list[str]:
        first, last = self.windows()
        out = []
        fds = {s.fds for s in first} | {s.fds for s in last}
        if len(fds) != 1:
            out.append(f"fds: first tenth {[s.fds for s in first]}, "
                       f"last tenth {[s.fds for s in last]}")
        cgroups = {s.cgroups for s in first} | {s.cgroups for s in last}
        if cgroups != {0}:
            out.append(f"cgroup dirs: first tenth {[s.cgroups for s in first]}, "
                       f"last tenth {[s.cgroups for s in last]}")
        zombies = [s.done for s in self.samples if s.zombie]
        if zombies:
            out.append(f"zombies pending at {len(zombies)} of {len(self.samples)} samples")
        grew = self.rss_growth()
        if grew > RSS_SLACK:
            out.append(f"rss grew by {grew / 2**20:.1f} MiB (median of the last tenth vs the "
                       f"first), more than {RSS_SLACK / 2**20:.0f} MiB")
        return out

    def rss_growth(self) -> int:
        first, last = self.windows()
        return int(statistics.median(s.rss for s in last)
                   - statistics.median(s.rss for s in first))


def check_soak(spawner: Spawner, pen: Pen, total: int) -> SoakReport:
    report = SoakReport()
    every = max(1, total // SAMPLES)
    start = time.monotonic()
    for i in range(total):
        report.kinds[spawner.one(i)] += 1
        if (i + 1) % every == 0:
            report.samples.append(Sample(
                done=i + 1, fds=len(open_fds()), rss=rss_bytes(), cgroups=len(pen.tree_dirs()),
                zombie=zombie_pending(),
            ))
    report.seconds = time.monotonic() - start
    return report


def test_many_spawns_leave_nothing_behind(pen: Pen) -> None:
    from conftest import require_mode

    require_mode("cgroup")
    require_mode("pidns")
    total = size(2000, 100_000)
    report = check_soak(TetherSpawner(pen), pen, total)
    first, last = report.windows()
    record(
        "soak",
        f"{total} spawns in {report.seconds:.1f} s ({dict(sorted(report.kinds.items()))}); "
        f"fds {first[0].fds}->{last[-1].fds}, cgroup dirs {first[0].cgroups}->"
        f"{last[-1].cgroups}, zombies seen {sum(s.zombie for s in report.samples)}, "
        f"rss {first[0].rss / 2**20:.1f}->{last[-1].rss / 2**20:.1f} MiB "
        f"(median growth first->last tenth {report.rss_growth() / 2**20:+.2f} MiB)",
        spawns=total, seconds=report.seconds, kinds=dict(report.kinds),
        fds=[s.fds for s in report.samples], rss=[s.rss for s in report.samples],
        cgroups=[s.cgroups for s in report.samples],
    )
    assert report.problems() == []


def test_checker_catches_a_leaky_spawner(pen: Pen) -> None:
    leaky = LeakySpawner(pen)
    try:
        report = check_soak(leaky, pen, 300)
        found = "\n".join(report.problems())
    finally:
        leaky.cleanup()
    for what in ("fds:", "cgroup dirs:", "zombies pending", "rss grew"):
        assert what in found, found

