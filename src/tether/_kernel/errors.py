"""The exceptions tether raises, each a subclass of what a caller already catches."""

from __future__ import annotations

__all__ = ["TimeoutExpired", "Unsupported"]


class Unsupported(OSError):
    """The kernel or sandbox lacks a primitive that was asked for.

    tether never degrades silently to a weaker or racy mechanism: where DESIGN.md names no
    fallback, the operation raises this, and the message names what is missing (and the
    kernel version that brought it). It subclasses :class:`OSError`, so code that already
    handles spawn failures keeps working.
    """


# TimeoutExpired subclasses subprocess's, and importing subprocess (locale, selectors, ...)
# costs every start-up of `tether run`, which never times out in the common case. So the class
# is made on first use (PEP 562); modules on that path import it inside the functions that
# raise or catch it (tests/test_cli_import_cost.py). Not typing.TYPE_CHECKING: see __init__.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

    from tether._kernel.exit import Exit

    class TimeoutExpired(subprocess.TimeoutExpired):
        """A wait ran out of time (see ``_timeout_expired`` below)."""

        exit: Exit | None


def _timeout_expired() -> type:
    import subprocess

    class TimeoutExpired(subprocess.TimeoutExpired):
        """A wait ran out of time. A :class:`subprocess.TimeoutExpired`, so existing handlers
        work.

        ``cmd`` is the argv (or a description of the handle) and ``timeout`` the seconds asked
        for; ``output``/``stderr`` carry what was captured so far, where there was capture.
        ``exit``: where the timeout ended the tree (``run()``), how the program ended then
        (its ``ended_by`` is "timeout"); None for a wait that only ran out of time.
        """

        exit = None

    TimeoutExpired.__qualname__ = "TimeoutExpired"
    return TimeoutExpired


def __getattr__(name: str) -> object:
    if name != "TimeoutExpired":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # setdefault: two threads that race here still get one class (an `except` must match).
    return globals().setdefault("TimeoutExpired", _timeout_expired())
