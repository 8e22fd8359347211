"""A Child (or AsyncChild) used in a child made by os.fork() is inert: every use raises
tether.ForkedHandleError-style ChildProcessError, and the parent's tree is left untouched."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest

import tether
import tether.aio
from tether._tree.handle import ForkedHandleError


def _in_forked_child(use: Callable[[], object]) -> str:
    """Run ``use`` in a forked child of this process; what it raised, by class name."""
    r, w = os.pipe()
    pid = os.fork()  # noqa: TET101  the scenario under test: a fork after the spawn
    if pid == 0:  # pragma: no cover  (runs in the forked child)
        os.close(r)
        try:
            use()
            outcome = "no error"
        except BaseException as exc:
            outcome = type(exc).__name__
        os.write(w, outcome.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        outcome = f.read().decode()
    os.waitpid(pid, 0)  # noqa: TET301  our own fork, reaped by number in the test only
    return outcome


USES: dict[str, Callable[[tether.Child], object]] = {
    "with-exit": lambda c: c.__exit__(None, None, None),
    "kill": lambda c: c.kill(),
    "terminate": lambda c: c.terminate(),
    "send_signal": lambda c: c.send_signal(signal.SIGKILL),
    "wait": lambda c: c.wait(),
    "poll": lambda c: c.poll(),
    "communicate": lambda c: c.communicate(),
}


@pytest.mark.parametrize("use", sorted(USES))
@pytest.mark.parametrize("contain", ["group", None])
def test_a_child_used_after_fork_raises_and_leaves_the_parents_tree_alone(
    use: str, contain: str | None
) -> None:
    with tether.spawn(["sleep", "300"], contain=contain) as child:
        assert _in_forked_child(lambda: USES[use](child)) == ForkedHandleError.__name__
        assert child.poll() is None, "the forked copy acted on the parent's tree"
        assert "inert" not in repr(child)
    assert child.returncode == -signal.SIGKILL


def test_the_forked_copy_says_so_in_its_repr_and_is_a_child_process_error() -> None:
    with tether.spawn(["sleep", "300"]) as child:
        assert _in_forked_child(lambda: None if "inert" in repr(child) else 1 / 0) == (
            "no error")
    assert issubclass(ForkedHandleError, ChildProcessError)


def test_an_async_child_used_after_fork_is_inert_too() -> None:
    async def main() -> tuple[str, int | None, int]:
        async with await tether.aio.spawn(["sleep", "300"]) as achild:
            outcome = _in_forked_child(achild.kill)
            running = achild.returncode
            achild.kill()
            return outcome, running, await achild.wait()

    outcome, running, rc = asyncio.run(main())
    assert outcome == ForkedHandleError.__name__
    assert running is None
    assert rc == -signal.SIGKILL
