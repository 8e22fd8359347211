"""tether.subprocess and tether.aio.create_subprocess_*: the stdlib's drop-in, one behaviour per
test: each process attribute (guarded and contain=None alike), the stdlib's names and errors,
and what is better (nothing outlives the parent, communicate() ends with the tree, a dropped
Popen keeps running, signals by pidfd). CPython's own suites run in tests/test_compat_suite.py.
Oracle: this process is a child subreaper (tests/oracle.py)."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import os
import select
import signal
import subprocess as stdlib_subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import oracle
import tether
import tether.aio
from conftest import require_mode
from tether import subprocess

PY = sys.executable
CONTAINS = ["group", None]


def _out(argv: Any, **kwargs: Any) -> str:
    out: str = subprocess.check_output(argv, text=True, **kwargs)
    return out


# -- the names --------------------------------------------------------------------------------


def test_exceptions_and_constants_are_the_stdlibs_own_objects() -> None:
    for name in ("CalledProcessError", "CompletedProcess", "SubprocessError", "TimeoutExpired",
                 "PIPE", "STDOUT", "DEVNULL", "list2cmdline"):
        assert getattr(subprocess, name) is getattr(stdlib_subprocess, name), name


def test_except_stdlib_called_process_error_catches_tethers() -> None:
    with pytest.raises(stdlib_subprocess.CalledProcessError) as info:
        subprocess.check_call(["sh", "-c", "exit 4"])
    assert info.value.returncode == 4


@pytest.mark.parametrize("contain", ["group", "cgroup"])
def test_popen_is_a_stdlib_popen_with_the_programs_pid(contain: str) -> None:
    require_mode(contain)
    with subprocess.Popen(["sh", "-c", "echo $$"], stdout=subprocess.PIPE,
                          contain=contain) as p:  # type: ignore[arg-type]
        out, _ = p.communicate()
    assert isinstance(p, stdlib_subprocess.Popen)
    assert int(out) == p.pid


def test_in_pidns_pid_is_ours_and_the_program_sees_its_namespaces() -> None:
    # The documented difference: in a PID namespace (auto's choice as root) the program is
    # pid 2 there (the guard is 1); .pid is its pid as this process sees it.
    require_mode("pidns")
    with subprocess.Popen(["sh", "-c", "echo $$; exec sleep 300"], stdout=subprocess.PIPE,
                          contain="pidns") as p:  # type: ignore[arg-type]
        assert p.stdout is not None and p.stdout.readline() == b"2\n"
        p.kill()  # (that .pid is our view: tests/test_guard_protocol.py checks it exactly)


def test_getoutput_and_getstatusoutput() -> None:
    assert subprocess.getstatusoutput("echo x; exit 3") == (3, "x")
    assert subprocess.getoutput("echo y") == "y"


def test_missing_program_is_the_stdlibs_file_not_found(no_leak: None) -> None:
    with pytest.raises(FileNotFoundError) as info:
        subprocess.Popen(["/nonexistent/program"])
    assert (info.value.errno, info.value.filename) == (2, "/nonexistent/program")


# -- the attributes ---------------------------------------------------------------------------


def test_shell_runs_bin_sh() -> None:
    assert _out("echo $0", shell=True) == "/bin/sh\n"


def test_executable_replaces_the_program_but_not_argv0() -> None:
    assert _out(["whatever", "-c", "import sys; print(sys.argv[0])"], executable=PY) == "-c\n"


def test_cwd_may_be_path_like(tmp_path: Path) -> None:
    assert _out(["pwd"], cwd=tmp_path) == f"{tmp_path}\n"


@pytest.mark.parametrize("contain", CONTAINS)
def test_umask_reaches_the_program(contain: str | None) -> None:
    assert _out(["sh", "-c", "umask"], umask=0o027, contain=contain) == "0027\n"


@pytest.mark.parametrize("contain", CONTAINS)
def test_start_new_session_leads_a_session_whose_group_is_the_trees(contain: str | None) -> None:
    out = _out([PY, "-c", "import os; print(os.getsid(0) == os.getpgid(0) == os.getpid())"],
               start_new_session=True, contain=contain)
    assert out == "True\n"


def test_process_group_0_is_the_programs_own_group() -> None:
    out = _out([PY, "-c", "import os; print(os.getpgid(0) == os.getpid())"], process_group=0)
    assert out == "True\n"


def test_process_group_elsewhere_is_refused_before_anything_starts(no_leak: None) -> None:
    with pytest.raises(tether.Unsupported, match="process_group=1"):
        subprocess.Popen(["true"], process_group=1, stdout=subprocess.PIPE)


def _lower_nofile() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (77, 77))


@pytest.mark.parametrize("contain", CONTAINS)
def test_preexec_fn_runs_before_the_program_and_what_it_sets_reaches_it(
        contain: str | None) -> None:
    # Runs in a fork of this process; a limit it sets is inherited by the guard and program.
    assert _out(["sh", "-c", "ulimit -n"], preexec_fn=_lower_nofile, contain=contain) == "77\n"


def test_preexec_fn_exception_is_the_stdlibs_subprocess_error(no_leak: None) -> None:
    with pytest.raises(stdlib_subprocess.SubprocessError, match="Exception occurred in preexec_fn"):
        subprocess.Popen(["true"], preexec_fn=lambda: 1 / 0, stdout=subprocess.PIPE)


def test_preexec_fn_with_pidns_is_refused_before_anything_starts(no_leak: None) -> None:
    with pytest.raises(tether.Unsupported):
        subprocess.Popen(["true"], preexec_fn=lambda: None, stdout=subprocess.PIPE,
                         contain="pidns")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing ids needs root")
@pytest.mark.parametrize("contain", CONTAINS)
def test_user_group_and_extra_groups_reach_the_program(contain: str | None) -> None:
    out = _out(["sh", "-c", "id -u; id -g; id -G"], user=65534, group=65534,
               extra_groups=[1, 2], contain=contain)
    assert out.split("\n")[:3] == ["65534", "65534", "65534 1 2"]


def test_a_negative_user_id_is_the_stdlibs_value_error(no_leak: None) -> None:
    with pytest.raises(ValueError):
        subprocess.Popen(["true"], user=-1)


@pytest.mark.parametrize("contain", CONTAINS)
def test_close_fds_false_passes_inheritable_fds(contain: str | None) -> None:
    r, w = os.pipe()
    try:
        os.set_inheritable(w, True)
        subprocess.check_call([PY, "-c", "import os, sys; os.write(int(sys.argv[1]), b'via-fd')",
                               str(w)], close_fds=False, contain=contain)
        os.close(w)
        w = -1
        assert os.read(r, 100) == b"via-fd"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_close_fds_false_never_passes_a_lifeline_writer() -> None:
    # Another tree's lifeline writer is ours; it must never reach a child, or that child
    # would keep the other tree alive after we die.
    other = tether.spawn_lifelined(["sleep", "60"])
    try:
        fd = other.lifeline.fileno()
        ino = os.fstat(fd).st_ino
        probe = ("import os, sys\nfd, ino = int(sys.argv[1]), int(sys.argv[2])\n"
                 "try:\n    print(os.fstat(fd).st_ino == ino)\nexcept OSError:\n    print(False)")
        assert _out([PY, "-c", probe, str(fd), str(ino)], close_fds=False) == "False\n"
    finally:
        other.pidfd.send_signal(signal.SIGKILL)
        other.pidfd.wait()
        other.lifeline.close()


# The program's open fds above 2 (below 256) and its lifeline variable.
_FDS_PROBE = ("import json, os\ndef is_open(fd):\n    try:\n        os.fstat(fd)\n"
              "    except OSError:\n        return False\n    return True\n"
              "print(json.dumps([[fd for fd in range(3, 256) if is_open(fd)],"
              " os.environ.get('TETHER_LIFELINE_FD')]))")


@pytest.mark.parametrize("contain", ["group", "cgroup", "pidns"])
def test_a_guarded_popen_program_holds_only_the_fds_it_was_given(contain: str) -> None:
    # The stdlib's program has 0-2 and pass_fds; so has a guarded drop-in program: the guard
    # holds its tree, so the program gets no lifeline fd (nor its variable) of its own.
    require_mode(contain)
    r, w = os.pipe()
    try:
        out = _out([PY, "-c", _FDS_PROBE], pass_fds=[w], contain=contain)
    finally:
        os.close(r)
        os.close(w)
    assert json.loads(out) == [[w], None]


def test_without_a_guard_the_popen_program_keeps_its_lifeline() -> None:
    # contain=None: the lifeline is the only thing that ties the program to us.
    fds, lifeline = json.loads(_out([PY, "-c", _FDS_PROBE], contain=None))
    assert (fds, lifeline.split(":")[0]) == ([3], "3")


@pytest.mark.parametrize("contain", CONTAINS)
@pytest.mark.parametrize("restore", [True, False])
def test_restore_signals_decides_whether_sigpipe_stays_ignored(restore: bool,
                                                                contain: str | None) -> None:
    # This Python ignores SIGPIPE; restore_signals=False passes that on.
    p = subprocess.run(["sh", "-c", "kill -PIPE $$; echo alive"], stdout=subprocess.PIPE,
                       restore_signals=restore, contain=contain)
    assert (p.returncode, p.stdout) == ((-signal.SIGPIPE, b"") if restore else (0, b"alive\n"))


def test_pipesize_sets_the_pipes_capacity() -> None:
    with subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          pipesize=2 * 65536) as p:
        assert fcntl.fcntl(p.stdout.fileno(), fcntl.F_GETPIPE_SZ) == 2 * 65536
        p.communicate()


def test_text_encoding_and_errors() -> None:
    out = _out([PY, "-c", "import sys; sys.stdout.buffer.write(b'a\\xff\\r\\n')"],
               encoding="utf-8", errors="replace")
    assert out == "a\ufffd\n"


# -- the stdlib's lifetime, tether's containment ----------------------------------------------


def test_with_waits_for_the_program_like_the_stdlib() -> None:
    with subprocess.Popen([PY, "-c", "import sys; sys.stdin.read(); sys.exit(3)"],
                          stdin=subprocess.PIPE) as p:
        assert p.poll() is None  # still blocked on stdin: `with` must wait, not kill
    assert p.returncode == 3


def test_a_dropped_popen_keeps_running() -> None:
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    try:
        p = subprocess.Popen(["cat"], stdin=to_r, stdout=from_w)
        del p
        gc.collect()
        os.write(to_w, b"still here\n")
        ready, _, _ = select.select([from_r], [], [], 30)  # a barrier, not a sleep
        assert ready and os.read(from_r, 100) == b"still here\n"
    finally:
        for fd in (to_r, to_w, from_w):
            os.close(fd)
    # stdin's EOF ends cat; once its tree has ended, the next Popen reaps the dropped one.
    select.select([from_r], [], [], 30)
    os.close(from_r)


@pytest.mark.parametrize("preexec", ["None", "os.getpid"])
def test_descendants_do_not_outlive_a_sigkilled_parent(preexec: str,
                                                       python_env: dict[str, str]) -> None:
    parent_code = ("import os, time\nfrom tether import subprocess\n"
                   f"subprocess.Popen(['sh', '-c', 'sleep 300 & sleep 300'],"
                   f" preexec_fn={preexec})\n"
                   "os.write(1, b'started\\n')\ntime.sleep(300)\n")
    r, w = os.pipe()
    try:
        parent = tether.spawn_lifelined([PY, "-c", parent_code], stdout=w, env=python_env)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.readline() == b"started\n"
    parent.pidfd.send_signal(signal.SIGKILL)
    assert parent.pidfd.wait().signal == signal.SIGKILL
    assert oracle.reap_until(5.0).empty, "descendants left after the parent's SIGKILL"


def test_communicate_returns_although_a_grandchild_holds_the_pipe() -> None:
    # The stdlib's communicate() reads until EOF: it would wait out the background sleep.
    with subprocess.Popen(["sh", "-c", "sleep 300 & echo out"], stdout=subprocess.PIPE) as p:
        out, _ = p.communicate(timeout=60)
    assert (p.returncode, out) == (0, b"out\n")
    assert oracle.reap_until(10.0).empty


def test_wait_timeout_raises_the_stdlibs_timeout_expired() -> None:
    with subprocess.Popen(["sleep", "60"]) as p:
        with pytest.raises(stdlib_subprocess.TimeoutExpired):
            p.wait(timeout=0.01)
        p.kill()
    assert p.returncode == -signal.SIGKILL


def test_a_negative_wait_timeout_is_the_stdlibs_already_expired() -> None:
    # The stdlib's communicate(timeout) hands wait() what is left, which can be below zero:
    # a negative timeout is one look (TimeoutExpired naming it) as in the stdlib, never a
    # ValueError; a tree whose end is reported is returned.
    with subprocess.Popen(["sleep", "60"]) as p:
        with pytest.raises(stdlib_subprocess.TimeoutExpired) as raised:
            p.wait(timeout=-0.5)
        assert raised.value.timeout == -0.5
        p.kill()
    with subprocess.Popen(["true"]) as p:
        tree = p._tether_tree
        while not tree.pump():  # the guard's exit report (its start's may come first: a
            select.select([tree.fileno()], [], [], 60)  # start the exec pipe told us of)
        assert p.wait(timeout=-1) == 0


def test_send_signal_goes_through_the_pidfd_and_is_a_no_op_after_the_end() -> None:
    p = subprocess.Popen(["sleep", "60"])
    p.send_signal(signal.SIGTERM)
    assert p.wait() == -signal.SIGTERM
    p.send_signal(signal.SIGKILL)  # ended: never reaches a recycled number
    assert p.returncode == -signal.SIGTERM


def test_run_timeout_kills_and_raises_the_stdlibs_error() -> None:
    with pytest.raises(stdlib_subprocess.TimeoutExpired):
        subprocess.run(["sleep", "60"], timeout=0.05)
    assert oracle.reap_until(10.0).empty


# -- asyncio ----------------------------------------------------------------------------------


def test_create_subprocess_exec_is_asyncios_process() -> None:
    async def main() -> tuple[Any, ...]:
        proc = await tether.aio.create_subprocess_exec(
            "sh", "-c", "cat; echo err >&2; exit 3", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert isinstance(proc.stdin, asyncio.StreamWriter)
        out, err = await proc.communicate(b"in")
        return out, err, proc.returncode

    assert asyncio.run(main()) == (b"in", b"err\n", 3)


def test_create_subprocess_shell_honours_limit() -> None:
    async def main() -> None:
        proc = await tether.aio.create_subprocess_shell(
            "printf '%050d\\n' 0", stdout=asyncio.subprocess.PIPE, limit=10)
        assert proc.stdout is not None
        with pytest.raises(ValueError):  # LimitOverrunError, as asyncio's readline raises
            await proc.stdout.readline()
        await proc.wait()

    asyncio.run(main())


def test_create_subprocess_exec_refuses_text_like_asyncio(no_leak: None) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="text must be False"):
            await tether.aio.create_subprocess_exec("true", text=True)

    asyncio.run(main())


def test_create_subprocess_needs_no_helper_thread() -> None:
    import threading

    async def main() -> int:
        proc = await tether.aio.create_subprocess_exec("sh", "-c", "exit 5")
        assert threading.active_count() == 1
        return await proc.wait()

    assert asyncio.run(main()) == 5


def test_tether_subprocess_is_reachable_as_an_attribute_of_tether(
        python_env: dict[str, str]) -> None:
    # In a fresh interpreter: here, `from tether import subprocess` has set the attribute.
    code = "import tether; print(tether.subprocess.run(['true']).returncode)"
    assert tether.check_output([PY, "-c", code], env=python_env) == b"0\n"


@pytest.mark.parametrize("contain", ["group", None])
def test_putenv_in_preexec_fn_reaches_the_program_as_with_the_stdlib(contain: str | None) -> None:
    # env not given: the program gets the environment as preexec_fn left it (the stdlib execs
    # with the C environ; tether reads it again in its forked child).
    out = subprocess.check_output(
        [sys.executable, "-c", "import os; print(os.getenv('FRUIT'))"],
        preexec_fn=lambda: os.putenv("FRUIT", "apple"), contain=contain)  # type: ignore[call-overload]
    assert out == b"apple\n"
    # An env that is given is what the program gets.
    out = subprocess.check_output(
        [sys.executable, "-c", "import os; print(os.getenv('FRUIT'))"], env={},
        preexec_fn=lambda: os.putenv("FRUIT", "apple"), contain=contain)  # type: ignore[call-overload]
    assert out == b"None\n"
