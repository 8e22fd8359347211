"""The `tether` command: run's exit statuses, timeouts and signal forwarding; usage errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import oracle
import tether

PY = sys.executable


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
    assert oracle.reap_until(1.0).empty


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_run_forwards_signals_to_the_tree(sig: int, python_env: dict[str, str]) -> None:
    child = tether_cmd("run", "--", "sh", "-c", "echo up; sleep 300 & wait",
                       env=python_env, stdout=subprocess.PIPE)
    with child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"up\n"
        child.send_signal(sig)  # to `tether run` itself, which passes it to the tree
        assert child.wait() == 128 + sig
    assert oracle.reap_until(1.0).empty


def test_run_missing_command_exits_127(python_env: dict[str, str]) -> None:
    code, _, err = run_cli("run", "--", "no-such-program-tether", env=python_env)
    assert code == 127 and "no-such-program-tether" in err


@pytest.mark.parametrize("args", [["run"], ["run", "--"], ["run", "--timeout", "0", "--", "true"],
                                  ["run", "--timeout", "-1", "--", "true"], []])
def test_usage_errors_exit_2(args: list[str], python_env: dict[str, str]) -> None:
    code, _, err = run_cli(*args, env=python_env)
    assert code == 2
    assert "usage" in err.lower()


def test_run_contain_modes(mode: str, python_env: dict[str, str]) -> None:
    code, out, _ = run_cli("run", "--contain", mode, "--", "sh", "-c", "echo ok", env=python_env)
    assert (code, out) == (0, "ok\n")


def test_sigkilled_tether_run_leaves_no_descendant(mode: str, python_env: dict[str, str]) -> None:
    child = tether.spawn_lifelined(
        [PY, "-m", "tether", "run", "--contain", mode, "--", "sh", "-c",
         "echo up; sleep 300 & sleep 300"],
        env=python_env, stdout=(pipe := os.pipe())[1],
    )
    os.close(pipe[1])
    with os.fdopen(pipe[0], "rb") as f:
        assert f.readline() == b"up\n"
    child.pidfd.send_signal(signal.SIGKILL)
    child.pidfd.wait()
    assert oracle.reap_until(1.0).empty


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
