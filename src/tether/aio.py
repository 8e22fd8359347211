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
import locale
import os
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, Final, TypeVar, final

from tether._kernel.errors import TimeoutExpired
from tether._kernel.exit import Exit
from tether._kernel.pidfd import NoPublicConstructor, Pidfd
from tether._kernel.signalfd import SignalFd, SignalInfo
from tether._kernel.spawn import StrOrBytesPath
from tether._tree.child import Child
from tether._tree.child import spawn as _spawn_child
from tether._tree.guarded import Guard
from tether._tree.run import DEFAULT_GRACE, prepare_run

__all__ = ["AsyncChild", "Signals", "run", "signals", "spawn"]

_CHUNK: Final = 65536
_STREAM_LIMIT: Final = 2**16
_OUT: Final = (1, 2)


def _running_loop(what: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"tether.aio.{what}() must be awaited in a running asyncio event loop (anyio's "
            "asyncio backend works; trio does not: use tether.spawn/run from trio's threads, "
            "see the README, section asyncio)"
        ) from None


class _StdinProtocol(asyncio.streams.FlowControlMixin):
    """The protocol behind ``AsyncChild.stdin``: flow control for drain(), and a close waiter
    for wait_closed(). Nothing is ever read from the write end of a pipe."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._closed: asyncio.Future[None] = loop.create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._closed.done():
            return
        if exc is None:
            self._closed.set_result(None)
        else:
            self._closed.set_exception(exc)
            # wait_closed() is optional: an unawaited broken pipe must not be logged.
            self._closed.exception()

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> asyncio.Future[None]:
        return self._closed


_P = TypeVar("_P", bound=asyncio.BaseProtocol)


def _returning(protocol: _P) -> Callable[[], _P]:
    return lambda: protocol


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
        "__weakref__", "_child", "_chunks", "_collectors", "_encoding", "_errors", "_files",
        "_input_fed", "_loop", "_pipe_done", "_text", "_transports", "_waiters", "_watch_fd",
        "stderr", "stdin", "stdout",
    )

    def __init__(
        self,
        child: Child,
        loop: asyncio.AbstractEventLoop,
        files: list[IO[Any] | None],
        text: bool,
        encoding: str | None,
        errors: str | None,
    ) -> None:
        self._child = child
        self._loop = loop
        # The pipe file objects, owned here (the Child was told to forget them) and handed to
        # the transports, which close them.
        self._files = files
        self._transports: list[asyncio.BaseTransport | None] = [None, None, None]
        self._text = text
        self._encoding = encoding
        self._errors = errors
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._watch_fd = -1
        self._waiters: list[asyncio.Future[bool]] = []
        self._chunks: list[list[bytes]] = [[], [], []]
        self._collectors: list[asyncio.Task[None] | None] = [None, None, None]
        self._pipe_done = [False, False, False]
        self._input_fed = False

    # -- identity ----------------------------------------------------------------------------

    @property
    def args(self) -> Any:
        """The argv the tree was started with."""
        return self._child.args

    @property
    def pid(self) -> int:
        """The program's PID (not the guard's), for logs and humans; never used to reach it."""
        return self._child.pid

    @property
    def pidfd(self) -> Pidfd:
        """The program's pidfd (race-free: handed over by the guard with SCM_RIGHTS)."""
        return self._child.pidfd

    @property
    def contain(self) -> str | None:
        """The containment mode in force: "group", "cgroup", "pidns", or None (no guard)."""
        return self._child.contain

    @property
    def returncode(self) -> int | None:
        """The program's returncode once the tree has ended, else None (never blocks)."""
        try:
            return self._child.poll()
        except ChildProcessError:
            return None

    @property
    def exit(self) -> Exit | None:
        """How the program ended, once the tree has ended; None before."""
        try:
            return self._child.exit
        except ChildProcessError:
            return None

    def __repr__(self) -> str:
        backend = self._child._backend
        if isinstance(backend, Guard) and not backend.started:
            return f"<tether.aio.AsyncChild contain={self.contain!r} starting>"
        if isinstance(backend, Guard) and backend.start_error is not None:
            return f"<tether.aio.AsyncChild contain={self.contain!r} failed to start>"
        exit_ = self.exit
        state = "running" if exit_ is None else str(exit_)
        return f"<tether.aio.AsyncChild pid={self.pid} contain={self.contain!r} {state}>"

    # -- watching the tree -------------------------------------------------------------------

    def _tree_done(self) -> bool:
        # True also when the guard died (the Child has ended the tree itself) or the program
        # could not be started: _settle() raises for those.
        return self._child._backend.pump()

    async def _await_start(self) -> None:
        """Until the guard has reported that the program exec'd (or could not be run: that
        error is raised here). Waits in the loop's selector on the guard's control socket."""
        backend = self._child._backend
        if not isinstance(backend, Guard):
            return
        while True:
            # Only up to the start report: a report of the end read here would reap the guard
            # with a blocking wait in the loop's thread (it is still exiting then).
            backend.pump(stop_at_start=True)
            if backend.started:
                break
            fd = backend.sock.fileno()
            fut: asyncio.Future[None] = self._loop.create_future()
            self._loop.add_reader(fd, _set_none, fut)
            try:
                await fut
            finally:
                # Before the next pump(), which may close the socket.
                self._loop.remove_reader(fd)
        backend._raise_unstarted()

    def _watch(self) -> None:
        if self._watch_fd >= 0:
            return
        # With a guard we watch the guard's own pidfd rather than its control socket. Both
        # tell the same news: the guard sends its last report (or dies) and exits at once.
        # But the guard is reaped before wait() returns: woken by the socket, the loop thread
        # would block in that reap until the guard has finished exiting (and would be woken
        # by the start report too, which run() does not await); woken by the guard's pidfd,
        # every report is already in the socket and the reap is immediate: one wakeup per
        # tree, and the loop never blocks. A guard dying unreported wakes it just the same.
        backend = self._child._backend
        target = backend.spawned.pidfd.fileno() if isinstance(backend, Guard) else (
            backend.fileno())
        # A dup, not the fd itself: the Guard closes its handles the moment it reads the
        # report, possibly from a sync call (poll, kill) while we are registered; a closed fd
        # left in the selector's map would make a later add_reader on the recycled number a
        # silent no-op. The dup is ours alone to unregister and close.
        fd = os.dup(target)
        try:
            self._loop.add_reader(fd, self._on_tree_readable)
        except BaseException:
            os.close(fd)
            raise
        self._watch_fd = fd

    def _unwatch(self) -> None:
        fd, self._watch_fd = self._watch_fd, -1
        if fd >= 0:
            self._loop.remove_reader(fd)
            os.close(fd)

    def _on_tree_readable(self) -> None:
        # The guard's pidfd is readable only once the guard has reported the end of the tree
        # and exited (or died); the program's pidfd (contain=None) only once the program has
        # exited. So this runs once per tree.
        error: Exception | None = None
        try:
            backend = self._child._backend
            if isinstance(backend, Guard) and not backend.spawned.pidfd.closed:
                # The guard has exited: reap it now, without waiting (WNOHANG). The Guard's
                # own reap of it in pump() then finds the status cached instead of setting up
                # a poll and waiting on it: fewer syscalls per tree on the hot path.
                try:
                    backend.spawned.pidfd.poll()
                except ChildProcessError:
                    pass  # reaped behind our back; pump() copes (and reports it)
            if not self._tree_done():
                return
        except Exception as exc:
            # Never leave a level-triggered reader registered behind an exception: it would
            # fire again on every loop turn. The waiters get the error instead.
            error = exc
        self._unwatch()
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
            self._child.kill()
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
        backend = self._child._backend
        if isinstance(backend, Guard) and backend.start_error is not None:
            raise backend.start_error  # run() does not await the start: the program never ran
        rc = self._child.poll()  # raises ChildProcessError if the guard died unreported
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
        try:
            self._child.send_signal(sig)
        except ChildProcessError:
            pass

    def terminate(self) -> None:
        """SIGTERM to every process of the tree."""
        try:
            self._child.terminate()
        except ChildProcessError:
            pass

    def kill(self) -> None:
        """SIGKILL to every process of the tree."""
        try:
            self._child.kill()
        except ChildProcessError:
            pass

    # -- pipes -------------------------------------------------------------------------------

    async def _connect_pipes(self, limit: int) -> None:
        loop = self._loop
        stdin_file = self._files[0]
        if stdin_file is not None:
            protocol = _StdinProtocol(loop)
            transport, _ = await loop.connect_write_pipe(_returning(protocol), stdin_file)
            self._transports[0] = transport
            self.stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        for index in _OUT:
            out_file = self._files[index]
            if out_file is None:
                continue
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            # The protocol holds the reader only weakly; self.stdout/stderr keep it alive.
            read_protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            read_transport, _ = await loop.connect_read_pipe(_returning(read_protocol), out_file)
            self._transports[index] = read_transport
            if index == 1:
                self.stdout = reader
            else:
                self.stderr = reader

    def _input_bytes(self, input: bytes | str | None) -> bytes:
        if input is None:
            return b""
        if self.stdin is None:
            raise ValueError("communicate(input=...) needs stdin=PIPE")
        if self._text and not isinstance(input, str):
            raise TypeError("input must be str in text mode")
        if not self._text and isinstance(input, str):
            raise TypeError("input must be bytes (or pass text=True)")
        if isinstance(input, str):
            return input.encode(self._encoding_name(), self._errors or "strict")
        return bytes(input)

    def _feed_stdin(self, data: bytes) -> None:
        if self._input_fed:
            return
        self._input_fed = True
        writer = self.stdin
        if writer is None:
            return
        if data and not writer.transport.is_closing():
            # The transport buffers what the pipe cannot take now and writes it as the program
            # reads; closing after the write closes the pipe once the buffer is flushed.
            writer.write(data)
        writer.close()

    async def _collect(self, index: int) -> None:
        reader = self.stdout if index == 1 else self.stderr
        assert reader is not None
        chunks = self._chunks[index]
        while True:
            # Cancelling this read loses nothing: data is either returned (and kept at once)
            # or left in the reader's buffer for _finish_pipes.
            chunk = await reader.read(_CHUNK)
            if not chunk:
                self._pipe_done[index] = True
                return
            chunks.append(chunk)

    def _start_collectors(self) -> None:
        for index in _OUT:
            if self._transports[index] is None or self._pipe_done[index]:
                continue
            task = self._collectors[index]
            if task is None or task.done():
                self._collectors[index] = self._loop.create_task(self._collect(index))

    def _stop_collectors(self) -> None:
        for index in _OUT:
            task, self._collectors[index] = self._collectors[index], None
            # Dropped, not kept: a cancelled task's CancelledError holds the _collect frame,
            # which holds self, and a cycle through it would keep the program's pidfd open
            # until the cyclic GC runs.
            if task is not None and not task.done():
                task.cancel()

    async def _finish_pipes(self) -> None:
        """The tree has ended: what is in the pipes now is all it wrote. Take it and close the
        pipes, without waiting for EOF (an escaped process may hold a write end for ever).

        Never suspends (the reads below find EOF set), so no cancellation can cut it short.
        """
        self._stop_collectors()
        for index in _OUT:
            transport = self._transports[index]
            reader = self.stdout if index == 1 else self.stderr
            if transport is None or reader is None or self._pipe_done[index]:
                continue
            if not transport.is_closing():
                # Still open, so the fd is still ours: read it dry, then close it.
                file = self._files[index]
                assert file is not None
                fd = file.fileno()
                while True:
                    try:
                        chunk = os.read(fd, _CHUNK)
                    except BlockingIOError:
                        break
                    if not chunk:
                        break
                    reader.feed_data(chunk)
                transport.close()
            reader.feed_eof()
            rest = await reader.read()
            if rest:
                self._chunks[index].append(rest)
            self._pipe_done[index] = True
        writer = self.stdin
        if writer is not None:
            if writer.transport.get_write_buffer_size():
                # Input nobody will read (the tree is gone; an escaped holder may keep the pipe
                # open): drop it rather than keep a writer registered.
                writer.transport.abort()
            else:
                writer.close()

    def _encoding_name(self) -> str:
        return self._encoding or locale.getpreferredencoding(False)

    def _collected(self, decode: bool = True) -> tuple[Any, Any]:
        out: list[Any] = []
        for index in _OUT:
            if self._transports[index] is None:
                out.append(None)
                continue
            raw = b"".join(self._chunks[index])
            if self._text and decode:
                text = raw.decode(self._encoding_name(), self._errors or "strict")
                out.append(text.replace("\r\n", "\n").replace("\r", "\n"))
            else:
                out.append(raw)
        return out[0], out[1]

    async def _pump(self, data: bytes, deadline: float | None) -> bool:
        """Feed stdin, collect stdout/stderr, until the tree has ended (True: the pipes are
        drained and closed) or ``deadline`` (False: collection goes on in the background)."""
        self._feed_stdin(data)
        self._start_collectors()
        if not await self._wait_tree(deadline):
            return False
        await self._finish_pipes()
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
        data = self._input_bytes(input)
        try:
            await self._pump(data, None)
        except asyncio.CancelledError:
            self._stop_collectors()
            await self._kill_and_reap()
            raise
        self._settle()
        return self._collected()

    def _close_pipes(self) -> None:
        self._stop_collectors()
        for index, transport in enumerate(self._transports):
            if transport is None:
                file = self._files[index]
                if file is not None:
                    file.close()
            elif index == 0 and isinstance(transport, asyncio.WriteTransport) and (
                    transport.get_write_buffer_size()):
                transport.abort()
            elif not transport.is_closing():
                transport.close()

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
            self._close_pipes()
        if cancelled and exc_type is None:
            # A cancellation held back during the reap; one already on its way goes on as is.
            raise asyncio.CancelledError


async def spawn(
    argv: Sequence[StrOrBytesPath],
    *,
    contain: str | None = "group",
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
    return await _spawn(
        argv, contain=contain, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
        pass_fds=pass_fds, text=text, encoding=encoding, errors=errors,
        universal_newlines=universal_newlines, wait_tree=wait_tree, cgroup_root=cgroup_root,
        limit=limit, await_start=True,
    )


async def _spawn(
    argv: Sequence[StrOrBytesPath],
    *,
    contain: str | None,
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
) -> AsyncChild:
    loop = _running_loop("spawn")
    if universal_newlines is not None:
        text = text or bool(universal_newlines)
    text = text or encoding is not None or errors is not None
    child = _spawn_child(
        argv, contain=contain, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
        pass_fds=pass_fds, text=False, bufsize=0, wait_tree=wait_tree,
        cgroup_root=cgroup_root, _await_start=False,
    )
    files: list[IO[Any] | None] = [child.stdin, child.stdout, child.stderr]
    # The AsyncChild owns the pipes from here: the sync Child must never read or close them
    # behind the transports' back.
    child.stdin = child.stdout = child.stderr = None
    achild = AsyncChild._create(child, loop, files, text, encoding, errors)
    try:
        await achild._connect_pipes(limit)
        if await_start:
            await achild._await_start()
    except BaseException:
        try:
            await achild._kill_and_reap()
        finally:
            achild._close_pipes()
        raise
    return achild


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
    contain: str | None = "group",
    grace: float | None = DEFAULT_GRACE,
    wait_tree: bool = False,
    cgroup_root: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[Any]:
    """Run ``argv`` to completion under a guard; :func:`tether.run` for asyncio.

    Same arguments and semantics as :func:`tether.run`: a ``timeout`` ends the whole tree
    (SIGTERM, then SIGKILL after ``grace`` seconds) and raises :class:`tether.TimeoutExpired`
    with the output captured so far; the call returns when the tree has ended, even if an
    escaped process holds a pipe; ``check=True`` raises :class:`subprocess.CalledProcessError`.
    Returns a :class:`subprocess.CompletedProcess`.

    Guarantee: when it returns or raises, including by cancellation of the awaiting task,
    no process of the tree is left (within what the containment mode reaches).
    """
    _running_loop("run")
    timeout, grace_s, stdin, stdout, stderr, text = prepare_run(
        timeout=timeout, grace=grace, input=input, capture_output=capture_output,
        stdin=stdin, stdout=stdout, stderr=stderr, text=text, encoding=encoding,
        errors=errors, universal_newlines=universal_newlines, contain=contain,
        cgroup_root=cgroup_root,
    )
    # The program's start is not awaited: its report is read with the end, when the guard's
    # exit wakes the loop (a program that cannot run raises from _settle below).
    child = await _spawn(
        argv, contain=contain, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
        pass_fds=pass_fds, text=text, encoding=encoding, errors=errors,
        universal_newlines=None, wait_tree=wait_tree, cgroup_root=cgroup_root,
        limit=_STREAM_LIMIT, await_start=False,
    )
    async with child:  # any exit, cancellation included, kills and reaps the tree
        data = child._input_bytes(input)
        deadline = None if timeout is None else child._loop.time() + timeout
        ended = await child._pump(data, deadline)
        if not ended:
            await _end_tree(child, grace_s)
            await child._finish_pipes()
    # Partial output (a timeout) stays bytes, as subprocess leaves it: a multi-byte character
    # may be cut in half there.
    out, err = child._collected(decode=ended)
    args = child.args
    backend = child._child._backend
    if isinstance(backend, Guard) and backend.start_error is not None:
        # The program never ran (its start was not awaited, so the deadline may have passed
        # before the failure was read): what subprocess raises, not a timeout.
        del child
        raise backend.start_error
    retcode = None if not ended else child._settle()
    # Raised without `child` in this frame: in asyncio the exception and the task that
    # carries it form a reference cycle, and a frame in that cycle holding the child would
    # keep the program's pidfd open until the cyclic GC runs.
    del child
    if retcode is None:
        assert timeout is not None
        raise TimeoutExpired(args, timeout, output=out, stderr=err)
    if check and retcode:
        raise subprocess.CalledProcessError(retcode, args, output=out, stderr=err)
    return subprocess.CompletedProcess(args, retcode, out, err)


async def _end_tree(child: AsyncChild, grace: float | None) -> None:
    """SIGTERM the whole tree, then SIGKILL whatever is left after ``grace`` seconds (None:
    wait for the SIGTERM to work, however long)."""
    child.terminate()
    if not await child._wait_tree(None if grace is None else child._loop.time() + grace):
        child.kill()
        await child._wait_tree(None)


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
