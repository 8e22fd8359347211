"""Spawning from many threads at once, and from threads that then exit."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading

import pytest

import oracle
import tether
import tether.aio
from conftest import require_mode

pytestmark = pytest.mark.usefixtures("each_clone_method")

THREADS = 8
PER_THREAD = int(os.environ.get("TETHER_THREAD_SPAWNS", "200"))


def test_concurrent_spawns_from_many_threads_report_every_exit_and_leak_no_fd() -> None:
    before = oracle.baseline_fds()
    errors: list[BaseException] = []
    bad: list[tuple[int, tether.Exit]] = []

    def worker(tid: int) -> None:
        try:
            for i in range(PER_THREAD):
                code = (tid * 31 + i) % 256
                s = tether.spawn_lifelined(["sh", "-c", f"exit {code}"])
                e = s.pidfd.wait()
                s.pidfd.close()
                s.lifeline.close()
                if e != tether.Exit(code=code, signal=None):
                    bad.append((code, e))
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not bad
    assert oracle.open_fds() == before


def test_child_spawned_from_a_thread_that_exits_keeps_running() -> None:
    # Nothing may rely on PR_SET_PDEATHSIG, which fires when the creating *thread* exits.
    box: list[tether.Spawned] = []
    t = threading.Thread(target=lambda: box.append(tether.spawn_lifelined(["sleep", "300"])))
    t.start()
    t.join()
    s = box[0]
    with pytest.raises(tether.TimeoutExpired):
        s.pidfd.wait(timeout=0.2)
    s.pidfd.send_signal(signal.SIGKILL)
    assert s.pidfd.wait().signal == signal.SIGKILL


def test_run_in_fork_from_a_thread_while_others_spawn() -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def spinner() -> None:
        try:
            while not stop.is_set():
                tether.spawn_lifelined(["true"]).pidfd.wait()
        except BaseException as exc:
            errors.append(exc)

    spinners = [threading.Thread(target=spinner) for _ in range(3)]
    for t in spinners:
        t.start()
    try:
        for _ in range(20):
            assert tether.run_in_fork(sys.exit, 0).pidfd.wait().code == 0
    finally:
        stop.set()
        for t in spinners:
            t.join()
    assert not errors


ROUNDS = int(os.environ.get("TETHER_THREAD_ROUNDS", "20"))


def _watched_by_four_threads(contain: str | None) -> list[object]:
    """Three threads in wait() and one in poll() on one Child while its program exits:
    what each of them got."""
    gate_r, gate_w = os.pipe()
    try:
        child = tether.spawn(["sh", "-c", "read x; exit 7"], stdin=gate_r, contain=contain)
    finally:
        os.close(gate_r)
    results: list[object] = []
    start = threading.Barrier(5)

    def waiter() -> None:
        start.wait()
        try:
            results.append(child.wait())
        except BaseException as exc:  # asserted by the caller
            results.append(exc)

    def poller() -> None:
        start.wait()
        try:
            while child.poll() is None:
                pass
            results.append(child.poll())
        except BaseException as exc:  # asserted by the caller
            results.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    threads.append(threading.Thread(target=poller))
    for t in threads:
        t.start()
    start.wait()
    os.close(gate_w)  # the program reads EOF and exits while four threads watch it
    for t in threads:
        t.join()
    results.append(child.exit)
    return results


@pytest.mark.parametrize("contain", ["group", "cgroup", "pidns", None])
def test_waiters_and_a_poller_on_one_child_all_get_the_same_exit(
    contain: str | None, each_clone_method: str
) -> None:
    # Like Popen: no spurious ChildProcessError, EBADF or ValueError, and every waiter sees
    # the program's returncode.
    if contain in ("cgroup", "pidns") and each_clone_method == "legacy":
        pytest.skip(f"contain={contain!r} needs clone3")
    if contain is not None:
        require_mode(contain)
    for _ in range(ROUNDS):
        assert _watched_by_four_threads(contain) == [7, 7, 7, 7,
                                                     tether.Exit(code=7, signal=None)]


def test_an_async_child_is_killed_from_another_thread_while_the_loop_awaits_it() -> None:
    async def main() -> tuple[int, tether.Exit | None]:
        achild = await tether.aio.spawn(["sleep", "300"])
        killer = threading.Thread(target=achild.kill)
        killer.start()
        rc = await achild.wait()
        killer.join()
        return rc, achild.exit

    rc, exit_ = asyncio.run(main())
    assert rc == -signal.SIGKILL
    assert exit_ == tether.Exit(code=None, signal=signal.SIGKILL)
