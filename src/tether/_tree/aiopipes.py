"""AsyncPipes: a tree's stdin/stdout/stderr as asyncio streams, collected until the tree ends.

The one rule this module owns: like the sync pipes, output is collected until the *tree* has
ended, not until EOF. Collector tasks read while the tree runs; once its end is reported,
:meth:`AsyncPipes.finish` takes what is left in the pipes without waiting for EOF (an escaped
process may hold a write end for ever) and closes them, without suspending.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import IO, Any, Final, TypeVar

from tether._tree.pipes import TextMode

__all__ = ["AsyncPipes"]

_CHUNK: Final = 65536
_OUT: Final = (1, 2)


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


class AsyncPipes:
    """The parent's ends of one tree's PIPEs (None elsewhere), as asyncio streams."""

    __slots__ = ("_chunks", "_collectors", "_files", "_input_fed", "_loop", "_pipe_done",
                 "_transports", "mode", "stderr", "stdin", "stdout")

    def __init__(self, loop: asyncio.AbstractEventLoop, files: list[IO[Any] | None],
                 mode: TextMode) -> None:
        self._loop = loop
        # The pipe file objects, owned here and handed to the transports, which close them.
        self._files = files
        self._transports: list[asyncio.BaseTransport | None] = [None, None, None]
        self.mode = mode
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._chunks: list[list[bytes]] = [[], [], []]
        self._collectors: list[asyncio.Task[None] | None] = [None, None, None]
        self._pipe_done = [False, False, False]
        self._input_fed = False

    # -- pipes -------------------------------------------------------------------------------

    async def connect(self, limit: int) -> None:
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

    def encode_input(self, input: bytes | str | None) -> bytes:
        return self.mode.encode_input(input, self.stdin is not None)

    def feed_stdin(self, data: bytes) -> None:
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

    def start_collectors(self) -> None:
        for index in _OUT:
            if self._transports[index] is None or self._pipe_done[index]:
                continue
            task = self._collectors[index]
            if task is None or task.done():
                self._collectors[index] = self._loop.create_task(self._collect(index))

    def stop_collectors(self) -> None:
        for index in _OUT:
            task, self._collectors[index] = self._collectors[index], None
            # Dropped, not kept: a cancelled task's CancelledError holds the _collect frame,
            # which holds self, and a cycle through it would keep the program's pidfd open
            # until the cyclic GC runs.
            if task is not None and not task.done():
                task.cancel()

    async def finish(self) -> None:
        """The tree has ended: what is in the pipes now is all it wrote. Take it and close the
        pipes, without waiting for EOF (an escaped process may hold a write end for ever).

        Never suspends (the reads below find EOF set), so no cancellation can cut it short.
        """
        self.stop_collectors()
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

    def collected(self, decode: bool = True) -> tuple[Any, Any]:
        out: list[Any] = []
        for index in _OUT:
            if self._transports[index] is None:
                out.append(None)
                continue
            raw = b"".join(self._chunks[index])
            out.append(self.mode.decode(raw) if self.mode.text and decode else raw)
        return out[0], out[1]

    def close(self) -> None:
        self.stop_collectors()
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
