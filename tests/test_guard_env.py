"""The program's environment under the guard (guard_program.c, program_env), and without one
(contain=None: core.spawn makes it from the env dict): the caller's ``env`` exactly, with the
one ``TETHER_LIFELINE_FD`` naming the program's own lifeline (never the guard's, never a value
the caller put there), or none without a program lifeline."""

from __future__ import annotations

import pytest

import tether
import tether.subprocess as dropin

CALLERS = {"A": "1", "TETHER_LIFELINE_FD": "9:9:9", "Z": "2"}


def _env_of(lines: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in lines.decode().splitlines() if "=" in line)


@pytest.mark.parametrize("contain", ["group", "cgroup", "pidns", None])
def test_the_program_gets_the_callers_env_and_its_own_lifeline_only(contain: str | None) -> None:
    try:
        done = tether.run(["/bin/sh", "-c", 'env; stat -L -c "3:%d:%i" /dev/fd/3'], env=CALLERS,
                          capture_output=True, contain=contain)  # type: ignore[arg-type]
    except tether.Unsupported as exc:
        pytest.skip(str(exc))
    env = _env_of(done.stdout)
    assert sorted(env) == ["A", "PWD", "TETHER_LIFELINE_FD", "Z"]  # (sh adds PWD)
    assert (env["A"], env["Z"]) == ("1", "2")
    # The pipe at fd 3 (the lowest free one) is the one the variable names: the program's.
    assert env["TETHER_LIFELINE_FD"] == done.stdout.decode().splitlines()[-1]


def test_without_a_program_lifeline_the_variable_is_gone() -> None:
    out = dropin.run(["/usr/bin/env"], env=CALLERS, capture_output=True).stdout
    assert _env_of(out) == {"A": "1", "Z": "2"}


def test_a_preexec_fn_start_gets_the_callers_env_and_its_own_lifeline_only() -> None:
    # preexec_fn's fork of this process hands the env dict to core.spawn too, which makes the
    # envp and the lifeline's variable in C (without a guard the lifeline stays the program's).
    done = dropin.run(["/bin/sh", "-c", 'env; stat -L -c "3:%d:%i" /dev/fd/3'], env=CALLERS,
                      capture_output=True, preexec_fn=lambda: None, contain=None)
    env = _env_of(done.stdout)
    assert sorted(env) == ["A", "PWD", "TETHER_LIFELINE_FD", "Z"]  # (sh adds PWD)
    assert (env["A"], env["Z"]) == ("1", "2")
    assert env["TETHER_LIFELINE_FD"] == done.stdout.decode().splitlines()[-1]
