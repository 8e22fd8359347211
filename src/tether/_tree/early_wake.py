"""The blocking end wait's early wake: the exit notice's two hops, overlapped.

The one rule this module owns: a blocking wait never spins while the program runs, and
never for long. The guard's pidfd is what says the tree has ended (ARCHITECTURE.md, "The
exit notice"), but a waiter that sleeps on it alone pays two wakeups in a row: the guard's
at the program's exit, then ours at the guard's. The program's pidfd turns readable at that
same exit (never before: a stop does not), so a waiter that also sleeps on it is woken in
parallel with the guard. The guard has then ended, reaped and reported within a few hundred
microseconds: polling for its report and its exit for that while, without sleeping, saves
our second wakeup (a halted vCPU's, and a cold CPU's). Bounded: :data:`SPIN_NS` once per
tree, then back to sleep (a ``wait_tree`` guard waits for descendants that may run on for
hours), and a deadline is never overrun. The sleep and the spin themselves are C
(``core.await_end``, ``_kernel/end.c``): this module holds their budget and the borrows.
"""

from __future__ import annotations

from typing import Final

from tether._kernel import core
from tether._kernel.deadline import Deadline
from tether._kernel.pidfd import Pidfd

__all__ = ["SPIN_NS", "lend_program", "spin_until_readable"]

#: How long a waiter woken by the program's exit polls for the guard's report and exit
#: without sleeping. The guard's hop (wake, kill, reap, report, exit) took 100-250 µs on
#: the 2-vCPU VM; a guard that takes longer (a tree that ends slowly, ``wait_tree``) is
#: then waited for asleep.
SPIN_NS: Final = 400_000


def lend_program(program: Pidfd | None) -> int:
    """Borrow the program's pidfd, to poll it (for its exit) beside the guard's
    (``core.await_end``, which does the spin): its fd, or -1 if there is none (closed by its
    user, or not to be watched)."""
    if program is None:
        return -1
    try:
        return program._borrow()
    except ValueError:
        return -1  # closed by its user: wait on the guard's pidfd alone


def spin_until_readable(fd: int, deadline: Deadline, budget_ns: int = SPIN_NS) -> bool:
    """Poll ``fd`` without sleeping, for at most ``budget_ns`` and never past ``deadline``:
    True once readable. In C, with the GIL released (``core.spin_readable``: the spin
    ``core.await_end`` and ``core.reap_exiting`` use, sched_yield between polls)."""
    return core.spin_readable(fd, deadline.spin_ns(budget_ns))
