"""run_in_fork: a Python callable in a forked, lifelined child, with a race-free pidfd.

The one rule this module owns: the parent never turns the child's PID into a handle. A child
that runs Python must come from libc's fork() (its atfork handlers reset malloc and stdio
locks, and CPython's reset the interpreter), so there is no CLONE_PIDFD; instead the child
opens a pidfd on *itself* (its own PID cannot be stale) and hands it to the parent over a
socketpair with SCM_RIGHTS before the parent returns (the approach Rust's std settled on).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from tether._kernel.exit import Exit
from tether._kernel.fds import recv_with_fds, send_own_pidfd
from tether._kernel.lifeline import LIFELINE_ENV, attach, new_lifeline
from tether._kernel.pidfd import Pidfd
from tether._kernel.spawn import Spawned
from tether._kernel.usercall import call_as_user

__all__ = ["run_in_fork"]


def run_in_fork(fn: Callable[..., object], /, *args: Any, **kwargs: Any) -> Spawned:
    """Run ``fn(*args, **kwargs)`` in a forked child that is lifelined and attached.

    The child leads a new process group, is attached to its lifeline (when this process dies,
    the kernel kills the child's group), and exits 0 if ``fn`` returns, the code of a
    ``SystemExit`` it raises, or 1 with the traceback on stderr for any other exception.
    Lifeline write ends of other children are closed in it (no sibling keeps another's
    lifeline open).

    Guarantee: the returned pidfd names exactly this child; it was opened by the child on
    itself and passed over SCM_RIGHTS, never derived from the PID number by the parent.
    """
    if not callable(fn):
        raise TypeError(f"run_in_fork needs a callable, not {type(fn).__name__}")
    read_fd, writer = new_lifeline()
    try:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except BaseException:
        os.close(read_fd)
        writer.close()
        raise
    # What this process has buffered would otherwise be written twice: by us, and by the
    # child's flush before its _exit (multiprocessing flushes before forking for the same reason).
    _flush_stdio()
    try:
        pid = os.fork()  # noqa: TET101  the one fork site for Python children (see above)
    except BaseException:
        os.close(read_fd)
        writer.close()
        parent_sock.close()
        child_sock.close()
        raise
    if pid == 0:
        parent_sock.close()
        _child(read_fd, child_sock, fn, args, kwargs)
    child_sock.close()
    os.close(read_fd)
    try:
        with parent_sock:
            msg, fds, msg_flags = recv_with_fds(parent_sock, 16)
    except BaseException:
        writer.close()  # the child, attached or about to be, dies of it
        try:
            _reap_unhanded(pid)
        except ChildProcessError:
            pass
        raise
    if msg != b"P" or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        writer.close()
        exit_ = _reap_unhanded(pid)
        if msg == b"P" and msg_flags & socket.MSG_CTRUNC:
            # Sent, but the kernel could not install it here: we are at the open-file limit.
            raise OSError(errno.EMFILE, f"run_in_fork: child {pid}'s pidfd could not be "
                          f"received (at the open-file limit?); the child was ended ({exit_})")
        raise ChildProcessError(
            errno.ECHILD, f"run_in_fork child {pid} died before handing over its pidfd ({exit_})"
        )
    return Spawned(pid, Pidfd._create(fds[0], pid, reaper=True, cmd=repr(fn)), writer)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):  # closed, None, or a broken pipe: not ours
            if stream is not None:
                stream.flush()


def _reap_unhanded(pid: int) -> Exit:
    # The child died before it could send its pidfd. It is our own child and not yet reaped,
    # so its number cannot have been recycled: reaping it by number is exact here.
    res = os.waitid(os.P_PID, pid, os.WEXITED)  # noqa: TET302  own unreaped child, see above
    assert res is not None
    return Exit._from_waitid(res.si_code, res.si_status)


def _child(
    read_fd: int,
    sock: socket.socket,
    fn: Callable[..., object],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> NoReturn:
    code = 1
    try:
        try:
            os.setpgid(0, 0)
            send_own_pidfd(sock)
            # The variable we inherited names our parent's lifeline, not ours: never passed on.
            os.environ.pop(LIFELINE_ENV, None)
            attach(read_fd)
            # As user code: under tether.enforce(), what fn reaches is judged as the user's.
            call_as_user(fn, *args, **kwargs)
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code & 0xFF
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        _flush_stdio()
    finally:
        os._exit(code)
