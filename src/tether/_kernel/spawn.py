"""spawn_lifelined: the canonical primitive, and the one clone site every spawn goes through.

The one rule this module owns: a process is created only by :func:`clone_spec`, from a
checked :class:`~tether._kernel.spec.SpawnSpec`, with its pidfd from the clone itself and a
lifeline whose write end only this process holds. On every error path each fd this module
opened is closed again, and a child that failed before its exec is already reaped.
"""

from __future__ import annotations

# socket.py's enum set-up costs ~2 ms of every start; its C module has all we use.
import _socket as socket
import errno
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, NamedTuple

from tether._kernel import core, features, reaper
from tether._kernel.errors import Unsupported
from tether._kernel.lifeline import LifelineWriter, new_lifeline
from tether._kernel.pidfd import Pidfd
from tether._kernel.spec import FileSpec, SpawnSpec, StrOrBytesPath

__all__ = ["Spawned", "clone_guard", "clone_spec", "clone_with_stdio", "spawn_lifelined"]

# Stage number -> what the child (clone.h) or the guard (guard_proto.h) was doing, from C.
_STAGES: Final = core.STAGES
STAGE_CHDIR: Final = core.STAGE_CHDIR
STAGE_EXEC: Final = core.STAGE_EXEC


class Spawned(NamedTuple):
    """A lifelined child: its pid (for logs), its :class:`Pidfd`, and the parent's
    :class:`LifelineWriter`. Closing the writer (or the death of this process) is the child's
    signal that its parent is gone."""

    pid: int
    pidfd: Pidfd
    lifeline: LifelineWriter


def child_error(stage: int, err: int, argv0: object, cwd: bytes | None) -> OSError:
    """The OSError subclass subprocess would raise for a failure in the child."""
    if stage == STAGE_CHDIR and cwd is not None:
        filename: object = os.fsdecode(cwd)
    elif stage == STAGE_EXEC:
        filename = argv0 if isinstance(argv0, str) else os.fsdecode(argv0)  # type: ignore[arg-type]
    else:
        filename = None
    exc = OSError(err, os.strerror(err), filename) if filename is not None else OSError(
        err, os.strerror(err)
    )
    exc.add_note(f"tether: the child failed while {_STAGES.get(stage, f'stage {stage}')}")
    return exc


def clone_method() -> int:
    """The cached clone method, or Unsupported if this kernel/sandbox has none."""
    method = features.clone_method()
    if method == core.CLONE_NONE:
        raise Unsupported(errno.ENOSYS, features.clone_unsupported_reason())
    return method


# -- the primitive --------------------------------------------------------------------------------


def spawn_lifelined(
    argv: Sequence[StrOrBytesPath],
    *,
    env: Mapping[str, str] | Mapping[bytes, bytes] | None = None,
    cwd: StrOrBytesPath | None = None,
    stdin: FileSpec = None,
    stdout: FileSpec = None,
    stderr: FileSpec = None,
    pass_fds: Iterable[int] = (),
    process_group: bool = True,
) -> Spawned:
    """Start ``argv`` with a pidfd and a lifeline, in one clone.

    The child gets the lifeline's read end at the lowest fd >= 3 not in ``pass_fds``, named in
    ``TETHER_LIFELINE_FD``; fds 0-2 as given (None inherits, DEVNULL, an fd or a file object;
    ``stderr=subprocess.STDOUT`` too); ``pass_fds`` at their numbers; no other fd. With
    ``process_group`` (the default) it leads a new process group. Its signal mask is empty and
    its handlers are at their defaults (SIGPIPE and SIGXFSZ too, as subprocess does).

    Guarantee: the pidfd comes from ``clone3(CLONE_PIDFD)`` (or ``clone(CLONE_PIDFD)`` where
    seccomp blocks clone3) at the moment of creation, so it can never name another process;
    the lifeline's write end lives only in this process, so the child sees EOF when this
    process dies, however it dies.

    Errors, all raised before any process exists or with the failed child already reaped:
    TypeError/ValueError for malformed input, FileNotFoundError/PermissionError (``filename``
    set) for a program that cannot be run, FileNotFoundError naming ``cwd`` for a missing
    directory, OSError(EBADF) for a closed fd, :class:`tether.Unsupported` if the kernel has no
    pidfd-returning clone.
    """
    spec = SpawnSpec.build(
        argv, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
        pass_fds=pass_fds, process_group=process_group,
    )
    return clone_with_stdio(spec)


def clone_with_stdio(spec: SpawnSpec, *, extra_flags: int = 0, cgroup_fd: int = -1) -> Spawned:
    """:func:`clone_spec` with ``spec``'s own stdio opened for it (and closed after)."""
    plan = spec.open_stdio()
    try:
        return clone_spec(spec, plan.triple, extra_flags=extra_flags, cgroup_fd=cgroup_fd)
    finally:
        plan.close_child_ends()


def _fork_exec(
    spec: SpawnSpec, stdio_fds: tuple[int, int, int], extra_flags: int, cgroup_fd: int
) -> Spawned:
    """preexec_fn's slow path (a fork of this process): see tether._kernel.preexec."""
    if extra_flags or cgroup_fd >= 0:
        raise Unsupported(errno.ENOSYS, "preexec_fn runs in a fork() of this process, which "
                          "cannot start a new PID namespace or enter a cgroup on its way")
    assert spec.preexec_fn is not None
    from tether._kernel.preexec import fork_exec  # the fork path: no cost to other starts

    pid, pidfd, writer, stage, err = fork_exec(spec, stdio_fds, spec.preexec_fn)
    if pidfd is not None and writer is not None:
        return Spawned(pid, pidfd, writer)
    if stage == core.STAGE_PREEXEC:
        import subprocess  # only here: the drop-in's error, not paid for by tether run's start

        raise subprocess.SubprocessError("Exception occurred in preexec_fn.")
    if stage == 0:
        raise ChildProcessError(errno.ECHILD, "the preexec_fn child died before its exec")
    raise child_error(stage, err, spec.args[0], spec.cwd)


def clone_spec(
    spec: SpawnSpec,
    stdio_fds: tuple[int, int, int],
    *,
    extra_flags: int = 0,
    cgroup_fd: int = -1,
) -> Spawned:
    """Clone ``spec``'s program with its lifeline: the one clone site of the library.

    ``stdio_fds`` are the child's fds 0-2 as fds of ours (-1: inherit; see
    :meth:`SpawnSpec.open_stdio`); ``extra_flags`` adds namespace flags (clone3 only) and
    ``cgroup_fd`` starts the child in that cgroup (CLONE_INTO_CGROUP, clone3 only)."""
    # Every spawn first reaps the children whose handles were dropped (no zombie, no fd left
    # behind, and no thread or SIGCHLD handler to do it).
    reaper.reap_dropped()
    method = clone_method()
    if method != core.CLONE_CLONE3 and (extra_flags or cgroup_fd >= 0):
        raise Unsupported(
            errno.ENOSYS,
            "new namespaces and CLONE_INTO_CGROUP need clone3 (Linux 5.3/5.7), and clone3 is "
            f"not available here ({features.CLONE_METHOD_NAMES[method]} is used)",
        )
    if spec.preexec_fn is not None:
        return _fork_exec(spec, stdio_fds, extra_flags, cgroup_fd)
    lifeline_dst = spec.lifeline_fd
    read_fd, writer = new_lifeline()
    # As in clone_guard: no signal handler may run while the child's pidfd is a plain int.
    held = core.hold_signals()
    try:
        pid, pidfd, stage, err, _ = core.spawn(
            path=spec.executable,
            argv=list(spec.argv),
            env=spec.env,  # (the envp made in C, with the lifeline's variable)
            cwd=spec.cwd,
            stdin=stdio_fds[0],
            stdout=stdio_fds[1],
            stderr=stdio_fds[2],
            keep_fds=spec.pass_fds,
            lifeline_src=read_fd,
            lifeline_dst=lifeline_dst,
            new_pgroup=spec.process_group,
            pdeathsig=0,
            extra_flags=extra_flags,
            cgroup_fd=cgroup_fd,
            method=method,
            attrs=None if spec.attrs is None else spec.attrs.core_tuple(),
        )
        if pidfd >= 0:
            owned = Pidfd._create(pidfd, pid, reaper=True, cmd=list(spec.args))
    except BaseException:
        writer.close()
        raise
    finally:
        core.release_signals(held)
        os.close(read_fd)
    if pidfd < 0:
        writer.close()
        raise child_error(stage, err, spec.args[0], spec.cwd)
    return Spawned(pid, owned, writer)


def clone_guard(
    spec: SpawnSpec,
    stdio_fds: tuple[int, int, int],
    guard: bytes,
    options: tuple[bytes, ...],
    keep_fds: tuple[int, ...],
    *,
    extra_flags: int = 0,
    process_group: bool = True,
    wait_start: bool = False,
    held_mask: int | None = None,
    early: core.EarlyStart | None = None,
) -> tuple[Spawned, socket.socket, bool]:
    """Clone a guard (the executable ``guard``) over ``spec``'s program in one C call
    (``launch.c``): the control socketpair, the lifeline and the clone. The guard's argv is
    ``guard --control N *options *spec's-attr-options -- program *argv``; it keeps
    ``keep_fds`` (sorted) and its control fd, and takes ``spec``'s env, cwd and attributes
    for its own clone (``guard_attrs``). Returns the guard and our end of its control socket
    (close-on-exec); the guard leads a new process group if ``process_group``. With
    ``wait_start`` it returns once the guard has started the program (or ended, or a signal
    came): the caller's next read of the socket finds the start reported, and this thread
    slept through the guard's exec instead of competing with it for the CPU. A caller that
    holds signals already (``core.hold_signals``) passes the mask it got as ``held_mask``:
    the signals that mask lets in still end the wait, and all stay held until the caller
    releases them (it must own what this returns first). ``early``: the overlapped start
    (``launch_early.c``: the program cloned by the guard's clone child before the guard's
    exec), as ``guard_launch`` builds it: (the program's attributes, its pass_fds, whether it
    has a lifeline, its cgroup fd or -1, the cgroups to join); it returns once both have
    exec'd (not waiting for the guard's report), and the third value says whether the
    program's exec pipe said it exec'd (its start is then known from its announcement).
    Errors as :func:`clone_spec`'s, with every fd made here closed."""
    reaper.reap_dropped()
    method = clone_method()
    if method != core.CLONE_CLONE3 and extra_flags:
        raise Unsupported(
            errno.ENOSYS,
            "new namespaces need clone3 (Linux 5.3), and clone3 is not available here "
            f"({features.CLONE_METHOD_NAMES[method]} is used)",
        )
    attrs = spec.guard_attrs()
    # A Python signal handler (Ctrl-C's KeyboardInterrupt) runs between bytecodes: just after
    # the C call returns, the guard's pidfd, lifeline and socket are plain ints, and an
    # exception there would lose them with the tree running. So this thread takes no signal
    # until they are owned by objects; one that comes meanwhile is handled right after. A
    # caller that holds them already (held_mask) keeps holding them past our return.
    held = core.hold_signals() if held_mask is None else None
    pidfd = -1
    try:
        pid, pidfd, sock_fd, write_fd, stage, err, exec_seen = core.launch_guard(
            path=guard, head=options, tail=(*spec.attr_options(), b"--", spec.executable,
                                            *spec.argv),
            env=spec.env, cwd=spec.cwd, stdin=stdio_fds[0], stdout=stdio_fds[1],
            stderr=stdio_fds[2], keep_fds=keep_fds, new_pgroup=process_group,
            extra_flags=extra_flags, method=method,
            attrs=None if attrs is None else attrs.core_tuple(),
            wait_mask=(held if held_mask is None else held_mask)
            if wait_start or early is not None else None,
            early=early, wait_start=wait_start)
        if pidfd >= 0:
            spawned = Spawned(pid, Pidfd._create(pidfd, pid, reaper=True, cmd=list(spec.args)),
                              LifelineWriter._create(write_fd))
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, sock_fd)
    except BaseException:
        if held is not None:
            core.release_signals(held)
        raise
    try:
        if held is not None:
            core.release_signals(held)
    except BaseException:
        if pidfd >= 0:
            # A signal held off during the launch was raised (Ctrl-C): the caller never gets
            # the guard. Cut its lifeline and wait until it has ended the tree and exited,
            # so the caller's cleanup finds the tree's cgroups empty (it removes them).
            spawned.lifeline.close()
            sock.close()
            spawned.pidfd.wait()
        raise
    if pidfd < 0:
        raise child_error(stage, err, spec.args[0], spec.cwd)
    return spawned, sock, exec_seen
