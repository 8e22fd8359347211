"""The guard's wire protocol as the parent sees it (tether._tree.guarded.Guard), with a real
guard in every containment mode: the start report hands over the program's pidfd; a start
failure comes back as the typed error subprocess would raise; the exit report carries the
program's exact status once the whole tree has ended; the commands signal_tree and kill_tree
reach every member; a guard killed before it could report still leaves no tree behind.
Oracle: this process is a child subreaper (tests/oracle.py)."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import oracle
import tether
from conftest import require_mode
from tether._kernel import features
from tether._kernel.pidfd import pid_in_our_namespace
from tether._kernel.spec import SpawnSpec
from tether._tree.child import start_child
from tether._tree.guarded import Guard

PY = sys.executable
TREE = ["sh", "-c", "sleep 300 & sleep 300 & echo up; wait"]
GUARD_REPORTED = tether.Exit(code=0, signal=None)  # it exits 0 right after MSG_EXITED
GUARD_FAILED_START = tether.Exit(code=127, signal=None)  # and 127 after MSG_FAILED


@contextmanager
def guarded(argv: list[str], mode: str, **kwargs: object) -> Iterator[tuple[tether.Child, Guard]]:
    """A tree under a real guard whose start report has not been read yet; the ``with`` ends
    it as Child does."""
    spec = SpawnSpec.build(argv, popen_style=True, **kwargs)  # type: ignore[arg-type]
    child = start_child(spec, mode, await_start=False)  # type: ignore[arg-type]
    with child:
        guard = child._tree
        assert isinstance(guard, Guard)
        yield child, guard


# -- the start report -----------------------------------------------------------------------------


def test_the_start_report_hands_over_a_pidfd_of_the_running_program(mode: str) -> None:
    with guarded(TREE, mode, stdout=subprocess.PIPE) as (child, guard):
        assert not guard.started  # nothing is read before we ask
        guard.await_start()
        assert guard.started and not guard.ended
        program = guard.program
        assert program.pid == guard.program_pid == child.pid
        assert program.poll() is None  # a live process, and the one the tree runs:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        program.send_signal(signal.SIGUSR1)  # the shell's default for USR1 is to die of it
        assert guard.wait(None)
        assert guard.outcome() == tether.Exit(code=None, signal=signal.SIGUSR1)
    assert oracle.no_descendants()


def test_program_pidfd_handed_over_by_the_guard_is_close_on_exec(mode: str) -> None:
    # Received over SCM_RIGHTS: without MSG_CMSG_CLOEXEC it would leak into every program
    # this process later execs (socket.recv_fds does not ask for it).
    with tether.spawn(["sleep", "300"], contain=mode) as child:
        assert fcntl.fcntl(child.pidfd.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        child.kill()


_PIDFD_DROPPED = """
import errno, os, resource, sys
import tether
from tether._kernel.subreaper import set_child_subreaper
from tether._kernel.spec import SpawnSpec
from tether._tree.child import start_child
# A subreaper: whatever the guard leaves behind comes back to us, and ECHILD below proves
# that nothing did.
set_child_subreaper(True)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
tether.run(["true"], contain=sys.argv[1])  # lazy state first
stdio_closed = sys.argv[2] == "stdin closed"
if stdio_closed:
    os.close(0)
before = sorted(os.listdir("/proc/self/fd"))
child = start_child(SpawnSpec.build(["sleep", "300"]), sys.argv[1], await_start=False)
fillers = []
try:  # no free fd left when the guard's start report (with the program's pidfd) is read
    while True:
        fillers.append(os.dup(1))
except OSError:
    pass
if stdio_closed:  # the pidfd is received at fd 0, and there is no room to move it up
    os.close(fillers.pop(0))
try:
    child.wait()
except OSError as exc:
    print("raised", errno.errorcode[exc.errno], "typed" if "tree was ended" in str(exc) else "")
try:
    os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
    print("descendants left")
except ChildProcessError:
    print("tree gone")
for fd in fillers:
    os.close(fd)
del child
print("fds", "same" if sorted(os.listdir("/proc/self/fd")) == before else "leaked")
"""


@pytest.mark.parametrize("table", ["full", "stdin closed"])
def test_program_pidfd_dropped_at_the_fd_limit_ends_the_tree_and_raises(
        mode: str, table: str, python_env: dict[str, str]) -> None:
    # The kernel drops an SCM_RIGHTS fd it cannot install (MSG_CTRUNC). The tree must then
    # be ended (it is no longer ours to hold) and waiting must raise, with nothing leaked.
    # "stdin closed": the kernel installs it at fd 0, and moving it above stdio fails
    # (EMFILE) after the announcement was read: the same dropped pidfd, the same end (it
    # raised a bare EMFILE and left the tree running until a second read).
    result = tether.run([PY, "-c", _PIDFD_DROPPED, mode, table], env=python_env,
                        capture_output=True, text=True, timeout=60, wait_tree=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["raised EMFILE typed", "tree gone", "fds same"]
    assert oracle.no_descendants()


# -- a start failure ------------------------------------------------------------------------------


def test_a_start_failure_is_the_typed_error_and_the_guard_started_nothing(
        mode: str, junk_program: str) -> None:
    with guarded([junk_program], mode) as (_, guard):
        assert guard.wait(None)  # MSG_FAILED ends the tree: there never was one
        assert isinstance(guard.start_error, FileNotFoundError)
        assert guard.start_error.errno == errno.ENOENT
        assert guard.start_error.filename == junk_program
        with pytest.raises(FileNotFoundError):
            guard.check_start()
        assert guard.guard_exit == GUARD_FAILED_START
        assert oracle.no_descendants()  # the guard is reaped, and it started nothing


def test_an_interrupt_while_a_failed_start_is_cleaned_up_leaks_nothing(
        monkeypatch: pytest.MonkeyPatch, junk_program: str) -> None:
    # Ctrl-C inside the reap of a guard whose program could not start: launch() must still
    # close the control socket and the guard's pidfd, and reap the guard.
    from tether._tree import guarded as _guard

    tether.run(["true"])
    before = oracle.baseline_fds()
    real = _guard.reap_quietly
    calls = 0

    def interrupted_once(pidfd: object, **kwargs: bool) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyboardInterrupt
        return real(pidfd, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_guard, "reap_quietly", interrupted_once)
    with pytest.raises(KeyboardInterrupt) as info:
        tether.spawn([junk_program])
    # Checked while the traceback (and so the Guard) is still alive: nothing left to the GC.
    assert oracle.open_fds() == before
    assert calls == 2
    del info
    assert oracle.no_descendants()


# -- the exit report ------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["exit 0", "exit 7", "kill -TERM $$"])
def test_the_exit_report_carries_the_programs_exact_status(mode: str, script: str) -> None:
    theirs = subprocess.run(["sh", "-c", script]).returncode  # noqa: TET101  the reference
    with guarded(["sh", "-c", script], mode) as (_, guard):
        guard.await_start()
        assert guard.wait(None)
        outcome = guard.outcome()
        assert outcome is not None and outcome.returncode == theirs
        assert guard.program.poll() == outcome  # the pidfd learns it from the report
        assert guard.guard_exit == GUARD_REPORTED


def test_the_exit_report_comes_once_the_rest_of_the_tree_is_gone(mode: str) -> None:
    # Default policy: the program's exit ends its background sleep, and the report is sent
    # only after the guard has reaped it: nothing is left the moment we have read it.
    with guarded(["sh", "-c", "sleep 300 & exit 3"], mode) as (_, guard):
        assert guard.wait(None)
        assert guard.outcome() == tether.Exit(code=3, signal=None)
        assert oracle.no_descendants()


def test_a_lost_report_of_a_finished_tree_is_recovered_from_the_kernel(mode: str) -> None:
    # If the guard's final report never reaches us although the guard finished its work
    # (it exits 0 only then), the program's status comes from its pidfd (PIDFD_INFO_EXIT),
    # not a "guard died" error. The test steals the report off the socket to lose it.
    with tether.spawn(["sh", "-c", "exit 7"], contain=mode) as child:
        backend = child._tree
        assert isinstance(backend, Guard)
        try:
            child.pidfd.info()
        except tether.Unsupported as exc:
            pytest.skip(f"PIDFD_GET_INFO is not available here: {exc}")
        stolen = backend.sock.recv(16)  # blocks until the guard reports
        assert len(stolen) == 16
        assert child.wait(timeout=10) == 7
        assert not backend.dead and backend.outcome() == tether.Exit(code=7, signal=None)
    assert oracle.no_descendants()


# -- commands -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_tree_reaches_every_member(mode: str, sig: int) -> None:
    with guarded(TREE, mode, stdout=subprocess.PIPE) as (child, guard):
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        guard.signal_tree(sig)
        assert guard.wait(None)
        assert guard.outcome() == tether.Exit(code=None, signal=sig)
        assert oracle.no_descendants()  # the two sleeps took the signal too


def test_kill_tree_ends_the_tree_and_is_reported(mode: str) -> None:
    with guarded(TREE, mode, stdout=subprocess.PIPE) as (child, guard):
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        guard.kill_tree()
        assert guard.wait(None)
        assert guard.outcome() == tether.Exit(code=None, signal=signal.SIGKILL)
        assert guard.guard_exit == GUARD_REPORTED
        assert oracle.no_descendants()


def test_a_signal_sent_before_the_start_is_read_reaches_the_program(mode: str) -> None:
    # The guard reads its control socket only once the program runs; a tree signal sent
    # before the parent has even read the start report must not be lost.
    with guarded(["sleep", "300"], mode) as (child, guard):
        assert not guard.started
        guard.signal_tree(signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM


def test_a_report_queued_behind_an_unread_command_is_still_read(
        mode: str, junk_program: str) -> None:
    # A guard that exits with a command of ours unread makes the kernel report ECONNRESET
    # once, ahead of the reports still queued: that is not the guard dying unreported. Here
    # the command is sent before the guard can have failed the exec (it never reads it).
    for _ in range(5):
        with guarded([junk_program], mode) as (child, guard):
            guard.signal_tree(signal.SIGTERM)
            with pytest.raises(FileNotFoundError):
                child.wait(timeout=10)
    assert oracle.no_descendants()


# -- the guard killed before it could report ------------------------------------------------------


def test_a_guard_killed_before_the_exit_report_leaves_no_tree(mode: str) -> None:
    with guarded(TREE, mode, stdout=subprocess.PIPE) as (child, guard):
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        guard.spawned.pidfd.send_signal(signal.SIGKILL)  # only a test reaches for the guard
        assert guard.wait(None)
        assert guard.dead
        assert guard.guard_exit == tether.Exit(code=None, signal=signal.SIGKILL)
        with pytest.raises(ChildProcessError):
            guard.outcome()
    # The members are ended parent-side (group: the program's group; cgroup: cgroup.kill;
    # pidns: the namespace died with its init); orphans come back to us and are reaped.
    assert oracle.reap_until(10.0).empty


def test_a_guard_killed_before_the_start_report_leaves_no_tree(mode: str) -> None:
    with guarded(["sleep", "300"], mode) as (_, guard):
        guard.spawned.pidfd.send_signal(signal.SIGKILL)
        assert guard.wait(None)
        # Whether the start report was already queued or not, the tree is unknown: an error.
        with pytest.raises(OSError):
            guard.check_start()
            guard.outcome()
    assert oracle.reap_until(10.0).empty


@pytest.mark.parametrize("tree_mode", ["group", "cgroup"])  # pidns: the namespace dies with
# its init, the guard; and an init cannot stop itself (SIGSTOP from inside is ignored).
@pytest.mark.parametrize("start", ["overlapped", "the guard's"])
def test_a_guard_killed_after_the_program_forked_but_before_its_start_report_leaves_nothing(
        tree_mode: str, start: str, monkeypatch: pytest.MonkeyPatch) -> None:
    require_mode(tree_mode)
    mode = tree_mode
    # The window of issue 11, item 2: the program has exec'd and started a background child,
    # and the guard dies before it reports MSG_STARTED. spawn() raises; the background child
    # (PDEATHSIG reaches only the program) must be gone too. The guard stops itself in that
    # window (its test-only fault injection); it is killed once the background child is up.
    real = Guard._on_announced
    r, w = os.pipe()

    def kill_the_guard_once_the_tree_is_up(self: Guard, pid: int, fds: list[int],
                                           flags: int) -> None:
        real(self, pid, fds, flags)
        seen = b""
        while not seen.endswith(b"up\n"):
            chunk = os.read(r, 64)
            assert chunk, "the program ended before its background child was up"
            seen += chunk
        self.spawned.pidfd.send_signal(signal.SIGKILL)

    monkeypatch.setattr(Guard, "_on_announced", kill_the_guard_once_the_tree_is_up)
    features.force_overlapped_start(start == "overlapped")
    try:
        with pytest.raises(OSError) as info:
            # The overlapped start knows the exec without the report: spawn() returns, and
            # the first wait finds the guard dead, and ends the tree (ChildProcessError, as
            # for a guard killed later); the guard's own start: spawn() raises (EPROTO).
            tether.spawn(TREE, stdout=w, contain=mode,  # type: ignore[arg-type]
                         env={**os.environ, "TETHER_GUARD_TEST_STOP_BEFORE_REPORT": "1"}
                         ).wait()
    finally:
        features.force_overlapped_start(True)
        os.close(w)
        os.close(r)
    assert info.value.errno == (errno.ECHILD if start == "overlapped" else errno.EPROTO)
    assert oracle.reap_until(10.0).empty


def test_pidns_the_reported_pid_is_the_programs_pid_as_we_see_it() -> None:
    require_mode("pidns")
    with guarded(["sleep", "300"], "pidns") as (child, guard):
        guard.await_start()
        # Asked of the live program's pidfd in our own namespace: the same number.
        assert child.pid == pid_in_our_namespace(guard.program.fileno(), -1) > 1
        child.kill()


def test_pidns_a_start_read_after_the_program_was_reaped_still_knows_its_pid() -> None:
    # The guard reaps a quick program before a lazy parent (tether.aio) reads the start; the
    # pid then can no longer be asked of the pidfd, so the guard reports it (issue 12, 14).
    require_mode("pidns")
    with guarded(["true"], "pidns") as (child, guard):
        select.select([guard.spawned.pidfd.fileno()], [], [])  # the guard has exited
        guard.await_start()
        assert child.pid > 1
        assert child.wait() == 0


def test_pidns_without_proc_a_start_read_after_the_reap_still_knows_the_pid() -> None:
    # The program's pid as we see it comes with its announcement (SCM_CREDENTIALS, translated
    # by the kernel at our read), not from /proc: with /proc gone (a mount namespace without
    # it), a start read only after the guard has reaped the program still has the pid. (The
    # guard used to read it from the pidfd's fdinfo under /proc: here it got none, and the
    # parent's fallback, asking the reaped program's pidfd, could not say either: -1.)
    require_mode("pidns")
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to hide /proc in a mount namespace")
    script = (
        "import os, select, sys\n"
        "assert not os.path.exists('/proc/self'), 'the /proc mount is still there'\n"
        "from tether._kernel.spec import SpawnSpec\n"
        "from tether._tree.child import start_child\n"
        "child = start_child(SpawnSpec.build(['true'], popen_style=True), 'pidns',\n"
        "                    await_start=False)\n"
        "guard = child._tree\n"
        "select.select([guard.spawned.pidfd.fileno()], [], [])  # the guard has exited\n"
        "print(child.pid, child.wait())\n")
    result = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c",
         'umount -l /proc && exec "$0" -c "$1"', PY, script],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pid, status = map(int, result.stdout.split())
    assert pid > 1 and status == 0
    assert oracle.reap_until(10.0).empty


def test_pidns_inside_a_pid_namespace_the_reported_pid_is_the_parents_view() -> None:
    # A parent that itself runs in a PID namespace whose /proc is the host's: the guard must
    # report the program's pid at the parent's level of the NSpid line, not the host's.
    require_mode("pidns")
    script = (
        "import tether\n"
        "from tether._kernel.pidfd import pid_in_our_namespace\n"
        "c = tether.spawn(['sleep', '300'], contain='pidns')\n"
        "print(c.pid, pid_in_our_namespace(c.pidfd.fileno(), -1))\n"
        "c.kill(); c.wait()\n")
    result = tether.run([PY, "-c", script], contain="pidns", capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    reported, asked = result.stdout.split()
    assert reported == asked
