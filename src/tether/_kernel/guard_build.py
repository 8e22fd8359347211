"""Which build of the guard an executable is: libc-free, musl or glibc, static or dynamic.

The answer is the marker ``guard_build.c`` compiles into every guard ("tether-guard-build:
libc-free (x86_64)"), read from the binary itself, so it cannot disagree with the file that
runs. ``tether doctor`` and ``benchmarks/run.py`` report it.
"""

from __future__ import annotations

__all__ = ["UNKNOWN_BUILD", "guard_build"]

MARKER = b"tether-guard-build: "
UNKNOWN_BUILD = "unknown (no build marker in the binary)"


def guard_build(path: str) -> str:
    """The build kind named in the guard at ``path``, or UNKNOWN_BUILD for a guard compiled
    without the marker. Raises OSError if the file cannot be read."""
    with open(path, "rb") as f:
        data = f.read()
    start = data.find(MARKER)
    if start < 0:
        return UNKNOWN_BUILD
    start += len(MARKER)
    end = data.find(b"\0", start)
    return data[start:end].decode("ascii", "replace")
