"""spawn() and Child: a Popen-like handle on a guarded, contained process tree.

The one rule this module owns: a Child speaks for its whole tree. ``wait()`` returns when the
tree has ended per the policy (by default the program exited and the guard ended the rest),
``terminate()``/``kill()`` reach every member, and leaving a ``with`` block, or dropping the
last reference, ends the tree. ``returncode`` is exactly what subprocess would report for the
program.
"""

from __future__ import annotations

import codecs
import errno
import io
import locale
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, Final, final

from tether._kernel.deadline import check_timeout, poll_ms
from tether._kernel.errors import TimeoutExpired, Unsupported
from tether._kernel.exit import Exit
from tether._kernel.fds import set_nonblocking
from tether._kernel.pidfd import NoPublicConstructor, Pidfd
from tether._kernel.spawn import (
    Spawned,
    StdioPlan,
    StrOrBytesPath,
    _spawn,
    _stdio_fd,
)
from tether._tree.guarded import Guard, Mode, resolve_mode

__all__ = ["Child", "spawn"]

_CHUNK: Final = 65536


class _Bare:
    """contain=None: no guard; the program itself is our lifelined child."""

    __slots__ = ("spawned",)

    def __init__(self, spawned: Spawned) -> None:
        self.spawned = spawned

    @property
    def exit(self) -> Exit | None:
        return self.spawned.pidfd.poll() if not self.spawned.pidfd.closed else None

    def fileno(self) -> int:
        return self.spawned.pidfd.fileno()

    def pump(self) -> bool:
        return self.spawned.pidfd.poll() is not None

    def wait(self, timeout: float | None) -> bool:
        try:
            self.spawned.pidfd.wait(timeout)
        except TimeoutExpired:
            return False
        return True

    def signal_tree(self, sig: int) -> None:
        pidfd = self.spawned.pidfd
        if pidfd.closed:
            return
        try:
            # Through the leader's pidfd the group is reached even once the leader has been
            # reaped (while any member lives): a race-free group handle.
            pidfd.send_signal(sig, process_group=True)
        except ProcessLookupError:
            return  # the group is empty
        except Unsupported:
            if pidfd.poll() is not None:
                return  # leader reaped: its number could be reused, never signal by it
            # Before Linux 6.9: killpg by number, which is exact only because the leader is
            # our own unreaped child (polled just above): its number, which is the group's,
            # cannot have been recycled.
            os.killpg(pidfd.pid, sig)  # noqa: TET201  leader unreaped: number still ours

    def kill_tree(self) -> None:
        self.signal_tree(signal.SIGKILL)

    def abandon(self) -> None:
        self.kill_tree()
        self.spawned.lifeline.close()
        if not self.spawned.pidfd.closed:
            self.spawned.pidfd.wait()


@final
class Child(metaclass=NoPublicConstructor):
    """A running program and the tree it starts, under a guard (see :func:`spawn`).

    Attributes are those of :class:`subprocess.Popen`: ``args``, ``pid`` (the program's, not
    the guard's), ``returncode``, ``stdin``, ``stdout``, ``stderr``; plus ``pidfd`` (the
    program's :class:`Pidfd`), ``exit`` (a :class:`tether.Exit` once ended) and ``contain``.

    Guarantee: the tree cannot outlive this process: when it dies, however it dies, the
    guard sees its lifeline close and kills the tree (every process of it in cgroup and pidns
    modes; the program's process group in group mode).
    """

    __slots__ = (
        "__weakref__", "_backend", "_encoding", "_errors", "_input_offset", "_out_chunks",
        "_text", "args", "contain", "returncode", "stderr", "stdin", "stdout",
    )

    def __init__(
        self,
        args: Any,
        backend: Guard | _Bare,
        contain: Mode | None,
        pipes: tuple[IO[Any] | None, IO[Any] | None, IO[Any] | None],
        text: bool,
        encoding: str | None,
        errors: str | None,
    ) -> None:
        self.args = args
        self._backend = backend
        self.contain = contain
        self.stdin, self.stdout, self.stderr = pipes
        self.returncode: int | None = None
        self._text = text
        self._encoding = encoding
        self._errors = errors
        self._input_offset = 0
        self._out_chunks: dict[int, list[bytes]] = {}

    # -- identity ----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The program's PID (in this process's PID namespace), for logs and humans."""
        b = self._backend
        return b.program_pid if isinstance(b, Guard) else b.spawned.pid

    @property
    def pidfd(self) -> Pidfd:
        """The program's pidfd (race-free; the guard handed it over with SCM_RIGHTS)."""
        b = self._backend
        return b.program if isinstance(b, Guard) else b.spawned.pidfd

    @property
    def exit(self) -> Exit | None:
        """How the program ended, once the tree has ended; None before."""
        self.poll()
        return self._backend.exit

    def __repr__(self) -> str:
        b = self._backend
        if isinstance(b, Guard) and not b.started:
            return f"<tether.Child contain={self.contain!r} starting>"
        if isinstance(b, Guard) and b.start_error is not None:
            return f"<tether.Child contain={self.contain!r} failed to start>"
        state = "running" if self.returncode is None else str(b.exit)
        return f"<tether.Child pid={self.pid} contain={self.contain!r} {state}>"

    # -- waiting -----------------------------------------------------------------------------

    def _settle(self) -> int | None:
        b = self._backend
        if isinstance(b, Guard) and b.dead:
            ge = b.guard_exit
            raise ChildProcessError(
                errno.ECHILD,
                f"the tether guard of {self.args!r} died ({ge}) before reporting the program's "
                "status; tether killed the rest of the tree",
            )
        exit_ = b.exit
        if exit_ is not None and self.returncode is None:
            self.returncode = exit_.returncode
        return self.returncode

    def poll(self) -> int | None:
        """The returncode if the tree has ended, else None (never blocks)."""
        if self.returncode is not None:
            return self.returncode
        self._backend.pump()
        return self._settle()

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the tree has ended; return the program's returncode.

        Raises :class:`tether.TimeoutExpired` (a subprocess.TimeoutExpired) on timeout."""
        timeout = check_timeout(timeout)
        if self.returncode is not None:
            return self.returncode
        b = self._backend
        if not b.wait(timeout):
            assert timeout is not None
            raise TimeoutExpired(self.args, timeout)
        if isinstance(b, Guard) and b.start_error is not None:
            # Started without waiting for the exec (tether.aio.run does): the program never ran.
            raise b.start_error
        rc = self._settle()
        assert rc is not None
        return rc

    # -- signals -----------------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the program (only), through its pidfd. Like Popen, a no-op once the
        tree has ended."""
        if self.poll() is not None:
            return
        try:
            self.pidfd.send_signal(sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """SIGTERM to every process of the tree."""
        if self.poll() is None:
            self._backend.signal_tree(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to every process of the tree."""
        if self.poll() is None:
            self._backend.kill_tree()

    # -- pipes -------------------------------------------------------------------------------

    def communicate(
        self, input: bytes | str | None = None, timeout: float | None = None
    ) -> tuple[Any, Any]:
        """Send ``input``, read stdout/stderr until the tree has ended, return (out, err).

        Unlike subprocess, it returns when the tree has ended even if an escaped process still
        holds a pipe open (what is already in the pipes is read). On timeout it raises
        :class:`tether.TimeoutExpired` carrying the output so far; call it again to go on.
        """
        timeout = check_timeout(timeout)
        if input is not None:
            if self.stdin is None:
                raise ValueError("communicate(input=...) needs stdin=PIPE")
            if self._text and not isinstance(input, str):
                raise TypeError("input must be str in text mode")
            if not self._text and isinstance(input, str):
                raise TypeError("input must be bytes (or pass text=True)")
            data = input.encode(self._encoding_name(), self._errors or "strict") if isinstance(
                input, str) else bytes(input)
        else:
            data = b""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._flush_stdin_buffer()
        try:
            self._pump_pipes(data, deadline)
        except TimeoutExpired as exc:
            out, err = self._collected(final=False, decode=False)
            raise TimeoutExpired(self.args, exc.timeout, output=out, stderr=err) from None
        if deadline is None:
            self.wait()
        else:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                self.wait(remaining)
            except TimeoutExpired:
                out, err = self._collected(final=False, decode=False)
                raise TimeoutExpired(self.args, timeout or 0.0, output=out, stderr=err) from None
        return self._collected(final=True)

    def _encoding_name(self) -> str:
        return self._encoding or locale.getpreferredencoding(False)

    def _flush_stdin_buffer(self) -> None:
        if self.stdin is not None and not self.stdin.closed:
            try:
                self.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    def _pump_pipes(self, data: bytes, deadline: float | None) -> None:
        poller = select.poll()
        readers: dict[int, int] = {}
        for stream in (self.stdout, self.stderr):
            if stream is not None and not stream.closed:
                fd = stream.fileno()
                readers[fd] = fd
                self._out_chunks.setdefault(fd, [])
                set_nonblocking(fd)
                poller.register(fd, select.POLLIN)
        writer = -1
        if self.stdin is not None and not self.stdin.closed:
            if data[self._input_offset:]:
                writer = self.stdin.fileno()
                set_nonblocking(writer)
                poller.register(writer, select.POLLOUT)
            else:
                self._close_stdin()
        # The tree may have ended already (its report read along with the start's).
        tree_done = self.returncode is not None or self._backend.pump()
        tree_fd = -1 if tree_done else self._backend.fileno()
        if tree_fd >= 0:
            poller.register(tree_fd, select.POLLIN)
        while readers or writer >= 0:
            if tree_done:
                # The tree has ended: what is left in the pipes is all that will come from
                # it. Read it without blocking; an escaped holder of the pipe cannot stall us.
                for fd in list(readers):
                    self._drain(fd)
                    readers.pop(fd)
                if writer >= 0:
                    self._close_stdin()
                    writer = -1
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutExpired(self.args, 0.0)
            for fd, events in poller.poll(poll_ms(remaining)):
                if fd == tree_fd:
                    if self._backend.pump():
                        poller.unregister(tree_fd)
                        tree_done = True
                elif fd == writer:
                    try:
                        self._input_offset += os.write(
                            fd, data[self._input_offset:self._input_offset + _CHUNK])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        self._input_offset = len(data)
                    if self._input_offset >= len(data) or events & (select.POLLERR
                                                                   | select.POLLHUP):
                        poller.unregister(fd)
                        self._close_stdin()
                        writer = -1
                elif fd in readers:
                    try:
                        chunk = os.read(fd, _CHUNK)
                    except BlockingIOError:
                        continue
                    if chunk:
                        self._out_chunks[fd].append(chunk)
                    else:
                        poller.unregister(fd)
                        readers.pop(fd)

    def _drain(self, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, _CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                return
            self._out_chunks[fd].append(chunk)

    def _close_stdin(self) -> None:
        if self.stdin is not None and not self.stdin.closed:
            try:
                self.stdin.close()
            except BrokenPipeError:
                pass

    def _collected(self, *, final: bool, decode: bool = True) -> tuple[Any, Any]:
        """What the pipes gave so far. Partial output (a timeout) stays bytes, as subprocess
        leaves it: a multi-byte character may be cut in half there."""
        out: list[Any] = []
        for stream in (self.stdout, self.stderr):
            if stream is None:
                out.append(None)
                continue
            fd = stream.fileno() if not stream.closed else -1
            raw = b"".join(self._out_chunks.get(fd, []))
            if final and not stream.closed:
                stream.close()
            if self._text and decode:
                text = raw.decode(self._encoding_name(), self._errors or "strict")
                out.append(text.replace("\r\n", "\n").replace("\r", "\n"))
            else:
                out.append(raw)
        return out[0], out[1]

    # -- lifetime ----------------------------------------------------------------------------

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Kill and reap the whole tree, and close the pipes."""
        try:
            self._close_stdin()
        finally:
            try:
                if isinstance(self._backend, _Bare) or self.poll() is None:
                    # contain=None: the leader may be gone while its group lives on; the
                    # leader's pidfd still names the group, so always end it.
                    self._backend.abandon()
                self._settle()
            except ChildProcessError:
                pass  # the guard died; the tree was ended parent-side (see Guard)
            finally:
                for stream in (self.stdout, self.stderr):
                    if stream is not None:
                        stream.close()

    def __del__(self) -> None:
        # Dropping the last reference cuts the lifeline (the LifelineWriter closes when it is
        # collected), and the guard then ends the tree. Nothing to do here beyond that.
        pass


def _stdio_with_pipes(
    stdin: object, stdout: object, stderr: object
) -> tuple[StdioPlan, list[int | None]]:
    """Like _spawn.convert_stdio, plus PIPE: (plan for the child, parent ends or None)."""
    plan = StdioPlan()
    parent_ends: list[int | None] = [None, None, None]
    try:
        for index, spec in enumerate((stdin, stdout, stderr)):
            if spec is subprocess.PIPE:
                r, w = os.pipe2(os.O_CLOEXEC)
                child_end, parent_end = (r, w) if index == 0 else (w, r)
                plan.opened.append(child_end)
                parent_ends[index] = parent_end
                plan.fds[index] = child_end
            elif index == 2 and spec is subprocess.STDOUT:
                plan.fds[2] = plan.fds[1] if plan.fds[1] >= 0 else 1
            else:
                plan.fds[index] = _stdio_fd(spec, index, plan, allow_pipe=False)
    except BaseException:
        plan.close_opened()
        for fd in parent_ends:
            if fd is not None:
                os.close(fd)
        raise
    return plan, parent_ends


def _wrap(fd: int | None, index: int, text: bool, encoding: str | None,
          errors: str | None, bufsize: int) -> IO[Any] | None:
    if fd is None:
        return None
    mode = "wb" if index == 0 else "rb"
    raw: IO[Any] = open(fd, mode, bufsize)  # noqa: SIM115 (the Child owns it)
    if text:
        wrapped = io.TextIOWrapper(
            raw,
            encoding=encoding or locale.getpreferredencoding(False),
            errors=errors,
            write_through=index == 0,
            line_buffering=index == 0 and bufsize == 1,
        )
        return wrapped
    return raw


def spawn(
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
    bufsize: int = -1,
    wait_tree: bool = False,
    cgroup_root: str | os.PathLike[str] | None = None,
    _foreground: bool = False,
    _await_start: bool = True,
) -> Child:
    """Start ``argv`` under a guard, contained, and return a Popen-like :class:`Child`.

    ``contain`` is "group" (default: the program's process group), "cgroup" (a fresh cgroup
    v2; catches daemons that setsid), "pidns" (the guard is PID 1 of a new PID namespace;
    catches everything), "auto" (the strongest available here) or None (no guard: a bare
    lifelined child, for programs that call :func:`tether.attach`). A mode that is not
    available raises :class:`tether.Unsupported` and starts nothing.

    stdin/stdout/stderr take None, PIPE, DEVNULL, an fd or a file object (and STDOUT for
    stderr); ``text``/``encoding``/``errors`` as in subprocess. With ``wait_tree`` the guard
    waits for every descendant after the program exits instead of ending them.

    Guarantee: nothing in the tree outlives this process (see the README's table for what
    each mode reaches), and the program's pidfd is handed over race-free by the guard.
    Errors (bad input, a program that cannot be run) are raised here, before or instead of
    any tree: FileNotFoundError, PermissionError, ValueError, TypeError, Unsupported.
    """
    if universal_newlines is not None:
        text = text or bool(universal_newlines)
    text = text or encoding is not None or errors is not None
    mode = resolve_mode(contain, cgroup_root)
    if text:
        # A bad codec must fail before the tree exists, not after (as subprocess does).
        codecs.lookup(encoding or locale.getpreferredencoding(False))
        if errors is not None:
            codecs.lookup_error(errors)
    plan, parent_ends = _stdio_with_pipes(stdin, stdout, stderr)
    backend: Guard | _Bare
    try:
        if mode is None:
            spawned = _spawn(
                argv, env=env, cwd=cwd, stdin=None, stdout=None, stderr=None,
                pass_fds=pass_fds, process_group=True,
                stdio_fds=(plan.fds[0], plan.fds[1], plan.fds[2]),
            )
            backend = _Bare(spawned)
        else:
            backend = Guard.launch(
                argv, mode=mode, env=env, cwd=cwd,
                stdio_fds=(plan.fds[0], plan.fds[1], plan.fds[2]),
                pass_fds=pass_fds, wait_tree=wait_tree, foreground=_foreground,
                cgroup_root_arg=cgroup_root, await_start=_await_start,
            )
    except BaseException:
        for fd in parent_ends:
            if fd is not None:
                os.close(fd)
        raise
    finally:
        plan.close_opened()
    pipes = tuple(_wrap(fd, i, text, encoding, errors, bufsize)
                  for i, fd in enumerate(parent_ends))
    args = argv if isinstance(argv, list) else list(argv)
    return Child._create(args, backend, mode, pipes, text, encoding, errors)
