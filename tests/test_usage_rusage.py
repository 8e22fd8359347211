"""Usage without a cgroup of the tree's own: the guard's RUSAGE_CHILDREN at the end (the CPU
of every descendant reaped, the peak RSS of the largest single process), reported in
MSG_EXITED, in every guarded mode; Unsupported while the tree runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import oracle
import tether

PY = sys.executable

# The program forks a grandchild and exits; the grandchild (same process group, orphaned:
# the guard, a subreaper, reaps it) burns 0.5 s of CPU and writes down what it used.
ORPHAN = """
import os, sys, time
if os.fork():
    sys.exit(0)
while time.process_time() < 0.5:
    pass
t = os.times()
with open(sys.argv[1] + '.tmp', 'w') as f:
    f.write(repr(t.user + t.system))
os.rename(sys.argv[1] + '.tmp', sys.argv[1])
"""


def test_final_usage_counts_a_reaped_grandchild(mode: str, tmp_path: Path) -> None:
    report = tmp_path / "cpu"
    result = tether.run([PY, "-c", ORPHAN, str(report)], contain=mode, wait_tree=True)
    assert result.returncode == 0
    grandchild_cpu = float(report.read_text())
    assert result.usage.source == "rusage"
    # The grandchild's own CPU, and two Python start-ups on top (generous: a loaded box).
    assert grandchild_cpu * 0.95 <= result.usage.cpu <= grandchild_cpu * 1.05 + 0.5
    assert oracle.no_descendants()


def test_memory_peak_is_the_largest_single_process(mode: str) -> None:
    touch = "b = bytearray(100 << 20); b[::4096] = b'x' * len(b[::4096])"
    usage = tether.run([PY, "-c", touch], contain=mode).usage
    assert usage.source == "rusage"
    assert usage.memory_peak >= 100 << 20
    assert usage.oom_kills is None and usage.pids_peak is None
    assert "peak RSS" in str(usage)


def test_child_usage_is_final_once_ended(mode: str) -> None:
    with tether.spawn(["true"], contain=mode) as child:
        child.wait()
        assert child.usage() == child.usage()
        assert child.usage().source == "rusage"


def test_live_usage_without_a_cgroup_is_unsupported_and_says_why(mode: str) -> None:
    with tether.spawn(["sleep", "30"], contain=mode) as child:
        with pytest.raises(tether.Unsupported, match="running tree needs the tree's own"):
            child.usage()
        child.kill()


def test_run_usage_is_none_only_without_a_guard() -> None:
    assert tether.run(["true"], contain=None).usage is None
    assert tether.run(["true"], contain="group").usage is not None


def test_aio_run_reports_rusage(mode: str) -> None:
    import asyncio

    result = asyncio.run(tether.aio.run(["true"], contain=mode))
    assert result.usage.source == "rusage"
