"""Exit: one frozen value for how a process ended, built from a wait status (what the guard
reports) or a waitid code (what a pidfd wait returns), with subprocess's returncode, the
shell's status, a readable str, and equality by content (two waits, two sources: one value).
That a real process's two waits return equal values is test_spawn's."""

from __future__ import annotations

import os
import signal

import pytest

from tether._kernel.exit import Exit


def _wait_status(*, code: int | None = None, sig: int | None = None, core: bool = False) -> int:
    """The status word waitpid reports (the encoding glibc's W* macros decode)."""
    if sig is not None:
        return sig | (0x80 if core else 0)
    assert code is not None
    return (code & 0xFF) << 8


@pytest.mark.parametrize("code", [0, 1, 3, 127, 255])
def test_a_normal_exit_has_a_code_and_no_signal(code: int) -> None:
    exit_ = Exit._from_wait_status(_wait_status(code=code))
    assert (exit_.code, exit_.signal, exit_.core_dumped) == (code, None, False)
    assert exit_ == Exit._from_waitid(os.CLD_EXITED, code)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGSEGV])
def test_a_signal_death_has_a_signal_and_no_code(sig: int) -> None:
    exit_ = Exit._from_wait_status(_wait_status(sig=sig))
    assert (exit_.code, exit_.signal, exit_.core_dumped) == (None, sig, False)
    assert exit_ == Exit._from_waitid(os.CLD_KILLED, sig)


def test_a_core_dump_is_kept_from_either_source() -> None:
    from_status = Exit._from_wait_status(_wait_status(sig=signal.SIGABRT, core=True))
    from_waitid = Exit._from_waitid(os.CLD_DUMPED, signal.SIGABRT)
    assert from_status == from_waitid == Exit(code=None, signal=signal.SIGABRT, core_dumped=True)
    assert from_status != Exit(code=None, signal=signal.SIGABRT)


@pytest.mark.parametrize(
    "status",
    [_wait_status(code=c) for c in (0, 1, 2, 126, 127, 128, 255)]
    + [_wait_status(sig=s) for s in (1, 2, 6, 9, 11, 15, 31)]
    + [_wait_status(sig=s, core=True) for s in (3, 6, 11)],
)
def test_returncode_is_what_the_stdlib_makes_of_the_same_status(status: int) -> None:
    # The comparison with the stdlib: subprocess's returncode comes from this very function.
    assert Exit._from_wait_status(status).returncode == os.waitstatus_to_exitcode(status)


def test_shell_status_is_the_code_or_128_plus_the_signal() -> None:
    assert Exit(code=7, signal=None).shell_status == 7
    assert Exit(code=None, signal=signal.SIGTERM).shell_status == 128 + signal.SIGTERM
    assert Exit(code=None, signal=signal.SIGKILL, core_dumped=True).shell_status == 137


def test_str_says_how_it_ended() -> None:
    assert str(Exit(code=0, signal=None)) == "exited with code 0"
    assert str(Exit(code=None, signal=signal.SIGKILL)) == "killed by SIGKILL"
    assert str(Exit(code=None, signal=signal.SIGSEGV, core_dumped=True)) == (
        "killed by SIGSEGV (core dumped)")
    # A real-time signal other than the first and last has no Signals member: its number.
    rt = signal.SIGRTMIN + 1
    assert str(Exit(code=None, signal=rt)) == f"killed by signal {rt}"


def test_values_are_frozen_hashable_and_equal_by_content() -> None:
    a = Exit._from_waitid(os.CLD_EXITED, 5)
    b = Exit._from_wait_status(_wait_status(code=5))
    assert a == b and hash(a) == hash(b)
    assert len({a, b, Exit(code=5, signal=None)}) == 1
    assert a != Exit(code=None, signal=5)
    with pytest.raises(AttributeError):
        a.code = 6  # type: ignore[misc]


@pytest.mark.parametrize("status", [0x137F, 0xFFFF])  # stopped by SIGSTOP; continued
def test_a_status_that_is_no_exit_is_refused(status: int) -> None:
    with pytest.raises(ValueError):
        Exit._from_wait_status(status)


@pytest.mark.parametrize("si_code", [os.CLD_STOPPED, os.CLD_CONTINUED, os.CLD_TRAPPED])
def test_a_waitid_code_that_is_no_exit_is_refused(si_code: int) -> None:
    with pytest.raises(ValueError):
        Exit._from_waitid(si_code, signal.SIGSTOP)

