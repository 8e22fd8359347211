"""TreeHandle and start_tree: what Child and AsyncChild share, and where every tree starts.

The one rule this module owns: a tree is started only by :func:`start_tree`, from a checked
:class:`~tether._kernel.spec.SpawnSpec` and a resolved mode, and a handle reaches its tree
only through the :class:`~tether._tree.seam.Tree` seam. ``returncode`` is exactly what
subprocess would report for the program.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

from tether._kernel import core
from tether._kernel.exit import EndedBy, Exit
from tether._kernel.limits import Usage
from tether._kernel.pidfd import Pidfd
from tether._kernel.spawn import clone_spec
from tether._kernel.spec import SpawnSpec
from tether._tree.direct import DirectTree
from tether._tree.guarded import Guard
from tether._tree.modes import Mode
from tether._tree.seam import Tree
from tether._tree.tree_cgroups import require_tree_cgroup

__all__ = ["ForkedHandleError", "TreeHandle", "describe", "start_tree"]


class ForkedHandleError(ChildProcessError):
    """A handle used in a child made by ``os.fork()``: the tree is the parent's, and the
    inherited copy is inert (it never signals, waits for or ends that tree)."""


def start_tree(
    spec: SpawnSpec,
    mode: Mode | None,
    *,
    wait_tree: bool = False,
    cgroup_root: Any = None,
    foreground: bool = False,
    job_control: bool = False,
    await_start: bool = True,
    program_lifeline: bool = True,
) -> tuple[Tree, list[int | None]]:
    """Start ``spec`` contained by ``mode`` (None: no guard). Returns the tree and the
    parent's ends of its PIPEs (None where a stream is not a PIPE); on error nothing is left
    open or running. ``program_lifeline`` False: a guarded program gets no lifeline fd of its
    own (the drop-in Popen's fds are exactly the caller's); without a guard the lifeline is
    the containment, so it stays."""
    require_tree_cgroup(spec, mode)
    plan = spec.open_stdio()
    try:
        tree: Tree
        if mode is None:
            tree = DirectTree(clone_spec(spec, plan.triple))
        else:
            tree = Guard.launch(
                spec, plan.triple, mode=mode, wait_tree=wait_tree, foreground=foreground,
                job_control=job_control, cgroup_root_arg=cgroup_root, await_start=await_start,
                program_lifeline=program_lifeline,
            )
    except BaseException:
        plan.close_parent_ends()
        raise
    finally:
        plan.close_child_ends()
    return tree, plan.parent_ends


class TreeHandle:
    """A program and its tree, Popen-style: ``args``, ``pid``, ``pidfd``, ``returncode``,
    ``exit``, ``contain``, ``poll()`` and the signals."""

    __slots__ = ("_creator", "_ended_by", "_generation", "_own_tree", "args", "contain",
                 "returncode")

    def __init__(self, args: Any, tree: Tree, contain: Mode | None) -> None:
        self.args = args
        self._own_tree = tree
        self.contain = contain
        self.returncode: int | None = None
        #: Why tether ended the tree, if it asked for the end before the end was known.
        self._ended_by: EndedBy | None = None
        # A fork copies this object but not the tree: the copy must never act on the tree
        # through the inherited control socket or pidfds (as LifelineWriter does).
        self._generation = core.fork_generation()
        self._creator = os.getpid()

    @property
    def forked(self) -> bool:
        """True in a child made by ``os.fork()`` after this handle: there it is inert."""
        return self._generation != core.fork_generation()

    @property
    def _tree(self) -> Tree:
        if self._generation != core.fork_generation():  # (forked, inline: every exit's path)
            raise ForkedHandleError(
                errno.ECHILD,
                f"this handle on {self.args!r} was made by process {self._creator}; in the "
                f"forked process {os.getpid()} it is inert (the tree is the parent's)",
            )
        return self._own_tree

    @property
    def pid(self) -> int:
        """The program's PID (in this process's PID namespace), for logs and humans."""
        return self._tree.program_pid

    @property
    def pidfd(self) -> Pidfd:
        """The program's pidfd (race-free; a guard hands it over with SCM_RIGHTS)."""
        return self._tree.program

    @property
    def exit(self) -> Exit | None:
        """How the program ended, once the tree has ended; None before. ``ended_by`` says
        whether tether ended it (a timeout, kill()/terminate(), the end of ``with``)."""
        self.poll()
        exit_ = self._tree.outcome()
        if exit_ is not None and self._ended_by is not None:
            return exit_._ended(self._ended_by)
        return exit_

    def _end_by(self, who: EndedBy) -> bool:
        """Note that tether is ending the tree (the first reason sticks); False if it has
        ended already."""
        try:
            if self.poll() is not None:
                return False
        except ForkedHandleError:
            raise  # inert in a forked child: say so, never pass for an ended tree
        except ChildProcessError:
            return False  # the guard died: the tree was ended parent-side already
        if self._ended_by is None:
            self._ended_by = who
        return True

    @property
    def stops(self) -> tuple[int, ...]:
        """The signals that stopped the program, in order, for `tether run`'s job control (a
        tree started with ``job_control``; empty otherwise). Read by :meth:`poll`."""
        return tuple(self._tree.stops)

    def _settle(self, tree: Tree | None = None) -> int | None:
        exit_ = (self._tree if tree is None else tree).outcome()
        if exit_ is not None and self.returncode is None:
            self.returncode = exit_.returncode
        return self.returncode

    def poll(self) -> int | None:
        """The returncode if the tree has ended, else None (never blocks)."""
        if self.returncode is not None:
            return self.returncode
        tree = self._tree
        tree.pump()
        return self._settle(tree)

    def usage(self) -> Usage:
        """What the whole tree has used (CPU, peak memory, OOM kills, peak process count):
        live while it runs, final once it has ended, from the tree's own cgroups (spawned
        with ``limits=``; ``tether.Limits()`` accounts without limiting). Without them, a
        guarded tree's final usage is the guard's ``RUSAGE_CHILDREN`` (``source="rusage"``:
        the CPU of every descendant reaped, the peak RSS of the largest single process), and
        a running one's is Unsupported, as is any usage of ``contain=None``."""
        return self._tree.usage()

    def fileno(self) -> int:
        """An fd that turns readable when the tree has news: poll() it then (for select,
        poll or an event loop of your own)."""
        return self._tree.fileno()

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the program (only), through its pidfd. Like Popen, a no-op once the
        tree has ended."""
        if self.poll() is not None:
            return
        try:
            self.pidfd.send_signal(sig)
        except ProcessLookupError:
            pass

    def signal_tree(self, sig: int) -> None:
        """Send ``sig`` to every process of the tree; a no-op once it has ended."""
        if self.poll() is None:
            self._tree.signal_tree(sig)

    def terminate(self) -> None:
        """SIGTERM to every process of the tree (``exit.ended_by`` is then "tether")."""
        if self._end_by("tether"):
            self._tree.signal_tree(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to every process of the tree (``exit.ended_by`` is then "tether")."""
        if self._end_by("tether"):
            self._tree.kill_tree()


def describe(handle: TreeHandle, *, poll: bool = False) -> str:
    """The state part of a handle's repr: starting, failed to start, running or its Exit.
    From what is known already; with ``poll``, after taking in what the tree has reported
    (never waiting for a start). A repr never raises."""
    if handle.forked:
        return f"contain={handle.contain!r} inherited across fork() (inert)"
    tree = handle._tree
    if not tree.started:
        return f"contain={handle.contain!r} starting"
    if tree.start_error is not None:
        return f"contain={handle.contain!r} failed to start"
    try:
        if poll:
            handle.poll()
        exit_ = tree.outcome() if handle.returncode is not None else None
    except (ChildProcessError, ValueError):  # the guard died; a pidfd the user closed
        exit_ = None
    state = "running" if exit_ is None else str(exit_)
    return f"pid={handle.pid} contain={handle.contain!r} {state}"
