"""Bad input gets a typed error before any clone, and leaves no fd and no process behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tether

pytestmark = pytest.mark.usefixtures("each_clone_method")


def _closed_fd() -> int:
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    return r


CASES: list[tuple[str, Callable[[Path], dict[str, Any]], type[BaseException]]] = [
    ("empty argv", lambda p: {"argv": []}, ValueError),
    ("argv is a string", lambda p: {"argv": "ls -l"}, TypeError),
    ("argv item is an int", lambda p: {"argv": ["echo", 3]}, TypeError),
    ("argv is not a sequence", lambda p: {"argv": 42}, TypeError),
    ("NUL in argv", lambda p: {"argv": ["echo", "a\0b"]}, ValueError),
    ("= in env key", lambda p: {"argv": ["true"], "env": {"A=B": "c"}}, ValueError),
    ("NUL in env key", lambda p: {"argv": ["true"], "env": {"A\0": "c"}}, ValueError),
    ("NUL in env value", lambda p: {"argv": ["true"], "env": {"A": "c\0d"}}, ValueError),
    ("empty env key", lambda p: {"argv": ["true"], "env": {"": "c"}}, ValueError),
    ("missing program", lambda p: {"argv": ["no-such-program-tether"]}, FileNotFoundError),
    ("missing program path", lambda p: {"argv": [str(p / "nope")]}, FileNotFoundError),
    ("directory as program", lambda p: {"argv": [str(p)]}, PermissionError),
    ("non-executable program", lambda p: {"argv": [str(_plain_file(p))]}, PermissionError),
    ("missing cwd", lambda p: {"argv": ["true"], "cwd": p / "gone"}, FileNotFoundError),
    ("cwd is a file", lambda p: {"argv": ["true"], "cwd": _plain_file(p)}, NotADirectoryError),
    ("negative pass_fd", lambda p: {"argv": ["true"], "pass_fds": [-1]}, ValueError),
    ("closed pass_fd", lambda p: {"argv": ["true"], "pass_fds": [_closed_fd()]}, OSError),
    ("closed stdout fd", lambda p: {"argv": ["true"], "stdout": _closed_fd()}, OSError),
    ("PIPE without spawn()", lambda p: {"argv": ["true"], "stdout": subprocess.PIPE}, ValueError),
    ("stdin of wrong type", lambda p: {"argv": ["true"], "stdin": 1.5}, TypeError),
]


def _plain_file(p: Path) -> Path:
    f = p / "plain.txt"
    f.write_text("not a program\n")
    f.chmod(0o644)
    return f


@pytest.mark.parametrize("name,make,exc", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_typed_error_and_leaks_nothing(
    name: str,
    make: Callable[[Path], dict[str, Any]],
    exc: type[BaseException],
    tmp_path: Path,
    no_leak: None,
) -> None:
    kwargs = make(tmp_path)
    argv = kwargs.pop("argv")
    with pytest.raises(exc):
        tether.spawn_lifelined(argv, **kwargs)


def test_missing_program_error_names_the_program(no_leak: None) -> None:
    with pytest.raises(FileNotFoundError) as info:
        tether.spawn_lifelined(["no-such-program-tether", "x"])
    assert info.value.filename == "no-such-program-tether"


def test_missing_cwd_error_names_the_cwd(tmp_path: Path, no_leak: None) -> None:
    with pytest.raises(FileNotFoundError) as info:
        tether.spawn_lifelined(["true"], cwd=tmp_path / "gone")
    assert info.value.filename == str(tmp_path / "gone")


def test_exec_failure_in_the_child_is_reported_and_reaped(tmp_path: Path, no_leak: None) -> None:
    # Passes every parent-side check (an executable file) but execve fails: ENOEXEC.
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF-not-really")
    junk.chmod(0o755)
    with pytest.raises(OSError) as info:
        tether.spawn_lifelined([str(junk)])
    assert "exec" in " ".join(getattr(info.value, "__notes__", []))


@pytest.mark.parametrize("stdout", [None, subprocess.PIPE], ids=["no pipe", "PIPE"])
def test_spawn_rejects_a_bufsize_that_is_no_integer_before_starting(
    stdout: Any, no_leak: None
) -> None:
    # subprocess.Popen raises TypeError up front; tether used to start the program first
    # (and, without a pipe to buffer, never complained at all).
    with pytest.raises(TypeError, match="bufsize must be an integer"):
        tether.spawn(["true"], bufsize="orange", stdout=stdout)  # type: ignore[arg-type]


def test_spawn_takes_bufsize_none_as_the_default_like_subprocess(no_leak: None) -> None:
    with tether.spawn(["true"], bufsize=None, stdout=subprocess.PIPE) as child:
        assert child.communicate() == (b"", None)
        assert child.returncode == 0
