"""The parent's side of the guard: launch it, speak its protocol, clean up after it.

The one rule this module owns: the guard, not the parent, is the tree's lifeline reader, and
everything the parent learns about the program comes from the guard's messages or from the
program's pidfd (which the guard hands over with SCM_RIGHTS). The parent never turns a PID
into a handle. Wire format: ``_kernel/guard_proto.h``, whose constants the C extension
exports (``core.GUARD_MSG_*``): C holds the only copy.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import threading
from typing import Final

from tether._kernel import core, features
from tether._kernel.cgroup import CgroupTree, cgroup_root
from tether._kernel.deadline import Deadline, check_timeout
from tether._kernel.errors import Unsupported
from tether._kernel.exit import Exit
from tether._kernel.fds import recv_with_fds, socketpair_above_stdio
from tether._kernel.pidfd import Pidfd, pid_in_our_namespace
from tether._kernel.spawn import Spawned, child_error, clone_spec
from tether._kernel.spec import SpawnSpec
from tether._tree.modes import Mode, guard_path, pidns_unavailable_reason, raise_namespace_limit

__all__ = ["Guard"]

# The wire protocol comes from guard_proto.h through the extension: C holds the one copy.
_MSG: Final = struct.Struct(core.GUARD_MSG_FORMAT)
assert _MSG.size == core.GUARD_MSG_SIZE, "guard_proto.h: the format does not match the struct"
MSG_STARTED: Final = core.GUARD_MSG_STARTED
MSG_FAILED: Final = core.GUARD_MSG_FAILED
MSG_EXITED: Final = core.GUARD_MSG_EXITED
MSG_SIGNAL_TREE: Final = core.GUARD_MSG_SIGNAL_TREE
MSG_KILL_TREE: Final = core.GUARD_MSG_KILL_TREE


# -- the guard ------------------------------------------------------------------------------------


class Guard:
    """One running guard and the tree under it, as the parent sees them.

    The guard's first report (MSG_STARTED with the program's pidfd, or MSG_FAILED) is read
    either at once (``launch(await_start=True)``: :func:`tether.spawn` and run()), or later
    with the rest by :meth:`pump` (``await_start=False``: tether.aio, which awaits it in the
    loop's selector, or in aio.run not at all; a start failure surfaces as ``start_error``,
    raised by whoever waits for the tree)."""

    __slots__ = (
        "_borrowers",
        "_exit",
        "_generation",
        "_lock",
        "_program",
        "_program_pid",
        "cgroup",
        "dead",
        "guard_exit",
        "mode",
        "sock",
        "spawned",
        "spec",
        "start_error",
    )

    def __init__(
        self,
        spec: SpawnSpec,
        mode: Mode,
        spawned: Spawned,
        sock: socket.socket,
        cgroup: CgroupTree | None,
    ) -> None:
        self.spec = spec
        self.mode = mode
        self.spawned = spawned
        self.sock = sock
        self.cgroup = cgroup
        self._program: Pidfd | None = None
        self._program_pid = 0
        self._exit: Exit | None = None
        #: How the guard itself ended, once it has been reaped.
        self.guard_exit: Exit | None = None
        self.start_error: OSError | None = None
        #: True if the guard died without reporting (the program's status is unknown).
        self.dead = False
        # One reader of the guard's reports at a time: any thread may pump, wait or signal
        # (Child is thread-safe like Popen); blocking waits poll a dup outside the lock.
        self._lock = threading.RLock()
        self._borrowers = 0  # blocking waiters polling the control socket
        self._generation = core.fork_generation()

    @classmethod
    def launch(
        cls,
        spec: SpawnSpec,
        stdio_fds: tuple[int, int, int],
        *,
        mode: Mode,
        wait_tree: bool = False,
        foreground: bool = False,
        cgroup_root_arg: str | os.PathLike[str] | None = None,
        await_start: bool = True,
    ) -> Guard:
        """Start the guard and ``spec``'s program under it (``stdio_fds``: the program's fds
        0-2, which the guard passes on).

        The spec is checked already; the mode is checked here, before anything is started.
        With ``await_start`` (the default) it returns once the program has exec'd, and a
        program that cannot be run raises here (FileNotFoundError, PermissionError, ...),
        not as a guard exit status. Without, it returns as soon as the guard runs; the start
        is read by :meth:`pump`.
        """
        keep = spec.pass_fds
        guard = guard_path()
        extra_flags = 0
        guard_opts: list[str] = ["--contain", mode]
        if mode == "pidns":
            reason = pidns_unavailable_reason()
            if reason is not None:
                raise Unsupported(errno.EPERM, f"contain='pidns' is unavailable: {reason}")
            extra_flags = core.CLONE_NEWPID
            if os.geteuid() != 0:
                extra_flags |= core.CLONE_NEWUSER
                guard_opts += ["--userns", f"{os.geteuid()}:{os.getegid()}"]
        elif mode == "cgroup" and features.clone_method() != core.CLONE_CLONE3:
            raise Unsupported(
                errno.ENOSYS, "contain='cgroup' needs clone3 (CLONE_INTO_CGROUP, Linux 5.7), "
                "which is blocked here")
        if wait_tree:
            guard_opts.append("--wait-tree")
        if foreground:
            guard_opts.append("--foreground")
        if features.clone_method() == core.CLONE_LEGACY:
            # The guard clones the program as this process clones: legacy where clone3 is
            # refused (the guard inherits the same seccomp filter) or forced (the fallback's
            # tests, features.force_clone_method), so a forced run tests the guard's path too.
            guard_opts += ["--clone", "legacy"]

        cgroup: CgroupTree | None = None
        parent_sock: socket.socket | None = None
        guard_sock: socket.socket | None = None
        try:
            if mode == "cgroup":
                cgroup = CgroupTree.create(cgroup_root(cgroup_root_arg))
                guard_opts += ["--cgroup-fd", str(cgroup.fd), "--cgroup-path", cgroup.path]
            # Both above 2: --control must not be one of the program's stdio fds.
            parent_sock, guard_sock = socketpair_above_stdio(socket.SOCK_SEQPACKET)
            passed = set(keep) | {guard_sock.fileno()}
            if cgroup is not None:
                passed.add(cgroup.fd)
            guard_argv: list[bytes] = [
                os.fsencode(guard), b"--control", str(guard_sock.fileno()).encode(),
                *(o.encode() for o in guard_opts),
            ]
            if keep:
                guard_argv += [b"--keep", ",".join(map(str, keep)).encode()]
            guard_argv += [*spec.attr_options(), b"--", spec.executable, *spec.argv]
            guard_spec = spec.replace(
                argv=tuple(guard_argv), executable=os.fsencode(guard), attrs=spec.guard_attrs(),
                pass_fds=tuple(sorted(passed)), process_group=not foreground)
            spawned = clone_spec(guard_spec, stdio_fds, extra_flags=extra_flags)
        except BaseException as exc:
            for s in (parent_sock, guard_sock):
                if s is not None:
                    s.close()
            if cgroup is not None:
                cgroup.discard()  # nothing entered it; opens no file (EMFILE stays the error)
            if mode == "pidns":
                raise_namespace_limit(exc)
            raise
        assert guard_sock is not None and parent_sock is not None
        guard_sock.close()
        self = cls(spec, mode, spawned, parent_sock, cgroup)
        if await_start:
            try:
                self.await_start()
            except BaseException:
                self._discard()
                raise
        return self

    def _discard(self) -> None:
        """Undo a launch whose start was not seen through (an error or an interrupt while
        waiting for it): the guard ends whatever it started, and is reaped."""
        if self.ended:
            return
        self.dead = True
        self.guard_exit = self._release()
        if self._program is not None:
            self._program.close()

    # -- the start ---------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once the program's start (or its failure) has been read, or the tree ended."""
        return self._program is not None or self.ended

    @property
    def ended(self) -> bool:
        """True once the tree has ended (reported, failed to start, or the guard died)."""
        return self._exit is not None or self.dead or self.start_error is not None

    def await_start(self) -> None:
        """Block until the program has exec'd; raise its start error (FileNotFoundError, ...)
        if it could not be run."""
        self._block_until(Deadline(None), start=True)
        self.check_start()

    def _block_until(self, deadline: Deadline, *, start: bool) -> bool:
        """Until the start is known (``start``) or the tree has ended: True, or False once
        ``deadline`` has passed. Safe from any thread: the reports are read under the lock,
        and the wait for the next one borrows the control socket: a thread that reads the
        end meanwhile leaves the socket open until the last borrower is done (closed, its
        number could be reused under the poll), and no extra fd is needed at the fd limit."""
        with self._lock:
            if self.pump(stop_at_start=start) or (start and self.started):
                return True
            self._borrowers += 1
            fd = self.sock.fileno()
        try:
            while not deadline.expired:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                poller.poll(deadline.poll_ms())
                with self._lock:
                    if self.pump(stop_at_start=start) or (start and self.started):
                        return True
            return False
        finally:
            with self._lock:
                self._borrowers -= 1
                if not self._borrowers and self.ended:
                    self.sock.close()

    def check_start(self) -> None:
        """Raise the start error, if the start is known to have failed (never blocks)."""
        if self.start_error is not None:
            raise self.start_error
        if self._program is None:
            # The guard died before reporting anything (killed, or a broken install).
            raise OSError(
                errno.EPROTO, f"the tether guard ended without reporting ({self.guard_exit})")

    @property
    def program(self) -> Pidfd:
        """The program's pidfd (waits for the start if it has not been read yet)."""
        if self._program is None:
            self.await_start()
        assert self._program is not None
        return self._program

    @property
    def program_pid(self) -> int:
        """The program's PID as this process sees it (waits for the start if need be)."""
        if self._program is None:
            self.await_start()
        return self._program_pid

    def _on_started(self, pid: int, fds: list[int], msg_flags: int) -> None:
        if len(fds) != 1:
            # The program runs, but its pidfd did not reach us (dropped at the open-file
            # limit, MSG_CTRUNC). Without it the tree is not ours to hold: end it.
            for fd in fds:
                os.close(fd)
            if msg_flags & socket.MSG_CTRUNC:
                error = OSError(errno.EMFILE, "the program's pidfd could not be received from "
                                "the tether guard (at the open-file limit?); its tree was ended")
            else:
                error = OSError(errno.EPROTO, "the tether guard's start report carried no "
                                "pidfd; the tree was ended")
            self._abort_start(error)
            return
        if self.mode == "pidns":
            pid = pid_in_our_namespace(fds[0], pid)
        self._program_pid = pid
        self._program = Pidfd._create(fds[0], pid, reaper=False, cmd=None)

    def _on_failed(self, stage: int, err: int) -> None:
        """The program could not be started; the guard has undone its setup and exits 127."""
        self._abort_start(child_error(stage, err, self.spec.args[0], self.spec.cwd))

    def _abort_start(self, error: OSError) -> None:
        """No tree for the caller: cut the lifeline (the guard ends whatever it started),
        reap the guard, drop our handles; ``error`` is what waiting for the tree raises.
        Recorded last: an interrupt during the reap leaves a Guard that is not ended, which
        ``_discard`` (or a later pump, which then finds the guard gone) cleans up."""
        self.guard_exit = self._release()
        self.start_error = error

    def _release(self) -> Exit | None:
        """Drop our side of the tree once the guard is done or must be: cut the lifeline
        (a guard still running ends the tree on it), reap the guard, close the control
        socket, and remove the cgroup directory (the guard removed it already unless it was
        killed; remove() then only drops our lock). Returns how the guard ended."""
        self.spawned.lifeline.close()
        guard_exit = _reap_quietly(self.spawned.pidfd)
        if not self._borrowers:  # else the last waiter closes it
            self.sock.close()
        if self.cgroup is not None:
            self.cgroup.remove()
        return guard_exit

    # -- messages ----------------------------------------------------------------------------

    def fileno(self) -> int:
        """The control socket: readable when the guard reports (or dies). A blocking caller
        is best woken by the report itself, a synchronous wakeup the scheduler can place on
        the guard's CPU."""
        return self.sock.fileno()

    def watch_fd(self) -> int:
        """A dup of the guard's pidfd, the caller's to close (-1 once the tree has ended):
        readable once the guard has sent its last report (or died) and exited, so every
        report is in the socket and reaping the guard cannot block. What an event loop
        watches: one wakeup per tree, none for the start report."""
        with self._lock:
            if self.ended:
                return -1
            return self.spawned.pidfd._dup()

    def pump(self, *, stop_at_start: bool = False) -> bool:
        """Read whatever the guard has said, without blocking; True once the tree has ended.
        With ``stop_at_start``, read no further than the start report."""
        with self._lock:
            if self.ended:
                return True
            while True:
                if stop_at_start and self._program is not None:
                    return False
                try:
                    message = self._recv(socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return False
                if self._handle(*message):
                    return True

    def _recv(self, flags: int) -> tuple[bytes, list[int], int]:
        """One message: (data, fds passed with it, message flags); b"" once the guard is gone."""
        for _ in range(3):
            try:
                if self._program is None:  # the start report may carry the program's pidfd
                    return recv_with_fds(self.sock, _MSG.size, flags)
                return self.sock.recv(_MSG.size, flags), [], 0
            except ConnectionResetError:
                # The guard exited with a command of ours still unread (a terminate() racing
                # with the end, or any command to a program that could not start): the kernel
                # then reports ECONNRESET, once, ahead of the reports still queued. Read on.
                continue
        return b"", [], 0

    def _handle(self, data: bytes, fds: list[int], msg_flags: int) -> bool:
        """Act on one message; True once the tree has ended."""
        if len(data) == 0:
            self._guard_died()
            return True
        kind, a, b, _ = _MSG.unpack(data) if len(data) == _MSG.size else (0, 0, 0, 0)
        if kind == MSG_STARTED and self._program is None:
            self._on_started(a, fds, msg_flags)
            return self.start_error is not None
        for fd in fds:
            os.close(fd)
        if kind == MSG_FAILED and self._program is None:
            self._on_failed(a, b)
            return True
        if kind == MSG_EXITED:
            self._finish(Exit._from_wait_status(a))
            return True
        return False

    def wait(self, timeout: float | None) -> bool:
        """Block until the tree has ended (True) or the timeout passed (False)."""
        return self._block_until(Deadline.after(check_timeout(timeout)), start=False)

    def outcome(self) -> Exit | None:
        """How the program ended, once the tree has; raises ChildProcessError if the guard
        died before it could report (the tree was ended parent-side)."""
        if self.dead:
            raise ChildProcessError(
                errno.ECHILD,
                f"the tether guard of {self.spec.args!r} died ({self.guard_exit}) before "
                "reporting the program's status; tether killed the rest of the tree",
            )
        return self._exit

    def _finish(self, exit_: Exit) -> None:
        self._exit = exit_
        if self._program is not None:  # (always: the start is reported before the end)
            self._program._set_exit(exit_)
        # The guard exits right after its report: reap it (no zombie), drop our handles.
        self.guard_exit = self._release()

    def _guard_died(self) -> None:
        """The guard is gone without a report (someone killed it): end the tree ourselves."""
        guard_exit = self.guard_exit = self._release()  # in cgroup mode, ends what is left
        program = self._program
        if guard_exit == _GUARD_DONE and program is not None:
            # The guard exits 0 only at the end of its loop: the tree had ended and it had
            # tried to report. The report was lost, not the tree, and the kernel keeps the
            # program's exact status for whoever holds its pidfd once the guard has reaped
            # it (PIDFD_INFO_EXIT, 6.15+). Without that, it stays "unknown" below.
            recovered = program._info_exit()
            if recovered is not None:
                self._exit = recovered
                program._set_exit(recovered)
                return
        self.dead = True
        if self.mode in ("group", "cgroup") and program is not None:
            # The program got PDEATHSIG=SIGKILL from the guard's death; its group may live on
            # (in cgroup mode too: a member that moved itself to another cgroup). The leader's
            # pidfd is a race-free handle on the group, even once it is reaped.
            try:
                program.send_signal(signal.SIGKILL, process_group=True)
            except ProcessLookupError:
                pass
            except Unsupported:
                # Before Linux 6.9: killpg by number, only while the leader's pidfd proves
                # the leader (whose number is the group's) still exists, so the number
                # cannot have been handed to anyone else (DESIGN.md's named fallback).
                try:
                    program.send_signal(0)
                    os.killpg(self._program_pid, signal.SIGKILL)  # noqa: TET201  proven above
                except ProcessLookupError:
                    pass
        # cgroup: _release() killed what was left in it. pidns: the kernel killed the namespace when
        # its init (the guard) died. A guard that died before reporting the start took its
        # program with it (PDEATHSIG), if any.
        self._exit = None

    # -- commands ----------------------------------------------------------------------------

    def _send(self, kind: int, a: int = 0) -> bool:
        with self._lock:  # the socket is closed only under the lock, once the tree has ended
            if self.ended:
                return False
            try:
                self.sock.send(_MSG.pack(kind, a, 0, 0))
            except (BrokenPipeError, ConnectionResetError, OSError):
                return False
            return True

    def signal_tree(self, sig: int) -> None:
        """Send ``sig`` to every process of the tree (through the guard; one sent before the
        program has started reaches it once it has)."""
        if not self._send(MSG_SIGNAL_TREE, sig):
            self.pump()

    def kill_tree(self) -> None:
        """SIGKILL the whole tree now; the guard reports the exit when it is gone."""
        if not self._send(MSG_KILL_TREE):
            self.pump()

    def abandon(self) -> None:
        """Cut the lifeline (the guard kills the tree) and wait until it has."""
        with self._lock:
            if self.pump():
                return
            self.kill_tree()
            self.spawned.lifeline.close()
        self.wait(None)

    def __del__(self) -> None:
        # Dropped without being waited for (a Child let go of): the tree ends (the lifeline
        # is cut), and the guard, once it has ended the tree, is reaped at the next spawn or
        # at interpreter exit, with its cgroup directory removed then. In a forked child the
        # tree is the parent's: leave it alone (the lifeline writer is closed there already).
        spawned = getattr(self, "spawned", None)
        if spawned is None or spawned.pidfd.closed:
            return
        if getattr(self, "_generation", None) != core.fork_generation():
            return
        spawned.lifeline.close()
        self.sock.close()
        cgroup = self.cgroup
        spawned.pidfd._drop(cgroup.remove if cgroup is not None else None, ending=True)


_GUARD_DONE: Final = Exit(code=0, signal=None)


def _reap_quietly(pidfd: Pidfd) -> Exit | None:
    if pidfd.closed:
        return None
    try:
        # The guard exits right after its report: usually it is reapable already, and a
        # non-blocking reap saves setting up a poll.
        exit_ = pidfd.poll() or pidfd.wait()
    except (ChildProcessError, ValueError):
        exit_ = None
    pidfd.close()
    return exit_
