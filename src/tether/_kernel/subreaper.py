"""The child-subreaper flag of this process (``PR_SET_CHILD_SUBREAPER``, Linux 3.4).

The one rule this module owns: the flag is read and written only here, and a failure is an
``OSError`` carrying the errno (never a silent no-op). A subreaper inherits the orphans of its
descendants: a process that double-forks and exits leaves its child to the nearest subreaper
above it instead of to init, so that subreaper can still wait for it by pidfd.

The stdlib has no prctl() wrapper, and this one call does not justify C: ctypes calls libc's.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

__all__ = ["child_subreaper", "set_child_subreaper"]

PR_SET_CHILD_SUBREAPER: Final = 36
PR_GET_CHILD_SUBREAPER: Final = 37

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def child_subreaper() -> bool:
    """Whether this process is a child subreaper."""
    flag = ctypes.c_int(0)
    _prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag))
    return flag.value != 0


def set_child_subreaper(on: bool) -> None:
    """Make this process a child subreaper (``on``), or stop being one. Orphans already
    re-parented to it stay its children either way."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)
