"""Spawning from many threads at once, and from threads that then exit."""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest

import oracle
import tether

pytestmark = pytest.mark.usefixtures("each_clone_method")

THREADS = 8
PER_THREAD = int(os.environ.get("TETHER_THREAD_SPAWNS", "200"))


def test_concurrent_spawns_from_many_threads_report_every_exit_and_leak_no_fd() -> None:
    before = oracle.open_fds()
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
