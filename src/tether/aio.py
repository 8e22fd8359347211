"""tether.aio: guarded process trees for asyncio, watched by the loop itself.

The one rule this module owns: an awaited tree is watched by the event loop's own selector
(``loop.add_reader`` on the guard's pidfd, which turns readable once the guard has sent its
report on the control socket and exited, or on the program's pidfd when there is no guard),
never by a child watcher, a helper thread or a SIGCHLD handler; and a task that is
cancelled while it waits on a tree does not let the cancellation go until that tree is killed
and reaped.

Starting the guard is a vfork-style clone, done directly in the loop's thread (it returns once
the guard runs); the guard's report that the program has exec'd is awaited in the selector
(spawn) or simply read with the end of the tree (run), so the loop never blocks on it. Works
under any asyncio loop, including anyio's asyncio backend; not under trio (see the README,
"asyncio").
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, final

from tether._kernel.errors import TimeoutExpired, Unsupported
from tether._kernel.limits import Limits, Usage
from tether._kernel.pidfd import NoPublicConstructor
from tether._kernel.signalfd import SignalFd, SignalInfo
from tether._kernel.spec import StrOrBytesPath
from tether._tree.aiochild import (
    AsyncChild,
    adopt_async,
    let_run,
    run_to_end,
    running_loop,
    start_async,
)
from tether._tree.modes import Contain
from tether._tree.run import DEFAULT_GRACE, prepare_run
from tether.subprocess import DEFAULT_CONTAIN
from tether.subprocess import Popen as _Popen

__all__ = [
    "AsyncChild", "Process", "Signals", "create_subprocess_exec", "create_subprocess_shell",
    "run", "signals", "spawn",
]

_STREAM_LIMIT: Final = 2**16


async def spawn(
    argv: Sequence[StrOrBytesPath],
    *,
    contain: Contain = "auto",
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    env: Mapping[str, str] | Mapping[bytes, bytes] | None = None,
    cwd: StrOrBytesPath | None = None,
    pass_fds: Iterable[int] = (),
    text: bool = False,
    encoding: str | None = None,
    errors: str | None = None,
    universal_newlines: bool | None = None,
    wait_tree: bool = False,
    cgroup_root: str | os.PathLike[str] | None = None,
    limit: int = _STREAM_LIMIT,
    limits: Limits | None = None,
) -> AsyncChild:
    """Start ``argv`` under a guard, contained, and return an :class:`AsyncChild`.

    Takes :func:`tether.spawn`'s arguments (but ``bufsize``). PIPE streams become
    :class:`asyncio.StreamWriter`/:class:`asyncio.StreamReader` (bytes, with ``limit`` as
    in asyncio); ``text``/``encoding``/``errors`` apply to :meth:`AsyncChild.communicate`.
    The guard is started synchronously (a vfork-style clone, returning once it runs); its
    report that the program has exec'd is awaited in the loop, so other tasks run meanwhile.
    Errors are raised here, as by :func:`tether.spawn`.

    Guarantee: nothing in the tree outlives this process (the guard holds its lifeline), the
    program's pidfd is handed over race-free, and if this coroutine is cancelled after the
    tree started, the tree is killed and reaped before the cancellation propagates.
    """
    return await start_async(
        argv, contain=contain, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
        pass_fds=pass_fds, text=text, encoding=encoding, errors=errors,
        universal_newlines=universal_newlines, wait_tree=wait_tree, cgroup_root=cgroup_root,
        limit=limit, await_start=True, limits=limits,
    )


async def run(
    argv: Sequence[StrOrBytesPath],
    *,
    timeout: float | None = None,
    input: bytes | str | None = None,
    capture_output: bool = False,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    check: bool = False,
    text: bool = False,
    encoding: str | None = None,
    errors: str | None = None,
    universal_newlines: bool | None = None,
    env: Mapping[str, str] | Mapping[bytes, bytes] | None = None,
    cwd: StrOrBytesPath | None = None,
    pass_fds: Iterable[int] = (),
    contain: Contain = "auto",
    grace: float | None = DEFAULT_GRACE,
    wait_tree: bool = False,
    cgroup_root: str | os.PathLike[str] | None = None,
    limits: Limits | None = None,
) -> subprocess.CompletedProcess[Any]:
    """Run ``argv`` to completion under a guard; :func:`tether.run` for asyncio.

    Same arguments and semantics as :func:`tether.run`: a ``timeout`` ends the whole tree
    (SIGTERM, then SIGKILL after ``grace`` seconds) and raises :class:`tether.TimeoutExpired`
    with the output captured so far; the call returns when the tree has ended, even if an
    escaped process holds a pipe; ``check=True`` raises :class:`subprocess.CalledProcessError`.
    Returns a :class:`subprocess.CompletedProcess` (with ``usage``, as tether.run's).

    Guarantee: when it returns or raises, including by cancellation of the awaiting task,
    no process of the tree is left (within what the containment mode reaches).
    """
    running_loop("run")
    timeout, grace_s, stdin, stdout, stderr, text, mode = prepare_run(
        timeout=timeout, grace=grace, input=input, capture_output=capture_output,
        stdin=stdin, stdout=stdout, stderr=stderr, text=text, encoding=encoding,
        errors=errors, universal_newlines=universal_newlines, contain=contain,
        cgroup_root=cgroup_root,
    )
    # The program's start is not awaited: its report is read with the end, when the guard's
    # exit wakes the loop (a program that cannot run raises from run_to_end).
    child = await start_async(
        argv, contain=mode, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
        pass_fds=pass_fds, text=text, encoding=encoding, errors=errors,
        universal_newlines=None, wait_tree=wait_tree, cgroup_root=cgroup_root,
        limit=_STREAM_LIMIT, await_start=False, limits=limits,
    )
    args = child.args
    usage: Usage | None = None
    try:
        retcode, out, err = await run_to_end(child, input, timeout, grace_s)
        if retcode is not None:  # (a timeout raises below)
            try:
                usage = child.usage()
            except Unsupported:
                pass  # contain=None: no guard, no usage
    finally:
        # Raised without `child` in this frame: in asyncio the exception and the task that
        # carries it form a reference cycle, and a frame in that cycle holding the child
        # would keep the program's pidfd open until the cyclic GC runs.
        del child
    if retcode is None:
        assert timeout is not None
        raise TimeoutExpired(args, timeout, output=out, stderr=err)
    if check and retcode:
        raise subprocess.CalledProcessError(retcode, args, output=out, stderr=err)
    result = subprocess.CompletedProcess(args, retcode, out, err)
    result.usage = usage  # type: ignore[attr-defined]
    return result


# -- signals --------------------------------------------------------------------------------------


@final
class Signals(metaclass=NoPublicConstructor):
    """Signals as an async iterator, read from a :class:`tether.SignalFd` that the event loop
    watches (see :func:`signals`)."""

    __slots__ = ("_pending", "_sigfd")

    def __init__(self, signums: Iterable[int]) -> None:
        self._sigfd = SignalFd(signums)
        self._pending: tuple[asyncio.AbstractEventLoop, int, asyncio.Future[None]] | None = None

    @property
    def signals(self) -> frozenset[int]:
        """The signal numbers this iterator takes."""
        return self._sigfd.signals

    def fileno(self) -> int:
        """The signalfd (borrowed)."""
        return self._sigfd.fileno()

    def __aiter__(self) -> Signals:
        return self

    async def __anext__(self) -> SignalInfo:
        """The next signal; waits in the loop's selector. Stops once closed."""
        while True:
            try:
                info = self._sigfd.read(0.0)
            except ValueError:  # closed
                raise StopAsyncIteration from None
            if info is not None:
                return info
            await self._readable()

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        fd = self._sigfd.fileno()
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _set_none, fut)
        self._pending = (loop, fd, fut)
        try:
            await fut
        finally:
            # Unless close() did it already: by now the number may name someone else's fd.
            if self._pending is not None:
                self._pending = None
                loop.remove_reader(fd)

    def close(self) -> None:
        """Close the signalfd and restore the thread's previous signal mask (any signal still
        pending is then delivered the ordinary way). A pending ``__anext__`` stops the
        iteration. Call it from the loop's thread."""
        pending, self._pending = self._pending, None
        if pending is not None:
            # Out of the selector before the fd is closed, so no closed number stays there.
            loop, fd, fut = pending
            loop.remove_reader(fd)
            _set_none(fut)
        self._sigfd.close()

    def __enter__(self) -> Signals:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Signals:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tether.aio.Signals {self._sigfd!r}>"


def _set_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def signals(*signums: int) -> Signals:
    """Block ``signums`` in the calling thread now and return an async iterator over them.

    ``async for info in tether.aio.signals(SIGTERM, SIGINT): ...`` yields a
    :class:`tether.SignalInfo` per signal, read from a signalfd the event loop watches with
    ``add_reader`` (no Python signal handler, no ``set_wakeup_fd``). Call it from the loop's
    thread, before any other thread starts (a thread started earlier keeps its mask and may
    take the signal instead); blocked signals bypass Python's handlers (SIGINT no longer raises
    KeyboardInterrupt) and ``loop.add_signal_handler``. Use it as a (async) context manager,
    or call :meth:`Signals.close`, to restore the mask.

    Guarantee: a signal sent after this call returns is queued for the iterator, never lost
    and never run in an asynchronous handler (standard signals of one kind coalesce, as the
    kernel does).
    """
    return Signals._create(signums)


# -- asyncio's create_subprocess_exec / create_subprocess_shell ----------------------------------


@final
class Process(metaclass=NoPublicConstructor):
    """What :func:`create_subprocess_exec` returns: :class:`asyncio.subprocess.Process`'s
    interface (``pid``, ``returncode``, ``stdin``/``stdout``/``stderr`` streams, ``wait()``,
    ``communicate()``, ``send_signal()``/``terminate()``/``kill()``), on a contained tree.

    As with asyncio, the signals reach the program only (the guard then ends the rest of the
    tree as the program exits); ``wait()`` and ``communicate()`` return once the tree has
    ended, watched by the loop's selector: no child watcher, thread or SIGCHLD handler.
    A Process that is dropped while its program runs keeps running, as asyncio's does; it is
    reaped once its tree has ended (at the next spawn or at interpreter exit).
    Guarantee: nothing of the tree outlives this process (the guard holds its lifeline).
    """

    __slots__ = ("_child",)

    def __init__(self, child: AsyncChild) -> None:
        self._child = child

    def __del__(self) -> None:
        child = getattr(self, "_child", None)
        if child is not None:
            let_run(child)

    def __repr__(self) -> str:
        return f"<Process {self.pid}>"

    @property
    def pid(self) -> int:
        """The program's PID."""
        return self._child.pid

    @property
    def returncode(self) -> int | None:
        """The program's returncode once the tree has ended, else None."""
        return self._child.returncode

    @property
    def stdin(self) -> asyncio.StreamWriter | None:
        return self._child.stdin

    @property
    def stdout(self) -> asyncio.StreamReader | None:
        return self._child.stdout

    @property
    def stderr(self) -> asyncio.StreamReader | None:
        return self._child.stderr

    async def wait(self) -> int:
        """Wait until the tree has ended; return the program's returncode."""
        return await self._child.wait()

    async def communicate(self, input: bytes | None = None) -> tuple[Any, Any]:
        """Send ``input``, read stdout/stderr until the tree has ended; (out, err) as bytes."""
        return await self._child.communicate(input)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the program through its pidfd (a no-op once it has ended)."""
        self._child.send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _check_kwds(kwds: dict[str, Any]) -> None:
    """asyncio's checks (loop.subprocess_exec/_shell): streams are bytes, unbuffered."""
    if kwds.pop("universal_newlines", False):
        raise ValueError("universal_newlines must be False")
    if kwds.pop("bufsize", 0) != 0:
        raise ValueError("bufsize must be 0")
    if kwds.pop("text", False):
        raise ValueError("text must be False")
    if kwds.pop("encoding", None) is not None:
        raise ValueError("encoding must be None")
    if kwds.pop("errors", None) is not None:
        raise ValueError("errors must be None")


async def _start(args: Any, shell: bool, limit: int, kwds: dict[str, Any]) -> Process:
    running_loop("create_subprocess_exec")
    _check_kwds(kwds)
    popen = _Popen(args, bufsize=0, shell=shell, **kwds)
    tree, mode, files = popen.take_tree()
    return Process._create(await adopt_async(popen.args, tree, mode, files, limit))


async def create_subprocess_exec(
    program: StrOrBytesPath,
    *args: StrOrBytesPath,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    limit: int = _STREAM_LIMIT,
    contain: Contain = DEFAULT_CONTAIN,
    **kwds: Any,
) -> Process:
    """:func:`asyncio.create_subprocess_exec`, the program in a contained tree.

    Takes asyncio's arguments (and :class:`tether.subprocess.Popen`'s keywords: ``cwd``,
    ``env``, ``pass_fds``, ``user``, ``umask``, ``start_new_session``, ...), plus
    ``contain``. The tree is started in the loop's thread (a vfork-style clone; it returns
    once the program has exec'd); bad arguments and a program that cannot be run raise here
    with subprocess's errors, nothing left behind."""
    if kwds.get("shell"):
        raise ValueError("shell must be False")
    kwds.pop("shell", None)
    kwds.update(stdin=stdin, stdout=stdout, stderr=stderr, contain=contain)
    return await _start([program, *args], False, limit, kwds)


async def create_subprocess_shell(
    cmd: str | bytes,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    limit: int = _STREAM_LIMIT,
    *,
    contain: Contain = DEFAULT_CONTAIN,
    **kwds: Any,
) -> Process:
    """:func:`asyncio.create_subprocess_shell`, ``/bin/sh -c cmd`` in a contained tree (see
    :func:`create_subprocess_exec`)."""
    if not isinstance(cmd, bytes | str):
        raise ValueError("cmd must be a string")
    if not kwds.pop("shell", True):
        raise ValueError("shell must be True")
    kwds.update(stdin=stdin, stdout=stdout, stderr=stderr, contain=contain)
    return await _start(cmd, True, limit, kwds)
