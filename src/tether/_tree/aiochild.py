"""AsyncChild: a guarded, contained process tree for asyncio, watched by the loop itself.

The one rule this module owns: an awaited tree is watched by the event loop's own selector
(``loop.add_reader`` on the tree's watch fd: the guard's pidfd, which turns readable once the
guard has sent its report and exited, or the program's pidfd when there is no guard), never
by a child watcher, a helper thread or a SIGCHLD handler; and a task that is cancelled while
it waits on a tree does not let the cancellation go until that tree is killed and reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, final

from tether._kernel.exit import Exit
from tether._kernel.limits import Limits, Usage
from tether._kernel.pidfd import NoPublicConstructor, Pidfd
from tether._kernel.spec import SpawnSpec, StrOrBytesPath
from tether._tree.aiopipes import AsyncPipes
from tether._tree.handle import ForkedHandleError, TreeHandle, describe, start_tree
from tether._tree.modes import Contain, Mode, resolve_mode
from tether._tree.pipes import BINARY, TextMode
from tether._tree.seam import Tree

__all__ = ["AsyncChild", "adopt_async", "let_run", "run_to_end", "running_loop", "start_async"]


def running_loop(what: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"tether.aio.{what}() must be awaited in a running asyncio event loop (anyio's "
            "asyncio backend works; trio does not: use tether.spawn/run from trio's threads, "
            "see the README, section asyncio)"
        ) from None


def _set_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


@final
class AsyncChild(metaclass=NoPublicConstructor):
    """A running program and the tree it starts, under a guard, for asyncio (see :func:`spawn`).

    Like :class:`asyncio.subprocess.Process`: ``args``, ``pid`` (the program's), ``returncode``,
    ``stdin`` (a :class:`asyncio.StreamWriter`), ``stdout``/``stderr``
    (:class:`asyncio.StreamReader`), ``await wait()``, ``await communicate()``,
    ``send_signal()``/``terminate()``/``kill()``; plus ``pidfd``, ``exit`` and ``contain``.
    ``async with`` kills and reaps the whole tree on the way out.

    Guarantee: the tree's end is observed through the guard's report and pidfds (never a PID
    number, a thread or SIGCHLD), and a task cancelled while it awaits
    :meth:`wait` or :meth:`communicate` kills and reaps the whole tree before the
    :class:`asyncio.CancelledError` goes on.
    """

    __slots__ = (
        "__weakref__", "_handle", "_loop", "_pipes", "_waiters", "_watch_fd",
    )

    def __init__(
        self,
        handle: TreeHandle,
        loop: asyncio.AbstractEventLoop,
        files: list[IO[Any] | None],
        mode: TextMode,
    ) -> None:
        self._handle = handle
        self._loop = loop
        self._pipes = AsyncPipes(loop, files, mode)
        self._watch_fd = -1
        self._waiters: list[asyncio.Future[bool]] = []

    # -- identity ----------------------------------------------------------------------------

    @property
    def stdin(self) -> asyncio.StreamWriter | None:
        """The program's stdin (stdin=PIPE), a :class:`asyncio.StreamWriter`."""
        return self._pipes.stdin

    @property
    def stdout(self) -> asyncio.StreamReader | None:
        """The program's stdout (stdout=PIPE), a :class:`asyncio.StreamReader`."""
        return self._pipes.stdout

    @property
    def stderr(self) -> asyncio.StreamReader | None:
        """The program's stderr (stderr=PIPE), a :class:`asyncio.StreamReader`."""
        return self._pipes.stderr

    @property
    def args(self) -> Any:
        """The argv the tree was started with."""
        return self._handle.args

    @property
    def pid(self) -> int:
        """The program's PID (not the guard's), for logs and humans; never used to reach it."""
        return self._handle.pid

    @property
    def pidfd(self) -> Pidfd:
        """The program's pidfd (race-free: handed over by the guard with SCM_RIGHTS)."""
        return self._handle.pidfd

    @property
    def contain(self) -> str | None:
        """The containment mode in force: "group", "cgroup", "pidns", or None (no guard)."""
        return self._handle.contain

    @property
    def returncode(self) -> int | None:
        """The program's returncode once the tree has ended, else None (never blocks)."""
        try:
            return self._handle.poll()
        except ForkedHandleError:
            raise  # inert in a forked child: say so, never pass for an ended tree
        except ChildProcessError:
            return None

    def usage(self) -> Usage:
        """The whole tree's usage, live or final (see :meth:`tether.Child.usage`)."""
        return self._handle.usage()

    @property
    def exit(self) -> Exit | None:
        """How the program ended, once the tree has ended; None before."""
        try:
            return self._handle.exit
        except ForkedHandleError:
            raise  # inert in a forked child: say so, never pass for an ended tree
        except ChildProcessError:
            return None

    def __repr__(self) -> str:
        return f"<tether.aio.AsyncChild {describe(self._handle, poll=True)}>"

    # -- watching the tree -------------------------------------------------------------------

    @property
    def _tree(self) -> Tree:
        return self._handle._tree  # (in a forked child: ForkedHandleError)

    def _tree_done(self) -> bool:
        # True also when the guard died (the Child has ended the tree itself) or the program
        # could not be started: _settle() raises for those.
        return self._tree.pump()

    async def _await_start(self) -> None:
        """Until the guard has reported that the program exec'd (or could not be run: that
        error is raised here). Waits in the loop's selector on the guard's control socket."""
        tree = self._tree
        while True:
            # Only up to the start report: a report of the end read here would reap the guard
            # with a blocking wait in the loop's thread (it is still exiting then).
            tree.pump(stop_at_start=True)
            if tree.started:
                break
            fd = tree.fileno()
            fut: asyncio.Future[None] = self._loop.create_future()
            self._loop.add_reader(fd, _set_none, fut)
            try:
                await fut
            finally:
                # Before the next pump(), which may close the socket.
                self._loop.remove_reader(fd)
        tree.check_start()

    def _watch(self) -> None:
        if self._watch_fd >= 0:
            return
        # The tree's watch fd, not its report fd: with a guard, the report socket would wake
        # the loop for the start report too, and then the guard's reap would block the loop
        # until the guard has finished exiting; the watch fd (the guard's pidfd) turns
        # readable once every report is in and the reap is immediate: one wakeup per tree.
        # Borrowed, not merely looked up: the Guard closes its handles the moment it reads
        # the report, possibly from a sync call (poll, kill) on another thread while we are
        # registered; a closed fd left in the selector's map would make a later add_reader
        # on the recycled number a silent no-op. A borrowed number stays open until we have
        # unregistered it (end_watch), with no dup: no extra fd per watched tree.
        tree = self._tree
        fd = tree.watch_fd()
        if fd < 0:
            # Ended since the caller looked (another thread read the end): settle now.
            self._loop.call_soon(self._on_tree_readable)
            return
        try:
            self._loop.add_reader(fd, self._on_tree_readable)
        except BaseException:
            tree.end_watch()
            raise
        self._watch_fd = fd

    def _unwatch(self, tree: Tree | None = None) -> None:
        """Unregister the watch fd and give it back to ``tree`` (None: look it up)."""
        fd, self._watch_fd = self._watch_fd, -1
        if fd >= 0:
            self._loop.remove_reader(fd)
            try:
                (tree or self._tree).end_watch()
            except ForkedHandleError:
                pass  # a fork's copy: not ours to touch

    def _on_tree_readable(self) -> None:
        # The guard's pidfd is readable only once the guard has reported the end of the tree
        # and exited (or died); the program's pidfd (contain=None) only once the program has
        # exited. So this runs once per tree, for each of 3,000 children at once: every
        # lookup counts (ARCHITECTURE.md, "The exit notice").
        error: Exception | None = None
        tree: Tree | None = None
        try:
            tree = self._tree
            if not tree.pump():
                return
        except Exception as exc:
            # Never leave a level-triggered reader registered behind an exception: it would
            # fire again on every loop turn. The waiters get the error instead.
            error = exc
        self._unwatch(tree)
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if fut.done():
                continue
            if error is None:
                fut.set_result(True)
            else:
                fut.set_exception(error)

    async def _wait_tree(self, deadline: float | None) -> bool:
        """Until the tree has ended (True) or ``deadline`` (loop time) passed (False)."""
        if self._tree_done():
            # A watch left by a waiter that was cancelled would keep the guard's pidfd
            # borrowed (and registered) for as long as this object lives.
            self._unwatch()
            return True
        fut: asyncio.Future[bool] = self._loop.create_future()
        self._waiters.append(fut)
        timer = None if deadline is None else self._loop.call_at(deadline, _expire, fut)
        try:
            self._watch()
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            if not fut.done() or self._waiters:  # _on_tree_readable empties the list
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass

    async def _kill_and_reap(self) -> bool:
        """SIGKILL the tree and wait until the guard has reaped it, whatever happens to this
        task meanwhile. True if a cancellation arrived (and was held back) while waiting."""
        cancelled = False
        try:
            self._handle.kill()
        except ForkedHandleError:
            raise  # inert in a forked child: say so, never pass for an ended tree
        except ChildProcessError:
            pass
        while True:
            try:
                await self._wait_tree(None)
                return cancelled
            except asyncio.CancelledError:
                # The tree is being killed and its end is milliseconds away: a second cancel
                # (anyio re-delivers one every loop turn) must not leave it running.
                cancelled = True

    def _settle(self) -> int:
        """The returncode of a tree that has ended (its end read: no pump again)."""
        tree = self._tree
        if tree.start_error is not None:
            raise tree.start_error  # run() does not await the start: never ran
        rc = self._handle._settle(tree)  # raises ChildProcessError if the guard died unreported
        assert rc is not None
        return rc

    async def wait(self) -> int:
        """Wait until the tree has ended; return the program's returncode.

        The end is observed by the loop's selector on the guard's pidfd, then read from its
        report (the program's pidfd when ``contain=None``): no thread, no child watcher, no
        SIGCHLD. If the awaiting task is cancelled, the whole tree is killed and reaped before
        the cancellation propagates. Like :meth:`asyncio.subprocess.Process.wait`, it does not
        read the pipes. Raises ChildProcessError if the guard was killed before it could report.
        """
        try:
            await self._wait_tree(None)
        except asyncio.CancelledError:
            await self._kill_and_reap()
            raise
        return self._settle()

    # -- signals -----------------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the program (only), through its pidfd; a no-op once it has ended."""
        self._unless_ended(self._handle.send_signal, sig)

    def terminate(self) -> None:
        """SIGTERM to every process of the tree."""
        self._unless_ended(self._handle.terminate)

    def kill(self) -> None:
        """SIGKILL to every process of the tree."""
        self._unless_ended(self._handle.kill)

    @staticmethod
    def _unless_ended(act: Callable[..., None], *args: int) -> None:
        """Act on the tree; a guard that died has ended it already (ChildProcessError), but
        in a forked child the handle is inert and says so, never passing for an ended tree."""
        try:
            act(*args)
        except ForkedHandleError:
            raise
        except ChildProcessError:
            pass

    async def _pump(self, data: bytes, deadline: float | None) -> bool:
        """Feed stdin, collect stdout/stderr, until the tree has ended (True: the pipes are
        drained and closed) or ``deadline`` (False: collection goes on in the background)."""
        self._pipes.feed_stdin(data)
        self._pipes.start_collectors()
        if not await self._wait_tree(deadline):
            return False
        await self._pipes.finish()
        return True

    async def communicate(self, input: bytes | str | None = None) -> tuple[Any, Any]:
        """Send ``input``, read stdout/stderr until the tree has ended; return (out, err).

        Like :meth:`tether.Child.communicate`, it returns when the *tree* has ended, even if an
        escaped process still holds a pipe: what is already in the pipes is read, and the
        pipes are closed. ``out``/``err`` are None for streams that are not PIPE, str with
        ``text=True``. For a deadline use :func:`asyncio.timeout` (or :func:`run`'s
        ``timeout``): cancelling this kills and reaps the tree before the cancellation
        propagates.
        """
        data = self._pipes.encode_input(input)
        try:
            await self._pump(data, None)
        except asyncio.CancelledError:
            self._pipes.stop_collectors()
            await self._kill_and_reap()
            raise
        self._settle()
        return self._pipes.collected()

    # -- lifetime ----------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncChild:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        """Kill and reap the whole tree (if it is still running), and close the pipes."""
        cancelled = False
        try:
            if not self._tree_done():
                cancelled = await self._kill_and_reap()
        finally:
            self._pipes.close()
        if cancelled and exc_type is None:
            # A cancellation held back during the reap; one already on its way goes on as is.
            raise asyncio.CancelledError


async def start_async(
    argv: Sequence[StrOrBytesPath],
    *,
    contain: Contain,
    stdin: Any,
    stdout: Any,
    stderr: Any,
    env: Mapping[str, str] | Mapping[bytes, bytes] | None,
    cwd: StrOrBytesPath | None,
    pass_fds: Iterable[int],
    text: bool,
    encoding: str | None,
    errors: str | None,
    universal_newlines: bool | None,
    wait_tree: bool,
    cgroup_root: str | os.PathLike[str] | None,
    limit: int,
    await_start: bool,
    limits: Limits | None = None,
) -> AsyncChild:
    """tether.aio.spawn (``await_start``) and run (not: the start is read with the end)."""
    loop = running_loop("spawn")
    if universal_newlines is not None:
        text = text or bool(universal_newlines)
    mode = resolve_mode(contain, cgroup_root)
    spec = SpawnSpec.build(
        argv, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
        pass_fds=pass_fds, popen_style=True, limits=limits,
    )
    # The guard's start report is awaited in the loop's selector (or read with the end).
    tree, ends = start_tree(spec, mode, wait_tree=wait_tree, cgroup_root=cgroup_root,
                            await_start=False)
    files = [BINARY.wrap(fd, index, 0) for index, fd in enumerate(ends)]
    achild = AsyncChild._create(TreeHandle(spec.args, tree, mode), loop, files,
                                TextMode(text, encoding, errors))
    return await _connected(achild, limit, await_start=await_start)


async def adopt_async(
    args: Any, tree: Tree, mode: Mode | None, files: list[IO[Any] | None], limit: int
) -> AsyncChild:
    """An AsyncChild for a tree started already (tether.aio's create_subprocess_*, through
    tether.subprocess.Popen), its pipes (raw, unbuffered) connected to the running loop. On
    error the tree is killed and reaped and the pipes closed."""
    loop = running_loop("create_subprocess_exec")
    achild = AsyncChild._create(TreeHandle(args, tree, mode), loop, files, BINARY)
    return await _connected(achild, limit)


async def _connected(achild: AsyncChild, limit: int, *, await_start: bool = False) -> AsyncChild:
    """``achild`` with its pipes connected to the loop (and, with ``await_start``, its start
    awaited); on error or cancellation the tree is killed and reaped and the pipes closed."""
    try:
        await achild._pipes.connect(limit)
        if await_start:
            await achild._await_start()
    except BaseException:
        try:
            await achild._kill_and_reap()
        finally:
            achild._pipes.close()
        raise
    return achild


def let_run(child: AsyncChild) -> None:
    """``child`` is being dropped (a drop-in Process): its tree runs on, as asyncio's process
    would, and dies with this process (its lifeline); it is reaped once it has ended, at the
    next spawn or at interpreter exit (the reaper), with no loop, thread or SIGCHLD."""
    if child._watch_fd >= 0:
        return  # a reader still watches it: the loop holds the child, it is not dropped
    with contextlib.suppress(ForkedHandleError):  # a fork's copy: the tree is the parent's
        child._tree.detach()


async def run_to_end(
    child: AsyncChild, input: bytes | str | None, timeout: float | None, grace: float | None
) -> tuple[int | None, Any, Any]:
    """aio.run's body: feed ``input``, collect the output, until the tree has ended or
    ``timeout`` (then SIGTERM, SIGKILL after ``grace``). Returns (returncode or None on a
    timeout, out, err); raises the program's start error. The tree is gone on return."""
    try:
        async with child:  # any exit, cancellation included, kills and reaps the tree
            data = child._pipes.encode_input(input)
            deadline = None if timeout is None else child._loop.time() + timeout
            ended = await child._pump(data, deadline)
            if not ended:
                await _end_tree(child, grace)
                await child._pipes.finish()
        # Partial output (a timeout) stays bytes, as subprocess leaves it: a multi-byte
        # character may be cut in half there.
        out, err = child._pipes.collected(decode=ended)
        if child._tree.start_error is not None:
            # The program never ran (its start was not awaited, so the deadline may have
            # passed before the failure was read): what subprocess raises, not a timeout.
            raise child._tree.start_error
        return (child._settle() if ended else None), out, err
    finally:
        # The tree is gone and nobody else sees this child: its program's pidfd must not
        # stay open for as long as a traceback (a cancellation kept by gather) holds it.
        tree = child._tree
        if tree.started and tree.start_error is None:
            with contextlib.suppress(OSError, ValueError):
                tree.program.close()


async def _end_tree(child: AsyncChild, grace: float | None) -> None:
    """SIGTERM the whole tree, then SIGKILL whatever is left after ``grace`` seconds (None:
    wait for the SIGTERM to work, however long)."""
    child._handle._end_by("timeout")
    child.terminate()
    if not await child._wait_tree(None if grace is None else child._loop.time() + grace):
        child.kill()
        await child._wait_tree(None)
