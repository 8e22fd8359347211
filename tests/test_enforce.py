"""tether.enforce(): forbidden primitives raise DoctrineViolation from user code, tether's own
calls keep working.

An audit hook cannot be removed, so every test that installs one does it in a child made by
tether.run_in_fork: the child exits 0 only when the expected outcome happened, 3 when a
forbidden call went through (it then cleans up after itself), 4 on the wrong violation.
Forbidden calls are chosen to be harmless if they were not blocked (signal 0 to ourselves,
/bin/true, reading the test runner's /proc entry).
"""

from __future__ import annotations

import multiprocessing
import os
import pty
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

import pytest

import tether
from tether._enforce import DoctrineViolation, enforce
from tether._kernel.usercall import call_as_user

NOT_BLOCKED = 3
WRONG_EVENT = 4


def _compile_tether_lookalike() -> Callable[..., object]:
    # A function whose code claims a file in the tether package: to the hook (which goes by
    # the frame's file name) this is exactly what a tether module calling a helper looks like.
    filename = os.path.join(os.path.dirname(tether.__file__), "_looks_like_tether.py")
    namespace: dict[str, object] = {}
    exec(compile("def call(fn, *args):\n    return fn(*args)\n", filename, "exec"), namespace)
    return cast(Callable[..., object], namespace["call"])


call_from_tether_module = _compile_tether_lookalike()


def run_child(fn: Callable[[], object]) -> tether.Exit:
    """Run `fn` in a lifelined child and reap it; never leaves it running."""
    spawned = tether.run_in_fork(fn)
    with spawned.pidfd as pidfd, spawned.lifeline:
        try:
            return pidfd.wait(timeout=60)
        except BaseException:
            pidfd.send_signal(signal.SIGKILL)
            pidfd.wait()
            raise


def expect_violation(
    event: str, attempt: Callable[[], object], *, allow: Iterable[str] = ()
) -> Callable[[], None]:
    def child() -> None:
        enforce(allow=allow)
        try:
            attempt()
        except DoctrineViolation as violation:
            if violation.event != event:
                os._exit(WRONG_EVENT)
            return
        os._exit(NOT_BLOCKED)

    return child


def expect_allowed(
    attempt: Callable[[], object], *, allow: Iterable[str] = ()
) -> Callable[[], None]:
    def child() -> None:
        enforce(allow=allow)
        attempt()  # a DoctrineViolation here exits 1 with the traceback on stderr

    return child


# -- attempts, each harmless if enforcement failed -------------------------------------------


def kill_self() -> None:
    os.kill(os.getpid(), 0)  # noqa: TET201  deliberate, the primitive under test


def killpg_own_group() -> None:
    os.killpg(os.getpgid(0), 0)  # noqa: TET201  deliberate


def pthread_kill_self() -> None:
    signal.pthread_kill(threading.get_ident(), 0)  # noqa: TET202  deliberate


def popen_true() -> None:
    subprocess.Popen(["true"]).wait()  # noqa: TET102  deliberate


def run_true() -> None:
    subprocess.run(["true"], check=True)  # noqa: TET102  deliberate


def system_true() -> None:
    os.system("true")  # noqa: TET104  deliberate


def popen_shell() -> None:
    os.popen("true").close()  # noqa: TET104  deliberate


def posix_spawn_true() -> None:
    pid = os.posix_spawn("/bin/true", ["true"], os.environ)  # noqa: TET103  deliberate
    os.waitpid(pid, 0)  # noqa: TET301  reaping our own unreaped child


def spawnv_true() -> None:
    os.spawnv(os.P_WAIT, "/bin/true", ["true"])  # noqa: TET103  deliberate


def fork_and_reap() -> None:
    pid = os.fork()  # noqa: TET101  deliberate
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # noqa: TET301  reaping our own unreaped child


def pty_fork_and_reap() -> None:
    pid, fd = pty.fork()  # noqa: TET101  deliberate
    if pid == 0:
        os._exit(0)
    os.close(fd)
    os.waitpid(pid, 0)  # noqa: TET301  reaping our own unreaped child


def multiprocessing_fork() -> None:
    process = multiprocessing.get_context("fork").Process(target=int)  # noqa: TET105  deliberate
    process.start()
    process.join()


def exec_exiting_3() -> None:
    # If not blocked, the child becomes a Python that exits NOT_BLOCKED.
    os.execv(sys.executable, [sys.executable, "-c", f"raise SystemExit({NOT_BLOCKED})"])


def read_parent_proc_entry() -> None:
    # The test runner: a process we may read, but by number.
    with open(f"/proc/{os.getppid()}/stat") as file:  # noqa: TET601  deliberate
        file.read()


def read_parent_proc_entry_with_pathlib() -> None:
    (Path("/proc") / str(os.getppid()) / "status").read_text()  # noqa: TET601  deliberate


def list_proc() -> None:
    os.listdir("/proc")  # noqa: TET601  deliberate


FORBIDDEN = {
    "os_kill": ("os.kill", kill_self),
    "os_killpg": ("os.killpg", killpg_own_group),
    "signal_pthread_kill": ("signal.pthread_kill", pthread_kill_self),
    "subprocess_popen": ("subprocess.Popen", popen_true),
    "subprocess_run_through_stdlib": ("subprocess.Popen", run_true),
    "os_system": ("os.system", system_true),
    "os_popen_through_stdlib": ("subprocess.Popen", popen_shell),
    "os_posix_spawn": ("os.posix_spawn", posix_spawn_true),
    "os_spawnv_through_frozen_os": ("os.fork", spawnv_true),
    "os_fork": ("os.fork", fork_and_reap),
    "pty_fork_through_stdlib": ("os.forkpty", pty_fork_and_reap),
    "multiprocessing_fork_through_stdlib": ("os.fork", multiprocessing_fork),
    "os_exec": ("os.exec", exec_exiting_3),
    "open_proc_pid": ("open", read_parent_proc_entry),
    "open_proc_pid_through_pathlib": ("open", read_parent_proc_entry_with_pathlib),
    "listdir_proc": ("os.listdir", list_proc),
}


@pytest.mark.parametrize(("event", "attempt"), FORBIDDEN.values(), ids=FORBIDDEN.keys())
def test_forbidden_primitive_from_user_code_raises(
    event: str, attempt: Callable[[], object]
) -> None:
    assert run_child(expect_violation(event, attempt)).code == 0


ALLOWED = {
    "proc_self": lambda: open("/proc/self/stat").close(),
    "proc_own_pid": lambda: open(f"/proc/{os.getpid()}/stat").close(),  # noqa: TET601  own pid
    "proc_self_fd_listing": lambda: os.listdir("/proc/self/fd"),
    "proc_system_file": lambda: open("/proc/mounts").close(),
    "ordinary_file": lambda: open(__file__).close(),
}


@pytest.mark.parametrize("attempt", ALLOWED.values(), ids=ALLOWED.keys())
def test_harmless_use_is_not_forbidden(attempt: Callable[[], object]) -> None:
    assert run_child(expect_allowed(attempt)).code == 0


def test_allow_permits_the_named_event() -> None:
    assert run_child(expect_allowed(kill_self, allow=["os.kill"])).code == 0


def test_allow_permits_only_the_named_event() -> None:
    assert run_child(expect_violation("os.fork", fork_and_reap, allow=["os.kill"])).code == 0


def test_tether_run_in_fork_still_works_after_enforce() -> None:
    def child() -> None:
        enforce()
        # tether's own frame calls os.fork: allowed.
        assert run_child(lambda: None).code == 0

    assert run_child(child).code == 0


def test_tether_spawn_lifelined_still_works_after_enforce() -> None:
    def child() -> None:
        enforce()
        spawned = tether.spawn_lifelined(["true"])
        with spawned.pidfd as pidfd, spawned.lifeline:
            assert pidfd.wait(timeout=60).code == 0

    assert run_child(child).code == 0


def test_stdlib_frames_are_skipped_so_a_tether_caller_is_allowed() -> None:
    def child() -> None:
        enforce()
        # tether module -> subprocess.run -> Popen._execute_child -> audit: the first frame
        # outside the stdlib is the tether one.
        call_from_tether_module(subprocess.run, ["true"])  # noqa: TET102  deliberate

    assert run_child(child).code == 0


def test_call_as_user_charges_a_builtin_to_the_user() -> None:
    # Without call_as_user, a tether module calling a builtin it was handed (os.kill) would
    # be the calling frame and be allowed.
    def attempt() -> None:
        call_from_tether_module(call_as_user, os.kill, os.getpid(), 0)  # noqa: TET201  deliberate

    assert run_child(expect_violation("os.kill", attempt)).code == 0


def test_enforcement_is_inherited_by_tethers_fork_children() -> None:
    def grandchild() -> None:
        try:
            kill_self()
        except DoctrineViolation:
            return
        os._exit(NOT_BLOCKED)

    def child() -> None:
        enforce()
        # The callable tether runs in the fork is user code: its own os.kill is refused.
        assert run_child(grandchild).code == 0

    assert run_child(child).code == 0


def test_second_enforce_with_same_allow_is_a_no_op() -> None:
    def child() -> None:
        enforce(allow=["os.kill"])
        enforce(allow=["os.kill"])
        kill_self()

    assert run_child(child).code == 0


def test_second_enforce_with_different_allow_raises() -> None:
    def child() -> None:
        enforce()
        try:
            enforce(allow=["os.kill"])
        except RuntimeError as error:
            if isinstance(error, DoctrineViolation):
                os._exit(WRONG_EVENT)
            expect_violation("os.kill", kill_self)()  # still enforced as first installed
            return
        os._exit(NOT_BLOCKED)

    assert run_child(child).code == 0


def test_unknown_allow_name_raises_value_error_and_installs_nothing() -> None:
    def child() -> None:
        try:
            enforce(allow=["os.forkk"])
        except ValueError:
            kill_self()  # nothing was installed
            return
        os._exit(NOT_BLOCKED)

    assert run_child(child).code == 0


def test_violation_is_a_runtime_error_naming_the_replacement() -> None:
    violation = DoctrineViolation("os.kill", "os.kill(1, 0)", "Pidfd.send_signal()")
    assert isinstance(violation, RuntimeError)
    assert violation.event == "os.kill"
    assert "Pidfd.send_signal()" in str(violation)
    assert "allow=['os.kill']" in str(violation)
