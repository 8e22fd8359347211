"""Lifelines under attack: the parent is SIGKILLed and every lifeline-aware child must die at
once, even when a forked (non-exec) sibling was made from another thread while the lifeline
was open (the orphan bug tether exists to kill). Oracle: the test process is a subreaper and
reaps what is orphaned; ECHILD means no descendant is left."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

import pytest

import oracle
import tether

pytestmark = pytest.mark.usefixtures("each_clone_method")

PY = sys.executable

ATTACHED_CHILD = (
    "import os, sys, time, tether\n"
    "assert tether.attach()\n"
    "os.write(1, b'armed %d\\n' % os.getpid())\n"
    "time.sleep(300)\n"
)

PARENT = """
import os, sys, threading, time, tether
kind = sys.argv[1]
sibling_fd = int(sys.argv[2]) if len(sys.argv) > 2 else -1
CHILD = sys.argv[3] if len(sys.argv) > 3 else ''

def forked_sibling():
    pid = os.fork()
    if pid == 0:
        # A non-exec child of another thread: it must not hold anyone's lifeline. It lives
        # until the *test* cuts its own lifeline (sibling_fd).
        tether.attach(sibling_fd)
        os.write(1, b'sibling %d\\n' % os.getpid())
        time.sleep(300)
        os._exit(0)

if kind == 'exec':
    s = tether.spawn_lifelined([sys.executable, '-c', CHILD], stdout=1)
elif kind == 'exec+sibling':
    s = tether.spawn_lifelined([sys.executable, '-c', CHILD], stdout=1)
    t = threading.Thread(target=forked_sibling)
    t.start(); t.join()
elif kind == 'fork':
    def body():
        os.write(1, b'armed %d\\n' % os.getpid())
        time.sleep(300)
    s = tether.run_in_fork(body)
elif kind == 'fork+sibling':
    def body():
        os.write(1, b'armed %d\\n' % os.getpid())
        time.sleep(300)
    s = tether.run_in_fork(body)
    t = threading.Thread(target=forked_sibling)
    t.start(); t.join()
os.write(1, b'parent-ready\\n')
time.sleep(300)
"""


class Lines:
    def __init__(self, fd: int) -> None:
        self.f = os.fdopen(fd, "rb")

    def until(self, *wanted: str) -> dict[str, int]:
        """Read 'word pid' lines until every wanted word was seen."""
        seen: dict[str, int] = {}
        while not set(wanted) <= set(seen):
            line = self.f.readline()
            assert line, f"pipe closed before {wanted}; saw {seen}"
            word, _, rest = line.decode().strip().partition(" ")
            seen[word] = int(rest) if rest else 0
        return seen


@pytest.fixture
def report_pipe() -> Iterator[tuple[Lines, int]]:
    r, w = os.pipe()
    lines = Lines(r)
    try:
        yield lines, w
    finally:
        if w >= 0:
            with contextlib.suppress(OSError):
                os.close(w)
        lines.f.close()


def start_parent(
    kind: str, w: int, env: dict[str, str], sibling_fd: int | None = None
) -> tether.Spawned:
    argv = [PY, "-c", PARENT, kind]
    pass_fds: list[int] = []
    if sibling_fd is not None:
        argv += [str(sibling_fd), ATTACHED_CHILD]
        pass_fds.append(sibling_fd)
    else:
        argv += ["-1", ATTACHED_CHILD]
    parent = tether.spawn_lifelined(argv, stdout=w, env=env, pass_fds=pass_fds)
    os.close(w)
    return parent


def kill_parent(parent: tether.Spawned) -> None:
    parent.pidfd.send_signal(signal.SIGKILL)
    assert parent.pidfd.wait().signal == signal.SIGKILL


@pytest.mark.parametrize("kind", ["exec", "fork"])
def test_parent_sigkill_kills_lifeline_aware_child_at_once(
    kind: str, report_pipe: tuple[Lines, int], python_env: dict[str, str]
) -> None:
    lines, w = report_pipe
    parent = start_parent(kind, w, python_env)
    seen = lines.until("armed", "parent-ready")
    kill_parent(parent)
    result = oracle.reap_until(1.0)
    assert result.empty, f"descendants left 1 s after the parent's SIGKILL: {seen}"
    assert seen["armed"] in result.pids  # the child came back to us and was reaped


@pytest.mark.parametrize("kind", ["exec+sibling", "fork+sibling"])
def test_forked_sibling_from_another_thread_does_not_hold_the_lifeline(
    kind: str, report_pipe: tuple[Lines, int], python_env: dict[str, str]
) -> None:
    lines, w = report_pipe
    sib_r, sib_w = os.pipe()
    try:
        parent = start_parent(kind, w, python_env, sibling_fd=sib_r)
        os.close(sib_r)
        seen = lines.until("armed", "sibling", "parent-ready")
        kill_parent(parent)
        # The lifelined child must die now, although the forked sibling is still alive.
        result = oracle.reap_until(1.0, stop=lambda s: seen["armed"] in s.pids)
        assert seen["armed"] in result.pids, (
            "the lifelined child outlived its parent while a forked sibling lived"
        )
        assert seen["sibling"] not in result.pids
    finally:
        os.close(sib_w)  # now the sibling goes too
    assert oracle.reap_until(2.0).empty


def test_closing_the_writer_is_seen_as_eof_by_the_child() -> None:
    s = tether.spawn_lifelined(
        [PY, "-c", "import os; fd = int(os.environ['TETHER_LIFELINE_FD']); "
                   "print(os.read(fd, 1) == b'')"],
        stdout=None,
    )
    assert not s.lifeline.closed
    s.lifeline.close()
    assert s.lifeline.closed
    assert s.pidfd.wait().code == 0


def test_attach_without_a_lifeline_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETHER_LIFELINE_FD", raising=False)
    assert tether.attach() is False


def test_attach_when_parent_already_gone_kills_at_once(python_env: dict[str, str]) -> None:
    # The child attaches only after the writer is closed: the O_ASYNC arming would never fire,
    # so attach() must look once and die itself.
    gate_r, gate_w = os.pipe()
    try:
        s = tether.spawn_lifelined(
            [PY, "-c", "import os, time, tether; os.read(0, 1); tether.attach(); time.sleep(300)"],
            stdin=gate_r,
            env=python_env,
        )
    finally:
        os.close(gate_r)
    s.lifeline.close()
    os.close(gate_w)  # only now may the child call attach()
    assert s.pidfd.wait().signal == signal.SIGKILL


def test_writer_is_closed_in_a_forked_child() -> None:
    s = tether.spawn_lifelined(["sleep", "300"])
    fd = s.lifeline.fileno()

    def check() -> None:
        assert s.lifeline.closed
        try:
            os.fstat(fd)
        except OSError:
            return
        # The number may have been reused by something else; it must not be a pipe writer
        # of ours (the registry closed it).
        raise AssertionError("lifeline write end still open in the forked child")

    child = tether.run_in_fork(check)
    assert child.pidfd.wait().code == 0
    s.pidfd.send_signal(signal.SIGKILL)
    s.pidfd.wait()
