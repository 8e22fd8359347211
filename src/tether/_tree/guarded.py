"""The parent's side of the guard: launch it, speak its protocol, clean up after it.

The one rule this module owns: the guard, not the parent, is the tree's lifeline reader, and
everything the parent learns about the program comes from the guard's messages or from the
program's pidfd (which the guard hands over with SCM_RIGHTS). The parent never turns a PID
into a handle. Wire format: ``_kernel/guard_proto.h``, whose constants the C extension
exports (``core.GUARD_MSG_*``): C holds the only copy.
"""

from __future__ import annotations

# socket.py's enum set-up costs ~2 ms of every start; its C module has all we use.
import _socket as socket
import errno
import os
import select
import threading
from typing import Final

from tether._kernel import core
from tether._kernel.cgroup import CgroupTree
from tether._kernel.deadline import Deadline, check_timeout
from tether._kernel.exit import Exit
from tether._kernel.limits import Usage
from tether._kernel.pidfd import Pidfd, pid_in_our_namespace
from tether._kernel.spawn import Spawned, child_error
from tether._kernel.spec import SpawnSpec
from tether._tree import guard_wire as wire
from tether._tree.ending import kill_group, reap_quietly
from tether._tree.guard_end import GuardEnd
from tether._tree.guard_launch import start_guard
from tether._tree.modes import Mode
from tether._tree.tree_cgroups import reported_exit, tree_usage

__all__ = ["Guard"]

# -- the guard ------------------------------------------------------------------------------------


class Guard(GuardEnd):
    """One running guard and the tree under it, as the parent sees them.

    The guard's first report (MSG_STARTED with the program's pidfd, or MSG_FAILED) is read
    either at once (``launch(await_start=True)``: :func:`tether.spawn` and run()), or later
    with the rest by :meth:`pump` (``await_start=False``: tether.aio, which awaits it in the
    loop's selector, or in aio.run not at all; a start failure surfaces as ``start_error``,
    raised by whoever waits for the tree)."""

    __slots__ = (  # (and GuardEnd's)
        "_announced", "_exit", "_generation", "_job_control", "_launching", "_lock",
        "_program", "_program_pid", "_rusage", "cgroup", "dead", "mode", "sock", "spawned",
        "spec", "start_error", "stops",
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
        #: The program's pidfd and pid as it sent them before its exec (MSG_PROGRAM); ``_program``
        #: at its start. A guard that dies before then: its group is ended through it.
        self._announced: tuple[int, int] | None = None
        self._exit: Exit | None = None
        #: How the guard itself ended, once it has been reaped.
        self.guard_exit: Exit | None = None
        self.start_error: OSError | None = None
        #: The signals that stopped the program, in order (reported with --job-control only).
        self.stops: list[int] = []
        #: The guard's RUSAGE_CHILDREN (user ms, system ms, maxrss KiB) from MSG_EXITED.
        self._rusage: tuple[int, int, int] | None = None
        #: True if the guard died without reporting (the program's status is unknown).
        self.dead = False
        self._lock = threading.RLock()  # one reader of the reports (Child is thread-safe)
        self._borrowers = 0  # blocking waiters that may poll the control socket
        self._generation = core.fork_generation()
        self._launching = True  # until launch() returns: no other thread holds this Guard
        self._job_control = False  # the guard reports the program's stops (MSG_STOPPED)
        self._woke_early = False  # a blocking end wait has used its early wake (early_wake)
        self._next_due = False  # the next tree's directories are to be made (_on_announced)

    @classmethod
    def launch(
        cls,
        spec: SpawnSpec,
        stdio_fds: tuple[int, int, int],
        *,
        mode: Mode,
        wait_tree: bool = False,
        foreground: bool = False,
        job_control: bool = False,
        cgroup_root_arg: str | os.PathLike[str] | None = None,
        await_start: bool = True,
        program_lifeline: bool = True,
    ) -> Guard:
        """Start the guard and ``spec``'s program under it (``stdio_fds``: the program's fds
        0-2, which the guard passes on).

        The spec is checked already; the mode is checked here, before anything is started.
        With ``await_start`` (the default) it returns once the program has exec'd, and a
        program that cannot be run raises here (FileNotFoundError, PermissionError, ...),
        not as a guard exit status. Without, it returns as soon as the guard runs; the start
        is read by :meth:`pump`.
        """
        options = [flag for flag, on in (("--wait-tree", wait_tree), ("--foreground", foreground),
                                         ("--job-control", job_control),
                                         ("--no-program-lifeline", not program_lifeline)) if on]
        # Until this Guard holds the tree no signal handler runs (a Ctrl-C would lose it; one
        # that comes is raised right after, and _discard ends the tree). Not around a
        # preexec_fn's fork: the user's function runs with the caller's signal mask.
        held = core.hold_signals() if spec.preexec_fn is None else None
        guard: Guard | None = None
        waited = await_start and spec.limits is None  # limits: see _on_announced
        try:
            spawned, parent_sock, cgroup, exec_seen = start_guard(
                spec, stdio_fds, mode, options, cgroup_root_arg,
                process_group=not (foreground or job_control), wait_start=waited,
                held_mask=held)
            guard = cls(spec, mode, spawned, parent_sock, cgroup)
            guard._job_control = job_control
            if exec_seen and await_start:  # its exec pipe said so (launch_early.c): the
                try:  # announcement is the start
                    guard._read(wire.DONTWAIT)
                except BlockingIOError:  # (none: killed before it; the guard reports)
                    pass
                if guard._announced is not None and guard._program is None:
                    guard._on_started()  # (signals held; MSG_STARTED read with the end's)
            if held is not None:
                core.release_signals(held)
            if waited:  # reported already (unless a signal ended the wait): no blocking peek
                guard.pump(stop_at_start=True)
            if await_start:
                guard.await_start()
        except BaseException:
            if held is not None:
                core.release_signals(held)  # (a no-op if given back already)
            if guard is not None:
                guard._discard()
            raise
        guard._launching = False
        return guard

    def _discard(self) -> None:
        """Undo a launch whose start was not seen through (an error or an interrupt while
        waiting for it): the guard ends whatever it started, and is reaped."""
        if self.ended or self.pump(stop_at_start=True):  # (an announcement may be queued)
            return
        self.dead = True
        self.guard_exit = self._release()
        self._end_announced()
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
        if it could not be run. In launch(), where no other thread can hold this Guard yet,
        by blocking in the read itself: no poll, no EAGAIN round (unless a process-wide
        socket timeout is set)."""
        if self._launching and self.sock.gettimeout() is None:
            with self._lock:
                while not self.started and not self._read(0):
                    pass
        else:
            self._block_until(Deadline(None), start=True)
        self.check_start()

    def _block_until(self, deadline: Deadline, *, start: bool) -> bool:
        """Until the start is known (``start``) or the tree has ended: True, or False once
        ``deadline`` has passed. Safe from any thread: the reports are read under the lock,
        and the fds polled meanwhile are borrowed (closed by a thread that reads the end, a
        number could be reused under the poll). The start is awaited on the control socket;
        the end in C (:meth:`_await_end`)."""
        if not start:
            return self._await_end(deadline)
        poller = select.poll()
        with self._lock:
            if self.pump(stop_at_start=True) or self.started:
                return True
            self._borrowers += 1
            poller.register(self.sock.fileno(), select.POLLIN)
        try:
            while True:
                ready = poller.poll(deadline.poll_ms())
                with self._lock:  # (nothing ready: a timeout)
                    if (ready and self.pump(stop_at_start=True)) or self.started:
                        return True
                if deadline.expired:
                    return False
        finally:
            self._end_socket_borrow()

    def check_start(self) -> None:
        """Raise the start error, if the start is known to have failed (never blocks)."""
        if self.start_error is not None:
            raise self.start_error
        if self._program is None:
            raise OSError(  # killed before reporting anything, or a broken install
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

    def _on_announced(self, pid: int, fds: list[int], msg_flags: int) -> None:
        if len(fds) == 1 and self._announced is None:
            self._announced = (fds[0], pid)
            # The tree's cgroups are joined: the next tree's directories may be made now (a
            # mkdir holds the cgroup_mutex every join waits for), by the first wait or pump
            # (GuardEnd._next_tree), while this program runs rather than before spawn returns.
            self._next_due = True
            return
        # The program's pidfd did not reach us (dropped at the open-file limit, MSG_CTRUNC).
        # Without it the tree is not ours to hold: end it.
        for fd in fds:
            os.close(fd)
        self._abort_start(wire.announcement_error(msg_flags))

    def _on_started(self) -> None:
        if self._announced is None:
            self._abort_start(OSError(errno.EPROTO, "the tether guard reported a start that "
                                      "the program did not announce; the tree was ended"))
            return
        fd, pid = self._announced
        self._announced = None
        if pid <= 0:  # pidns, and the announcement came without credentials: ask the pidfd
            pid = pid_in_our_namespace(fd, -1)
        self._program_pid = pid
        self._program = Pidfd._create(fd, pid, reaper=False, cmd=None)

    def _end_announced(self) -> None:
        """A start that was announced but never reported: the guard is gone (killed, or cut
        off), and the program got PDEATHSIG; end its group through the pidfd it sent."""
        if self._announced is None:
            return
        fd, pid = self._announced
        self._announced = None
        program = Pidfd._create(fd, pid, reaper=False, cmd=None)
        if self.mode != "pidns":  # pidns: the namespace died with its init, the guard
            kill_group(program, pid)
        program.close()

    def _on_failed(self, stage: int, err: int) -> None:
        """The program could not be started; the guard has undone its setup and exits 127."""
        if self._announced is not None:  # it failed after announcing itself (chdir, exec)
            os.close(self._announced[0])
            self._announced = None
        self._abort_start(child_error(stage, err, self.spec.args[0], self.spec.cwd))

    def _abort_start(self, error: OSError) -> None:
        """No tree for the caller: cut the lifeline (the guard ends whatever it started),
        reap the guard, drop our handles; ``error`` is what waiting for the tree raises.
        Recorded last: an interrupt during the reap leaves a Guard that is not ended, which
        ``_discard`` (or a later pump, which then finds the guard gone) cleans up."""
        self.guard_exit = self._release()
        self._end_announced()
        self.start_error = error

    def _release(self, *, exiting: bool = False) -> Exit | None:
        """Drop our side of the tree once the guard is done or must be: cut the lifeline
        (a guard still running ends the tree on it), reap the guard, close the control
        socket, and remove the cgroup directory (the guard removed it already unless it was
        killed; remove() then only drops our lock). Returns how the guard ended (``exiting``:
        it has sent its last report, so a short spin beats a sleep, ``reap_quietly``)."""
        self.spawned.lifeline.close()
        guard_exit = reap_quietly(self.spawned.pidfd, exiting=exiting)
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
        """The guard's pidfd, lent until :meth:`end_watch` (-1 once the tree has ended):
        readable once the guard has sent its last report (or died) and exited, so every
        report is in the socket and reaping the guard cannot block. What an event loop
        watches: one wakeup per tree, none for the start report."""
        with self._lock:
            if self.ended:
                return -1
            return self.spawned.pidfd._borrow()

    def end_watch(self) -> None:
        self.spawned.pidfd._end_borrow()

    def pump(self, *, stop_at_start: bool = False) -> bool:
        """Read whatever the guard has said, without blocking; True once the tree has ended.
        With ``stop_at_start``, read no further than the start report."""
        with self._lock:
            if self.ended:
                return True
            while self._program is None:
                try:
                    if self._read(wire.DONTWAIT):
                        return True
                except BlockingIOError:
                    return False
            return False if stop_at_start else self._pump_end()

    def _read(self, flags: int) -> bool:
        """Read and act on the start's reports (they may carry the program's pidfd); True
        once the tree has ended. The later ones are read in C: :meth:`_pump_end`."""
        return wire.read_start_report(self.sock, flags, self._handle)

    def _handle(self, data: bytes, fds: list[int], msg_flags: int, sender: int = 0) -> bool:
        """Act on one message (``sender``: its sender's pid as we see it, where the socket
        passes credentials: pidns mode); True once the tree has ended."""
        if len(data) == 0:
            self._guard_died()
            return True
        (kind, a, b, c, d), tail = wire.unpack(data)
        if kind == wire.MSG_PROGRAM and self._program is None:
            # The program's pid as we see it: in pidns mode only the kernel's translation
            # (SCM_CREDENTIALS) knows it; elsewhere the guard's view is ours.
            self._on_announced(sender if self.mode == "pidns" else a, fds, msg_flags)
            return self.start_error is not None
        for fd in fds:
            os.close(fd)
        if kind == wire.MSG_STARTED and self._program is None:
            self._on_started()
            return self.start_error is not None
        if kind == wire.MSG_FAILED and self._program is None:
            self._on_failed(a, b)
            return True
        if kind == wire.MSG_STOPPED:
            self.stops.append(a)
            return False
        if kind == wire.MSG_EXITED:
            self._on_exited(a, b, c, d, tail)
            return True
        return False

    def _on_exited(self, status: int, user_ms: int, system_ms: int, maxrss_kib: int,
                   usage_tail: tuple[int, ...] | None) -> None:
        self._record_end(status, user_ms, system_ms, maxrss_kib, usage_tail)
        # The guard exits right after its report: reap it (no zombie), drop our handles.
        self.guard_exit = self._release(exiting=True)

    def _record_end(self, status: int, user_ms: int, system_ms: int, maxrss_kib: int,
                    usage_tail: tuple[int, ...] | None) -> None:
        """Record MSG_EXITED (read here, or in C by the blocking wait: guard_end): the
        guard's rusage, the program's exit with its cause, a limited tree's final usage."""
        if user_ms >= 0:  # (-1: the guard's getrusage failed)
            self._rusage = (user_ms, system_ms, maxrss_kib)
        exit_ = Exit._from_wait_status(status)
        if self.cgroup is not None:  # (the cause and final usage: limits only)
            exit_ = reported_exit(exit_, self.cgroup, usage_tail)
        self._exit = exit_
        if self._program is not None:  # (always: the start is reported before the end)
            self._program._set_exit(exit_)

    def usage(self) -> Usage:
        return tree_usage(self.cgroup, self._rusage, ended=self.ended)

    def wait(self, timeout: float | None) -> bool:
        """Block until the tree has ended (True) or the timeout passed (False)."""
        deadline = Deadline.after(check_timeout(timeout))
        # A start not read yet first: only we can act on it (a lost pidfd ends the tree).
        if not self.started and not self._block_until(deadline, start=True):
            return False
        return self._await_end(deadline)

    def outcome(self) -> Exit | None:
        """How the program ended, once the tree has; raises ChildProcessError if the guard
        died before it could report (the tree was ended parent-side)."""
        if self.dead:
            raise ChildProcessError(errno.ECHILD, f"the tether guard of {self.spec.args!r} died "
                                    f"({self.guard_exit}) before reporting the program's "
                                    "status; tether killed the rest of the tree")
        return self._exit

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
            # (in cgroup mode too: a member that moved itself to another cgroup).
            kill_group(program, self._program_pid)
        self._end_announced()  # the guard died between the announcement and the report
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
                self.sock.send(wire.MSG.pack(kind, a, 0, 0, 0))
            except (BrokenPipeError, ConnectionResetError, OSError):
                return False
            return True

    def signal_tree(self, sig: int) -> None:
        """Send ``sig`` to every process of the tree (through the guard; one sent before the
        program has started reaches it once it has)."""
        if not self._send(wire.MSG_SIGNAL_TREE, sig):
            self.pump()

    def kill_tree(self) -> None:
        """SIGKILL the whole tree now; the guard reports the exit when it is gone."""
        if not self._send(wire.MSG_KILL_TREE):
            self.pump()

    def abandon(self) -> None:
        """Cut the lifeline (the guard kills the tree) and wait until it has."""
        with self._lock:
            if self.pump():
                return
            self.kill_tree()
            self.spawned.lifeline.close()
        self.wait(None)

    def detach(self) -> None:
        with self._lock:
            if self.pump():
                return  # ended: _release has closed everything
            lifeline, cgroup = self.spawned.lifeline, self.cgroup

            def on_reaped() -> None:  # _release's work, once the guard has exited
                lifeline.close()
                if cgroup is not None:
                    cgroup.remove()

            # The guard reads a closed control socket as "stop reading", not as our death.
            self.sock.close()
            if self._program is not None:
                self._program.close()  # the guard's child: the guard reaps it
            self.spawned.pidfd._drop(on_reaped)  # and __del__ then leaves the tree alone

    def __del__(self) -> None:
        # Dropped without being waited for (a Child let go of): the lifeline is cut, and the
        # guard, once it has ended the tree, reaped at the next spawn or at exit, its cgroup
        # removed then. In a forked child the tree is the parent's: leave it alone.
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
