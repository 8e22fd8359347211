"""tether.subprocess: the stdlib's ``subprocess``, with every program in a contained tree.

Change one import (``from tether import subprocess``) and the code keeps working: the same
names, signatures, exceptions (the stdlib's own classes, so ``except
subprocess.CalledProcessError`` catches tether's) and, for everything the parent can observe,
the same semantics. What changes is only what must (the README's "Drop-in subprocess and
asyncio" table): the program runs under a guard in a contained tree (``contain=``, an extra
keyword), nothing of it outlives this process, signals go through the program's pidfd,
``wait()`` blocks on the tree's socket (no polling loop), and ``communicate()`` returns when
the *tree* has ended even if an escaped process still holds a pipe.

The one rule this module owns: :class:`Popen` is the stdlib's class with only the process
underneath replaced. The stdlib checks the arguments, makes the pipes and wraps them (text,
bufsize, pipesize); the program is started by :func:`tether._tree.handle.start_tree` from a
checked :class:`~tether._kernel.spec.SpawnSpec`, and is waited for, polled and signalled
through its :class:`~tether._tree.seam.Tree`. A dropped Popen that still runs stays in the
stdlib's ``_active`` list (as the stdlib's does), so it keeps running and is reaped by a
later poll; its tree still dies with this process (its lifeline).
"""

from __future__ import annotations

import os
import selectors
import subprocess as _stdlib
import sys
from collections.abc import Mapping, Sequence
from subprocess import (
    DEVNULL,
    PIPE,
    STDOUT,
    CalledProcessError,
    CompletedProcess,
    SubprocessError,
    TimeoutExpired,
    list2cmdline,
)
from typing import Any, Final

from tether._kernel.attrs import ProcessAttrs
from tether._kernel.cgroup import cgroup_unavailable_reason
from tether._kernel.errors import Unsupported
from tether._kernel.spec import SpawnSpec
from tether._tree.handle import start_tree
from tether._tree.modes import Contain, Mode, resolve_mode
from tether._tree.seam import Tree

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "CalledProcessError",
    "CompletedProcess",
    "Popen",
    "SubprocessError",
    "TimeoutExpired",
    "call",
    "check_call",
    "check_output",
    "getoutput",
    "getstatusoutput",
    "list2cmdline",
    "run",
]

#: The containment of a Popen that does not say (the library's default, as for spawn()).
DEFAULT_CONTAIN: Final[Contain] = "auto"
_READ_CHUNK: Final = 32768
_PIPE_BUF: Final = 512


def _command_line(args: Any, executable: Any, shell: bool) -> tuple[list[Any], Any]:
    """argv and the file to run, as subprocess's POSIX _execute_child makes them."""
    argv: list[Any]
    if isinstance(args, str | bytes):
        argv = [args]
    elif isinstance(args, os.PathLike):
        if shell:
            raise TypeError("path-like args is not allowed when shell is true")
        argv = [args]
    else:
        argv = list(args)
    if shell:
        argv = ["/bin/sh", "-c", *argv]
        if executable:
            argv[0] = executable
    return argv, argv[0] if executable is None else executable


def _fd_or_none(fd: int) -> int | None:
    return None if fd == -1 else fd


# The stdlib's class, subclassed for its argument checks and pipes only: its process
# creation (_execute_child), waits, polls and signals are replaced below. Typed as Any: the
# private methods this class overrides or calls are not in the stdlib's stubs.
_StdlibPopen: Any = _stdlib.Popen  # noqa: TET102  subclassed; never spawns (see above)


class Popen(_StdlibPopen):  # type: ignore[misc]
    """:class:`subprocess.Popen`, with the program started in a contained tree.

    Signature, attributes and methods are the stdlib's, plus the keyword ``contain``
    ("group", "cgroup", "pidns", "auto" or None; see :func:`tether.spawn`). ``pid`` is the
    program's. ``with Popen(...)`` waits for the program, as the stdlib does; a Popen that
    is dropped while its program runs keeps running.

    Guarantee: the program and what it starts cannot outlive this process (the guard ends
    the tree when this process dies, however it dies); ``send_signal``, ``terminate`` and
    ``kill`` reach the program through its pidfd, so they can never hit a recycled PID.
    """

    _tether_tree: Tree | None = None
    contain: Mode | None = None
    stdin: Any
    stdout: Any
    stderr: Any

    def __init__(
        self,
        args: Any,
        bufsize: int = -1,
        executable: Any = None,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        preexec_fn: Any = None,
        close_fds: bool = True,
        shell: bool = False,
        cwd: Any = None,
        env: Mapping[Any, Any] | None = None,
        universal_newlines: bool | None = None,
        startupinfo: Any = None,
        creationflags: int = 0,
        restore_signals: bool = True,
        start_new_session: bool = False,
        pass_fds: Sequence[int] = (),
        *,
        user: Any = None,
        group: Any = None,
        extra_groups: Any = None,
        encoding: str | None = None,
        errors: str | None = None,
        text: bool | None = None,
        umask: int = -1,
        pipesize: int = -1,
        process_group: int | None = None,
        contain: Contain = DEFAULT_CONTAIN,
    ) -> None:
        # Before the stdlib makes any pipe: a bad mode fails with nothing open. "auto" with a
        # preexec_fn: the strongest mode that can run one (not pidns: see _execute_child).
        self.contain = resolve_mode(contain, None)
        if contain == "auto" and preexec_fn is not None and self.contain == "pidns":
            self.contain = "cgroup" if cgroup_unavailable_reason(None) is None else "group"
        super().__init__(
            args, bufsize, executable, stdin, stdout, stderr, preexec_fn, close_fds, shell,
            cwd, env, universal_newlines, startupinfo, creationflags, restore_signals,
            start_new_session, pass_fds, user=user, group=group, extra_groups=extra_groups,
            encoding=encoding, errors=errors, text=text, umask=umask, pipesize=pipesize,
            process_group=process_group,
        )

    def _execute_child(
        self, args: Any, executable: Any, preexec_fn: Any, close_fds: bool,
        pass_fds: Sequence[int], cwd: Any, env: Any, startupinfo: Any, creationflags: int,
        shell: bool, p2cread: int, p2cwrite: int, c2pread: int, c2pwrite: int,
        errread: int, errwrite: int, restore_signals: bool, gid: int | None,
        gids: list[int] | None, uid: int | None, umask: int, start_new_session: bool,
        process_group: int,
    ) -> None:
        argv, executable = _command_line(args, executable, shell)
        sys.audit("subprocess.Popen", executable, argv, cwd, env)
        if preexec_fn is not None and self.contain == "pidns":
            raise Unsupported(
                "preexec_fn with contain='pidns': preexec_fn runs in a fork() of this process, "
                "and a fork cannot start the guard as PID 1 of a new namespace")
        if process_group not in (-1, 0):
            raise Unsupported(
                f"process_group={process_group}: a program in a tether tree leads its own "
                "process group (process_group=0); joining another group would move it out of "
                "its tree's reach")
        attrs = ProcessAttrs.build(
            umask=umask, new_session=start_new_session, inherit_fds=not close_fds,
            restore_signals=restore_signals, uid=uid, gid=gid, groups=gids)
        spec = SpawnSpec.build(
            argv, env=env, cwd=cwd, stdin=_fd_or_none(p2cread), stdout=_fd_or_none(c2pwrite),
            stderr=_fd_or_none(errwrite), pass_fds=pass_fds, executable=executable,
            attrs=attrs, preexec_fn=preexec_fn, popen_style=True)
        # No lifeline fd in a guarded program: the guard holds the tree, and a Popen's
        # program sees the fds the stdlib's would (close_fds, pass_fds) and nothing more.
        tree, _ = start_tree(spec, self.contain, program_lifeline=False)
        self._tether_tree = tree
        self.pid = tree.program_pid
        self._child_created = True
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def take_tree(self) -> tuple[Tree, Mode | None, list[Any]]:
        """Hand the tree, its mode and the pipes' file objects (stdin, stdout, stderr; None
        where not a PIPE) to another handle (tether.aio's Process). This Popen then speaks
        for nothing: dropping it leaves the tree alone."""
        tree = self._tether_tree
        if tree is None:
            raise ValueError("this Popen's tree was handed over already")
        files = [self.stdin, self.stdout, self.stderr]
        self._tether_tree = None
        self._child_created = False  # (the stdlib's __del__ then keeps it out of _active)
        self.stdin = self.stdout = self.stderr = None
        return tree, self.contain, files

    @property
    def pidfd(self) -> Any:
        """The program's :class:`tether.Pidfd` (race-free: handed over by the guard)."""
        assert self._tether_tree is not None
        return self._tether_tree.program

    def _settle(self, _deadstate: int | None) -> int | None:
        tree = self._tether_tree
        try:
            exit_ = tree.outcome() if tree is not None else None
        except ChildProcessError:  # the guard died before it could report
            exit_ = None
            if _deadstate is not None:
                self.returncode = _deadstate
        if exit_ is not None:
            self.returncode = exit_.returncode
        return self.returncode

    def _internal_poll(self, _deadstate: int | None = None, **_unused: Any) -> int | None:
        # Also what the stdlib's __del__ and _cleanup() (for _active) call.
        tree = self._tether_tree
        if self.returncode is not None or tree is None:
            return self.returncode
        if not self._waitpid_lock.acquire(False):
            return None  # another thread is waiting for it
        try:
            if tree.pump():
                return self._settle(_deadstate)
            return None
        except (ChildProcessError, ValueError):
            return self._settle(_deadstate)
        finally:
            self._waitpid_lock.release()

    def _wait(self, timeout: float | None) -> int:
        if self.returncode is not None:
            return self.returncode
        tree = self._tether_tree
        assert tree is not None
        # Below zero is the stdlib's "already expired" (communicate() hands us what is left
        # of its timeout): one look, not the ValueError tether's own waits give.
        if not tree.wait(None if timeout is None else max(0.0, timeout)):
            raise TimeoutExpired(self.args, timeout or 0.0)
        rc = self._settle(None)
        if rc is None:
            raise ChildProcessError("the tree ended without a report from its guard")
        return rc

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the program through its pidfd (a no-op once it has exited)."""
        self.poll()
        if self.returncode is not None or self._tether_tree is None:
            return
        try:
            self._tether_tree.program.send_signal(sig)
        except ProcessLookupError:
            pass

    def _communicate(self, input: Any, endtime: float | None, orig_timeout: float | None
                     ) -> tuple[Any, Any]:
        # The stdlib's loop, with the tree's fd beside the pipes: once the tree has ended,
        # what is in the pipes is all that will come from it (an escaped process may hold a
        # write end for ever), so the pipes are drained without blocking and closed.
        if self.stdin and not self._communication_started:
            try:
                self.stdin.flush()
            except BrokenPipeError:
                pass
            if not input:
                try:
                    self.stdin.close()
                except BrokenPipeError:
                    pass
        if not self._communication_started:
            self._fileobj2output: dict[Any, list[bytes]] = {
                f: [] for f in (self.stdout, self.stderr) if f}
        stdout = self._fileobj2output[self.stdout] if self.stdout else None
        stderr = self._fileobj2output[self.stderr] if self.stderr else None
        self._save_input(input)
        self._pump_pipes(input, endtime, orig_timeout, stdout, stderr)
        self.wait(timeout=self._remaining_time(endtime))
        out = b"".join(stdout) if stdout is not None else None
        err = b"".join(stderr) if stderr is not None else None
        if self.text_mode:
            if out is not None:
                out = self._translate_newlines(out, self.stdout.encoding, self.stdout.errors)
            if err is not None:
                err = self._translate_newlines(err, self.stderr.encoding, self.stderr.errors)
        return out, err

    def _pump_pipes(self, input: Any, endtime: float | None, orig_timeout: float | None,
                    stdout: list[bytes] | None, stderr: list[bytes] | None) -> None:
        tree = self._tether_tree
        assert tree is not None
        input_view = memoryview(self._input) if self._input else None
        with selectors.PollSelector() as selector:
            if self.stdin and input:
                selector.register(self.stdin, selectors.EVENT_WRITE)
            for f in (self.stdout, self.stderr):
                if f and not f.closed:
                    selector.register(f, selectors.EVENT_READ)
            if not selector.get_map():
                return
            if tree.pump():  # ended already: its fd is gone, its output is in the pipes
                self._drain(selector)
                return
            selector.register(tree.fileno(), selectors.EVENT_READ)
            while len(selector.get_map()) > 1:
                timeout = self._remaining_time(endtime)
                if timeout is not None and timeout < 0:
                    self._check_timeout(endtime, orig_timeout, stdout, stderr,
                                        skip_check_and_raise=True)
                ready = selector.select(timeout)
                self._check_timeout(endtime, orig_timeout, stdout, stderr)
                for key, _ in ready:
                    fileobj: Any = key.fileobj
                    if fileobj is self.stdin:
                        assert input_view is not None
                        chunk = input_view[self._input_offset:self._input_offset + _PIPE_BUF]
                        try:
                            self._input_offset += os.write(key.fd, chunk)
                        except BrokenPipeError:
                            selector.unregister(fileobj)
                            fileobj.close()
                        else:
                            if self._input_offset >= len(self._input):
                                selector.unregister(fileobj)
                                fileobj.close()
                    elif fileobj in (self.stdout, self.stderr):
                        data = os.read(key.fd, _READ_CHUNK)
                        if not data:
                            selector.unregister(fileobj)
                            fileobj.close()
                        self._fileobj2output[fileobj].append(data)
                    elif tree.pump():
                        self._drain(selector)
                        return

    def _drain(self, selector: selectors.BaseSelector) -> None:
        """The tree has ended: read what its pipes hold without blocking, then close them."""
        for key in list(selector.get_map().values()):
            fileobj: Any = key.fileobj
            if fileobj is self.stdin:
                fileobj.close()
            elif fileobj in (self.stdout, self.stderr):
                os.set_blocking(key.fd, False)
                chunks = self._fileobj2output[fileobj]
                while True:
                    try:
                        data = os.read(key.fd, _READ_CHUNK)
                    except BlockingIOError:
                        break
                    chunks.append(data)
                    if not data:
                        break
                fileobj.close()


# -- the functions, as the stdlib has them, on tether's Popen ---------------------------------


def call(*popenargs: Any, timeout: float | None = None, **kwargs: Any) -> int:
    """Run the command, wait for it, return its returncode (:func:`subprocess.call`)."""
    with Popen(*popenargs, **kwargs) as p:
        try:
            rc: int = p.wait(timeout=timeout)
            return rc
        except BaseException:
            p.kill()
            raise


def check_call(*popenargs: Any, **kwargs: Any) -> int:
    """:func:`call`, raising CalledProcessError on a non-zero returncode."""
    retcode = call(*popenargs, **kwargs)
    if retcode:
        cmd = kwargs.get("args")
        if cmd is None:
            cmd = popenargs[0]
        raise CalledProcessError(retcode, cmd)
    return 0


def check_output(*popenargs: Any, timeout: float | None = None, **kwargs: Any) -> Any:
    """Run the command and return its output (:func:`subprocess.check_output`)."""
    for kw in ("stdout", "check"):
        if kw in kwargs:
            raise ValueError(f"{kw} argument not allowed, it will be overridden.")
    if "input" in kwargs and kwargs["input"] is None:
        text = (kwargs.get("universal_newlines") or kwargs.get("text")
                or kwargs.get("encoding") or kwargs.get("errors"))
        kwargs["input"] = "" if text else b""
    return run(*popenargs, stdout=PIPE, timeout=timeout, check=True, **kwargs).stdout


def run(*popenargs: Any, input: Any = None, capture_output: bool = False,
        timeout: float | None = None, check: bool = False, **kwargs: Any
        ) -> CompletedProcess[Any]:
    """Run the command to completion (:func:`subprocess.run`); on a timeout the program is
    killed (and, as for every tether tree, the rest of its tree ended)."""
    if input is not None:
        if kwargs.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        kwargs["stdin"] = PIPE
    if capture_output:
        if kwargs.get("stdout") is not None or kwargs.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output.")
        kwargs["stdout"] = kwargs["stderr"] = PIPE
    with Popen(*popenargs, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except TimeoutExpired:
            process.kill()
            process.wait()
            raise
        except BaseException:
            process.kill()
            raise
        retcode: int = process.poll()
        if check and retcode:
            raise CalledProcessError(retcode, process.args, output=stdout, stderr=stderr)
    return CompletedProcess(process.args, retcode, stdout, stderr)


def getstatusoutput(cmd: Any, *, encoding: str | None = None, errors: str | None = None
                    ) -> tuple[int, str]:
    """(exitcode, output) of ``cmd`` run by the shell (:func:`subprocess.getstatusoutput`)."""
    try:
        data = check_output(cmd, shell=True, text=True, stderr=STDOUT, encoding=encoding,
                            errors=errors)
        exitcode = 0
    except CalledProcessError as ex:
        data = ex.output
        exitcode = ex.returncode
    if data[-1:] == "\n":
        data = data[:-1]
    return exitcode, data


def getoutput(cmd: Any, *, encoding: str | None = None, errors: str | None = None) -> str:
    """The output of ``cmd`` run by the shell (:func:`subprocess.getoutput`)."""
    return getstatusoutput(cmd, encoding=encoding, errors=errors)[1]
