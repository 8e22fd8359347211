"""The `tether` command: run's exit statuses, timeouts and signal forwarding; usage errors."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, NoReturn

import pytest

import oracle
import tether
import tether._tree.modes
from conftest import first_line

PY = sys.executable
# How long "up" may take to come on a loaded 2-vCPU machine: a bound against hangs, not a
# measurement.
UP_TIMEOUT_S = 60.0


def tether_cmd(*args: str, env: dict[str, str], **kw: object) -> tether.Child:
    return tether.spawn([PY, "-m", "tether", *args], env=env, **kw)  # type: ignore[arg-type]


def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    with tether_cmd(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True) as child:
        out, err = child.communicate(timeout=60)
    assert child.returncode is not None
    return child.returncode, out, err


@pytest.mark.parametrize("script,status", [
    ("exit 0", 0), ("exit 7", 7), ("kill -TERM $$", 128 + 15), ("kill -KILL $$", 128 + 9),
])
def test_run_exit_status(script: str, status: int, python_env: dict[str, str]) -> None:
    code, _, _ = run_cli("run", "--", "sh", "-c", script, env=python_env)
    assert code == status


def test_run_passes_stdio_through(python_env: dict[str, str]) -> None:
    code, out, err = run_cli("run", "--", "sh", "-c", "echo out; echo err >&2", env=python_env)
    assert (code, out, err) == (0, "out\n", "err\n")


def test_run_timeout_exits_124_and_leaves_nothing(python_env: dict[str, str]) -> None:
    code, _, _ = run_cli("run", "--timeout", "0.3", "--grace", "0.2", "--",
                         "sh", "-c", "trap '' TERM; sleep 300 & sleep 300", env=python_env)
    assert code == 124
    assert oracle.reap_until(10.0).empty


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_run_forwards_signals_to_the_tree(sig: int, python_env: dict[str, str]) -> None:
    child = tether_cmd("run", "--", "sh", "-c", "echo up; sleep 300 & wait",
                       env=python_env, stdout=subprocess.PIPE)
    with child:
        assert _readline(child.stdout) == b"up\n"
        child.send_signal(sig)  # to `tether run` itself, which passes it to the tree
        assert child.wait(timeout=UP_TIMEOUT_S) == 128 + sig
    assert oracle.reap_until(10.0).empty


def test_run_missing_command_exits_127(python_env: dict[str, str]) -> None:
    code, _, err = run_cli("run", "--", "no-such-program-tether", env=python_env)
    assert code == 127 and "no-such-program-tether" in err


@pytest.mark.parametrize("args", [["run"], ["run", "--"], ["run", "--timeout", "0", "--", "true"],
                                  ["run", "--timeout", "-1", "--", "true"], ["run", "--bogus"],
                                  ["--bogus"], []])
def test_usage_errors_exit_125_not_a_programs_status(args: list[str],
                                                    python_env: dict[str, str]) -> None:
    """A usage error is tether's failure (125, like timeout(1) and env(1)), never 2: a
    program's own exit 2 must stay distinguishable."""
    code, _, err = run_cli(*args, env=python_env)
    assert code == 125
    assert err.lower().count("usage:") == 1


@pytest.mark.parametrize("args", [["run"], ["run", "--bogus"], ["run", "--timeout", "x", "--",
                                                                   "true"]])
def test_run_usage_errors_show_runs_usage(args: list[str], python_env: dict[str, str]) -> None:
    code, _, err = run_cli(*args, env=python_env)
    assert code == 125
    assert err.startswith("usage: tether run ")
    assert "tether run: error:" in err


def test_version(python_env: dict[str, str]) -> None:
    code, out, _ = run_cli("--version", env=python_env)
    assert (code, out) == (0, f"tether {tether.__version__}\n")


def test_run_a_directory_says_is_a_directory(tmp_path: Path, python_env: dict[str, str]) -> None:
    code, _, err = run_cli("run", "--", str(tmp_path), env=python_env)
    assert (code, err) == (126, f"tether: {tmp_path}: Is a directory\n")


def test_bad_cgroup_root_from_the_environment_is_named_without_errno_noise(
        tmp_path: Path, python_env: dict[str, str]) -> None:
    env = {**python_env, "TETHER_CGROUP_ROOT": str(tmp_path)}
    code, _, err = run_cli("run", "--contain", "cgroup", "--", "true", env=env)
    assert code == 125
    assert "[Errno" not in err
    assert f"TETHER_CGROUP_ROOT={tmp_path}" in err


def test_run_contain_modes(mode: str, python_env: dict[str, str]) -> None:
    code, out, _ = run_cli("run", "--contain", mode, "--", "sh", "-c", "echo ok", env=python_env)
    assert (code, out) == (0, "ok\n")


def _readline(stream: IO[bytes] | None) -> bytes:
    assert stream is not None
    return first_line(stream.fileno(), UP_TIMEOUT_S)


def _sigkill_once_up(run_args: list[str], env: dict[str, str]) -> None:
    """Start `tether run RUN_ARGS` as our lifelined child, wait until its tree says "up",
    then SIGKILL tether itself and reap it (SIGKILLed and reaped also when "up" never came)."""
    r, w = os.pipe()
    try:
        child = tether.spawn_lifelined([PY, "-m", "tether", "run", *run_args], env=env,
                                       stdout=w)
    finally:
        os.close(w)
    try:
        try:
            got = first_line(r, UP_TIMEOUT_S)
        finally:
            os.close(r)
        assert got == b"up\n", f"tether run said {got!r} before ending or {UP_TIMEOUT_S} s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.pidfd.send_signal(signal.SIGKILL)
        child.pidfd.wait()
        child.lifeline.close()
        child.pidfd.close()


def test_sigkilled_tether_run_leaves_no_descendant(mode: str, python_env: dict[str, str]) -> None:
    _sigkill_once_up(["--contain", mode, "--", "sh", "-c", "echo up; sleep 300 & sleep 300"],
                     python_env)
    assert oracle.reap_until(10.0).empty


def test_doctor_runs_and_reports_core_guarantees(python_env: dict[str, str]) -> None:
    code, out, _ = run_cli("doctor", env=python_env)
    assert code == 0
    assert "clone3" in out and "containment modes" in out


def test_doctor_json(python_env: dict[str, str]) -> None:
    import json

    code, out, _ = run_cli("doctor", "--json", env=python_env)
    report = json.loads(out)
    assert code == 0 and report["core_guarantees"] is True
    assert {"group", "cgroup", "pidns"} <= set(report["modes"])


def test_internal_file_not_found_is_tethers_failure_not_127(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A file of tether's own that vanished (a cgroup directory swept by a concurrent start)
    is tether's failure: 125, never "command not found"."""
    from tether import cli

    def vanished(*args: object, **kwargs: object) -> NoReturn:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory",
                                "/sys/fs/cgroup/tether/t-0123abcd/cgroup.procs")

    monkeypatch.setattr(cli, "start_child", vanished)
    assert cli.main(["run", "--contain", "group", "--", "true"]) == 125
    err = capsys.readouterr().err
    assert "t-0123abcd" in err and "[Errno" not in err


def test_forwarded_signal_escalates_to_sigkill_after_grace(python_env: dict[str, str]) -> None:
    """A tree that ignores SIGINT/SIGTERM/SIGHUP cannot keep `tether run` running: --grace
    after forwarding, the whole tree gets SIGKILL."""
    child = tether_cmd("run", "--grace", "0.3", "--", "sh", "-c",
                       "trap '' INT TERM HUP; echo up; sleep 300 & wait",
                       env=python_env, stdout=subprocess.PIPE)
    with child:
        assert _readline(child.stdout) == b"up\n"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 128 + signal.SIGKILL
    assert oracle.reap_until(10.0).empty


# SIGINT blocked and taken with sigwait: a handler and signal.pause() would lose a SIGINT
# that lands after the loop's last check for pending handlers and before pause() sleeps.
_ANSWERS_SIGINT = """
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
print("up", flush=True)
while True:
    signal.sigwait({signal.SIGINT})
    print("got", flush=True)
"""


def test_second_sigint_escalates_at_once(python_env: dict[str, str]) -> None:
    """The second Ctrl-C does not wait for --grace."""
    # A program that answers each SIGINT and has no child: a shell's trap would wait for its
    # foreground child, and a SIGINT landing between its fork and exec is caught by the
    # copy's inherited trap and lost.
    child = tether_cmd("run", "--grace", "3600", "--", PY, "-c", _ANSWERS_SIGINT,
                       env=python_env, stdout=subprocess.PIPE)
    with child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"up\n"
        child.send_signal(signal.SIGINT)
        assert child.stdout.readline() == b"got\n"  # tether has read and forwarded the first
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=60) == 128 + signal.SIGKILL
    assert oracle.reap_until(10.0).empty


def test_guard_killed_after_start_exits_125_with_a_message(python_env: dict[str, str]) -> None:
    # group mode, inside and out: the program's parent is the guard, and $PPID is a number
    # in this test's PID namespace. The program has no child of its own: "echo" can run
    # before the guard has reported the start, and a guard killed then leaves the program's
    # children running (issue 11, item 2, not this test's subject; it made this test stall
    # for 300 s on a `sleep 300 &` that held stderr).
    child = tether_cmd("run", "--contain", "group", "--", "sh", "-c",
                       "echo $PPID; exec sleep 300", contain="group",
                       env=python_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with child:
        assert child.stdout is not None and child.stderr is not None
        guard_pid = int(child.stdout.readline())
        os.kill(guard_pid, signal.SIGKILL)  # the guard is alive: it holds its unreaped child
        assert child.wait(timeout=60) == 125
        # Until the tree is over, not until EOF: never stalled by a process that outlived it.
        _, err = child.communicate(timeout=60)
    assert err.startswith("tether: ") and "guard" in err and "Traceback" not in err
    assert oracle.reap_until(10.0).empty


def test_run_defaults_to_the_strongest_mode_a_setsid_daemon_dies_with_tether(
        python_env: dict[str, str]) -> None:
    """The CLI's promise ("nothing outlives tether, even SIGKILLed") holds by default: the
    default is auto, which takes a daemon that left the process group along."""
    if tether._tree.modes.resolve_mode("auto") == "group":
        pytest.skip("auto is group here: neither pidns nor cgroup is available")
    _sigkill_once_up(["--", "sh", "-c", "setsid sleep 300 & echo up; wait"], python_env)
    assert oracle.reap_until(10.0).empty
