"""What the parent does itself when a guard cannot: end the program's group, reap the guard.

The one rule this module owns: the parent reaches the program's group only through the
leader's pidfd (``PIDFD_SIGNAL_PROCESS_GROUP``), by number only where DESIGN.md names the
fallback, and never through a pid it has not proven.
"""

from __future__ import annotations

import os
import signal

from tether._kernel.errors import Unsupported
from tether._kernel.exit import Exit
from tether._kernel.pidfd import Pidfd

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


def reap_quietly(pidfd: Pidfd) -> Exit | None:
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
