"""The guard killed at a random moment of ``spawn()`` (issue 11, item 2): whatever the moment,
in every mode, the tree leaves nothing behind, whether ``spawn()`` raised or returned.

Each trial starts ``sh -c 'sleep 300 & echo up; wait'`` while a thread SIGKILLs the guard
(through its pidfd) after a random delay drawn over the start. Half the trials also make the
guard stop itself between the program's exec and its start report (the guard's test-only
fault injection), so that the kill lands in the window the item is about: the program has run
and may have forked, the parent holds no start report. Oracle: this process is a child
subreaper; after each trial ``waitid(P_ALL)`` must answer ECHILD. Smoke: 24 trials;
TETHER_FULL=1: 1,000 (the issue's count)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter

import pytest

import oracle
import tether
from tether._tree.guarded import Guard

from ._harness import guarded_modes, record, size

SEED = random.randrange(1 << 32)
TREE = ["sh", "-c", "sleep 300 & echo up; wait"]


def test_item2_a_guard_killed_at_any_moment_of_spawn_leaves_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(SEED)
    modes = guarded_modes()
    real = Guard.await_start
    killers: list[threading.Thread] = []
    delays: list[float] = []

    def await_start_under_attack(self: Guard) -> None:
        delay = delays[-1]

        def kill() -> None:
            time.sleep(delay)
            try:
                self.spawned.pidfd.send_signal(signal.SIGKILL)
            except (ProcessLookupError, ValueError):  # already reaped, or closed: too late
                pass

        killer = threading.Thread(target=kill)
        killers.append(killer)
        killer.start()
        real(self)

    monkeypatch.setattr(Guard, "await_start", await_start_under_attack)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    for trial in range(size(24, 1000)):
        mode = rng.choice(modes)
        in_window = rng.random() < 0.5
        delays.append(rng.uniform(0, 0.004))
        env = dict(os.environ)
        if in_window:
            env["TETHER_GUARD_TEST_STOP_BEFORE_REPORT"] = "1"
        try:
            child = tether.spawn(TREE, contain=mode, env=env,  # type: ignore[arg-type]
                                 stdout=tether.DEVNULL)
        except OSError:
            outcomes["raised"] += 1
        else:
            outcomes["returned"] += 1
            with child:
                try:
                    child.wait(timeout=60)
                except ChildProcessError:
                    pass  # the guard died after the start: reported as such
        for killer in killers:
            killer.join()
        killers.clear()
        if not oracle.reap_until(10.0).empty:
            failures.append(f"trial {trial} ({mode}, delay {delays[-1] * 1e3:.2f} ms, "
                            f"in window: {in_window}): a process outlived its tree")
    record("guard-kill-during-spawn", f"{sum(outcomes.values())} trials, "
           f"{len(failures)} with survivors", **outcomes)
    assert not failures, f"seed {SEED}:\n" + "\n".join(failures)
