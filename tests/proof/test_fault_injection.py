"""Fault injection: a tether-using parent is SIGKILLed at random moments, and at precise
points, while it spawns, sets up lifelines, starts guards, makes cgroups and PID namespaces,
waits and terminates, in every containment mode (group, cgroup, pidns) and with
spawn_lifelined+attach and run_in_fork.

The guarantee under attack: when the parent dies, however and whenever it dies, nothing it
started outlives it. Oracle: this test process is a child subreaper, so every orphan comes
back to it; ``waitid(P_ALL)`` answering ECHILD within 1 s of the kill means no descendant is
left. cgroup directories: a tree's directory is removed by its guard; one made by a parent
that died before its guard existed is left empty and unlocked, and the *next* tether start
sweeps it (``tether._cgroup`` docstring). Both halves are checked, the second by the next
trial's fresh parent and, at the end, by one more fresh process.

How the kills hit "during": the parent loops spawning and retiring trees without pause and
writes a marker (point, CLOCK_MONOTONIC ns) at each step, including steps inside tether that
the parent script instruments by wrapping tether's internals (``TETHER_PROOF_MARK_FD``,
read only by this script). Three ways to kill it:

* ``die``: ``TETHER_PROOF_DIE_AT=point:n`` makes the parent SIGKILL itself the n-th time it
  reaches ``point``: exact, e.g. between the cgroup mkdir and its flock;
* ``aim``: the test waits for a marker, then kills after a random 0-2 ms;
* ``random``: the test kills after a delay drawn uniformly over several loop iterations,
  which also lands inside the C parts (the clone, the guard's start) no marker can name.

Where each kill landed is the last marker the parent wrote; the histogram is reported.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import tether
from oracle import cgroup_locked, cgroup_populated, reap_until

from ._harness import (
    FULL,
    PY,
    Lines,
    Marker,
    Pen,
    ms_summary,
    percentile,
    python_env,
    record,
    report_pipe,
    size,
)

PARENT = r'''
import fcntl, os, random, signal, subprocess, sys, time

ME = os.getpid()
MARK_FD = int(os.environ["TETHER_PROOF_MARK_FD"])
_die_point, _, _die_n = os.environ.get("TETHER_PROOF_DIE_AT", "").partition(":")
_die_n = int(_die_n or 0)
_reached = {}


def mark(point, arg=""):
    if os.getpid() != ME:
        return  # a forked child of ours runs this code too: only the parent reports
    os.write(MARK_FD, ("%s %d %s\n" % (point, time.monotonic_ns(), arg)).encode())
    if point == _die_point:
        n = _reached[point] = _reached.get(point, 0) + 1
        if n == _die_n:
            os.kill(ME, signal.SIGKILL)


import tether
from tether._kernel import cgroup as _cgroup
from tether._kernel import core as _core
from tether._kernel import fork as _fork
from tether._tree import guarded as _guard
from tether._kernel import spawn as _spawn

tether.attach()  # safety net only: if the *test* dies, so do we


def around(owner, name, before=None, after=None):
    orig = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if before:
            mark(before)
        result = orig(*args, **kwargs)
        if after:
            mark(after)
        return result

    setattr(owner, name, wrapper)


around(_core, "spawn", "clone", "cloned")
around(_core, "launch_guard", "clone", "cloned")  # a guard's lifeline is made in there too
around(_spawn, "new_lifeline", None, "lifeline")
around(_fork, "new_lifeline", None, "lifeline")
around(_cgroup, "_sweep_once", "sweep", "swept")
around(_guard.Guard, "await_start", "guard-spawned", "guard-started")
around(_guard, "reap_quietly", "guard-reap")
around(_core, "read_end", "guard-reap")  # a blocking wait reads the end and reaps the guard in C
around(_cgroup.CgroupTree, "remove", "cg-remove")


class _Os:
    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def mkdir(path, *args, **kwargs):
        os.mkdir(path, *args, **kwargs)
        mark("cg-mkdir", os.path.basename(path))

    @staticmethod
    def fork():
        pid = os.fork()
        if pid:
            mark("forked")
        return pid


class _Fcntl:
    def __getattr__(self, name):
        return getattr(fcntl, name)

    @staticmethod
    def flock(fd, op):
        fcntl.flock(fd, op)
        mark("cg-flock")


_cgroup.os = _Os()
_cgroup.fcntl = _Fcntl()
_fork.os = _Os()

kind, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
DEVNULL = subprocess.DEVNULL
TREE = "sleep 300 & sleep 300 & wait"
DAEMON_TREE = "setsid sh -c 'sleep 300 & exit 0' & sleep 300 & wait"
SHORT = "sleep 300 & exit 0"  # the program exits at once; the guard ends the rest
ATTACHED = (
    "import sys, time, tether\n"
    "tether.attach()\n"
    "g = tether.spawn_lifelined(['sleep', '300'], process_group=False)\n"
    "c = tether.spawn(['sh', '-c', 'sleep 300 & sleep 300 & wait'])\n"
    "if sys.argv[1] == 'exit':\n"
    "    c.kill(); c.wait(); g.pidfd.send_signal(9); g.pidfd.wait(); sys.exit(0)\n"
    "time.sleep(300)\n"
)


def fork_body(how):
    c = tether.spawn(["sh", "-c", TREE])
    g = tether.spawn_lifelined(["sleep", "300"], process_group=False)
    if how == "exit":
        c.kill(); c.wait(); g.pidfd.send_signal(9); g.pidfd.wait()
        return
    time.sleep(300)


def guarded(mode):
    live, i = [], 0
    while True:
        i += 1
        short = i % 4 == 3
        cmd = SHORT if short else (TREE if mode == "group" else DAEMON_TREE)
        mark("spawn")
        child = tether.spawn(["sh", "-c", cmd], contain=mode, stdin=DEVNULL)
        mark("spawned")
        if short:
            mark("wait"); child.wait(); mark("waited")
            continue
        live.append(child)
        if len(live) < 3:
            continue
        old = live.pop(0)
        how = i % 3
        if how == 0:
            mark("terminate"); old.terminate()
        elif how == 1:
            mark("kill"); old.kill()
        else:
            mark("exit"); old.__exit__(None, None, None)
        mark("wait"); old.wait(); mark("waited")


def lifelined(start):
    live, i = [], 0
    while True:
        i += 1
        how = "exit" if i % 3 == 0 else "stay"
        mark("spawn")
        s = start(how)
        mark("spawned")
        if how == "exit":
            mark("wait"); s.pidfd.wait(); s.lifeline.close(); mark("waited")
            continue
        live.append(s)
        if len(live) < 2:
            continue
        old = live.pop(0)
        if i % 2:
            mark("cut"); old.lifeline.close()
        else:
            mark("kill"); old.pidfd.send_signal(signal.SIGKILL, process_group=True)
        mark("wait"); old.pidfd.wait(); old.lifeline.close(); mark("waited")


def broken(into_cgroup):
    # No lifeline, no guard, no containment: what subprocess gives you.
    root = os.environ.get("TETHER_CGROUP_ROOT", "")
    live = []
    for i in range(3):
        cmd = TREE
        if into_cgroup:
            d = os.path.join(root, "tether", "t-broken-%d-%d" % (ME, i))
            os.makedirs(d)
            cmd = "echo $$ > %s/cgroup.procs && exec sh -c '%s'" % (d, TREE)
        mark("spawn")
        live.append(subprocess.Popen(["sh", "-c", cmd], start_new_session=True, stdin=DEVNULL))
        mark("spawned")
    mark("idle")
    time.sleep(300)


mark("ready")
if kind in ("group", "cgroup", "pidns"):
    guarded(kind)
elif kind == "lifelined":
    lifelined(lambda how: tether.spawn_lifelined(
        [sys.executable, "-S", "-c", ATTACHED, how], stdin=DEVNULL))
elif kind == "fork":
    lifelined(lambda how: tether.run_in_fork(fork_body, how))
elif kind == "broken":
    broken(False)
elif kind == "broken-cgroup":
    broken(True)
'''

NEXT_START = (
    "import tether\n"
    "assert tether.run(['true'], contain='cgroup').returncode == 0\n"
)

KINDS = ("group", "cgroup", "pidns", "lifelined", "fork")
# A guard's lifeline is made inside its one C launch (launch.c): no point between them.
_GUARDED = (
    "spawn", "clone", "cloned", "guard-spawned", "guard-started", "spawned",
    "terminate", "kill", "exit", "wait", "waited", "guard-reap",
)
POINTS: dict[str, tuple[str, ...]] = {
    "group": _GUARDED,
    "cgroup": (*_GUARDED, "sweep", "swept", "cg-mkdir", "cg-flock", "cg-remove"),
    "pidns": _GUARDED,
    "lifelined": ("spawn", "lifeline", "clone", "cloned", "spawned", "cut", "kill", "wait",
                  "waited"),
    "fork": ("spawn", "lifeline", "forked", "spawned", "cut", "kill", "wait", "waited"),
}
ONCE = frozenset({"sweep", "swept"})  # reached once per process
# How long after "ready" a random kill may come: a few loop iterations of each kind.
RANDOM_SPAN = {"group": 0.08, "cgroup": 0.2, "pidns": 0.08, "lifelined": 0.6, "fork": 0.2}
GUARANTEE_S = 1.0


@dataclass
class Trial:
    kind: str
    how: str  # die | aim | random
    point: str
    delay: float
    landed: str = ""
    empty_after: float | None = None  # seconds from the kill to ECHILD
    left_for_sweep: int = 0
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"{self.kind}/{self.how}@{self.point or '-'}+{self.delay * 1e3:.2f}ms "
                f"(landed after {self.landed or 'nothing'})")


def run_trial(
    pen: Pen, log: Path, kind: str, how: str, point: str = "", n: int = 1, delay: float = 0.0,
    seed: int = 0,
) -> Trial:
    """Start a parent of ``kind`` in the pen, kill it as told, and judge what is left."""
    trial = Trial(kind, how, point, delay)
    r, w = report_pipe()
    extra = {"TETHER_PROOF_MARK_FD": str(w), **pen.env()}
    if how == "die":
        extra["TETHER_PROOF_DIE_AT"] = f"{point}:{n}"
    stale_before = pen.tree_dirs()
    logfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        parent = pen.spawn([PY, "-S", "-c", PARENT, kind, str(seed)], env=python_env(**extra),
                           stdin=None, stdout=logfd, stderr=logfd, pass_fds=[w])
    finally:
        os.close(w)
        os.close(logfd)
    lines = Lines(r)
    try:
        if lines.wait_for(lambda line: line.startswith("ready "), 60) is None:
            trial.problems.append("the parent never got ready")
        t0 = time.monotonic()
        if how == "die":
            try:
                parent.pidfd.wait(timeout=30)
            except tether.TimeoutExpired:
                trial.problems.append(f"die point {point}:{n} not reached in 30 s")
                parent.pidfd.send_signal(signal.SIGKILL)
        else:
            if how == "aim" and lines.wait_for(
                lambda line: line.startswith(point + " "), 30
            ) is None:
                trial.problems.append(f"aim point {point} not reached in 30 s")
            if delay > 0:
                time.sleep(delay)  # fault timing, not an oracle
            t0 = time.monotonic()
            parent.pidfd.send_signal(signal.SIGKILL)
        exit_ = parent.pidfd.wait()
        parent.pidfd.close()
        markers = [Marker.parse(line) for line in lines.drain(timeout=0.0) if line]
        if how == "die" and markers and markers[-1].name == point:
            t0 = markers[-1].ns / 1e9  # the moment it killed itself (same clock)
        if exit_.signal != signal.SIGKILL:
            trial.problems.append(f"the parent ended by itself ({exit_}): "
                                  f"{log.read_text()[-2000:]}")
        seen = reap_until(t0 + GUARANTEE_S - time.monotonic())
        trial.landed = markers[-1].name if markers else ""
        if seen.empty and seen.empty_at is not None:
            trial.empty_after = max(0.0, seen.empty_at - t0)
        else:
            trial.problems.append(f"descendants left {GUARANTEE_S:.0f} s after the parent's death")
        _judge_cgroups(pen, trial, markers, stale_before)
        # The parent's own lifeline is cut only after the verdict: its attach() (the safety
        # net) would kill its process group.
        parent.lifeline.close()
        if not seen.empty:
            pen.clean()  # cleanup of what survived, after the verdict
    finally:
        lines.close()
    return trial


def _judge_cgroups(pen: Pen, trial: Trial, markers: list[Marker], stale_before: set[str]) -> None:
    left = pen.tree_dirs()
    names = [m.name for m in markers]
    for d in sorted(left):
        path = os.path.join(pen.trees, d)
        if cgroup_populated(path):
            trial.problems.append(f"cgroup {d} left populated after the tree was gone")
        if cgroup_locked(path):
            trial.problems.append(f"cgroup {d} left locked: an owner outlived the parent")
        made = [i for i, m in enumerate(markers) if m.name == "cg-mkdir" and m.arg == d]
        if made:
            after = names[made[0] + 1:]
            nxt = after.index("cg-mkdir") if "cg-mkdir" in after else len(after)
            if "cloned" in after[:nxt]:
                trial.problems.append(f"cgroup {d}: its guard existed, yet the directory "
                                      "outlived the tree (the guard must remove it)")
    if "swept" in names and stale_before & left:
        trial.problems.append(f"the next start swept, yet stale directories stayed: "
                              f"{sorted(stale_before & left)}")
    trial.left_for_sweep = len(left - stale_before)


def next_start_sweeps(pen: Pen) -> list[str]:
    """A fresh tether process starts a cgroup tree: every stale directory must then be gone."""
    problems = []
    before = pen.tree_dirs()
    s = pen.spawn([PY, "-S", "-c", NEXT_START], env=python_env(**pen.env()))
    e = s.pidfd.wait()
    s.lifeline.close()
    s.pidfd.close()
    if e.code != 0:
        problems.append(f"the next start failed: {e}")
    after = pen.tree_dirs()
    if after:
        problems.append(f"the next start left {sorted(after)} (stale before it: {sorted(before)})")
    return problems


def plan_trials(kind: str, rng: random.Random) -> list[tuple[str, str, int, float]]:
    """(how, point, n, delay) for every trial of one kind."""
    plan: list[tuple[str, str, int, float]] = []
    nths = (1, 2, 3, 5, 8) if FULL else (2,)
    for point in POINTS[kind]:
        for n in (1,) if point in ONCE else nths:
            plan.append(("die", point, n, 0.0))
    aimable = [p for p in POINTS[kind] if p not in ONCE]
    for i in range(size(6, 150)):
        if i % 2:
            plan.append(("aim", rng.choice(aimable), 1, rng.uniform(0.0, 0.002)))
        else:
            plan.append(("random", "", 1, rng.uniform(0.0, RANDOM_SPAN[kind])))
    return plan


def check_fault_injection(
    pen: Pen, tmp: Path, kind: str, plan: list[tuple[str, str, int, float]], seed: int
) -> list[Trial]:
    trials = []
    for i, (how, point, n, delay) in enumerate(plan):
        trials.append(run_trial(pen, tmp / "parent.log", kind, how, point, n, delay, seed + i))
    return trials


def summarize(kind: str, trials: list[Trial], extra_problems: list[str]) -> list[str]:
    times = [t.empty_after for t in trials if t.empty_after is not None]
    survivors = sum(1 for t in trials if t.empty_after is None)
    landed = Counter(t.landed for t in trials)
    swept = sum(t.left_for_sweep for t in trials)
    record(
        f"fault-injection[{kind}]",
        f"{len(trials)} trials, {survivors} with survivors, tree empty after the kill: "
        f"{ms_summary(times)}; dirs left for the next start's sweep: {swept}; "
        f"kills landed after: {dict(sorted(landed.items()))}",
        trials=len(trials), survivors=survivors,
        p50_ms=percentile(times, 50) * 1e3, p99_ms=percentile(times, 99) * 1e3,
        times_ms=[round(x * 1e3, 3) for x in times], landed=dict(landed), swept=swept,
    )
    problems = [f"{t.describe()}: {p}" for t in trials for p in t.problems]
    return problems + extra_problems


@pytest.mark.parametrize("kind", KINDS)
def test_parent_killed_anywhere_leaves_nothing(kind: str, pen: Pen, tmp_path: Path) -> None:
    if kind in ("cgroup", "pidns"):
        from conftest import require_mode

        require_mode(kind)
    seed = int(os.environ.get("TETHER_PROOF_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    trials = check_fault_injection(pen, tmp_path, kind, plan_trials(kind, rng), seed)
    extra = next_start_sweeps(pen) if kind == "cgroup" else []
    problems = summarize(kind, trials, extra)
    assert not problems, f"seed {seed}:\n" + "\n".join(problems[:40])


@pytest.mark.parametrize("kind", ["broken", "broken-cgroup"])
def test_checker_catches_a_spawner_without_containment(
    kind: str, pen: Pen, tmp_path: Path
) -> None:
    # The same checker, fed a parent that uses subprocess.Popen(start_new_session=True): no
    # lifeline, no guard. Its trees must be reported as survivors (and, put in a cgroup of
    # their own, as a populated directory left behind).
    trials = [run_trial(pen, tmp_path / "parent.log", kind, "aim", "idle", seed=i)
              for i in range(2)]
    for t in trials:
        assert any("descendants left" in p for p in t.problems), t.problems
        if kind == "broken-cgroup":
            assert any("left populated" in p for p in t.problems), t.problems
    pen.clean()
