"""Start one guard: its command line, its socket, its cgroup, the clone; nothing left on error.

The one rule this module owns: everything a guard is started with is built here, once, from
the checked spec and the resolved mode (``Guard.launch`` then speaks its protocol); on any
error, or an interrupt, the socket pair is closed and the tree's cgroup directory discarded
before the error propagates.
"""

from __future__ import annotations

# socket.py's enum set-up costs ~2 ms of every start; its C module has all we use.
import _socket as socket
import errno
import os
from typing import TYPE_CHECKING

from tether._kernel import features
from tether._kernel.cgroup import CgroupTree
from tether._kernel.controllers import LimitedTree
from tether._kernel.fds import socketpair_above_stdio
from tether._kernel.spawn import Spawned, clone_guard, clone_spec
from tether._kernel.spec import SpawnSpec
from tether._tree.modes import Mode, guard_mode_options, guard_path, raise_namespace_limit
from tether._tree.tree_cgroups import tree_cgroup

if TYPE_CHECKING:
    from tether._kernel.core import EarlyStart

__all__ = ["start_guard"]


def start_guard(
    spec: SpawnSpec,
    stdio_fds: tuple[int, int, int],
    mode: Mode,
    options: list[str],
    cgroup_root_arg: str | os.PathLike[str] | None,
    *,
    process_group: bool,
    wait_start: bool = False,
    held_mask: int | None = None,
) -> tuple[Spawned, socket.socket, CgroupTree | None, bool]:
    """Clone a guard over ``spec``'s program (``stdio_fds``: the program's fds 0-2, passed
    on), with the mode's options and ``options``; the guard leads a process group of its own
    unless ``process_group`` is False (tether run's job control: it stays in our job);
    ``wait_start``: return once the program has started (see ``clone_guard``; ``held_mask``:
    the caller's own mask, if it holds signals already, so that they still end that wait).
    Returns the guard, our end of its control socket, the tree's cgroup (if any), and
    whether the program is known to have exec'd (the overlapped start's exec pipe said so:
    its start is its announcement, queued on the socket; the guard's report comes later)."""
    keep = spec.pass_fds
    guard = guard_path()
    extra_flags, guard_opts = guard_mode_options(mode)
    guard_opts += options

    cgroup: CgroupTree | None = None
    parent_sock: socket.socket | None = None
    guard_sock: socket.socket | None = None
    exec_seen = False
    try:
        cgroup, cgroup_opts, cgroup_fds = tree_cgroup(spec, mode, cgroup_root_arg)
        guard_args = [o.encode() for o in guard_opts + cgroup_opts]
        if keep:
            guard_args += [b"--keep", ",".join(map(str, keep)).encode()]
        if spec.preexec_fn is None:  # one C call (launch.c): socketpair, lifeline, clone
            early = _early(spec, mode, options, cgroup)
            while True:
                try:
                    spawned, parent_sock, exec_seen = clone_guard(
                        spec, stdio_fds, os.fsencode(guard), tuple(guard_args),
                        tuple(sorted(set(keep) | cgroup_fds)), extra_flags=extra_flags,
                        process_group=process_group, wait_start=wait_start,
                        held_mask=held_mask, early=early)
                    break
                except OSError as exc:
                    # The overlapped start's four fds more (its exec pipe, the program's
                    # lifeline) may not fit under RLIMIT_NOFILE where the guard's own start
                    # does: a failed launch left nothing, so start that way instead.
                    if early is None or exc.errno != errno.EMFILE:
                        raise
                    early = None
        else:  # preexec_fn's fork of this process (_kernel/preexec.py) clones in Python
            # Both above 2: --control must not be one of the program's stdio fds.
            parent_sock, guard_sock = socketpair_above_stdio(socket.SOCK_SEQPACKET)
            guard_argv = (os.fsencode(guard), b"--control", str(guard_sock.fileno()).encode(),
                          *guard_args, *spec.attr_options(), b"--", spec.executable, *spec.argv)
            guard_spec = spec.replace(
                argv=guard_argv, executable=os.fsencode(guard), attrs=spec.guard_attrs(),
                pass_fds=tuple(sorted(set(keep) | {guard_sock.fileno()} | cgroup_fds)),
                process_group=process_group)
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
    if guard_sock is not None:
        guard_sock.close()
    assert parent_sock is not None
    if cgroup is not None:
        cgroup.hand_over()  # the guard holds its lock now (ARCHITECTURE.md: fd budget)
    return spawned, parent_sock, cgroup, exec_seen


def _early(spec: SpawnSpec, mode: Mode, options: list[str],
           cgroup: CgroupTree | None) -> EarlyStart | None:
    """The overlapped start's part of ``clone_guard`` (the program cloned by the guard's clone
    child before the guard's exec, ``launch_early.c``; the clone child joins a limited tree's
    cgroups first; for a program in a cpu group of its own we poll for its exec first), or
    None for the guard to start the program itself: where it must act before the program
    exists (the terminal's foreground group), or with ``close_fds=False`` (every inheritable
    fd of the guard's clone child would reach the program)."""
    if ("--foreground" in options
            or (spec.attrs is not None and spec.attrs.inherit_fds)
            or not features.overlapped_start()):
        return None
    return (None if spec.attrs is None else spec.attrs.core_tuple(), spec.pass_fds,
            "--no-program-lifeline" not in options,
            cgroup.fd if mode == "cgroup" and cgroup is not None else -1,
            tuple(cgroup.join) if isinstance(cgroup, LimitedTree) else (),
            isinstance(cgroup, LimitedTree) and cgroup.cpu_group)
