"""Tree: the one seam between a handle (Child, AsyncChild, run, the CLI) and a process tree.

The one rule this module owns: a handle speaks to its tree only through :class:`Tree`. Two
backends implement it: ``guarded.Guard`` (a guard process holds the tree: group, cgroup or
pidns containment) and ``direct.DirectTree`` (``contain=None``: the program is our own
lifelined child). A new containment mode is a new backend, or a new option of the guard;
handles never ask which backend they hold.
"""

from __future__ import annotations

from typing import Protocol

from tether._kernel.exit import Exit
from tether._kernel.limits import Usage
from tether._kernel.pidfd import Pidfd

__all__ = ["Tree"]


class Tree(Protocol):
    """One contained process tree, as the process that owns it sees it.

    "Ended" means the program has exited and the tree's policy is done with the rest of it
    (killed, or waited for); after that no process of the tree is left (within what the
    containment mode reaches)."""

    @property
    def stops(self) -> list[int]:
        """The signals that stopped the program (Ctrl-Z's SIGTSTP, SIGTTIN, SIGSTOP), in
        order, as far as the tree reports them: only a guard started with ``job_control``."""
        ...

    @property
    def program(self) -> Pidfd:
        """The program's pidfd (waits for the start report if it has not been read yet)."""
        ...

    @property
    def program_pid(self) -> int:
        """The program's PID in this process's namespace, for logs and humans."""
        ...

    @property
    def started(self) -> bool:
        """True once the program's start (or its failure) is known."""
        ...

    @property
    def start_error(self) -> OSError | None:
        """Why the program could not be started (FileNotFoundError, ...), once known."""
        ...

    def await_start(self) -> None:
        """Block until the program has exec'd; raise :attr:`start_error` if it could not."""
        ...

    def check_start(self) -> None:
        """Raise the start error if the start is known to have failed; never blocks."""
        ...

    def fileno(self) -> int:
        """An fd that turns readable when :meth:`pump` has news (a report, or the end)."""
        ...

    def watch_fd(self) -> int:
        """An fd lent to the caller until :meth:`end_watch` (-1 if the tree has ended
        already), that turns readable only once the tree has ended and :meth:`pump` can
        collect the end without blocking (one wakeup per tree: what an event loop watches).
        Borrowed under the tree's lock: another thread that ends the tree meanwhile leaves
        the number open until the watcher is done, so it cannot be reused under it."""
        ...

    def end_watch(self) -> None:
        """The caller of :meth:`watch_fd` no longer watches the fd (it has unregistered it)."""
        ...

    def pump(self, *, stop_at_start: bool = False) -> bool:
        """Take in whatever the tree has reported, without blocking; True once it has ended.
        With ``stop_at_start``, read no further than the start report."""
        ...

    def wait(self, timeout: float | None) -> bool:
        """Block until the tree has ended (True) or ``timeout`` seconds passed (False)."""
        ...

    def outcome(self) -> Exit | None:
        """How the program ended once the tree has ended, None before. Raises
        ChildProcessError if the guard died before it could report (the tree was ended)."""
        ...

    def usage(self) -> Usage:
        """The tree's resource usage (live, or final once ended); without cgroups of its own,
        the guard's final RUSAGE_CHILDREN, and Unsupported while it runs."""
        ...

    def signal_tree(self, sig: int) -> None:
        """Send ``sig`` to every process of the tree (a no-op once it has ended)."""
        ...

    def kill_tree(self) -> None:
        """SIGKILL every process of the tree now."""
        ...

    def abandon(self) -> None:
        """End the tree, if it has not ended, and wait until it has (``with`` exit, drop)."""
        ...

    def detach(self) -> None:
        """Let the tree run on, tied to this process by its lifeline alone (a dropped
        drop-in Process): the handles it does not need are closed now, and the one child of
        ours (guard, or program) is reaped, its lifeline closed, once it has exited (at the
        next spawn or at interpreter exit). Nothing of the tree may be used afterwards."""
        ...
