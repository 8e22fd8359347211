"""spawn() and Child: Popen parity, the program's pid and pidfd, signals, pipes, `with`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import oracle
import tether

PY = sys.executable


def test_pid_is_the_programs_not_the_guards(mode: str) -> None:
    with tether.spawn(["sh", "-c", "echo $$"], contain=mode, stdout=subprocess.PIPE) as child:
        out, _ = child.communicate()
    assert child.returncode == 0
    if mode == "pidns":
        # Inside its namespace the program is PID 2 (the guard is 1); our view of it comes
        # from its pidfd.
        assert int(out) == 2
    else:
        assert int(out) == child.pid


@pytest.mark.parametrize(
    "script", ["exit 0", "exit 3", "exit 255", "kill -TERM $$", "kill -KILL $$", "kill -INT $$"]
)
def test_returncode_matches_subprocess(script: str, mode: str) -> None:
    theirs = subprocess.run(["sh", "-c", script]).returncode  # noqa: TET101  the reference
    with tether.spawn(["sh", "-c", script], contain=mode) as child:
        assert child.wait() == theirs


def test_core_dump_is_reported(tmp_path: os.PathLike[str]) -> None:
    with tether.spawn(["sh", "-c", "ulimit -c unlimited && kill -ABRT $$"], cwd=tmp_path) as c:
        c.wait()
    assert c.exit is not None and c.exit.signal == signal.SIGABRT and c.exit.core_dumped


def test_signals_reach_the_program(mode: str) -> None:
    script = (
        "import signal, sys\n"
        "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(42))\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    with tether.spawn([PY, "-c", script], contain=mode, stdout=subprocess.PIPE) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        child.send_signal(signal.SIGUSR1)
        assert child.wait() == 42


def test_terminate_ends_every_member_of_the_tree(mode: str) -> None:
    child = tether.spawn(
        ["sh", "-c", "sleep 300 & sleep 300 & echo up; wait"], contain=mode,
        stdout=subprocess.PIPE,
    )
    with child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"up\n"
        child.terminate()
        assert child.wait() == -signal.SIGTERM
    assert oracle.reap_until(10.0).empty


def test_kill_ends_every_member_of_the_tree(mode: str) -> None:
    child = tether.spawn(["sh", "-c", "sleep 300 & sleep 300 & wait"], contain=mode)
    with child:
        child.kill()
        assert child.wait() == -signal.SIGKILL
    assert oracle.reap_until(10.0).empty


def test_with_block_kills_and_reaps_the_tree(mode: str) -> None:
    with tether.spawn(["sh", "-c", "sleep 300 & sleep 300"], contain=mode) as child:
        assert child.poll() is None
    assert child.returncode == -signal.SIGKILL
    assert oracle.reap_until(10.0).empty


def _gated_marker(gate_fd: int, marker: str) -> str:
    """A shell word that runs a grandchild which waits for EOF on gate_fd, then writes marker."""
    code = f"import os; os.read({gate_fd}, 1); open({marker!r}, 'w').close()"
    return f'{PY} -c "{code}"'


def test_default_policy_ends_the_background_grandchild(mode: str, tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "marker")
    gate_r, gate_w = os.pipe()
    try:
        child = tether.spawn(
            ["sh", "-c", f"{_gated_marker(gate_r, marker)} & exit 0"],
            contain=mode, pass_fds=[gate_r],
        )
    finally:
        os.close(gate_r)
    with child:
        assert child.wait() == 0  # returns although the grandchild was still blocked
    os.close(gate_w)
    assert oracle.reap_until(10.0).empty
    assert not os.path.exists(marker)


def test_wait_tree_policy_waits_for_the_grandchild(mode: str, tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "marker")
    gate_r, gate_w = os.pipe()
    try:
        child = tether.spawn(
            ["sh", "-c", f"{_gated_marker(gate_r, marker)} & exit 5"],
            contain=mode, pass_fds=[gate_r], wait_tree=True,
        )
    finally:
        os.close(gate_r)
    with child:
        # The program has exited, but its grandchild holds the tree open until the gate.
        with pytest.raises(tether.TimeoutExpired):
            child.wait(timeout=0.3)
        os.close(gate_w)
        assert child.wait() == 5
    assert os.path.exists(marker)


def test_communicate_handles_large_output_without_deadlock(mode: str) -> None:
    size = 4 * 1024 * 1024
    script = f"import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data * 2); " \
             f"sys.stderr.buffer.write(b'e' * {size})"
    with tether.spawn([PY, "-c", script], contain=mode, stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        out, err = child.communicate(b"x" * size)
    assert child.returncode == 0
    assert len(out) == 2 * size and len(err) == size


def test_text_mode_decodes_and_translates_newlines() -> None:
    with tether.spawn([PY, "-c", "import sys; sys.stdout.buffer.write(b'a\\r\\nb\\n')"],
                      stdout=subprocess.PIPE, text=True) as child:
        out, err = child.communicate()
    assert (out, err) == ("a\nb\n", None)


def test_communicate_returns_when_tree_ends_even_if_escaped_daemon_holds_the_pipe() -> None:
    # Group mode does not reach a setsid daemon; it keeps stdout open, yet communicate
    # returns once the tree the guard can see has ended. The daemon is then ended here
    # through its own lifeline (it is a test process of ours).
    lifeline_r, lifeline_w = os.pipe()
    try:
        daemon = (
            f"import os, tether; tether.attach({lifeline_r}); os.setsid(); "
            "import time; time.sleep(300)"
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.dirname(os.path.dirname(tether.__file__))
        child = tether.spawn(
            ["sh", "-c", f"setsid {PY} -c '{daemon}' & echo hi"],
            stdout=subprocess.PIPE, pass_fds=[lifeline_r], env=env,
        )
    finally:
        os.close(lifeline_r)
    with child:
        out, _ = child.communicate(timeout=10)
    assert out == b"hi\n" and child.returncode == 0
    os.close(lifeline_w)  # the escaped daemon's own lifeline: now it goes
    assert oracle.reap_until(10.0).empty


def test_program_pidfd_is_race_free_and_observes_exit(mode: str) -> None:
    with tether.spawn(["sleep", "300"], contain=mode) as child:
        assert child.pidfd.pid == child.pid
        child.pidfd.send_signal(signal.SIGKILL)
        assert child.wait() == -9
        assert child.pidfd.poll() == tether.Exit(code=None, signal=9)


def test_child_has_no_public_constructor() -> None:
    with pytest.raises(TypeError):
        tether.Child()


def test_unknown_mode_is_value_error_and_starts_nothing() -> None:
    before = oracle.baseline_fds()
    with pytest.raises(ValueError):
        tether.spawn(["true"], contain="jail")
    assert oracle.open_fds() == before
    assert oracle.no_descendants()


def test_unavailable_cgroup_is_unsupported_and_leaves_nothing(tmp_path: object) -> None:
    before = oracle.baseline_fds()
    with pytest.raises(tether.Unsupported):
        tether.spawn(["true"], contain="cgroup", cgroup_root=str(tmp_path))
    assert oracle.open_fds() == before
    assert oracle.no_descendants()


def test_missing_program_is_raised_by_spawn_itself(mode: str) -> None:
    before = oracle.baseline_fds()
    with pytest.raises(FileNotFoundError) as info:
        tether.spawn(["no-such-program-tether"], contain=mode)
    assert info.value.filename == "no-such-program-tether"
    assert oracle.open_fds() == before
    assert oracle.no_descendants()


def test_exec_failure_under_the_guard_is_raised_by_spawn(mode: str, tmp_path: object) -> None:
    junk = os.path.join(str(tmp_path), "junk")
    with open(junk, "wb") as f:
        f.write(b"\x7fELF-not-really")
    os.chmod(junk, 0o755)
    with pytest.raises(OSError) as info:
        tether.spawn([junk], contain=mode)
    assert info.value.errno is not None
    assert oracle.no_descendants()


def test_bare_mode_has_no_guard_and_ends_its_group() -> None:
    with tether.spawn(["sh", "-c", "sleep 300 & sleep 300 & wait"], contain=None) as child:
        assert child.contain is None
        child.kill()
        assert child.wait() == -9
    assert oracle.reap_until(10.0).empty


def test_bare_with_block_ends_the_group_after_the_leader_exited() -> None:
    with tether.spawn(["sh", "-c", "sleep 300 & exit 0"], contain=None) as child:
        assert child.wait() == 0  # the leader is gone, its group member lives on
    assert oracle.reap_until(10.0).empty


def test_with_block_closes_pipes_even_if_the_guard_was_killed() -> None:
    child = tether.spawn(["sleep", "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with child:
        child._tree.spawned.pidfd.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    assert child.stdout is not None and child.stdout.closed
    assert child.stderr is not None and child.stderr.closed
    assert oracle.reap_until(10.0).empty


def test_bad_encoding_fails_before_anything_starts() -> None:
    before = oracle.baseline_fds()
    with pytest.raises(LookupError):
        tether.spawn(["sleep", "300"], stdin=subprocess.PIPE, encoding="no-such-codec")
    assert oracle.open_fds() == before
    assert oracle.no_descendants()


def test_timeout_partial_output_is_bytes_even_in_text_mode() -> None:
    with pytest.raises(tether.TimeoutExpired) as info:
        tether.run(["sh", "-c", "printf '\\303'; sleep 300"], timeout=0.3, grace=0.2,
                   text=True, capture_output=True)
    assert info.value.output == b"\xc3"
