"""preexec_fn: the one place the parent is fork()ed to run Python before an exec.

The one rule this module owns: a fork of the parent happens here only, and only for a caller
that passed a ``preexec_fn`` (the stdlib forks for it too, and documents the cost: the
parent's whole memory is copied on write). The forked child opens a pidfd on *itself* and
hands it over ``SCM_RIGHTS`` (never ``pidfd_open(pid)`` in the parent), runs
``preexec_fn``, and then runs the one clone child's steps in place (``clone.c``,
``TETHER_CLONE_IN_PLACE``): fds, ids, group or session, umask, cwd, signals, exec. A failure
after the fork travels back as the clone child's fixed-size record on an O_CLOEXEC pipe;
an exception in ``preexec_fn`` as the PREEXEC stage.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable
from typing import Final, NoReturn

from tether._kernel import core
from tether._kernel.fds import recv_with_fds, send_own_pidfd
from tether._kernel.lifeline import LifelineWriter, new_lifeline
from tether._kernel.pidfd import Pidfd
from tether._kernel.spec import SpawnSpec

__all__ = ["STAGE_PREEXEC", "fork_exec"]

STAGE_PREEXEC: Final = core.STAGE_PREEXEC
_RECORD: Final = struct.Struct("=ii")  # struct tether_failure: stage, errno


def fork_exec(
    spec: SpawnSpec, stdio_fds: tuple[int, int, int], preexec_fn: Callable[[], object]
) -> tuple[int, Pidfd | None, LifelineWriter | None, int, int]:
    """Fork, run ``preexec_fn`` in the child, then exec ``spec`` there. Returns (pid, pidfd,
    lifeline writer, 0, 0), or (pid, None, None, stage, errno) with the child reaped if it
    failed before its exec (stage PREEXEC: ``preexec_fn`` raised)."""
    read_fd, writer = new_lifeline()
    opened: list[int] = [read_fd]
    socks: list[socket.socket] = []
    try:
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        opened += [err_r, err_w]
        socks += socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        lifeline_dst = spec.lifeline_fd
        pid = os.fork()  # noqa: TET101  preexec_fn's fork, the one the doctrine allows
        if pid == 0:
            socks[0].close()
            _child(spec, stdio_fds, preexec_fn, read_fd, lifeline_dst, err_w, socks[1])
        os.close(err_w)
        opened.remove(err_w)
        socks[1].close()
        msg, fds, _ = recv_with_fds(socks[0], 16)
    except BaseException:
        writer.close()
        for fd in opened:
            os.close(fd)
        for s in socks:
            s.close()
        raise
    os.close(read_fd)
    socks[0].close()
    with os.fdopen(err_r, "rb") as errpipe:
        record = errpipe.read(_RECORD.size)  # EOF: the exec happened
    pidfd = Pidfd._create(fds[0], pid, reaper=True, cmd=list(spec.args)) if (
        msg == b"P" and len(fds) == 1) else None
    if pidfd is not None and len(record) != _RECORD.size:
        return pid, pidfd, writer, 0, 0
    writer.close()
    _reap(pid, pidfd)
    stage, err = _RECORD.unpack(record) if len(record) == _RECORD.size else (0, 0)
    return pid, None, None, stage, err


def _reap(pid: int, pidfd: Pidfd | None) -> None:
    if pidfd is not None:
        with contextlib.suppress(ChildProcessError):
            pidfd.wait()
        pidfd.close()
        return
    # No pidfd came: our own child, not yet reaped, so its number cannot have been recycled.
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, pid, os.WEXITED)  # noqa: TET302  own unreaped child, see above


def _child(
    spec: SpawnSpec, stdio_fds: tuple[int, int, int], preexec_fn: Callable[[], object],
    read_fd: int, lifeline_dst: int, err_w: int, sock: socket.socket,
) -> NoReturn:
    try:
        send_own_pidfd(sock)
        try:
            preexec_fn()
        except BaseException:
            os.write(err_w, _RECORD.pack(STAGE_PREEXEC, 0))
            os._exit(255)
        # As the stdlib: what preexec_fn putenv()s reaches the program. (core.spawn makes the
        # envp of the dict, with the lifeline's variable, as for every other clone.)
        env = _c_environ() if spec.inherit_env else spec.env
        attrs = spec.attrs
        core.spawn(
            path=spec.executable, argv=list(spec.argv), env=env, cwd=spec.cwd,
            stdin=stdio_fds[0], stdout=stdio_fds[1], stderr=stdio_fds[2],
            keep_fds=spec.pass_fds, lifeline_src=read_fd, lifeline_dst=lifeline_dst,
            new_pgroup=spec.process_group, pdeathsig=0, extra_flags=0, cgroup_fd=err_w,
            method=core.CLONE_IN_PLACE, attrs=None if attrs is None else attrs.core_tuple())
    finally:
        os._exit(255)


def _c_environ() -> dict[bytes, bytes]:
    """This process's environment as the C library holds it now (``os.environ`` is a copy
    made at start-up, which ``os.putenv`` does not update)."""
    import ctypes

    environ = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
    env: dict[bytes, bytes] = {}
    i = 0
    while environ[i] is not None:
        key, sep, value = (environ[i] or b"").partition(b"=")
        if sep and key and key not in env:
            env[key] = value
        i += 1
    return env
