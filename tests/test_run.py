"""tether.run() / check_output(): subprocess.run's contract, side by side with subprocess,
minus its two hangs (a grandchild holding the pipes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import oracle
import tether
from tether._kernel import cgroup_ahead

PY = sys.executable

PARITY: list[tuple[str, list[str], dict[str, Any]]] = [
    ("exit code", ["sh", "-c", "exit 3"], {}),
    ("signal death", ["sh", "-c", "kill -TERM $$"], {}),
    ("capture both", ["sh", "-c", "echo out; echo err >&2"], {"capture_output": True}),
    ("stderr to stdout", ["sh", "-c", "echo out; echo err >&2"],
     {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}),
    ("input bytes", ["cat"], {"input": b"abc\n", "capture_output": True}),
    ("input text", ["cat"], {"input": "h\u00e9\n", "capture_output": True, "text": True}),
    ("text newlines", [PY, "-c", "import sys; sys.stdout.buffer.write(b'a\\r\\nb')"],
     {"capture_output": True, "text": True}),
    ("encoding", [PY, "-c", "import sys; sys.stdout.buffer.write('\u00e9'.encode('latin-1'))"],
     {"capture_output": True, "encoding": "latin-1"}),
    ("env", ["sh", "-c", "echo $FOO"], {"env": {"FOO": "bar", "PATH": os.defpath},
                                        "capture_output": True}),
    ("devnull", ["sh", "-c", "cat; echo done"], {"stdin": subprocess.DEVNULL,
                                                 "capture_output": True}),
    ("large output", [PY, "-c", "import sys; sys.stdout.write('x' * 3000000)"],
     {"capture_output": True}),
]


@pytest.mark.parametrize("name,argv,kwargs", PARITY, ids=[p[0] for p in PARITY])
def test_parity_with_subprocess_run(name: str, argv: list[str], kwargs: dict[str, Any]) -> None:
    theirs = subprocess.run(argv, **kwargs)  # noqa: TET102  the reference we compare with
    ours = tether.run(argv, **kwargs)
    assert (ours.args, ours.returncode, ours.stdout, ours.stderr) == (
        theirs.args, theirs.returncode, theirs.stdout, theirs.stderr)


def test_parity_cwd(tmp_path: Path) -> None:
    theirs = subprocess.run(["pwd"], cwd=tmp_path, capture_output=True)  # noqa: TET102
    ours = tether.run(["pwd"], cwd=tmp_path, capture_output=True)
    assert ours.stdout == theirs.stdout


def test_check_raises_called_process_error_like_subprocess() -> None:
    with pytest.raises(subprocess.CalledProcessError) as ours:
        tether.run(["sh", "-c", "echo o; exit 4"], check=True, capture_output=True)
    with pytest.raises(subprocess.CalledProcessError) as theirs:
        subprocess.run(["sh", "-c", "echo o; exit 4"], check=True,  # noqa: TET102
                       capture_output=True)
    assert (ours.value.returncode, ours.value.output) == (
        theirs.value.returncode, theirs.value.output)


def test_check_output_like_subprocess() -> None:
    assert tether.check_output(["echo", "hi"]) == b"hi\n"
    assert tether.check_output(["cat"], input="x", text=True) == "x"
    with pytest.raises(subprocess.CalledProcessError):
        tether.check_output(["false"])


def test_program_exit_returns_although_grandchild_holds_stdout() -> None:
    # subprocess.run raises a false TimeoutExpired here and leaves the sleep running.
    result = tether.run(["sh", "-c", "sleep 30 & echo hi"], capture_output=True, timeout=5)
    assert (result.returncode, result.stdout) == (0, b"hi\n")
    assert oracle.reap_until(10.0).empty


def test_program_exit_returns_without_timeout_too() -> None:
    result = tether.run(["sh", "-c", "sleep 30 & echo hi"], capture_output=True)
    assert (result.returncode, result.stdout) == (0, b"hi\n")
    assert oracle.reap_until(10.0).empty


def test_timeout_ends_the_tree_and_carries_partial_output() -> None:
    timeout, grace = 0.5, 0.3
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as info:
        tether.run(["sh", "-c", "echo partial; trap '' TERM; sleep 300 & sleep 300"],
                   capture_output=True, timeout=timeout, grace=grace)
    elapsed = time.monotonic() - start
    assert isinstance(info.value, tether.TimeoutExpired)
    assert info.value.output == b"partial\n"
    assert info.value.timeout == timeout
    # The behaviour itself, not a hang check: run() returns at the deadline plus the grace
    # although the program ignores SIGTERM and its sleeps hold the pipes (subprocess.run
    # would block here for 300 s). Generous bound: only "not when the tree ends by itself".
    assert elapsed < timeout + grace + 30.0
    assert oracle.reap_until(10.0).empty


def test_sigterm_is_tried_before_sigkill() -> None:
    with pytest.raises(tether.TimeoutExpired) as info:
        tether.run([PY, "-c", "import signal, sys, time\n"
                    "signal.signal(signal.SIGTERM, lambda *a: (print('term', flush=True), "
                    "sys.exit(0)))\nprint('up', flush=True)\ntime.sleep(300)"],
                   capture_output=True, text=True, timeout=1, grace=5)
    assert info.value.output == b"up\nterm\n"  # partial output stays bytes, as in subprocess


@pytest.mark.parametrize("kwargs,exc", [
    ({"timeout": -1}, ValueError),
    ({"input": b"x", "stdin": subprocess.PIPE}, ValueError),
    ({"input": "x"}, TypeError),
    ({"input": b"x", "text": True}, TypeError),
    ({"capture_output": True, "stdout": subprocess.PIPE}, ValueError),
    ({"contain": "nope"}, ValueError),
])
def test_bad_input_is_rejected_before_anything_starts(kwargs: dict[str, Any],
                                                       exc: type[Exception]) -> None:
    before = oracle.baseline_fds()
    with pytest.raises(exc):
        tether.run(["cat"], **kwargs)
    assert oracle.open_fds() == before
    assert oracle.no_descendants()


def test_run_in_every_mode(mode: str) -> None:
    result = tether.run(["sh", "-c", "echo $0", "m"], capture_output=True, contain=mode)
    assert (result.returncode, result.stdout) == (0, b"m\n")



def test_exec_failure_raises_what_subprocess_raises_and_leaves_nothing(
        mode: str, junk_program: str) -> None:
    # Found executable, refused by exec itself (a missing interpreter): only the guard sees
    # it, and run() must raise what subprocess.run raises, with nothing left behind.
    with pytest.raises(FileNotFoundError) as expected:
        subprocess.run([junk_program])
    tether.run(["true"], contain=mode)  # lazy state (cgroup root, probes) before the count
    cgroup_ahead.drain()  # (and the next tree's directory, made ahead: process-wide)
    before = oracle.baseline_fds()
    with pytest.raises(FileNotFoundError) as info:
        tether.run([junk_program], input=b"x" * 200000, capture_output=True, contain=mode)
    assert info.value.errno == expected.value.errno
    cgroup_ahead.drain()
    assert oracle.open_fds() == before
    assert oracle.no_descendants()
