"""tether.aio: parity with tether.run, cancellation ends the tree, many children on one loop,
no helper threads, signals through a signalfd. Plain asyncio.run inside sync tests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

import oracle
import tether
import tether.aio as aio
from tether._kernel import cgroup_ahead
from tether._tree.aiopipes import AsyncPipes

PY = sys.executable
PIPE = subprocess.PIPE
TREE = ["sh", "-c", "sleep 300 & sleep 300 & echo up; wait"]
# 1,000 by default (a few seconds here); TETHER_AIO_CHILDREN overrides.
MANY = int(os.environ.get("TETHER_AIO_CHILDREN", "1000"))

_T = TypeVar("_T")


def arun(coro: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coro)


def _fds() -> set[int]:
    gc.collect()  # fds of earlier tests' collectable objects must not count here
    return oracle.open_fds()


def _completed(cp: subprocess.CompletedProcess[Any]) -> tuple[Any, ...]:
    return (cp.args, cp.returncode, cp.stdout, cp.stderr)


# -- barriers: what a test waits for before it acts, instead of sleeping "long enough" ------------


def _suspended_in(task: asyncio.Task[Any], where: Callable[..., Any]) -> bool:
    """True if ``task`` is suspended on a future somewhere inside the coroutine function
    ``where`` (its await chain, read through the coroutines' own ``cr_await``)."""
    codes = []
    awaited: Any = task.get_coro()
    while hasattr(awaited, "cr_await"):
        codes.append(awaited.cr_code)
        awaited = awaited.cr_await
    return awaited is not None and where.__code__ in codes


async def blocked_in(task: asyncio.Task[Any], where: Callable[..., Any]) -> None:
    """Give the loop turns until ``task`` is really blocked in ``where`` (e.g. the tree wait
    of AsyncChild), so that what the test does next happens while the task waits there."""
    while not _suspended_in(task, where):
        assert not task.done(), f"the task ended before it blocked in {where.__qualname__}"
        await asyncio.sleep(0)


async def readable(fd: int) -> None:
    """Until ``fd`` is readable (a child wrote to it, or closed it), in the loop's selector."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(fd)


# -- run(): parity with tether.run ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "kwargs"),
    [
        (["sh", "-c", "exit 3"], {}),
        (["sh", "-c", "echo out; echo err >&2; exit 4"], {"capture_output": True}),
        (["sh", "-c", "echo out; echo err >&2"], {"stdout": PIPE, "stderr": subprocess.STDOUT}),
        (["cat"], {"input": b"x" * 300_000, "capture_output": True}),
        (["sh", "-c", "printf 'a\\r\\nb\\r'"], {"capture_output": True, "text": True}),
        (["cat"], {"input": "h\u00e9llo", "stdout": PIPE, "encoding": "utf-8"}),
        (["sh", "-c", "kill -TERM $$"], {"capture_output": True}),
        (["sh", "-c", "echo $0"], {"capture_output": True, "contain": None}),
    ],
)
def test_run_matches_tether_run(argv: list[str], kwargs: dict[str, Any]) -> None:
    theirs = tether.run(argv, **kwargs)
    ours = arun(aio.run(argv, **kwargs))
    assert _completed(ours) == _completed(theirs)


def test_run_check_raises_called_process_error_with_output() -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        arun(aio.run(["sh", "-c", "echo no; exit 5"], capture_output=True, check=True))
    assert info.value.returncode == 5 and info.value.stdout == b"no\n"


def test_run_rejects_what_tether_run_rejects() -> None:
    for kwargs in ({"input": "str"}, {"input": b"x", "stdin": PIPE},
                   {"capture_output": True, "stdout": PIPE}, {"contain": "bogus"},
                   {"timeout": -1}):
        with pytest.raises((TypeError, ValueError)):
            tether.run(["true"], **kwargs)
        with pytest.raises((TypeError, ValueError)):
            arun(aio.run(["true"], **kwargs))


def test_missing_program_raises_file_not_found_and_leaves_nothing() -> None:
    before = _fds()
    with pytest.raises(FileNotFoundError):
        arun(aio.run(["/nonexistent/program"], capture_output=True))
    assert oracle.no_descendants()
    assert _fds() == before


def test_exec_failure_seen_by_the_guard_raises_typed_and_leaves_nothing(
        mode: str, junk_program: str) -> None:
    from tether._kernel import cgroup_ahead

    arun(aio.run(["true"], contain=mode))
    # The directory made ahead for the next cgroup-mode tree is the process's, not the
    # tree's: out of the count (as conftest's leak checks drain it; the test failed when
    # its file ran alone, the first cgroup-mode start of the process being the one above).
    cgroup_ahead.drain()
    before = _fds()
    with pytest.raises(FileNotFoundError):
        arun(aio.run([junk_program], input=b"x" * 200000, capture_output=True, contain=mode))
    with pytest.raises(FileNotFoundError):
        arun(aio.spawn([junk_program], stdout=PIPE, contain=mode))
    assert oracle.no_descendants()
    cgroup_ahead.drain()
    assert _fds() == before


def test_spawn_awaits_the_start_in_the_loop_without_blocking_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The guard's start report is awaited in the selector: the blocking wait is never used,
    # and other tasks run while a spawn is in progress. Made certain, not likely: the guard
    # stops itself before its start report (its test-only fault injection), and only another
    # task, running during the spawn, continues it; a spawn that blocked the loop would hang.
    from tether._tree.guarded import Guard

    def blocking(self: Guard) -> None:
        raise AssertionError("tether.aio.spawn blocked the loop in Guard.await_start")

    guards: list[Guard] = []
    real_launch = Guard.launch.__func__  # type: ignore[attr-defined]

    def recording_launch(cls: type[Guard], *args: Any, **kwargs: Any) -> Guard:
        guard: Guard = real_launch(cls, *args, **kwargs)
        guards.append(guard)
        return guard

    monkeypatch.setattr(Guard, "await_start", blocking)
    monkeypatch.setattr(Guard, "launch", classmethod(recording_launch))
    env = {**os.environ, "TETHER_GUARD_TEST_STOP_BEFORE_REPORT": "1"}

    async def main() -> int:
        in_spawn = False
        seen = 0
        stop = False

        async def ticker() -> None:
            nonlocal seen
            while not stop:
                if in_spawn and guards:
                    seen += 1
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        guards[-1].spawned.pidfd.send_signal(signal.SIGCONT)
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        for _ in range(5):
            in_spawn = True
            # group: a PID namespace's init cannot stop itself
            child = await aio.spawn(["true"], contain="group", env=env)
            in_spawn = False
            assert child.pid > 0
            assert await child.wait() == 0
        stop = True
        await task
        return seen

    assert arun(main()) > 0


@pytest.mark.timeout(60)
def test_timeout_zero_ends_the_tree_on_sigterm_alone(mode: str) -> None:
    # aio.run does not await the guard's start report: with timeout=0 the SIGTERM is sent
    # while the guard may still be starting the program; it must still reach it (grace=None:
    # no SIGKILL comes to the rescue, a lost SIGTERM means waiting out the sleep: a hang).
    with pytest.raises(tether.TimeoutExpired):
        arun(aio.run(["sleep", "300"], timeout=0, grace=None, contain=mode))
    assert oracle.no_descendants()


def test_a_program_that_cannot_start_is_no_timeout(mode: str, junk_program: str) -> None:
    # The deadline may pass before the guard's failure report is read: still the error
    # subprocess raises, never a TimeoutExpired for a program that never ran.
    for _ in range(10):
        with pytest.raises(FileNotFoundError):
            arun(aio.run([junk_program], timeout=0, contain=mode))
    assert oracle.no_descendants()


def test_timeout_partial_output_is_bytes_even_in_text_mode() -> None:
    # As subprocess.run (and tether.run): the output so far may end inside a character.
    with pytest.raises(tether.TimeoutExpired) as info:
        arun(aio.run(["sh", "-c", "printf '\\303'; sleep 300"], timeout=0.3, grace=0.2,
                     text=True, capture_output=True))
    assert info.value.output == b"\xc3"


def test_run_leaks_no_fd() -> None:
    arun(aio.run(["true"]))  # first use: asyncio's and tether's lazy state
    before = _fds()
    for _ in range(3):
        arun(aio.run(["sh", "-c", "cat; echo e >&2"], input=b"data", capture_output=True))
    assert _fds() == before


def test_background_holder_of_stdout_is_no_false_timeout() -> None:
    # subprocess.run would wait for the sleeping grandchild's copy of stdout and time out:
    # TimeoutExpired after 5 s, here a CompletedProcess.
    cp = arun(aio.run(["sh", "-c", "sleep 300 & echo hi"], capture_output=True, timeout=5))
    assert (cp.returncode, cp.stdout) == (0, b"hi\n")
    assert oracle.no_descendants()


def test_timeout_ends_the_tree_and_carries_partial_output(mode: str) -> None:
    script = "echo partial; echo e >&2; sleep 300 & sleep 300; wait"
    with pytest.raises(tether.TimeoutExpired) as info:
        arun(aio.run(["sh", "-c", script], capture_output=True, timeout=0.5, grace=0.2,
                     contain=mode))
    assert isinstance(info.value, subprocess.TimeoutExpired)
    assert info.value.timeout == 0.5
    assert info.value.output == b"partial\n" and info.value.stderr == b"e\n"
    assert oracle.no_descendants()


@pytest.mark.timeout(60)
def test_timeout_escalates_to_sigkill_after_grace() -> None:
    # The program ignores SIGTERM and never ends: without the SIGKILL after the grace, a hang.
    script = "trap '' TERM; echo up; while :; do sleep 0.05; done"
    with pytest.raises(tether.TimeoutExpired) as info:
        arun(aio.run(["sh", "-c", script], stdout=PIPE, timeout=0.3, grace=0.2))
    assert info.value.output == b"up\n"
    assert oracle.no_descendants()


# -- spawn(): the async child ---------------------------------------------------------------------


def test_streams_are_asyncio_streams_and_communicate_returns_at_tree_end() -> None:
    async def main() -> None:
        child = await aio.spawn(["sh", "-c", "read x; echo got $x; echo e >&2; exit 7"],
                                stdin=PIPE, stdout=PIPE, stderr=PIPE)
        assert isinstance(child.stdin, asyncio.StreamWriter)
        assert isinstance(child.stdout, asyncio.StreamReader)
        assert isinstance(child.stderr, asyncio.StreamReader)
        async with child:
            out, err = await child.communicate(b"hello\n")
            assert (out, err) == (b"got hello\n", b"e\n")
            assert child.returncode == 7
            assert child.exit == tether.Exit(code=7, signal=None)
            assert child.pidfd.poll() == child.exit

    arun(main())
    assert oracle.no_descendants()


def test_stdin_writer_drains_and_closes_and_stdout_reads_to_eof() -> None:
    async def main() -> bytes:
        async with await aio.spawn(["cat"], stdin=PIPE, stdout=PIPE) as child:
            assert child.stdin is not None and child.stdout is not None
            reader = asyncio.create_task(child.stdout.read())
            child.stdin.write(b"y" * 1_000_000)  # more than a pipe holds: drain must wait
            await child.stdin.drain()
            child.stdin.close()
            await child.stdin.wait_closed()
            data = await reader
            assert await child.wait() == 0
            return data

    assert arun(main()) == b"y" * 1_000_000


def test_readline_then_signal_then_wait() -> None:
    script = (
        "import signal, sys\n"
        "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(42))\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )

    async def main() -> int:
        async with await aio.spawn([PY, "-c", script], stdout=PIPE) as child:
            assert child.stdout is not None
            assert await child.stdout.readline() == b"ready\n"
            child.send_signal(signal.SIGUSR1)
            return await child.wait()

    assert arun(main()) == 42


def test_communicate_ignores_an_escaped_holder_of_the_pipe() -> None:
    async def main() -> tuple[Any, Any]:
        async with await aio.spawn(["sh", "-c", "sleep 30 & echo hi"], stdout=PIPE) as child:
            return await child.communicate()

    assert arun(main()) == (b"hi\n", None)
    assert oracle.no_descendants()


def test_terminate_and_kill_reach_the_whole_tree(mode: str) -> None:
    async def main(stop: Callable[[aio.AsyncChild], None], sig: int) -> None:
        async with await aio.spawn(TREE, contain=mode, stdout=PIPE) as child:
            assert child.stdout is not None
            assert await child.stdout.readline() == b"up\n"
            stop(child)
            assert await child.wait() == -sig
        assert oracle.no_descendants()

    arun(main(aio.AsyncChild.terminate, signal.SIGTERM))
    arun(main(aio.AsyncChild.kill, signal.SIGKILL))


def test_async_with_kills_and_reaps_the_tree(mode: str) -> None:
    async def main() -> aio.AsyncChild:
        async with await aio.spawn(TREE, contain=mode, stdout=PIPE) as child:
            assert child.stdout is not None
            assert await child.stdout.readline() == b"up\n"
        return child

    child = arun(main())
    assert child.returncode == -signal.SIGKILL
    assert oracle.no_descendants()


def test_contain_none_is_watched_through_the_programs_pidfd() -> None:
    async def main() -> tuple[int, str | None]:
        child = await aio.spawn(["sh", "-c", "exit 9"], contain=None)
        return await child.wait(), child.contain

    assert arun(main()) == (9, None)


def test_two_waiters_get_the_same_returncode() -> None:
    async def main() -> list[int]:
        async with await aio.spawn(["sh", "-c", "read x; exit 6"], stdin=PIPE) as child:
            assert child.stdin is not None
            waiters = [asyncio.create_task(child.wait()) for _ in range(2)]
            for waiter in waiters:
                await blocked_in(waiter, aio.AsyncChild._wait_tree)
            child.stdin.close()  # both wait now; the program reads EOF and exits
            return list(await asyncio.gather(*waiters))

    assert arun(main()) == [6, 6]


def test_guard_killed_before_reporting_raises_child_process_error() -> None:
    async def main() -> None:
        child = await aio.spawn(TREE, stdout=PIPE)
        async with child:
            assert child.stdout is not None
            assert await child.stdout.readline() == b"up\n"
            # Only a test reaches for the guard: kill it before it can report.
            child._tree.spawned.pidfd.send_signal(signal.SIGKILL)
            with pytest.raises(ChildProcessError):
                await child.wait()
            assert child.returncode is None

    arun(main())
    assert oracle.reap_until(10.0).empty


# -- cancellation ---------------------------------------------------------------------------------


async def _cancel_while(
    await_it: Callable[[aio.AsyncChild], Coroutine[Any, Any, object]], contain: str | None
) -> aio.AsyncChild:
    child = await aio.spawn(TREE, contain=contain, stdout=PIPE, stdin=PIPE)
    assert child.stdout is not None
    assert await child.stdout.readline() == b"up\n"
    task = asyncio.create_task(await_it(child))
    await blocked_in(task, aio.AsyncChild._wait_tree)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if contain is None:
        # No guard: the program's group is SIGKILLed and the program reaped; the members,
        # orphaned to this subreaper, die a moment later.
        assert oracle.reap_until(10.0).empty
    else:
        # Checked the moment the CancelledError arrives: the tree must already be reaped.
        assert oracle.no_descendants()
    await child.__aexit__(None, None, None)
    return child


@pytest.mark.parametrize("what", ["wait", "communicate"])
def test_cancelling_a_waiter_kills_and_reaps_the_tree_first(mode: str, what: str) -> None:
    def await_it(child: aio.AsyncChild) -> Coroutine[Any, Any, object]:
        return child.wait() if what == "wait" else child.communicate(b"in")

    child = arun(_cancel_while(await_it, mode))
    assert child.returncode == -signal.SIGKILL


def test_cancelling_a_waiter_on_a_bare_child_kills_its_group() -> None:
    child = arun(_cancel_while(lambda c: c.wait(), None))
    assert child.returncode == -signal.SIGKILL


def test_cancelling_spawn_while_it_connects_the_pipes_leaves_nothing() -> None:
    async def main() -> None:
        task = asyncio.create_task(aio.spawn(TREE, stdin=PIPE, stdout=PIPE, stderr=PIPE))
        # Spawned; now awaiting the pipe transports.
        await blocked_in(task, AsyncPipes.connect)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert oracle.no_descendants()

    before = _fds()
    arun(main())
    assert _fds() == before


def test_cancelling_run_kills_and_reaps_the_tree_first(mode: str) -> None:
    async def main(up_r: int, up_w: int) -> None:
        # The tree says "up" on a pipe of the test's (its stderr is still run()'s to collect).
        task = asyncio.create_task(aio.run(TREE, stdout=up_w, stderr=PIPE, contain=mode))
        await readable(up_r)  # the whole tree runs
        await blocked_in(task, aio.AsyncChild._wait_tree)  # and run() waits for its end
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert oracle.no_descendants()

    up_r, up_w = os.pipe2(os.O_CLOEXEC)
    try:
        arun(main(up_r, up_w))
    finally:
        os.close(up_r)
        os.close(up_w)


def test_cancelled_runs_kept_by_gather_hold_no_pidfd() -> None:
    # Each CancelledError keeps its frames (and the AsyncChild in them) alive for as long as
    # gather's result lives: no pidfd of a tree that is gone may stay open with it.
    async def main() -> tuple[list[BaseException | None], set[int], set[int]]:
        before = _fds()  # the loop's own fds included
        tasks = [asyncio.create_task(aio.run(["sleep", "300"])) for _ in range(5)]
        for task in tasks:
            await blocked_in(task, aio.AsyncChild._wait_tree)
            task.cancel()
        kept = await asyncio.gather(*tasks, return_exceptions=True)
        return kept, before, oracle.open_fds()  # the loop still runs, the tasks are held

    kept, before, during = arun(main())
    assert all(isinstance(e, asyncio.CancelledError) for e in kept)
    assert during == before


def test_a_cancelled_wait_leaves_no_dup_of_the_guards_pidfd(mode: str) -> None:
    async def main() -> tuple[aio.AsyncChild, set[int]]:
        child = await aio.spawn(["sleep", "300"], contain=mode)
        with_child = oracle.open_fds()  # the child's own fds: the guard's pidfd, ...
        task = asyncio.create_task(child.wait())
        await blocked_in(task, aio.AsyncChild._wait_tree)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The tree is gone: of its fds only the program's pidfd (child.pidfd) may remain
        # (and the next tree's directory, made ahead meanwhile: not the tree's).
        cgroup_ahead.drain()
        return child, with_child, oracle.open_fds()

    child, with_child, after = arun(main())
    assert child.returncode == -signal.SIGKILL
    assert after - with_child == set(), "a dup of the guard's pidfd stayed open"


def test_asyncio_timeout_around_communicate_kills_the_tree() -> None:
    async def main() -> aio.AsyncChild:
        async with await aio.spawn(TREE, stdout=PIPE) as child:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await child.communicate()
            assert oracle.no_descendants()
            return child

    assert arun(main()).returncode == -signal.SIGKILL


def test_a_second_cancel_during_the_reap_does_not_leave_the_tree() -> None:
    async def main() -> None:
        child = await aio.spawn(TREE, stdout=PIPE)
        assert child.stdout is not None
        await child.stdout.readline()
        task = asyncio.create_task(child.wait())
        await blocked_in(task, aio.AsyncChild._wait_tree)
        # Hold the guard still (through its pidfd), so that the kill the first cancel starts
        # cannot finish before the second cancel lands, however loaded the machine is.
        guard = child._tree.spawned.pidfd  # type: ignore[attr-defined]
        guard.send_signal(signal.SIGSTOP)
        try:
            task.cancel()
            await blocked_in(task, aio.AsyncChild._kill_and_reap)
            assert task.cancel(), "the task left its kill-and-reap before the second cancel"
        finally:
            guard.send_signal(signal.SIGCONT)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert oracle.no_descendants()
        await child.__aexit__(None, None, None)

    arun(main())


# -- many children, no helpers --------------------------------------------------------------------


def _raise_nofile(need: int) -> tuple[int, int]:
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = old
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need} fds for {MANY} children")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return old


def test_many_concurrent_children_on_one_loop_are_all_reaped_with_their_codes() -> None:
    old_limit = _raise_nofile(6 * MANY + 512)
    fds_before = _fds()

    async def main() -> list[int]:
        # Every child blocks on one pipe, so all MANY trees (2 x MANY processes) are alive
        # together, and all exit at once when it closes.
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            children = [
                await aio.spawn(["sh", "-c", f"read x; exit {i % 256}"], stdin=r)
                for i in range(MANY)
            ]
        finally:
            os.close(r)
        tasks = [asyncio.create_task(c.wait()) for c in children]
        for task in tasks:
            await blocked_in(task, aio.AsyncChild._wait_tree)
        os.close(w)
        return await asyncio.gather(*tasks)

    try:
        codes = arun(main())
        assert codes == [i % 256 for i in range(MANY)]
        assert oracle.no_descendants()
        assert _fds() == fds_before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old_limit)


def test_nothing_runs_in_a_helper_thread_and_no_child_watcher_is_attached() -> None:
    policy = asyncio.get_event_loop_policy()
    watcher_before = getattr(policy, "_watcher", None)
    sigchld_before = signal.getsignal(signal.SIGCHLD)
    threads_before = threading.active_count()

    async def main(gate_r: int, gate_w: int) -> None:
        loop = asyncio.get_running_loop()
        # The program exits only once the test opens its gate: the waiter cannot finish
        # before the check below has seen it waiting.
        # (Python, not sh: dash's redirections take single-digit fds only, and in a full run
        # the gate's number is higher.)
        gated = f"import os, sys; sys.stdin.readline(); os.read({gate_r}, 1); sys.exit(3)"
        child = await aio.spawn([sys.executable, "-c", gated],
                                stdin=PIPE, stdout=PIPE, pass_fds=(gate_r,))
        waiter = asyncio.create_task(child.communicate(b"go\n"))
        await blocked_in(waiter, aio.AsyncChild._wait_tree)
        assert threading.active_count() == threads_before  # while awaiting
        os.write(gate_w, b"\n")
        assert await waiter == (b"", None)
        assert (await aio.run(["sh", "-c", "exit 2"])).returncode == 2
        assert threading.active_count() == threads_before
        assert not getattr(loop, "_signal_handlers", {})

    gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
    try:
        arun(main(gate_r, gate_w))
    finally:
        os.close(gate_r)
        os.close(gate_w)
    assert getattr(policy, "_watcher", None) is watcher_before
    assert signal.getsignal(signal.SIGCHLD) == sigchld_before


# -- signals --------------------------------------------------------------------------------------


def test_signals_delivers_sigusr1_sent_by_another_process() -> None:
    if threading.active_count() != 1:
        pytest.skip("another thread may not block SIGUSR1 and would take it")
    mask_before = signal.pthread_sigmask(signal.SIG_BLOCK, [])

    async def main() -> tuple[tether.SignalInfo, int]:
        with aio.signals(signal.SIGUSR1) as sigs:
            cp = await aio.run(["kill", "-USR1", str(os.getpid())], contain=None)
            assert cp.returncode == 0
            async with asyncio.timeout(5):
                info = await anext(sigs)
            return info, cp.returncode

    info, _ = arun(main())
    assert info.signo == signal.SIGUSR1 and info.signal == signal.SIGUSR1
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask_before


def test_signals_iterator_stops_once_closed() -> None:
    async def main() -> list[tether.SignalInfo]:
        sigs = aio.signals(signal.SIGUSR2)
        signal.raise_signal(signal.SIGUSR2)  # to this thread, which blocks it
        got = [await anext(sigs)]
        sigs.close()
        got += [info async for info in sigs]
        return got

    got = arun(main())
    assert [i.signo for i in got] == [signal.SIGUSR2]


def test_closing_signals_while_a_task_awaits_them_ends_its_iteration() -> None:
    async def first(sigs: aio.Signals) -> tether.SignalInfo | None:
        async for info in sigs:
            return info
        return None

    async def main() -> list[tether.SignalInfo]:
        sigs = aio.signals(signal.SIGUSR2)
        task = asyncio.create_task(first(sigs))
        await blocked_in(task, aio.Signals._readable)  # waiting in the selector on the signalfd
        sigs.close()
        assert await task is None
        return [info async for info in sigs]

    assert arun(main()) == []


# -- other event loops ----------------------------------------------------------------------------


def test_works_under_anyio_asyncio_backend_and_its_cancel_scopes() -> None:
    anyio = pytest.importorskip(
        "anyio", reason="anyio is not installed (it is in tether's test extra)")

    async def main() -> None:
        cp = await aio.run(["sh", "-c", "echo a; exit 3"], capture_output=True)
        assert (cp.returncode, cp.stdout) == (3, b"a\n")
        async with await aio.spawn(TREE, stdout=PIPE) as child:
            assert child.stdout is not None
            assert await child.stdout.readline() == b"up\n"
            # anyio re-delivers the cancellation on every loop turn until the scope is left.
            with anyio.move_on_after(0.2) as scope:
                await child.wait()
            assert scope.cancelled_caught
            assert child.returncode == -signal.SIGKILL
            assert oracle.no_descendants()

    anyio.run(main, backend="asyncio")


def test_under_trio_it_says_asyncio_is_needed() -> None:
    trio = pytest.importorskip("trio", reason="trio is not installed")

    async def main() -> None:
        with pytest.raises(RuntimeError, match="asyncio"):
            await aio.run(["true"])

    trio.run(main)
