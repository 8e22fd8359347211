"""SpawnSpec: the one conversion of spawn arguments, and what its callers see of it.

The order in which bad arguments are reported is the one each entry point always had (Popen
style for spawn/run/aio: the streams first; spawn_lifelined: the program first), a handle's
repr never raises, and a pidfd's command line is a snapshot. These pinned the behaviour
through the layering refactor (found red by a review, green since). Bad input leaves nothing
behind: the ``no_leak`` fixture checks the fd table and the subreaper oracle.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oracle
import tether

# -- the order in which bad arguments are reported ---------------------------------------------
#
# At 480f10b spawn_lifelined() checked argv, env, cwd, pass_fds, then resolved the program, and
# only then looked at stdin/stdout/stderr (_spawn.py: convert_stdio after resolve_executable and
# clone_method). SpawnSpec.build now converts stdio *before* resolving the program, so a missing
# program with a bad stdio argument reports the stdio argument instead.


@pytest.mark.parametrize(
    "stdio",
    [
        {"stdout": -5},
        {"stdout": subprocess.PIPE},
        {"stdin": "not-a-file"},
    ],
    ids=["negative-fd", "PIPE", "wrong-type"],
)
def test_spawn_lifelined_reports_a_missing_program_before_bad_stdio(
    stdio: dict[str, Any], no_leak: None
) -> None:
    with pytest.raises(FileNotFoundError) as info:
        tether.spawn_lifelined(["/nonexistent/tether-review-program"], **stdio)
    assert info.value.filename == "/nonexistent/tether-review-program"


# At 480f10b tether.spawn() (and run() and tether.aio, which go through it) turned
# stdin/stdout/stderr into fds first (_child.py: _stdio_with_pipes before _spawn/Guard.launch),
# so a bad stdio argument was reported ahead of a bad argv, env, cwd or pass_fds. SpawnSpec.build
# now checks argv/env/cwd/pass_fds first: the same call raises a different exception type.

_BAD_OTHER: list[tuple[str, Callable[[Path], dict[str, Any]]]] = [
    ("missing-cwd", lambda p: {"argv": ["true"], "cwd": p / "gone"}),
    ("argv-is-a-string", lambda p: {"argv": "true"}),
    ("empty-argv", lambda p: {"argv": []}),
    ("env-not-a-mapping", lambda p: {"argv": ["true"], "env": 3}),
    ("negative-pass-fd", lambda p: {"argv": ["true"], "pass_fds": [-1]}),
]


@pytest.mark.parametrize("contain", ["group", None])
@pytest.mark.parametrize("name,make", _BAD_OTHER, ids=[c[0] for c in _BAD_OTHER])
def test_spawn_reports_bad_stdio_first(
    name: str, make: Callable[[Path], dict[str, Any]], contain: str | None,
    tmp_path: Path, no_leak: None,
) -> None:
    kwargs = make(tmp_path)
    argv = kwargs.pop("argv")
    with pytest.raises(ValueError, match="stdout: invalid fd -5"):
        tether.spawn(argv, contain=contain, stdout=-5, **kwargs)


def test_run_reports_bad_stdio_before_a_missing_cwd(tmp_path: Path, no_leak: None) -> None:
    with pytest.raises(ValueError, match="stderr: invalid fd -5"):
        tether.run(["true"], cwd=tmp_path / "gone", stderr=-5)


def test_aio_spawn_reports_bad_stdio_before_a_missing_cwd(tmp_path: Path, no_leak: None) -> None:
    async def main() -> None:
        await tether.aio.spawn(["true"], cwd=tmp_path / "gone", stdout=-5)

    with pytest.raises(ValueError, match="stdout: invalid fd -5"):
        asyncio.run(main())


# -- repr never raises ---------------------------------------------------------------------------
#
# At 480f10b Child.__repr__ read only cached state (returncode, the backend's start flags): it
# could not fail. It now goes through describe() -> handle.exit -> poll() -> Tree.pump(), which
# for contain=None polls the program's pidfd and raises ValueError once the user has closed
# that (public) Pidfd. A repr that raises breaks logging, debuggers and pytest's own reports.


def test_child_repr_does_not_raise_after_its_pidfd_is_closed() -> None:
    r, w = os.pipe()
    try:
        # The program blocks on a pipe we hold: it runs until we let it go, no sleep involved.
        child = tether.spawn(["sh", "-c", "read x"], contain=None, stdin=r)
    finally:
        os.close(r)
    try:
        with child:
            child.pidfd.close()
            text = repr(child)
            assert text.startswith("<tether.Child ")
            assert f"pid={child.pid}" in text
    finally:
        os.close(w)
    assert oracle.reap_until(10.0).empty


# -- the argv a spawn_lifelined Pidfd reports -----------------------------------------------------
#
# At 480f10b spawn_lifelined gave the Pidfd a copy of argv (``cmd=list(argv)``); SpawnSpec.args
# keeps the caller's own list object when it is a list, so a caller that reuses its list after
# the spawn changes what the Pidfd's TimeoutExpired.cmd says about the running process.


def test_spawn_lifelined_pidfd_cmd_is_a_snapshot_of_argv() -> None:
    r, w = os.pipe()
    argv = ["sh", "-c", "read x"]
    try:
        spawned = tether.spawn_lifelined(argv, stdin=r)
    finally:
        os.close(r)
    try:
        argv.append("changed-after-spawn")
        with pytest.raises(subprocess.TimeoutExpired) as info:
            spawned.pidfd.wait(0)
        assert info.value.cmd == ["sh", "-c", "read x"]
    finally:
        os.close(w)
        spawned.pidfd.wait()
        spawned.lifeline.close()
        spawned.pidfd.close()


# -- argv's common case encoded in C (core.fs_args); the rest, and every error, in Python ----------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(), st.binary()), min_size=1, max_size=6))
def test_argv_encoded_in_c_is_what_os_fsencode_gives(args: list[str | bytes]) -> None:
    from tether._kernel.spec import convert_argv

    try:
        expected = [os.fsencode(a) for a in args]
    except UnicodeEncodeError:  # (a lone surrogate the codec refuses: the same error)
        with pytest.raises(UnicodeEncodeError):
            convert_argv(args)
        return
    if any(b"\0" in arg for arg in expected):
        with pytest.raises(ValueError, match=r"argv\[\d+\] contains a NUL byte"):
            convert_argv(args)
        return
    assert convert_argv(args) == expected
    assert convert_argv(tuple(args)) == expected


def test_argv_items_c_does_not_encode_take_the_python_checks() -> None:
    from tether._kernel.spec import convert_argv

    class Raw(bytes):
        pass

    class Spelt(str):  # (os.fsencode calls a str's own encode(): a subclass's, if it has one)
        def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
            return b"spelt-" + str(self).encode(encoding, errors)

    assert convert_argv([Path("/bin/true"), Raw(b"x"), "y"]) == [b"/bin/true", b"x", b"y"]
    assert convert_argv(["true", Spelt("z")]) == [b"true", b"spelt-z"] == [
        os.fsencode(a) for a in ["true", Spelt("z")]]
    with pytest.raises(TypeError, match=r"argv\[1\] must be str, bytes or os.PathLike"):
        convert_argv(["true", 1])
    with pytest.raises(ValueError, match="argv must not be empty"):
        convert_argv([])


# -- the PATH search: execvp's order, the misses and the hit tested in C (core.find_program) -------


def _path_dirs(tmp_path: Path) -> dict[str, str]:
    """PATH entries named by what ``prog`` is there: missing, through a file (ENOTDIR), a
    directory, not executable, and two executables (``first`` then ``second``)."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "dir" / "prog").mkdir(parents=True)
    (tmp_path / "noexec").mkdir()
    (tmp_path / "noexec" / "prog").write_text("#!/bin/sh\n")
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "prog").write_text("#!/bin/sh\n")
        (tmp_path / name / "prog").chmod(0o755)
    return {"missing": str(tmp_path / "missing"), "enotdir": str(tmp_path / "a-file"),
            **{name: str(tmp_path / name) for name in ("dir", "noexec", "first", "second")}}


def _found(path: list[str]) -> bytes:
    from tether._kernel.spec import SpawnSpec

    return SpawnSpec.build(["prog"], env={"PATH": ":".join(path)}).executable


def test_the_path_search_takes_the_first_executable_past_misses_and_non_executables(
        tmp_path: Path) -> None:
    d = _path_dirs(tmp_path)
    found = _found([d["missing"], d["enotdir"], d["dir"], d["noexec"], d["first"], d["second"]])
    assert found == os.fsencode(d["first"]) + b"/prog"


def test_the_path_search_reports_a_non_executable_as_permission_denied(tmp_path: Path) -> None:
    d = _path_dirs(tmp_path)
    for path in ([d["missing"], d["noexec"], d["enotdir"]], [d["dir"], d["missing"]]):
        with pytest.raises(PermissionError) as info:
            _found(path)
        assert info.value.filename == "prog"


def test_the_path_search_reports_only_misses_as_not_found(tmp_path: Path) -> None:
    d = _path_dirs(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        _found([d["missing"], d["enotdir"], d["missing"]])
    assert info.value.filename == "prog"


def test_the_path_search_looks_relative_entries_up_in_cwd(tmp_path: Path) -> None:
    from tether._kernel.spec import SpawnSpec

    _path_dirs(tmp_path)
    spec = SpawnSpec.build(["prog"], env={"PATH": "missing:noexec:second:first"}, cwd=tmp_path)
    assert spec.executable == b"second/prog"
