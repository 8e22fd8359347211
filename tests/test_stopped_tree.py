"""A stopped tree still ends (issue 11, item 24): a terminating signal that tether sends to a
tree, or that the guard forwards to the program, is followed by SIGCONT, as timeout(1) does.
Without it a stopped process keeps the signal pending until someone else resumes it, and the
tree (and ``wait()``) never ends."""

from __future__ import annotations

import signal
import subprocess
import sys

import tether
from oracle import reap_until

# The program forks a child C, stops it (SIGSTOP), waits until the kernel says C is stopped
# (waitid WSTOPPED: the barrier), reports, and exits. With wait_tree the guard then waits for C.
STOP_A_CHILD = r"""
import os, signal, sys
pid = os.fork()
if pid == 0:
    os.execvp("sleep", ["sleep", "300"])
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the program's own status stays 0
os.kill(pid, signal.SIGSTOP)  # our own unreaped child: its number is ours
os.waitid(os.P_PID, pid, os.WEXITED | os.WSTOPPED)
sys.stdout.write("stopped\n")
"""

# The program stops itself; a self-sent SIGSTOP takes effect before kill() returns. The line
# comes first: a signal that lands before the stop ends the program anyway.
STOP_MYSELF = r"""
import os, signal, sys
sys.stdout.write("stopping\n")
sys.stdout.flush()
os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_terminate_ends_a_tree_whose_member_is_stopped(mode: str) -> None:
    child = tether.spawn([sys.executable, "-c", STOP_A_CHILD], contain=mode, wait_tree=True,
                         stdout=subprocess.PIPE, text=True)
    with child:
        assert child.stdout is not None
        assert child.stdout.readline() == "stopped\n"
        child.terminate()
        # The stopped sleep gets SIGTERM and SIGCONT, dies, and the tree ends; the program
        # itself had exited 0.
        assert child.wait(timeout=30) == 0
    assert reap_until(5.0).empty


def test_a_terminating_signal_forwarded_by_the_guard_resumes_the_program() -> None:
    child = tether.spawn([sys.executable, "-c", STOP_MYSELF], contain="group",
                         stdout=subprocess.PIPE, text=True)
    with child:
        assert child.stdout is not None
        assert child.stdout.readline() == "stopping\n"
        # SIGTERM to the guard itself (as a user's `kill GUARD` would): forwarded to the
        # program, which is stopped, so the guard follows it with SIGCONT.
        child._tree.spawned.pidfd.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        assert child.wait(timeout=30) == -signal.SIGTERM
