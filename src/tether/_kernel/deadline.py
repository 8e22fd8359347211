"""Timeouts and deadlines: the one conversion of a caller's timeout, and one deadline type.

The one rule this module owns: a timeout is checked once, where it enters (None or inf waits
for ever, as in subprocess; NaN, negatives and non-numbers are typed errors), and every wait
after that asks a :class:`Deadline` how long poll(2) may block. Nothing sleeps: waits are
poll() calls on an fd that the kernel makes readable.
"""

from __future__ import annotations

import time
from typing import Final, final

__all__ = ["Deadline", "check_timeout", "poll_ms"]

# poll(2) takes an int of milliseconds; longer waits are done as several polls.
POLL_MAX_MS: Final = 2**31 - 1


def check_timeout(timeout: float | None) -> float | None:
    """Validate a timeout in seconds: None or inf waits for ever (as subprocess does)."""
    if timeout is None:
        return None
    try:
        timeout = float(timeout)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"timeout must be a number or None, not {timeout!r}") from None
    if timeout != timeout or timeout < 0:  # NaN or negative
        raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    if timeout == float("inf"):
        return None
    return timeout


def poll_ms(remaining: float | None) -> int | None:
    """Seconds left (None: for ever) as poll(2)'s milliseconds, rounded up: returning early
    would only cost a loop; returning late is what we avoid."""
    if remaining is None:
        return None
    # min() in floats first: a far deadline's milliseconds (1e308 s) are inf, with no int.
    return max(0, int(min(float(POLL_MAX_MS), remaining * 1000.0 + 0.999)))


@final
class Deadline:
    """A point on the monotonic clock, or none (wait for ever).

    ``Deadline.after(timeout)`` takes an already checked timeout; ``remaining()`` never goes
    below zero; ``poll_ms()`` is what to hand to ``poll``; ``expired`` says when to stop."""

    __slots__ = ("at",)

    def __init__(self, at: float | None) -> None:
        self.at = at

    @classmethod
    def after(cls, timeout: float | None) -> Deadline:
        return cls(None if timeout is None else time.monotonic() + timeout)

    def remaining(self) -> float | None:
        if self.at is None:
            return None
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def poll_ms(self) -> int | None:
        return poll_ms(self.remaining())

    def c_poll_ms(self) -> int:
        """:meth:`poll_ms` for C's poll(2): -1 for ever."""
        ms = poll_ms(self.remaining())
        return -1 if ms is None else ms

    def spin_ns(self, budget_ns: int) -> int:
        """``budget_ns``, or less where the deadline comes sooner: a spin never overruns it."""
        if self.at is None:
            return budget_ns
        left = (self.at - time.monotonic()) * 1e9  # (a float: a huge timeout stays finite here)
        return budget_ns if left >= budget_ns else max(0, int(left))

    def __repr__(self) -> str:
        return "Deadline(never)" if self.at is None else f"Deadline(in {self.remaining():.3f}s)"
