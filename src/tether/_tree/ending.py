"""What the parent does itself when a guard cannot: end the program's group, reap the guard.

The one rule this module owns: the parent reaches the program's group only through the
leader's pidfd (``PIDFD_SIGNAL_PROCESS_GROUP``), by number only where DESIGN.md names the
fallback, and never through a pid it has not proven.
"""

from __future__ import annotations

import os
import signal

from tether._kernel.deadline import Deadline
from tether._kernel.errors import Unsupported
from tether._kernel.exit import Exit
from tether._kernel.pidfd import Pidfd
from tether._tree.early_wake import spin_until_readable

__all__ = ["kill_group", "reap_quietly"]


def kill_group(program: Pidfd, pgid: int) -> None:
    """SIGKILL the process group that ``program`` leads: the leader's pidfd is a race-free
    handle on the group, even once the leader is reaped (6.9+)."""
    try:
        program.send_signal(signal.SIGKILL, process_group=True)
    except ProcessLookupError:
        pass
    except Unsupported:
        # Before Linux 6.9: killpg by number, only while the leader's pidfd proves the leader
        # (whose number is the group's) still exists, so the number cannot have been handed
        # to anyone else (DESIGN.md's named fallback).
        try:
            program.send_signal(0)
            os.killpg(pgid, signal.SIGKILL)  # noqa: TET201  proven above
        except ProcessLookupError:
            pass


def reap_quietly(pidfd: Pidfd, *, exiting: bool = False) -> Exit | None:
    """Reap our child ``pidfd`` (blocking until it exits); ``exiting``: it is on its way
    out (a guard that has sent its last report), so a short spin beats a sleep."""
    if pidfd.closed:
        return None
    try:
        # The guard exits right after its report: usually it is reapable already, and a
        # non-blocking reap saves setting up a poll.
        exit_ = pidfd.poll()
        if exit_ is None and exiting and spin_until_readable(pidfd.fileno(), Deadline(None)):
            exit_ = pidfd.poll()
        exit_ = exit_ or pidfd.wait()
    except (ChildProcessError, ValueError):
        exit_ = None
    pidfd.close()
    return exit_
