"""run_in_fork: a Python callable in a lifelined, attached child with a race-free pidfd."""

from __future__ import annotations

import fcntl
import os
import signal
import sys

import pytest

import tether
from tether._kernel.lifeline import lifeline_fd


def test_returning_callable_exits_zero() -> None:
    s = tether.run_in_fork(lambda: None)
    assert s.pidfd.wait() == tether.Exit(code=0, signal=None)


def test_raising_callable_exits_one_with_traceback_on_stderr() -> None:
    r, w = os.pipe()

    def boom() -> None:
        os.dup2(w, 2)
        sys.stderr = os.fdopen(2, "w")
        raise RuntimeError("boom-marker")

    s = tether.run_in_fork(boom)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    assert s.pidfd.wait().code == 1
    assert "Traceback" in err and "boom-marker" in err


def test_system_exit_code_is_honoured() -> None:
    s = tether.run_in_fork(sys.exit, 9)
    assert s.pidfd.wait().code == 9


def test_arguments_reach_the_callable() -> None:
    r, w = os.pipe()
    s = tether.run_in_fork(lambda a, *, b: os.write(w, f"{a}-{b}".encode()), "x", b="y")
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"x-y"
    assert s.pidfd.wait().code == 0


def test_pid_and_pidfd_name_the_child() -> None:
    r, w = os.pipe()
    s = tether.run_in_fork(lambda: os.write(w, str(os.getpid()).encode()))
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert int(f.read()) == s.pid
    s.pidfd.wait()


def test_pidfd_sent_by_the_child_is_close_on_exec() -> None:
    s = tether.run_in_fork(lambda: None)
    assert fcntl.fcntl(s.pidfd.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    s.pidfd.wait()


def test_child_leads_its_own_group_and_is_attached() -> None:
    r, w = os.pipe()

    def report() -> None:
        fd = lifeline_fd()  # the one attach() armed (the variable is not passed on)
        os.write(w, f"{os.getpgrp() == os.getpid()} {fd}".encode())

    s = tether.run_in_fork(report)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        leads, fd = f.read().split()
    assert leads == b"True" and int(fd) >= 0
    s.pidfd.wait()


def test_cutting_the_lifeline_kills_the_child() -> None:
    import time

    s = tether.run_in_fork(time.sleep, 300)
    s.lifeline.close()
    assert s.pidfd.wait().signal == signal.SIGKILL


def test_non_callable_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        tether.run_in_fork(42)  # type: ignore[arg-type]


BUFFERED_PARENT = """
import tether
print("parent line")
s = tether.run_in_fork(print, "child line")
print(s.pidfd.wait())
"""


def test_buffered_output_of_the_parent_is_written_once_and_the_childs_is_not_lost(
        python_env: dict[str, str]) -> None:
    """stdout to a pipe is block-buffered: the parent's pending "parent line" must not be
    written a second time by the child, and the child's print must reach the pipe."""
    python_env.pop("PYTHONUNBUFFERED", None)
    result = tether.run([sys.executable, "-c", BUFFERED_PARENT], env=python_env,
                        capture_output=True, timeout=60)
    assert (result.returncode, result.stdout) == (
        0, b"parent line\nchild line\nexited with code 0\n")
