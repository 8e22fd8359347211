"""Handles under attack (issue 11, items 8, 9, 10, 11 and 26), repeated with random choices:

* item 8: threads racing wait/poll/kill/terminate on one ``Child`` while its program exits:
  no spurious error, every waiter gets the same returncode;
* item 9: a ``Pidfd`` closed while other threads signal, poll and read it, with new pidfds
  minted meanwhile (so a freed fd number is taken at once): no signal ever reaches another
  process (the canaries, whose pidfds take the freed numbers, all survive);
* item 10: a ``Child`` used after ``os.fork()``, a random method each time: inert (a
  ``ChildProcessError``) and the parent's tree untouched;
* item 11: dropped handles of every mode: after the next spawn, no zombie and no fd;
* item 26: ``tether.aio`` runs cancelled and kept by ``gather``: no pidfd kept.

The oracle is tests/oracle.py (zombies, our fd table); each round's seed is in the failure."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import select
import signal
import threading

import oracle
import tether
import tether.aio
from test_aio import blocked_in
from test_fork_safety import USES
from tether._kernel import cgroup_ahead
from tether._kernel import reaper as _reaper

from ._harness import guarded_modes, record, size

SEED = random.randrange(1 << 32)


def _modes() -> list[str | None]:
    """Every mode this machine has, and None (no guard)."""
    return [None, *guarded_modes()]


# -- item 8 ---------------------------------------------------------------------------------------


def _race_one_child(rng: random.Random, contain: str | None) -> list[object]:
    """Random numbers of waiters, pollers and killers on one Child, released together with
    the program's exit; what the waiters got, and every error anyone got."""
    gate_r, gate_w = os.pipe()
    try:
        child = tether.spawn(["sh", "-c", "read x; exit 7"], stdin=gate_r, contain=contain)
    finally:
        os.close(gate_r)
    roles = (["wait"] * rng.randint(1, 4) + ["poll"] * rng.randint(0, 3)
             + ["kill"] * rng.randint(0, 2) + ["terminate"] * rng.randint(0, 2))
    got: list[object] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(roles) + 1)

    def act(role: str) -> None:
        start.wait()
        try:
            if role == "wait":
                got.append(child.wait(timeout=60))
            elif role == "poll":
                while child.poll() is None:
                    pass
            else:
                getattr(child, role)()
        except BaseException as exc:  # the verdict, below
            errors.append(exc)

    threads = [threading.Thread(target=act, args=(r,)) for r in roles]
    for t in threads:
        t.start()
    start.wait()
    os.close(gate_w)
    for t in threads:
        t.join()
    got.append(child.wait(timeout=60))
    return [errors, got]


def test_threads_racing_on_one_child_get_no_error_and_one_returncode() -> None:
    rng = random.Random(SEED)
    modes = _modes()
    rounds = size(40, 1000)
    for i in range(rounds):
        contain = rng.choice(modes)
        errors, got = _race_one_child(rng, contain)
        assert errors == [], f"seed {SEED} round {i} contain={contain!r}: {errors!r}"
        assert len(set(got)) == 1 and got[0] in (7, -signal.SIGTERM, -signal.SIGKILL), (  # type: ignore[arg-type]
            f"seed {SEED} round {i} contain={contain!r}: waiters got {got!r}")
    record("handle races (item 8)", f"{rounds} rounds, 0 errors, one returncode each",
           rounds=rounds, seed=SEED)


# -- item 9 ---------------------------------------------------------------------------------------


def test_a_pidfd_closed_under_racing_threads_never_signals_another_process() -> None:
    rng = random.Random(SEED)
    rounds = size(100, 1000)
    canaries: list[tether.Spawned] = []
    try:
        for i in range(rounds):
            target = tether.spawn_lifelined(["sleep", "300"])
            # Ours, to end it after the round: a dup is another fd, the number the close
            # frees is freed all the same.
            keep = os.dup(target.pidfd.fileno())
            stop = threading.Event()
            start = threading.Barrier(4)
            odd: list[BaseException] = []

            def hammer(op: str, pidfd: tether.Pidfd = target.pidfd,
                       start: threading.Barrier = start, stop: threading.Event = stop,
                       odd: list[BaseException] = odd) -> None:
                start.wait()
                while not stop.is_set():
                    try:
                        if op == "signal":
                            pidfd.send_signal(signal.SIGTERM)
                        elif op == "info":
                            pidfd.poll()
                    except ValueError:
                        return  # "operation on a closed Pidfd": the handle says it is gone
                    except ProcessLookupError:
                        pass  # SIGTERMed and reaped already
                    except BaseException as exc:  # the verdict, below
                        odd.append(exc)
                        return

            threads = [threading.Thread(target=hammer, args=(op,))
                       for op in ("signal", "signal", "info")]
            for t in threads:
                t.start()
            start.wait()
            for _ in range(rng.randint(0, 200)):
                pass  # a random moment
            target.pidfd.close()
            # Mint new pidfds at once: one of them takes the number the close just freed.
            canaries.extend(tether.spawn_lifelined(["sleep", "300"]) for _ in range(2))
            stop.set()
            for t in threads:
                t.join()
            target.lifeline.close()
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(keep, signal.SIGKILL)
            os.close(keep)
            assert odd == [], f"seed {SEED} round {i}: {odd!r}"
        hit = [c.pid for c in canaries if c.pidfd.poll() is not None]
        assert hit == [], f"seed {SEED}: a signal meant for a closed pidfd reached {hit}"
    finally:
        for c in canaries:
            c.pidfd.send_signal(signal.SIGKILL)
            c.pidfd.wait()
            c.pidfd.close()
            c.lifeline.close()
    record("handle races (item 9)", f"{rounds} closes under fire, {len(canaries)} canaries, 0 hit",
           rounds=rounds, canaries=len(canaries), seed=SEED)


# -- item 10 --------------------------------------------------------------------------------------

def _used_in_a_fork(child: tether.Child, uses: list[str]) -> str:
    """In a forked child, each use in turn; the class names of what they raised."""
    r, w = os.pipe()
    pid = os.fork()  # noqa: TET101  the attack: a fork after the spawn
    if pid == 0:  # pragma: no cover  (the forked child)
        os.close(r)
        names = []
        for use in uses:
            try:
                USES[use](child)
                names.append("no-error")
            except BaseException as exc:
                names.append(type(exc).__name__)
        os.write(w, " ".join(names).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)  # noqa: TET301  our own fork, reaped by number in the test only
    return out


def test_a_child_used_after_fork_is_inert_whatever_is_called() -> None:
    rng = random.Random(SEED)
    modes = _modes()
    rounds = size(20, 200)
    for i in range(rounds):
        contain = rng.choice(modes)
        uses = rng.sample(sorted(USES), rng.randint(1, len(USES)))
        with tether.spawn(["sleep", "300"], contain=contain) as child:
            got = _used_in_a_fork(child, uses).split()
            assert got == ["ForkedHandleError"] * len(uses), (
                f"seed {SEED} round {i} contain={contain!r} uses={uses}: {got}")
            assert child.poll() is None, f"seed {SEED} round {i}: the fork acted on our tree"
    record("fork-inert handles (item 10)", f"{rounds} forks, every use inert",
           rounds=rounds, seed=SEED)


# -- item 11 --------------------------------------------------------------------------------------


def _until_exited(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    assert poller.poll(60_000), "a dropped process did not exit"
    os.close(fd)


def test_dropped_handles_leave_no_zombie_and_no_fd_after_the_next_spawn() -> None:
    rng = random.Random(SEED)
    modes = _modes()
    for mode in modes:  # the first spawn of a mode opens what stays open (its cgroup parent)
        tether.run(["true"], contain=mode)
    cgroup_ahead.drain()  # (process-wide, not a handle's: drained around the count)
    before = oracle.baseline_fds()
    dropped = size(50, 500)
    barriers = []  # dups of what each dropped handle named: to know when it has exited
    for _ in range(dropped):
        contain = rng.choice(modes)
        if contain is None and rng.random() < 0.5:
            s = tether.spawn_lifelined(["sleep", "300"])
            barriers.append(os.dup(s.pidfd.fileno()))
            s.pidfd.close()  # the handle closed on a running child, which is then ended
            signal.pidfd_send_signal(barriers[-1], signal.SIGKILL)
            s.lifeline.close()
        else:
            child = tether.spawn(["sleep", "300"], contain=contain)
            barriers.append(child._tree.spawned.pidfd._dup())
            del child  # guarded: the guard ends the tree; None: ended at the next spawn
        gc.collect()
    tether.run(["true"])
    for fd in barriers:
        _until_exited(fd)
    tether.run(["true"])  # the next spawn once all have exited: it reaps what is left
    assert not oracle.zombie_pending(), f"seed {SEED}: a dropped child was left a zombie"
    cgroup_ahead.drain()
    assert oracle.open_fds() == before, f"seed {SEED}: a dropped handle left an fd"
    assert _reaper.adopted() == 0
    record("dropped handles (item 11)", f"{dropped} dropped, 0 zombies, 0 fds",
           dropped=dropped, seed=SEED)


# -- item 26 --------------------------------------------------------------------------------------


def test_cancelled_aio_runs_kept_by_gather_hold_no_fd() -> None:
    n = size(20, 50)

    async def main() -> tuple[list[BaseException | None], set[int], set[int]]:
        before = oracle.open_fds()  # the loop's own fds included
        tasks = [asyncio.create_task(tether.aio.run(["sleep", "300"])) for _ in range(n)]
        for task in tasks:
            await blocked_in(task, tether.aio.AsyncChild._wait_tree)  # its tree is up
        for task in tasks:
            task.cancel()
        kept = await asyncio.gather(*tasks, return_exceptions=True)
        return kept, before, oracle.open_fds()

    kept, before, during = asyncio.run(main())
    assert all(isinstance(e, asyncio.CancelledError) for e in kept)
    assert during == before, f"{len(during - before)} fds kept by {n} cancelled runs"
    record("cancelled aio runs (item 26)", f"{n} cancelled runs kept by gather, 0 fds",
           runs=n)
