"""Pipes: the parent's ends of a tree's stdin/stdout/stderr, and how they are pumped.

The one rule this module owns: pipes are read until the *tree* has ended, not until EOF. An
escaped process may hold a write end open for ever; once the tree's end is reported, what is
already in the pipes is all that will come from the tree, so it is read without blocking and
the pumping stops. Partial output (a timeout) stays bytes, as subprocess leaves it.
"""

from __future__ import annotations

import io
import os
import select
from typing import IO, Any, Final

from tether._kernel.deadline import Deadline
from tether._kernel.fds import set_nonblocking
from tether._tree.seam import Tree

__all__ = ["BINARY", "PipeSet", "TextMode"]

CHUNK: Final = 65536


class TextMode:
    """text/encoding/errors as subprocess takes them, settled once."""

    __slots__ = ("encoding", "errors", "text")

    def __init__(self, text: bool, encoding: str | None, errors: str | None) -> None:
        self.text = text or encoding is not None or errors is not None
        self.encoding = encoding
        self.errors = errors

    @property
    def encoding_name(self) -> str:
        if self.encoding:
            return self.encoding
        import locale  # only text mode needs it; its import costs every start-up

        return locale.getpreferredencoding(False)

    def encode_input(self, input: bytes | str | None, has_stdin: bool) -> bytes:
        """``input`` as the bytes to write, checked against the mode (as subprocess does)."""
        if input is None:
            return b""
        if not has_stdin:
            raise ValueError("communicate(input=...) needs stdin=PIPE")
        if self.text and not isinstance(input, str):
            raise TypeError("input must be str in text mode")
        if not self.text and isinstance(input, str):
            raise TypeError("input must be bytes (or pass text=True)")
        if isinstance(input, str):
            return input.encode(self.encoding_name, self.errors or "strict")
        return bytes(input)

    def decode(self, raw: bytes) -> str:
        text = raw.decode(self.encoding_name, self.errors or "strict")
        return text.replace("\r\n", "\n").replace("\r", "\n")

    def wrap(self, fd: int | None, index: int, bufsize: int) -> IO[Any] | None:
        """The parent's end ``fd`` of pipe ``index`` (0 stdin) as a file object."""
        if fd is None:
            return None
        raw: IO[Any] = open(fd, "wb" if index == 0 else "rb", bufsize)  # noqa: SIM115
        if not self.text:
            return raw
        return io.TextIOWrapper(
            raw,
            encoding=self.encoding_name,
            errors=self.errors,
            write_through=index == 0,
            line_buffering=index == 0 and bufsize == 1,
        )


#: bytes in, bytes out (no codec).
BINARY: Final = TextMode(False, None, None)


class PipeSet:
    """The three streams of one tree (None where not a PIPE) and what was read from them."""

    __slots__ = ("_chunks", "_input_offset", "mode", "stderr", "stdin", "stdout")

    def __init__(self, files: tuple[IO[Any] | None, IO[Any] | None, IO[Any] | None],
                 mode: TextMode) -> None:
        self.stdin, self.stdout, self.stderr = files
        self.mode = mode
        self._input_offset = 0
        self._chunks: dict[int, list[bytes]] = {}

    def flush_stdin(self) -> None:
        if self.stdin is not None and not self.stdin.closed:
            try:
                self.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    def close_stdin(self) -> None:
        if self.stdin is not None and not self.stdin.closed:
            try:
                self.stdin.close()
            except BrokenPipeError:
                pass

    def close(self) -> None:
        """Close every stream (stdin first: a flush may still go through)."""
        try:
            self.close_stdin()
        finally:
            for stream in (self.stdout, self.stderr):
                if stream is not None:
                    stream.close()

    def pump(self, tree: Tree, data: bytes, deadline: Deadline) -> bool:
        """Write ``data`` (from where the last call stopped), read stdout/stderr, until the
        tree has ended (True) or ``deadline`` passed (False)."""
        poller = select.poll()
        readers: set[int] = set()
        for stream in (self.stdout, self.stderr):
            if stream is not None and not stream.closed:
                fd = stream.fileno()
                readers.add(fd)
                self._chunks.setdefault(fd, [])
                set_nonblocking(fd)
                poller.register(fd, select.POLLIN)
        writer = -1
        if self.stdin is not None and not self.stdin.closed:
            if data[self._input_offset:]:
                writer = self.stdin.fileno()
                set_nonblocking(writer)
                poller.register(writer, select.POLLOUT)
            else:
                self.close_stdin()
        if not readers and writer < 0:
            return True  # nothing to pump (run() without pipes): the caller waits for the tree
        # The tree may have ended already (its report read along with the start's).
        tree_done = tree.pump()
        tree_fd = -1 if tree_done else tree.fileno()
        if tree_fd >= 0:
            poller.register(tree_fd, select.POLLIN)
        while readers or writer >= 0:
            if tree_done:
                # The tree has ended: what is left in the pipes is all that will come from
                # it. Read it without blocking; an escaped holder of the pipe cannot stall us.
                for fd in readers:
                    self._drain(fd)
                readers.clear()
                if writer >= 0:
                    self.close_stdin()
                    writer = -1
                return True
            if deadline.expired:
                return False
            for fd, events in poller.poll(deadline.poll_ms()):
                if fd == tree_fd:
                    if tree.pump():
                        poller.unregister(tree_fd)
                        tree_done = True
                elif fd == writer:
                    if self._write_some(fd, data, events):
                        poller.unregister(fd)
                        self.close_stdin()
                        writer = -1
                elif fd in readers:
                    try:
                        chunk = os.read(fd, CHUNK)
                    except BlockingIOError:
                        continue
                    if chunk:
                        self._chunks[fd].append(chunk)
                    else:
                        poller.unregister(fd)
                        readers.discard(fd)
        return True

    def _write_some(self, fd: int, data: bytes, events: int) -> bool:
        """One write of the rest of ``data``; True once stdin is done with."""
        try:
            self._input_offset += os.write(
                fd, data[self._input_offset:self._input_offset + CHUNK])
        except BlockingIOError:
            return False
        except BrokenPipeError:
            self._input_offset = len(data)
        return self._input_offset >= len(data) or bool(events & (select.POLLERR
                                                                 | select.POLLHUP))

    def _drain(self, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                return
            self._chunks[fd].append(chunk)

    def collected(self, *, final: bool, decode: bool = True) -> tuple[Any, Any]:
        """What the pipes gave so far (None for a stream that is not a PIPE). ``final``
        closes them; ``decode`` applies text mode (partial output is left as bytes)."""
        out: list[Any] = []
        for stream in (self.stdout, self.stderr):
            if stream is None:
                out.append(None)
                continue
            fd = stream.fileno() if not stream.closed else -1
            raw = b"".join(self._chunks.get(fd, []))
            if final and not stream.closed:
                stream.close()
            out.append(self.mode.decode(raw) if self.mode.text and decode else raw)
        return out[0], out[1]
