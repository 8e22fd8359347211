"""spawn_lifelined: exit reporting, the child's fd table, stdio, env, cwd, process group,
signal state. Every test runs with clone3 and with the legacy clone fallback forced on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import oracle
import tether

pytestmark = pytest.mark.usefixtures("each_clone_method")

PY = sys.executable

FD_TABLE = oracle.CHILD_FD_TABLE


def run_capture(argv: list[str], **kwargs: object) -> tuple[tether.Exit, bytes]:
    r, w = os.pipe()
    try:
        spawned = tether.spawn_lifelined(argv, stdout=w, **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    exit_ = spawned.pidfd.wait()
    spawned.lifeline.close()
    spawned.pidfd.close()
    return exit_, out


def test_exit_code_is_reported_exactly() -> None:
    s = tether.spawn_lifelined(["sh", "-c", "exit 7"])
    e = s.pidfd.wait()
    assert (e.code, e.signal, e.returncode) == (7, None, 7)


def test_signal_death_is_reported_as_negative_returncode() -> None:
    s = tether.spawn_lifelined(["sleep", "300"])
    s.pidfd.send_signal(signal.SIGKILL)
    e = s.pidfd.wait()
    assert (e.code, e.signal, e.returncode, e.core_dumped) == (None, 9, -9, False)


def test_abort_with_core_allowed_reports_core_dumped(tmp_path: Path) -> None:
    s = tether.spawn_lifelined(["sh", "-c", "ulimit -c unlimited && kill -ABRT $$"], cwd=tmp_path)
    e = s.pidfd.wait()
    assert e.signal == signal.SIGABRT
    assert e.core_dumped


def test_second_wait_returns_the_same_exit() -> None:
    s = tether.spawn_lifelined(["sh", "-c", "exit 3"])
    assert s.pidfd.wait() == s.pidfd.wait() == s.pidfd.poll()


def test_returncode_matches_subprocess_for_codes_and_signals() -> None:
    for script in ("exit 0", "exit 1", "exit 255", "kill -TERM $$", "kill -INT $$"):
        ours = tether.spawn_lifelined(["sh", "-c", script]).pidfd.wait().returncode
        theirs = subprocess.run(["sh", "-c", script]).returncode
        assert ours == theirs, script


def test_fd_table_is_exactly_stdio_pass_fds_and_lifeline() -> None:
    keep_r, keep_w = os.pipe()
    os.set_inheritable(keep_w, True)  # an inheritable fd we do NOT pass must not leak either
    try:
        exit_, out = run_capture([PY, "-c", FD_TABLE], pass_fds=[keep_r])
    finally:
        os.close(keep_r)
        os.close(keep_w)
    report = json.loads(out)
    lifeline = int(report["lifeline"].split(":")[0])  # N:<st_dev>:<st_ino>
    assert exit_.code == 0
    assert report["fds"] == sorted({0, 1, 2, keep_r, lifeline})
    assert keep_w not in report["fds"]


def test_lifeline_goes_to_lowest_fd_not_taken_by_pass_fds() -> None:
    # Occupy fd 3 in the child with a passed fd: the lifeline must move to the next number.
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(2)]
    target = 3
    saved = None
    try:
        if target not in fds:
            saved = os.dup(target) if _is_open(target) else None
            os.dup2(fds[0], target)
        exit_, out = run_capture([PY, "-c", FD_TABLE], pass_fds=[target])
    finally:
        if saved is not None:
            os.dup2(saved, target)
            os.close(saved)
        elif target not in fds:
            os.close(target)
        for fd in fds:
            os.close(fd)
    report = json.loads(out)
    assert exit_.code == 0
    assert target in report["fds"]
    assert int(report["lifeline"].split(":")[0]) == 4


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_pass_fds_keep_their_numbers_and_work() -> None:
    r, w = os.pipe()
    high = os.dup2(w, 57)
    os.close(w)
    try:
        s = tether.spawn_lifelined(
            [PY, "-c", "import os; os.write(57, b'through-57\\n')"], pass_fds=[high]
        )
    finally:
        os.close(high)
    assert s.pidfd.wait().code == 0
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"through-57\n"


def test_stdio_takes_fds_file_objects_devnull_and_stdout(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"hello\n")
    dst = tmp_path / "out.txt"
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        s = tether.spawn_lifelined(
            ["sh", "-c", "cat; echo err >&2"], stdin=fin, stdout=fout, stderr=subprocess.STDOUT
        )
        assert s.pidfd.wait().code == 0
    assert dst.read_bytes() == b"hello\nerr\n"
    s = tether.spawn_lifelined(["sh", "-c", "cat"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL)
    assert s.pidfd.wait().code == 0


def test_env_is_used_and_lifeline_fd_is_announced() -> None:
    exit_, out = run_capture(
        ["/bin/sh", "-c", 'echo "$FOO ${TETHER_LIFELINE_FD%%:*}"'], env={"FOO": "bar"}
    )
    assert exit_.code == 0
    assert out == b"bar 3\n"


def test_env_path_is_used_for_the_program_lookup(tmp_path: Path) -> None:
    prog = tmp_path / "only-here"
    prog.write_text("#!/bin/sh\necho found\n")
    prog.chmod(0o755)
    exit_, out = run_capture(["only-here"], env={"PATH": str(tmp_path)})
    assert (exit_.code, out) == (0, b"found\n")


def test_cwd_is_applied(tmp_path: Path) -> None:
    _, out = run_capture(["pwd"], cwd=tmp_path)
    assert out.decode().strip() == str(tmp_path)


def test_child_leads_a_new_process_group_by_default() -> None:
    exit_, out = run_capture([PY, "-c", "import os; print(os.getpgrp() == os.getpid())"])
    assert (exit_.code, out) == (0, b"True\n")
    exit_, out = run_capture(
        [PY, "-c", "import os; print(os.getpgrp() == os.getpid())"], process_group=False
    )
    assert out == b"False\n"


def test_child_signal_mask_is_empty_and_sigpipe_is_default() -> None:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        exit_, out = run_capture(
            ["sh", "-c", "grep -E '^Sig(Blk|Ign):' /proc/self/status"]
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert exit_.code == 0
    fields = dict(line.split(":\t") for line in out.decode().splitlines())
    assert int(fields["SigBlk"], 16) == 0
    assert not int(fields["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1))


def test_python_handlers_do_not_reach_the_child() -> None:
    # A Python handler for SIGTERM must be reset to SIG_DFL in the child (CLEAR_SIGHAND, or
    # by hand in the legacy path): SIGTERM then kills it.
    old = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        s = tether.spawn_lifelined(["sleep", "300"])
    finally:
        signal.signal(signal.SIGTERM, old)
    s.pidfd.send_signal(signal.SIGTERM)
    assert s.pidfd.wait().signal == signal.SIGTERM


def test_relative_program_path_resolves_against_cwd(tmp_path: Path) -> None:
    prog = tmp_path / "rel.sh"
    prog.write_text("#!/bin/sh\necho rel\n")
    prog.chmod(0o755)
    exit_, out = run_capture(["./rel.sh"], cwd=tmp_path)
    assert (exit_.code, out) == (0, b"rel\n")
