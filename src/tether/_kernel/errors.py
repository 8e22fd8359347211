"""The exceptions tether raises, each a subclass of what a caller already catches."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether._kernel.exit import Exit

__all__ = ["TimeoutExpired", "Unsupported"]


class Unsupported(OSError):
    """The kernel or sandbox lacks a primitive that was asked for.

    tether never degrades silently to a weaker or racy mechanism: where DESIGN.md names no
    fallback, the operation raises this, and the message names what is missing (and the
    kernel version that brought it). It subclasses :class:`OSError`, so code that already
    handles spawn failures keeps working.
    """


class TimeoutExpired(subprocess.TimeoutExpired):
    """A wait ran out of time. A :class:`subprocess.TimeoutExpired`, so existing handlers work.

    ``cmd`` is the argv (or a description of the handle) and ``timeout`` the seconds asked for;
    ``output``/``stderr`` carry what was captured so far, where there was capture. ``exit``:
    where the timeout ended the tree (``run()``), how the program ended then (its
    ``ended_by`` is "timeout"); None for a wait that only ran out of time.
    """

    exit: Exit | None = None
