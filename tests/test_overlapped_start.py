"""The overlapped start: a guard's clone child clones the program before it execs the guard, so
that the two execs run side by side, and the guard adopts the program (``--adopt``;
``clone_early.c``, ``launch_early.c``). The program must start exactly as the guard would have
started it: the guard's child, with orphans coming back to the guard, a clean signal state,
the same typed error when its exec fails; and a failure of either exec, or a guard that dies
before it has adopted the program, leaves nothing behind.

The rest of the suite runs on the overlapped start (the default) and, through conftest's
``each_clone_method``, once more with the guard starting the program itself.
Oracle: this process is a child subreaper (tests/oracle.py)."""

from __future__ import annotations

import errno
import os
import resource
import select
import signal
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import oracle
import tether
from conftest import require_mode
from tether import subprocess as tsubprocess
from tether._kernel import core, features
from tether._tree import guard_launch

PY = sys.executable

# The program's view of its start: its parent, and its blocked and ignored signals (grep's
# own: a Python program would ignore SIGPIPE and SIGXFSZ itself).
SELF_REPORT = ["grep", "-E", "^(PPid|SigBlk|SigIgn):", "/proc/self/status"]


def self_report(out: bytes) -> dict[str, int]:
    fields = dict(line.split(b":\t") for line in out.splitlines())
    return {"ppid": int(fields[b"PPid"]), "blocked": int(fields[b"SigBlk"], 16),
            "ignored": int(fields[b"SigIgn"], 16)}


# The program forks a child and exits at once, while the guard is held before its setup (its
# test-only fault injection, on a pipe whose write end is argv[1]); the child waits (on the
# program's pidfd, opened by the program before the fork, readable only once the kernel has
# reparented the child), reports its new parent, and lets the guard go on. (The child once
# opened that pidfd itself, from getppid(): when the program had exited first, that was the
# held guard's, and the two waited for each other.)
ORPHAN = r"""
import os, select, sys
program = os.pidfd_open(os.getpid())
if os.fork() == 0:
    select.select([program], [], [])
    print(os.getppid(), flush=True)
    os.write(int(sys.argv[1]), b"go")
    os._exit(0)
"""


def nothing_left() -> bool:
    """No descendant of ours, live or zombie, and none reaped by us meanwhile: whatever the
    start made was reaped by tether itself (or by the guard's clone child)."""
    seen = oracle.reap_until(10.0)
    return seen.empty and not seen.pids


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The ``early`` argument of every guard launch: not None when the start overlapped."""
    seen: list[object] = []
    real = core.launch_guard

    def spy(**kwargs: object) -> object:
        seen.append(kwargs.get("early"))
        return real(**kwargs)

    monkeypatch.setattr(core, "launch_guard", spy)
    return seen


@pytest.fixture(params=["overlapped", "the guard's"])
def start(request: pytest.FixtureRequest) -> Iterator[str]:
    """Both ways of starting the program: the same behaviour is asked of each."""
    features.force_overlapped_start(request.param == "overlapped")
    try:
        yield request.param
    finally:
        features.force_overlapped_start(True)


def guard_pid_as_program_sees_it(child: tether.Child, mode: str) -> int:
    return 1 if mode == "pidns" else child._tree.spawned.pid  # type: ignore[union-attr]


def test_a_plain_spawn_overlaps_and_the_program_is_the_guards_child(
        mode: str, launches: list[object]) -> None:
    with tether.spawn(SELF_REPORT, contain=mode, stdout=tether.PIPE) as child:
        out, _ = child.communicate()
        assert launches and launches[-1] is not None
        # (/proc is this namespace's: the pid as we see it, in pidns mode too)
        assert self_report(out)["ppid"] == child._tree.spawned.pid  # type: ignore[union-attr]
        assert child.returncode == 0


def test_the_program_starts_with_no_signal_blocked_nor_ignored(mode: str, start: str) -> None:
    # The guard's clone child holds the guard's signals blocked through the guard's exec; none
    # of that may reach the program (nor Python's ignored SIGPIPE and SIGXFSZ).
    report = self_report(tether.check_output(SELF_REPORT, contain=mode))  # type: ignore[arg-type]
    assert (report["blocked"], report["ignored"]) == (0, 0)


def test_an_orphan_of_the_program_comes_back_to_the_guard(mode: str) -> None:
    # The subreaper bit is set before the program exists: an orphan it makes before the
    # guard's own setup is the guard's, not this process's (itself a subreaper: the oracle)
    # nor init's. The guard waits for the orphan's word before it sets anything up. (Where
    # the guard starts the program, its setup comes first: there is no such window.)
    r, w = os.pipe()
    try:
        env = {**os.environ, "TETHER_GUARD_TEST_HOLD_SETUP_FD": str(r)}
        with tether.spawn([PY, "-c", ORPHAN, str(w)], contain=mode, stdout=tether.PIPE,
                          wait_tree=True, env=env,
                          pass_fds=(r, w)) as child:  # type: ignore[arg-type]
            out, _ = child.communicate()
            assert int(out) == guard_pid_as_program_sees_it(child, mode)
    finally:
        os.close(r)
        os.close(w)
    assert nothing_left()


def _stopped(pid: int) -> bool:
    """The kernel's word on one process's state (/proc/PID/stat): stopped ("T")."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0] == b"T"


def test_a_program_stopped_before_the_guards_setup_is_reported_stopped(mode: str) -> None:
    # `tether run` on a terminal (job control): the guard reports the program's stops, which
    # only SIGCHLD tells it of. A program that stops (a background read of the terminal:
    # SIGTTIN) before the guard has set up its signals once went unreported, and `tether run`
    # never stopped: the guard set SIGCHLD to SIG_DFL there, and the kernel drops a pending
    # signal whose disposition becomes "ignore". Here the guard is held before its setup
    # (the test hook) until the program, which stops itself, is stopped; its pid pinned, as
    # its only reaper is the held guard.
    from tether._kernel.spec import SpawnSpec
    from tether._tree.child import start_child

    if not features.overlapped_start():
        pytest.skip("the program starts before the guard's setup only in the overlapped start")
    r, w = os.pipe()
    try:
        env = {**os.environ, "TETHER_GUARD_TEST_HOLD_SETUP_FD": str(r)}
        spec = SpawnSpec.build(["sh", "-c", "kill -STOP $$; exit 7"], env=env,
                               pass_fds=(r,), popen_style=True)
        with start_child(spec, mode, job_control=True) as child:  # type: ignore[arg-type]
            guard = child._tree.spawned.pid  # type: ignore[union-attr]
            deadline = time.monotonic() + 60
            with open(f"/proc/{guard}/task/{guard}/children") as f:
                program = int(f.read().split()[0])
            while not _stopped(program):
                assert time.monotonic() < deadline, "the program never stopped"
                select.select([], [], [], 0.001)
            os.close(w)  # the guard sets up now, with the program stopped already
            w = -1
            while not child.stops:
                assert time.monotonic() < deadline, "the program's stop was never reported"
                select.select([child.fileno()], [], [], 1.0)
                child.poll()
            assert child.stops == (signal.SIGSTOP,)
            child.signal_tree(signal.SIGCONT)
            assert child.wait(timeout=60) == 7
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert nothing_left()


def test_an_exec_failure_is_the_typed_error_and_leaves_nothing(
        mode: str, start: str, junk_program: str) -> None:
    with pytest.raises(FileNotFoundError):
        tether.spawn([junk_program], contain=mode)  # type: ignore[arg-type]
    assert nothing_left()


def test_an_argv_no_exec_takes_fails_both_execs_and_leaves_nothing(
        mode: str, start: str) -> None:
    # One argument over the kernel's 128 KiB per string: the guard's exec (it carries the
    # program's argv) and the program's both fail with E2BIG; the guard's clone child reaps
    # the program it started before failing.
    with pytest.raises(OSError) as info:
        tether.spawn(["true", "x" * (200 << 10)], contain=mode)  # type: ignore[arg-type]
    assert info.value.errno == errno.E2BIG
    assert nothing_left()


def test_a_guard_whose_exec_fails_ends_the_program_it_started(
        mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The program is cloned, and runs, before the guard's exec; a guard binary that cannot be
    # exec'd (here: not executable) fails after that. Its clone child kills and reaps the
    # program before it reports the failure.
    junk = tmp_path / "guard"
    junk.write_bytes(b"\0")
    junk.chmod(0o644)
    monkeypatch.setattr(guard_launch, "guard_path", lambda: str(junk))
    with pytest.raises(PermissionError):
        tether.spawn(["sleep", "300"], contain=mode)  # type: ignore[arg-type]
    assert nothing_left()


# The program forks a child that stays in its process group, says so on argv[1], and sleeps.
FORK_AND_SLEEP = r"""
import os, sys, time
if os.fork() == 0:
    os.write(int(sys.argv[1]), b"forked")
    time.sleep(300)
    os._exit(0)
time.sleep(300)
"""


def test_a_guard_whose_exec_fails_late_ends_what_the_program_forked(
        mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The guard's clone child is held after the program's clone (its test-only fault
    # injection) until the program has exec'd and forked; then its exec of a guard that
    # cannot be exec'd fails. What the program forked in its group goes with it (it was left
    # running: the clone child killed the program alone).
    junk = tmp_path / "guard"
    junk.write_bytes(b"\0")
    junk.chmod(0o644)
    monkeypatch.setattr(guard_launch, "guard_path", lambda: str(junk))
    hold_r, hold_w = os.pipe()
    forked_r, forked_w = os.pipe()

    def release_once_forked() -> None:
        try:
            if select.select([forked_r], [], [], 30.0)[0]:
                os.read(forked_r, 16)
        finally:
            os.close(hold_w)

    releaser = threading.Thread(target=release_once_forked)
    releaser.start()
    env = {**os.environ, "TETHER_TEST_EARLY_HOLD_FD": str(hold_r)}
    try:
        with pytest.raises(PermissionError):
            tether.spawn([PY, "-c", FORK_AND_SLEEP, str(forked_w)], contain=mode,  # type: ignore[arg-type]
                         env=env, pass_fds=(hold_r, forked_w))
    finally:
        releaser.join()
        for fd in (hold_r, forked_r, forked_w):
            os.close(fd)
    # (the killed child, orphaned, is reaped by the nearest subreaper: we)
    assert oracle.reap_until(10.0).empty


def test_a_guard_dead_before_it_adopted_the_program_leaves_nothing(
        mode: str, launches: list[object]) -> None:
    # The guard dies right after its exec (its test-only fault injection): the program runs
    # (or has died of PDEATHSIG before its exec), announced to us or not, and no report comes.
    # spawn() raises (EPROTO: no announcement either), or the exec pipe said the program was
    # past its exec and the first wait finds the guard dead (ChildProcessError); either way
    # the program is ended (PDEATHSIG, and we end its group through the pidfd it announced).
    env = {**os.environ, "TETHER_GUARD_TEST_DIE_AT_ADOPT": "1"}
    with pytest.raises(OSError) as info:
        tether.spawn(["sleep", "300"], contain=mode, env=env).wait()  # type: ignore[arg-type]
    assert launches[-1] is not None
    assert info.value.errno in (errno.EPROTO, errno.ECHILD)
    # (the killed program is a dead guard's orphan: the nearest subreaper, we, reaps it)
    assert oracle.reap_until(10.0).empty


FORK = r"""
import os
try:
    if os.fork() == 0:
        os._exit(0)
    print("forked")
except BlockingIOError:
    print("refused")
"""


def test_a_limited_tree_overlaps_and_its_program_starts_inside_the_limits(
        launches: list[object]) -> None:
    # The guard's clone child joins the tree's cgroups before it clones the program: with
    # pids=1 (the program alone; the guard's own place is added) its first fork is refused.
    require_mode("cgroup")
    out = tether.check_output([PY, "-c", FORK], contain="cgroup", limits=tether.Limits(pids=1))
    assert launches and launches[-1] is not None
    assert out == b"refused\n"


def test_close_fds_false_keeps_the_guards_start(launches: list[object]) -> None:
    # Every inheritable fd of the guard's clone child would reach the program.
    tsubprocess.run(["true"], close_fds=False)
    assert launches and launches[-1] is None


class Interrupted(Exception):
    pass


def freeze_new_trees(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every tree's cgroup frozen as it is made (a program cloned into it cannot exec); the
    list gets each one's path."""
    real = guard_launch.tree_cgroup
    made: list[str] = []

    def frozen(*args: object) -> object:
        cgroup, opts, fds = real(*args)  # type: ignore[arg-type]
        with open(os.path.join(cgroup.path, "cgroup.freeze"), "w") as f:
            f.write("1")
        made.append(cgroup.path)
        return cgroup, opts, fds

    monkeypatch.setattr(guard_launch, "tree_cgroup", frozen)
    return made


def until_the_program_is_in(made: list[str]) -> None:
    """The barrier (from another thread): the first frozen tree's cgroup has a member, by
    cgroup.events."""
    while not made:
        time.sleep(0.001)
    events = select.poll()
    with open(os.path.join(made[0], "cgroup.events"), "rb") as f:
        events.register(f, select.POLLPRI)
        while b"populated 1" not in (f.seek(0), f.read())[1]:
            events.poll(1000)


def start_frozen(monkeypatch: pytest.MonkeyPatch,
                 while_frozen: Callable[[], None] = lambda: None,
                 limits: tether.Limits | None = None) -> list[str]:
    """Spawn ``true`` (with ``limits``) into a frozen cgroup (the program cloned into it
    cannot exec), call ``while_frozen`` from another thread once the program is in it, then
    interrupt the launch with a signal whose handler raises. Returns the cgroup's path (one
    item)."""
    made = freeze_new_trees(monkeypatch)

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    def once_the_program_is_in(main: int) -> None:
        until_the_program_is_in(made)
        try:
            while_frozen()
        finally:
            signal.pthread_kill(main, signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, interrupt)
    sender = threading.Thread(target=once_the_program_is_in, args=(threading.get_ident(),))
    sender.start()
    try:
        with pytest.raises(Interrupted):
            tether.spawn(["true"], contain="cgroup", limits=limits)
    finally:
        sender.join()
        signal.signal(signal.SIGUSR1, old)
    return made


def test_a_signal_ends_the_wait_for_a_program_that_does_not_exec(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The launch waits until the program has exec'd (it reads the launch's memory until
    # then); a program that cannot get there (here: cloned into a frozen cgroup) must not hold
    # up a signal. The launch is abandoned (its memory left to the program), the handler runs,
    # and the tree is ended as for any interrupted start: the guard, waiting for the program's
    # exec, ends it at lifeline EOF. (Where the guard starts the program itself, it waits for
    # that exec in a vfork, deaf to its lifeline: such a start cannot be given up.)
    require_mode("cgroup")
    made = start_frozen(monkeypatch)
    assert oracle.reap_until(10.0).empty
    assert not os.path.exists(made[0])


def test_a_signal_ends_the_wait_for_the_exec_of_a_program_in_a_cpu_group(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A program in a cpu group of its own is polled for (launch_early.c, early_close) before
    # the launch sleeps on its exec: a program that never gets there still ends the poll and
    # the sleep at the caller's signal, and leaves nothing.
    require_mode("cgroup")
    made = start_frozen(monkeypatch, limits=tether.Limits(cpus=1.0))
    assert oracle.reap_until(10.0).empty
    assert not os.path.exists(made[0])


@pytest.mark.parametrize("limit_mode", ["cgroup", "pidns"])
def test_an_exec_failure_in_a_cpu_group_is_the_typed_error_and_leaves_nothing(
        limit_mode: str, junk_program: str) -> None:
    # The poll for the exec of a program in a cpu group of its own reads its failure record
    # as the sleep would.
    require_mode(limit_mode)
    with pytest.raises(FileNotFoundError):
        tether.spawn([junk_program], contain=limit_mode,  # type: ignore[arg-type]
                     limits=tether.Limits(cpus=1.0))
    assert nothing_left()


def test_a_program_that_has_not_exec_d_holds_no_fd_of_ours(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The program's clone copies the fd table of the guard's clone child, where every fd of
    # ours it does not keep was only marked close-on-exec: a program that cannot exec yet
    # (frozen here; its exec hung on a dead file system) would hold them all, so that a pipe
    # we close did not reach EOF, and another thread's start waited for it (its exec and start
    # pipes are such fds). The guard's own start of the program, after its exec, never did.
    require_mode("cgroup")
    r, w = os.pipe()
    at_eof: list[bool] = []

    def close_ours() -> None:
        os.close(w)
        at_eof.append(bool(select.select([r], [], [], 0)[0]) and os.read(r, 1) == b"")

    try:
        start_frozen(monkeypatch, close_ours)
    finally:
        os.close(r)
    assert at_eof == [True]
    assert oracle.reap_until(10.0).empty


def test_a_start_the_fd_limit_has_room_for_runs_as_the_guards_own_did(
        launches: list[object]) -> None:
    # The overlapped start holds four fds more while it starts (the exec pipe and the
    # program's lifeline): where RLIMIT_NOFILE leaves room for the guard's own start of the
    # program and not for those, the start must not fail with EMFILE; the guard starts the
    # program, as before.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    features.force_overlapped_start(False)
    try:
        for limit in range(4, 256):  # the lowest limit the guard's own start runs under
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            try:
                tether.run(["true"], contain="group")
                break
            except OSError as exc:
                assert exc.errno == errno.EMFILE
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        else:
            pytest.fail("no limit below 256 lets the guard's own start run")
        features.force_overlapped_start(True)
        launches.clear()
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        assert tether.run(["true"], contain="group").returncode == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        features.force_overlapped_start(True)
    assert launches[0] is not None  # (tried first)


def test_a_launch_given_up_to_a_signal_is_freed_once_its_program_has_exec_d(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A signal that comes before the program's exec ends the launch's wait for it, and what
    # the program may still read (its plan, argv, envp, a 64 KiB stack) is left to it. A
    # handler that does not raise is the common case (a profiler's or an interval timer's
    # SIGPROF/SIGALRM): the start goes on, and a process that spawns under such a timer gave
    # up that memory at every start the signal caught in the window, without bound. It must
    # be freed once the program has exec'd.
    require_mode("cgroup")
    real = guard_launch.tree_cgroup
    made = freeze_new_trees(monkeypatch)
    handled = threading.Event()

    def thaw_once_handled(main: int) -> None:
        until_the_program_is_in(made)
        signal.pthread_kill(main, signal.SIGUSR1)
        handled.wait()  # the launch has given up its wait: the handler runs after it
        with open(os.path.join(made[0], "cgroup.freeze"), "w") as f:
            f.write("0")

    def stacks() -> int:  # the overlapped start's 64 KiB stacks still allocated
        return sum(1 for trace in tracemalloc.take_snapshot().traces
                   if trace.size == 64 * 1024
                   and any(frame.filename.endswith("spawn.py") for frame in trace.traceback))

    old = signal.signal(signal.SIGUSR1, lambda signum, frame: handled.set())
    thawer = threading.Thread(target=thaw_once_handled, args=(threading.get_ident(),))
    tracemalloc.start(25)
    try:
        thawer.start()
        try:
            assert tether.run(["true"], contain="cgroup").returncode == 0
        finally:
            thawer.join()
        monkeypatch.setattr(guard_launch, "tree_cgroup", real)
        tether.run(["true"], contain="cgroup")  # (a later launch frees what was given up)
        assert handled.is_set()
        assert stacks() == 0
    finally:
        tracemalloc.stop()
        signal.signal(signal.SIGUSR1, old)


# Spawns with the hold variable argv[2] naming, in turn, each low fd number, none of them
# one of the program's pass_fds.
STRAY_HOLD = r"""
import os, sys, tether
for fd in range(3, 16):
    env = {**os.environ, sys.argv[2]: str(fd)}
    tether.run(["true"], contain=sys.argv[1], env=env)
print("ok")
"""


def no_hang_on_a_stray(variable: str, mode: str) -> None:
    """Spawns in ``mode`` with the test-only hold ``variable`` naming fds that are none of the
    program's pass_fds all end; run in a cgroup-mode tree, so that a hang leaves nothing."""
    require_mode("cgroup")
    try:
        result = tether.run([PY, "-c", STRAY_HOLD, mode, variable], contain="cgroup",
                            timeout=30, capture_output=True, text=True)
    except tether.TimeoutExpired:
        pytest.fail(f"a spawn hung on a stray {variable}")
    assert result.stdout == "ok\n", result


def test_the_guards_setup_hold_is_only_on_one_of_the_programs_pass_fds(mode: str) -> None:
    # The guard's test-only hold before its setup read from whatever fd the environment
    # named: a stray value naming one of the guard's own fds (its control socket, its
    # lifeline, the exec pipe) held it before its setup for good, and the spawn with it.
    no_hang_on_a_stray("TETHER_GUARD_TEST_HOLD_SETUP_FD", mode)


def test_the_early_hold_is_only_on_one_of_the_programs_pass_fds(mode: str) -> None:
    # The clone child's test-only hold read from whatever fd the program's environment
    # named: a stray value naming one of the clone child's own fds (the control socket, a
    # pipe it holds both ends of) hung the spawn, the parent suspended until the exec, and
    # the clone child outlived its SIGKILLed parent, blocked for good (an orphan).
    no_hang_on_a_stray("TETHER_TEST_EARLY_HOLD_FD", mode)
