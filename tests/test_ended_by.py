"""Exit.ended_by: whether tether itself ended the tree ("timeout": run()'s or `tether run`'s
timeout; "tether": kill()/terminate(), the end of `with`), set by the handle that asked for
the end; None when the tree ended by itself or someone else ended it. Not compared."""

from __future__ import annotations

import signal
import sys

import pytest

import oracle
import tether
from tether import Exit

PY = sys.executable


def test_ended_by_is_not_compared_and_is_said() -> None:
    ended = Exit(code=None, signal=signal.SIGKILL, ended_by="tether")
    assert ended == Exit(code=None, signal=signal.SIGKILL)
    assert str(ended) == "killed by SIGKILL (tether ended it)"
    assert str(Exit(code=None, signal=15, ended_by="timeout")) == (
        "killed by SIGTERM (tether ended it: timeout)")


@pytest.mark.parametrize("end", ["kill", "terminate"])
def test_kill_and_terminate_say_tether_ended_it(mode: str, end: str) -> None:
    with tether.spawn(["sleep", "30"], contain=mode) as child:
        getattr(child, end)()
        child.wait()
        assert child.exit is not None and child.exit.ended_by == "tether"
    assert oracle.no_descendants()


def test_the_end_of_with_says_tether_ended_it(mode: str) -> None:
    with tether.spawn(["sleep", "30"], contain=mode) as child:
        pass
    assert child.exit is not None and child.exit.ended_by == "tether"


def test_a_tree_that_ended_by_itself_or_by_someone_else_says_nothing(mode: str) -> None:
    with tether.spawn(["true"], contain=mode) as child:
        child.wait()
        child.kill()  # too late: it has ended already
    assert child.exit == Exit(code=0, signal=None) and child.exit.ended_by is None
    with tether.spawn(["sleep", "30"], contain=mode) as child:
        child.pidfd.send_signal(signal.SIGKILL)  # not through the tree
        child.wait()
    assert child.exit is not None and child.exit.ended_by is None


def test_run_timeout_says_timeout(mode: str) -> None:
    with pytest.raises(tether.TimeoutExpired) as info:
        tether.run(["sleep", "30"], contain=mode, timeout=0.2)
    assert info.value.exit == Exit(code=None, signal=signal.SIGTERM)
    assert info.value.exit is not None and info.value.exit.ended_by == "timeout"
    assert oracle.no_descendants()


def test_cli_timeout_message_says_timeout(python_env: dict[str, str]) -> None:
    result = tether.run([PY, "-m", "tether", "run", "--timeout", "0.2", "--", "sleep", "30"],
                        env=python_env, capture_output=True, text=True)
    assert result.returncode == 124
    assert "killed by SIGTERM (tether ended it: timeout)" in result.stderr


def test_aio_kill_says_tether_ended_it() -> None:
    import asyncio

    async def main() -> Exit | None:
        child = await tether.aio.spawn(["sleep", "30"])
        async with child:
            child.kill()
            await child.wait()
        return child.exit

    exit_ = asyncio.run(main())
    assert exit_ is not None and exit_.ended_by == "tether"
