"""A dropped tether.aio.Process (create_subprocess_exec/_shell) keeps running, as asyncio's
does, still dies with its parent, and is reaped once it has ended: no zombie, no fd.

Oracle: this process is a child subreaper (tests/oracle.py); the tree's end is awaited with a
``waitid(WNOWAIT)`` on our own children (the kernel's word, nothing reaped), never a sleep."""

from __future__ import annotations

import asyncio
import gc
import os
import select
import signal
import sys
from pathlib import Path

import pytest

import oracle
import tether
import tether.aio

PY = sys.executable
CONTAINS = ["group", None]
# Reads one line from stdin (the barrier), writes it to the file named by $0, says so.
WRITER = 'read line; echo "$line" > "$0"; echo written'


def _start_and_drop(path: Path, stdin: int, stdout: int, contain: str | None) -> None:
    async def main() -> None:
        proc = await tether.aio.create_subprocess_exec(
            "sh", "-c", WRITER, str(path), stdin=stdin, stdout=stdout, contain=contain)
        del proc
        gc.collect()

    asyncio.run(main())


@pytest.mark.parametrize("contain", CONTAINS)
def test_a_dropped_process_keeps_running(tmp_path: Path, contain: str | None) -> None:
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    path = tmp_path / "out"
    try:
        _start_and_drop(path, to_r, from_w, contain)
        os.write(to_w, b"still here\n")  # released only after the drop and the collection
        ready, _, _ = select.select([from_r], [], [], 30)  # a barrier, not a sleep
        assert ready and os.read(from_r, 100) == b"written\n"
        assert path.read_text() == "still here\n"
    finally:
        for fd in (to_r, to_w, from_r, from_w):
            os.close(fd)


@pytest.mark.parametrize("contain", CONTAINS)
def test_a_dropped_process_that_ended_is_reaped_at_the_next_spawn(
        tmp_path: Path, contain: str | None, no_leak: None) -> None:
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    try:
        _start_and_drop(tmp_path / "out", to_r, from_w, contain)
        os.write(to_w, b"end\n")
        ready, _, _ = select.select([from_r], [], [], 30)
        assert ready and os.read(from_r, 100) == b"written\n"
    finally:
        for fd in (to_r, to_w, from_r, from_w):
            os.close(fd)
    # Until our child (the guard, or the program with contain=None) has exited: WNOWAIT
    # leaves it a zombie, for tether to reap.
    os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
    tether.run(["true"])
    assert not oracle.zombie_pending(), "the dropped tree was left a zombie"
    # (no_leak: every fd of the dropped tree is closed, no process is left)


def test_a_dropped_process_dies_with_its_sigkilled_parent(python_env: dict[str, str]) -> None:
    # The tree says it is alive after the parent dropped it, then outlives nothing. (The guard
    # ends it: contain=None has none, and its lifeline only binds lifeline-aware programs.)
    parent_code = (
        "import asyncio, gc, os, time\nimport tether.aio\n"
        "r, w = os.pipe()\n"
        "async def main():\n"
        "    p = await tether.aio.create_subprocess_exec('sh', '-c',"
        " 'read x; sleep 300 & echo alive; sleep 300', stdin=r, contain='group')\n"
        "    del p\n"
        "    gc.collect()\n"
        "asyncio.run(main())\n"
        "os.write(w, b'go\\n')\ntime.sleep(300)\n")
    r, w = os.pipe()
    try:
        parent = tether.spawn_lifelined([PY, "-c", parent_code], stdout=w, env=python_env)
    finally:
        os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30)  # a barrier, not a sleep
        line = os.read(r, 100) if ready else b""
    finally:
        parent.pidfd.send_signal(signal.SIGKILL)
        os.close(r)
    assert line == b"alive\n"
    assert parent.pidfd.wait().signal == signal.SIGKILL
    assert oracle.reap_until(5.0).empty, "the dropped tree outlived its parent"


@pytest.mark.parametrize("contain", CONTAINS)
def test_a_dropped_running_process_holds_two_fds(tmp_path: Path, contain: str | None) -> None:
    # What the README says it costs until it ends: its one child's pidfd and the lifeline.
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    try:
        tether.run(["true"])  # the process-lifetime caches ("auto"'s probe fd) filled first
        before = oracle.baseline_fds()
        _start_and_drop(tmp_path / "out", to_r, from_w, contain)
        assert len(oracle.open_fds() - before) == 2
    finally:
        os.write(to_w, b"end\n")
        for fd in (to_r, to_w, from_r, from_w):
            os.close(fd)
