"""The `tether` command ends its process without the interpreter's teardown (cli.command),
yet as a normal exit would: main's status, atexit handlers run, stdout flushed."""

from __future__ import annotations

import os
import sys

import tether

PROBE = """
import atexit, sys
atexit.register(lambda: print("atexit ran"))
sys.stdout.write("buffered, ")  # a pipe: block-buffered, still in the buffer at the exit
sys.argv = ["tether", "run", "--contain", "group", "--", "sh", "-c", "exit 7"]
from tether.cli import command
command()
print("not reached")
"""


def test_command_exits_with_main_status_after_atexit_and_flush() -> None:
    src = os.path.dirname(os.path.dirname(tether.__file__))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    out = tether.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                     env={**env, "PYTHONPATH": src})
    assert (out.returncode, out.stdout) == (7, "buffered, atexit ran\n")
