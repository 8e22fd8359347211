"""What the event loop watches per awaited tree (ARCHITECTURE.md, "fd budget"): the tree's
own watch fd (the guard's pidfd; the program's with contain=None), borrowed from the tree, not
a dup: no fd beyond the tree's own while a task awaits it, and a number that stays open until
the loop has unregistered it, even when the tree is ended and released meanwhile."""

from __future__ import annotations

import asyncio
import os
import signal

import oracle
import tether.aio as aio
from test_aio import arun, blocked_in
from test_fd_budget import _kinds
from tether._kernel import cgroup_ahead

N = 3  # trees awaited at once: a per-tree cost, not a one-off


def test_an_awaited_tree_holds_no_fd_beyond_the_trees_own(mode: str) -> None:
    _awaiting_adds_no_fd(mode)


def test_an_awaited_bare_tree_holds_no_fd_beyond_its_own() -> None:
    _awaiting_adds_no_fd(None)


def _awaiting_adds_no_fd(contain: str | None) -> None:
    async def main() -> list[str]:
        children = [await aio.spawn(["sleep", "300"], contain=contain) for _ in range(N)]
        held = oracle.open_fds()
        tasks = [asyncio.create_task(child.wait()) for child in children]
        for task in tasks:
            await blocked_in(task, aio.AsyncChild._wait_tree)
        cgroup_ahead.drain()  # (the next tree's directory, made ahead by a wait: no tree's)
        added = _kinds(oracle.open_fds() - held)
        for child in children:
            child.kill()
        await asyncio.gather(*tasks)
        return added

    assert arun(main()) == [], "watching an awaited tree opened fds of its own"


def test_a_tree_ended_while_watched_keeps_the_watched_number_until_unregistered(
    mode: str,
) -> None:
    async def main() -> tuple[bool, int]:
        child = await aio.spawn(["sleep", "300"], contain=mode)
        task = asyncio.create_task(child.wait())
        await blocked_in(task, aio.AsyncChild._wait_tree)
        watched = child._watch_fd
        # The end read outside the loop's callback (as a sync call on another thread would):
        # the tree releases its handles while the loop still has the number registered.
        child.kill()
        assert child._tree.wait(None)
        kept = _names_a_pidfd(watched)
        return kept, await task

    cgroup_ahead.drain()  # (process-wide, not the watch's: drained around the count)
    before = oracle.baseline_fds()
    kept, code = arun(main())
    assert kept, "the watched number was closed under the loop's selector"
    assert code == -signal.SIGKILL
    cgroup_ahead.drain()
    assert oracle.open_fds() == before, "the borrowed number was never released"


def _names_a_pidfd(fd: int) -> bool:
    try:
        return "pidfd" in os.readlink(f"/proc/self/fd/{fd}")  # (our own fd table)
    except FileNotFoundError:
        return False
