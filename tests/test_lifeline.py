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
    result = oracle.reap_until(10.0)
    assert result.empty, f"descendants left 10 s after the parent's SIGKILL: {seen}"
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
        result = oracle.reap_until(10.0, stop=lambda s: seen["armed"] in s.pids)
        assert seen["armed"] in result.pids, (
            "the lifelined child outlived its parent while a forked sibling lived"
        )
        assert seen["sibling"] not in result.pids
    finally:
        os.close(sib_w)  # now the sibling goes too
    assert oracle.reap_until(10.0).empty


def test_closing_the_writer_is_seen_as_eof_by_the_child() -> None:
    s = tether.spawn_lifelined(
        [PY, "-c", "import os; fd = int(os.environ['TETHER_LIFELINE_FD'].split(':')[0]); "
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


def test_a_fork_closes_every_registered_writer_and_no_released_number() -> None:
    # Writers released out of order (the registry moves its last entry into a freed slot,
    # and the moved one is released next), their numbers reused by an unrelated fd: the
    # forked child must find every writer still registered closed, and the unrelated fds
    # open.
    spawned = [tether.spawn_lifelined(["sleep", "300"]) for _ in range(5)]
    fds = [s.lifeline.fileno() for s in spawned]
    writers = {fd: os.fstat(fd).st_ino for fd in fds}
    for s in (spawned[0], spawned[4], spawned[2]):
        s.lifeline.close()
    unrelated_r, unrelated_w = os.pipe()
    for fd in (fds[0], fds[4]):
        os.dup2(unrelated_r, fd)  # (not a lifeline: the number was released)

    def check() -> None:
        for fd in (fds[0], fds[4]):
            assert os.fstat(fd).st_ino == os.fstat(unrelated_r).st_ino
        for fd in (fds[1], fds[3]):
            try:
                ino = os.fstat(fd).st_ino
            except OSError:
                continue
            assert ino != writers[fd], f"lifeline write end {fd} still open after fork()"

    try:
        child = tether.run_in_fork(check)
        assert child.pidfd.wait().code == 0
    finally:
        os.close(fds[0])
        os.close(fds[4])
        os.close(unrelated_r)
        os.close(unrelated_w)
        for s in spawned:
            s.pidfd.send_signal(signal.SIGKILL)
            s.pidfd.wait()
            s.lifeline.close()


# -- a shared lifeline: every process that called attach() dies -------------------------------

WORKERS = """
import os, sys, tether
release = int(sys.argv[1])
for n in (1, 2):
    if os.fork() == 0:
        # Both workers inherited the one lifeline fd (one open file description) and the
        # variable; neither leads its group, so each arms for itself.
        assert tether.attach()
        os.write(1, b'worker%d %d\\n' % (n, os.getpid()))
        os.read(release, 1)  # blocks until the test lets go (or the lifeline kills us)
        os._exit(0)
os._exit(0)  # the launcher goes: its workers come back to the test, a subreaper
"""


def test_every_worker_that_attached_to_a_shared_lifeline_dies_when_it_is_cut(
    report_pipe: tuple[Lines, int], python_env: dict[str, str]
) -> None:
    lines, w = report_pipe
    release_r, release_w = os.pipe()
    try:
        launcher = tether.spawn_lifelined([PY, "-c", WORKERS, str(release_r)], stdout=w,
                                          env=python_env, pass_fds=[release_r])
        os.close(w)
        os.close(release_r)
        assert launcher.pidfd.wait().code == 0
        seen = lines.until("worker1", "worker2")
        workers = {seen["worker1"], seen["worker2"]}
        launcher.lifeline.close()  # what the parent's death does
        result = oracle.reap_until(30.0, stop=lambda s: workers <= s.pids)
        assert workers <= result.pids, "a worker that attached outlived its lifeline"
        assert {result.status[pid] for pid in workers} == {(os.CLD_KILLED, signal.SIGKILL)}
    finally:
        os.close(release_w)  # a worker that survived exits now


# -- TETHER_LIFELINE_FD is checked, and not passed on --------------------------------------------

STRANGER = """
import os, socket, sys, tether
a, b = socket.socketpair()  # lands on fd 3, where the variable says the lifeline is
assert a.fileno() == 3, a.fileno()
try:
    armed = tether.attach()
except ValueError as exc:
    armed = 'refused'
b.send(b'ordinary traffic')  # with fd 3 armed by mistake, SIGKILL for us
a.recv(100)
print(armed)
"""


@pytest.mark.parametrize("announced", ["as tether announced it", "a bare number"])
def test_attach_refuses_an_inherited_variable_whose_fd_is_not_the_lifeline(
    announced: str, python_env: dict[str, str]
) -> None:
    # A grandchild whose parent (a shell, not attached) closed fd 3 but passed the
    # environment on: its fd 3 becomes a socket, and attach() must not arm it.
    assign = "TETHER_LIFELINE_FD=3 " if announced == "a bare number" else ""
    r, w = os.pipe()
    try:
        s = tether.spawn_lifelined(
            ["sh", "-c", f'exec 3<&-; {assign}exec "$0" -c "$1"', PY, STRANGER],
            stdout=w, env=python_env)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    exit_ = s.pidfd.wait()
    s.lifeline.close()
    assert (exit_.code, out) == (0, b"refused\n")


def test_a_bare_number_naming_the_lifeline_is_still_accepted(
    python_env: dict[str, str]
) -> None:
    # The first release's form: checked with fstat (a pipe's read end), then armed.
    gate_r, gate_w = os.pipe()
    try:
        s = tether.spawn_lifelined(
            ["sh", "-c", 'TETHER_LIFELINE_FD=3 exec "$0" -c "$1"', PY,
             "import os, tether; assert tether.attach(); os.read(0, 1)"],
            stdin=gate_r, env=python_env)
    finally:
        os.close(gate_r)
    try:
        s.lifeline.close()
        assert s.pidfd.wait().signal == signal.SIGKILL
    finally:
        os.close(gate_w)


def test_the_variable_carries_the_lifeline_pipes_identity(python_env: dict[str, str]) -> None:
    r, w = os.pipe()
    try:
        s = tether.spawn_lifelined(
            [PY, "-c", "import os; print(os.environ['TETHER_LIFELINE_FD'])"], stdout=w,
            env=python_env)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        value = f.read().decode().strip()
    assert s.pidfd.wait().code == 0
    pipe = os.fstat(s.lifeline.fileno())  # the write end: the same pipe, the same inode
    s.lifeline.close()
    assert value == f"3:{pipe.st_dev}:{pipe.st_ino}"


def test_attach_does_not_pass_the_variable_on(python_env: dict[str, str]) -> None:
    code = ("import os, subprocess, tether\n"
            "assert tether.attach()\n"
            "print(subprocess.run(['sh', '-c', 'echo ${TETHER_LIFELINE_FD-unset}'],\n"
            "                     capture_output=True).stdout.decode().strip())\n"
            "assert tether.attach()  # still armed, without the variable\n")
    r, w = os.pipe()
    try:
        s = tether.spawn_lifelined([PY, "-c", code], stdout=w, env=python_env)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    assert s.pidfd.wait().code == 0
    s.lifeline.close()
    assert out == b"unset\n"


@pytest.mark.parametrize("contain", ["group", "pidns"])
def test_a_program_under_the_guard_gets_the_identity_and_attach_accepts_it(
    contain: str, python_env: dict[str, str]
) -> None:
    code = ("import os, tether\n"
            "value = os.environ['TETHER_LIFELINE_FD']\n"
            "print(value.count(':'), tether.attach())\n")
    try:
        done = tether.run([PY, "-c", code], capture_output=True, env=python_env,
                          contain=contain)
    except tether.Unsupported as exc:
        pytest.skip(str(exc))
    assert (done.returncode, done.stdout) == (0, b"2 True\n"), done.stderr
