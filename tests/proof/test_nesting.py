"""Nested trees (issue 11, item 23): a tree started inside a tree nests inside it, in every
mode combination, so SIGKILLing the outermost tether ends every level.

Three levels of ``tether run --contain A -- tether run --contain B -- tether run --contain C
-- sh -c SCRIPT``, every A/B/C in group/cgroup/pidns (27 combinations). SCRIPT starts a
background sleep (in the program's group) and a setsid'd sleep (a daemon: it leaves the
group), then says so. The outermost tether is SIGKILLed. Verdict, from the kernel:

* every process of the chain holds the test's pipe as its stdout, the daemon does not (it
  closed it): EOF on the pipe means every one of them has exited;
* then the subreaper oracle: ECHILD means nothing at all is left. The one documented
  survivor is the daemon when *every* level is ``group`` (group mode does not catch a
  setsid daemon, and no enclosing cgroup or namespace does either); it is killed by the pen.

The pen (tests/proof/_harness.py) holds every process of the trial and is the cleanup, never
the verdict. Smoke: one trial per combination; TETHER_FULL=1: five.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys

import pytest

from conftest import require_mode
from oracle import reap_until

from ._harness import Lines, Pen, python_env, record, report_pipe, size

MODES = ("group", "cgroup", "pidns")
SCRIPT = ("sleep 300 & setsid sh -c 'echo daemon; exec sleep 300 >&- 2>&-' & "
          "echo ready; wait")


def tether_run(mode: str) -> list[str]:
    return [sys.executable, "-m", "tether", "run", "--contain", mode, "--"]


def kill_outermost(pen: Pen, modes: tuple[str, ...], script: str) -> tuple[bool, bool]:
    """Run the chain, wait until the innermost program has started both sleeps, SIGKILL the
    outermost tether. Returns (every chain process gone, nothing left at all)."""
    argv = [arg for mode in modes for arg in tether_run(mode)] + ["sh", "-c", script]
    r, w = report_pipe()
    try:
        outer = pen.spawn(argv, env=python_env(**pen.env()), stdout=w)
    finally:
        os.close(w)
    lines = Lines(r)
    try:
        with outer.pidfd, outer.lifeline:
            for word in ("ready", "daemon") if "daemon" in script else ("ready",):
                assert lines.wait_for(lambda line, w=word: line == w, 60.0) is not None, (
                    f"{modes}: the innermost program never said {word!r}: {lines.lines}")
            outer.pidfd.send_signal(signal.SIGKILL)
            outer.pidfd.wait()
        lines.drain(10.0)
        chain_gone = lines.eof
        return chain_gone, reap_until(5.0 if chain_gone else 0.0).empty
    finally:
        lines.close()


@pytest.mark.parametrize("modes", list(itertools.product(MODES, repeat=3)),
                         ids="-".join)
def test_a_nested_tree_dies_with_the_outermost_tether(pen: Pen, modes: tuple[str, ...]) -> None:
    for mode in set(modes):
        require_mode(mode)
    daemon_expected = all(mode == "group" for mode in modes)
    trials = size(1, 5)
    for _ in range(trials):
        chain_gone, nothing_left = kill_outermost(pen, modes, SCRIPT)
        assert chain_gone, f"{modes}: a process of the chain outlived the outermost tether"
        if daemon_expected:
            assert not nothing_left, f"{modes}: the setsid daemon was expected to survive"
        else:
            assert nothing_left, f"{modes}: something outlived the outermost tether"
        pen.clean()
    record("nesting", f"{'-'.join(modes)}: {trials} trial(s), "
           f"{'only the documented group-mode daemon left' if daemon_expected else 'nothing left'}")


def test_the_issue_command_cgroup_in_cgroup(pen: Pen) -> None:
    """``tether run --contain cgroup -- tether run --contain cgroup -- sh -c 'sleep 300 &
    sleep 300 & wait'``, the outer one SIGKILLed: nothing is left."""
    require_mode("cgroup")
    chain_gone, nothing_left = kill_outermost(
        pen, ("cgroup", "cgroup"), "sleep 300 & sleep 300 & echo ready; wait")
    assert chain_gone and nothing_left
