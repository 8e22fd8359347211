"""`tether run -- true` loads none of the heavy modules its path does not need, so its
start-up cannot regress unseen (the whole-process number is in benchmarks/, section 8)."""

from __future__ import annotations

import os
import subprocess
import sys

import tether
from tether._kernel import spec

# Each costs milliseconds at start-up, or pulls in modules that do. (typing, re, enum and
# threading are not named: site imports them on a default install anyway.) argparse (with
# gettext and locale) is for every command but a plain `tether run`; the guard's control
# socket needs only the C module _socket, not socket.py (its enums, selectors, array); the
# preexec_fn fork path is not this one.
HEAVY = ("subprocess", "secrets", "hashlib", "asyncio", "dataclasses", "inspect", "argparse",
         "gettext", "locale", "socket", "selectors", "array", "tether._kernel.preexec")

# One whole `tether run -- true`, in group mode (every machine has it), then what it loaded.
PROBE = """
import sys
from tether.cli import main
status = main(["run", "--contain", "group", "--", "true"])
print(status, " ".join(sorted(sys.modules)))
"""


def test_tether_run_loads_no_heavy_module() -> None:
    # -S: no site, whose .pth files may have imported any of them already.
    src = os.path.dirname(os.path.dirname(tether.__file__))
    out = tether.run([sys.executable, "-S", "-c", PROBE], capture_output=True, text=True,
                     check=True, env={**os.environ, "PYTHONPATH": src})
    status, *loaded = out.stdout.split()
    assert status == "0"
    assert "tether.cli" in loaded
    assert sorted(set(loaded) & set(HEAVY)) == []


def test_stdio_constants_are_subprocess_ones() -> None:
    # spec.py names subprocess's PIPE/STDOUT/DEVNULL by value, to spare their import.
    assert spec.SUBPROCESS_PIPE == subprocess.PIPE
    assert spec.SUBPROCESS_STDOUT == subprocess.STDOUT
    assert spec.SUBPROCESS_DEVNULL == subprocess.DEVNULL


def test_timeout_expired_is_one_class_made_on_first_use() -> None:
    from tether._kernel import errors

    first = errors.TimeoutExpired
    assert issubclass(first, subprocess.TimeoutExpired)
    assert errors.TimeoutExpired is first is tether.TimeoutExpired
    assert (first.__module__, first.__qualname__) == ("tether._kernel.errors", "TimeoutExpired")
