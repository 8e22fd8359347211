"""Exit: how a process ended, as the kernel reported it, in one frozen value."""

from __future__ import annotations

import functools
import os
import signal as _signal
from typing import Final, Literal

from tether._kernel.record import frozen_record, replace

__all__ = ["EndedBy", "Exit"]

#: Who ended a tree, where tether did: "timeout" (run()'s or ``tether run``'s timeout), or
#: "tether" (``kill()``/``terminate()`` of the tree, the end of its ``with`` block).
EndedBy = Literal["timeout", "tether"]

_CLD_EXITED: Final = os.CLD_EXITED
_CLD_KILLED: Final = os.CLD_KILLED
_CLD_DUMPED: Final = os.CLD_DUMPED


@frozen_record
class Exit:
    """How a process ended. Frozen; two waits on one process return equal values.

    A normal exit has ``code`` set and ``signal`` None; a death by signal has ``signal`` set
    and ``code`` None. ``returncode`` follows the :class:`subprocess.Popen` convention.
    """

    code: int | None
    signal: int | None
    core_dumped: bool = False
    #: The OOM killer took the program: its tree's memory cgroup counted an OOM kill (limits).
    oom_killed: bool = False
    #: The tree's memory limit in bytes, where it had one (for messages).
    memory_limit: int | None = None
    #: Whether tether ended the tree, and why: "timeout", "tether" (kill()/terminate(), the
    #: end of a ``with``), or None (it ended by itself, or someone else ended it; a parent's
    #: death cannot be seen by that parent). Set by the handle that asked for the end before
    #: the end was known. Not compared: two waits on one process stay equal, whoever asks.
    ended_by: EndedBy | None = None
    __record_uncompared__ = ("ended_by",)

    @property
    def returncode(self) -> int:
        """The exit code, or ``-signal`` for a death by signal (as subprocess reports it)."""
        if self.signal is not None:
            return -self.signal
        assert self.code is not None
        return self.code

    @property
    def shell_status(self) -> int:
        """The status a shell would report: the code, or 128 + the signal number."""
        if self.signal is not None:
            return 128 + self.signal
        assert self.code is not None
        return self.code

    @classmethod
    def _from_waitid(cls, si_code: int, si_status: int) -> Exit:
        return _exit_from_waitid(si_code, si_status)

    @classmethod
    def _build_from_waitid(cls, si_code: int, si_status: int) -> Exit:
        if si_code == _CLD_EXITED:
            return cls(code=si_status, signal=None)
        if si_code in (_CLD_KILLED, _CLD_DUMPED):
            return cls(code=None, signal=si_status, core_dumped=si_code == _CLD_DUMPED)
        raise ValueError(f"not an exit: si_code={si_code}")

    @classmethod
    def _from_wait_status(cls, status: int) -> Exit:
        return _exit_from_wait_status(status)

    @classmethod
    def _build_from_wait_status(cls, status: int) -> Exit:
        if os.WIFEXITED(status):
            return cls(code=os.WEXITSTATUS(status), signal=None)
        if os.WIFSIGNALED(status):
            return cls(code=None, signal=os.WTERMSIG(status), core_dumped=os.WCOREDUMP(status))
        raise ValueError(f"not an exit status: {status:#x}")

    def _ended(self, by: EndedBy) -> Exit:
        return replace(self, ended_by=by)

    def __str__(self) -> str:
        return self._what() + _ENDED_NOTE.get(self.ended_by, "")

    def _what(self) -> str:
        if self.signal is not None:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            if self.oom_killed:
                return "killed by the OOM killer" + _limit_note(self.memory_limit)
            return f"killed by {name}" + (" (core dumped)" if self.core_dumped else "")
        return f"exited with code {self.code}"


_ENDED_NOTE: Final[dict[str | None, str]] = {
    "timeout": " (tether ended it: timeout)", "tether": " (tether ended it)"}


def _limit_note(limit: int | None) -> str:
    if limit is None:
        return ""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if limit >= size and limit % size == 0:
            return f" (memory limit {limit // size} {unit})"
    return f" (memory limit {limit} bytes)"


@functools.lru_cache(maxsize=1024)
def _exit_from_waitid(si_code: int, si_status: int) -> Exit:
    # Exit values are frozen and few (a code or a signal): share them, since building a
    # dataclass on every reap is a measurable part of the exit-notification path.
    return Exit._build_from_waitid(si_code, si_status)


@functools.lru_cache(maxsize=1024)
def _exit_from_wait_status(status: int) -> Exit:
    # The same sharing for statuses the guard reports (one per guarded tree).
    return Exit._build_from_wait_status(status)
