"""The blocking end wait's early wake (tether._tree.early_wake): woken by the program's exit in
parallel with the guard, a waiter polls for the guard's report and exit without sleeping, for
a bounded while, once per tree, and never while the program runs. The end it returns is still
the tree's (the guard's report, after the guard has ended the tree and exited).
Oracle: this process is a child subreaper (tests/oracle.py); the program's exit is seen on
its pidfd (readable at its exit) before a wait starts where the test needs it."""

from __future__ import annotations

import ctypes
import itertools
import operator
import os
import select
import signal
import threading

import pytest

import oracle
import tether
from tether._kernel import core
from tether._kernel.deadline import Deadline
from tether._tree import early_wake

EXITS_LEAVING_A_SLEEPER = ["sh", "-c", "sleep 60 & exit 3"]


def _spins(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record each early-wake spin of the end wait (``core.await_end`` reporting END_EARLY;
    True: the spin found the end)."""
    spins: list[bool] = []
    real = core.await_end

    def counted(*args: int) -> int:
        woke = real(*args)
        if woke & core.END_EARLY:
            spins.append(bool(woke & core.END_READY))
        return woke

    monkeypatch.setattr(core, "await_end", counted)
    return spins


def _until_exited(child: tether.Child) -> None:
    """Block until the program has exited (its pidfd is readable at its exit)."""
    select.select([child.pidfd.fileno()], [], [], 60)


def test_a_wait_never_spins_while_the_program_runs(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spins = _spins(monkeypatch)
    with tether.spawn(["sleep", "60"], contain=mode) as child:
        with pytest.raises(tether.TimeoutExpired):
            child.wait(timeout=0.2)
        assert spins == []
    assert oracle.no_descendants()


def test_the_early_wake_spins_once_per_tree_and_gives_up_on_a_tree_that_lives_on(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # wait_tree: the program has exited, the guard waits for its sleeper: the waiter woken by
    # the program's exit spins for a bounded while, finds no end, and sleeps again; a later
    # wait does not spin again.
    spins = _spins(monkeypatch)
    with tether.spawn(EXITS_LEAVING_A_SLEEPER, contain=mode, wait_tree=True) as child:
        _until_exited(child)
        for _ in range(2):
            with pytest.raises(tether.TimeoutExpired):
                child.wait(timeout=0.1)
        assert spins == [False]
        child.kill()
        assert child.wait() == 3
    assert oracle.no_descendants()


def test_a_ctrl_c_during_the_spin_leaves_the_wait_to_be_done_again(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The borrowed pidfds and the socket's borrow are given back: a later wait finds the
    # end, and nothing is left open once the tree is released.
    tether.run(["true"], contain=mode, wait_tree=True)
    before = oracle.baseline_fds()

    real, interrupts = core.await_end, []

    def interrupted(*args: int) -> int:
        woke = real(*args)
        if woke & core.END_EARLY and not interrupts:
            interrupts.append(woke)
            raise KeyboardInterrupt  # (as a handler's would be, right after the spin)
        return woke

    monkeypatch.setattr(core, "await_end", interrupted)
    # wait_tree and a sleeper: the guard cannot have ended before the waiter is woken by
    # the program's exit, so the wait does reach the spin.
    with tether.spawn(EXITS_LEAVING_A_SLEEPER, contain=mode, wait_tree=True) as child:
        _until_exited(child)
        with pytest.raises(KeyboardInterrupt):
            child.wait()
        assert interrupts
        child.kill()
        assert child.wait() == 3
        child.pidfd.close()
    assert oracle.open_fds() == before
    assert oracle.no_descendants()


def test_a_wait_with_the_programs_pidfd_closed_by_its_user_waits_on_the_guard_alone(
        mode: str) -> None:
    with tether.spawn(["sh", "-c", "exit 5"], contain=mode) as child:
        child.pidfd.close()
        assert child.wait() == 5
    assert oracle.no_descendants()


def test_threads_sharing_a_child_all_see_its_end(mode: str) -> None:
    gate_r, gate_w = os.pipe()
    try:
        child = tether.spawn(["sh", "-c", "read x; exit 4"], stdin=gate_r, contain=mode)
    finally:
        os.close(gate_r)
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(child.wait())) for _ in range(3)]
    for t in threads:
        t.start()
    os.close(gate_w)
    for t in threads:
        t.join()
    assert codes == [4, 4, 4]
    child.__exit__(None, None, None)
    assert oracle.no_descendants()


def test_a_spin_is_bounded_by_its_budget_and_by_the_deadline() -> None:
    r, w = os.pipe()
    try:
        assert not early_wake.spin_until_readable(r, Deadline(None), budget_ns=2_000_000)
        assert not early_wake.spin_until_readable(r, Deadline.after(0.0), budget_ns=10**12)
        os.write(w, b"x")
        assert early_wake.spin_until_readable(r, Deadline(None), budget_ns=0)
    finally:
        os.close(r)
        os.close(w)


def test_a_far_deadline_does_not_break_the_spin(mode: str) -> None:
    # timeout=1e308 is a valid, finite timeout: its deadline has no integer nanoseconds, and
    # the spin that bounds itself by it must still find the end (it raised OverflowError).
    with tether.spawn(["true"], contain=mode) as child:
        _until_exited(child)
        assert child.wait(timeout=1e308) == 0
    assert oracle.no_descendants()


def test_the_c_spins_budget_is_bounded_by_the_deadline_and_survives_a_huge_timeout() -> None:
    # core.await_end is handed Deadline.spin_ns(SPIN_NS): never past the deadline, never
    # negative, and a timeout of 1e300 s (accepted by wait()) is not an OverflowError.
    assert Deadline(None).spin_ns(early_wake.SPIN_NS) == early_wake.SPIN_NS
    assert Deadline.after(1e300).spin_ns(early_wake.SPIN_NS) == early_wake.SPIN_NS
    assert Deadline.after(0.0).spin_ns(early_wake.SPIN_NS) == 0
    assert 0 < Deadline.after(0.0002).spin_ns(early_wake.SPIN_NS) <= 200_000
    assert Deadline.after(1e300).c_poll_ms() > 0 and Deadline(None).c_poll_ms() == -1


def test_a_ctrl_c_that_lands_as_the_end_is_read_loses_neither_the_end_nor_the_mask(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A SIGINT delivered just before core.read_end blocks signals (or to another thread while
    # it holds them) trips Python's handler, which runs at the first bytecode after the read:
    # the end read and the held mask were then dropped, leaving every signal blocked in this
    # thread for good. Simulated exactly: the signal is sent from C (libc's kill, which does
    # not run the handler) right before the real read, with no bytecode in between.
    libc_kill = ctypes.CDLL(None).kill
    real, calls = core.read_end, []

    def tripped_first(*args: object) -> object:
        if calls:
            return real(*args)
        calls.append(args)
        return list(itertools.starmap(operator.call, [
            (libc_kill, os.getpid(), int(signal.SIGINT)), (real, *args)]))[1]

    tether.run(["true"], contain=mode)
    before = oracle.baseline_fds()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    monkeypatch.setattr(core, "read_end", tripped_first)
    with tether.spawn(["sh", "-c", "exit 3"], contain=mode) as child:
        try:
            with pytest.raises(KeyboardInterrupt):
                child.wait()
            assert calls
            assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask
        finally:  # (the rest of the suite is not to run with every signal blocked)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        assert child.poll() == 3  # recorded by the interrupted wait: no later read needed
        assert child.wait() == 3
        child.pidfd.close()
    assert oracle.open_fds() == before
    assert oracle.no_descendants()


def test_a_ctrl_c_held_off_while_the_end_is_recorded_gives_each_borrow_back_once(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C during the read of the end is held off (core.read_end blocks signals) and raised
    # as they are released, once the end is recorded: the waiter's borrows of the guard's
    # pidfd and of the socket, given back by the recording, were given back again on the
    # way out (counts below zero: a parked fd closed under another waiter's poll).
    real = core.read_end

    def interrupted_on_release(sock_fd: int, guard_fd: int, out: list[object],
                               *skip_started: bool) -> object:
        got = real(sock_fd, guard_fd, out, *skip_started)
        if out:  # (every signal held: pending until the release)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        return got

    monkeypatch.setattr(core, "read_end", interrupted_on_release)
    with tether.spawn(["sh", "-c", "exit 3"], contain=mode) as child:
        guard = child._own_tree
        with pytest.raises(KeyboardInterrupt):
            child.wait()
        assert (guard._borrowers, guard.spawned.pidfd._borrowers) == (0, 0)
        assert child.wait() == 3
    assert oracle.no_descendants()
