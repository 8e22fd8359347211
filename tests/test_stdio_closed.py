"""A parent whose fds 0-2 are closed (a daemon, `cmd <&- >&- 2>&-`) can use every way of
starting a program, as with subprocess: tether's own fds (lifeline pipes, the control socket,
/dev/null, pipes, pidfds, the cgroup directory) never land on 0-2, so none poses as the
parent's stdio or as the program's, and the program finds its inherited 0-2 closed, as the
parent has them. The parent runs in a child process of the test (the test's own stdio stays
open); the oracle is the subreaper check of conftest.py."""

from __future__ import annotations

import json
import os
import sys

import pytest

import tether

PY = sys.executable

# Closes its own 0-2 first, then starts a probe in the given way and reports, as JSON on the
# fd named in argv[1]: what the program found at 0-2, whether the parent's 0-2 stayed closed
# while the tree lived and after, the returncode, and a round trip through PIPEs.
PARENT = r"""
import fcntl, json, os, sys, tether
report = int(sys.argv[1])
how = sys.argv[2]
for fd in (0, 1, 2):
    os.close(fd)

def closed(fd):
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return True
    return False

def high_pipe():  # the test's own pipe, kept off 0-2 by hand
    r, w = os.pipe()
    hr, hw = fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(r); os.close(w)
    return hr, hw

PROBE = ("import fcntl, os, sys\n"
         "def state(fd):\n"
         "    try:\n"
         "        fcntl.fcntl(fd, fcntl.F_GETFD)\n"
         "    except OSError:\n"
         "        return 'closed'\n"
         "    return 'open'\n"
         "os.write(int(sys.argv[1]), ' '.join(state(fd) for fd in (0, 1, 2)).encode())\n")
UPPER = "import sys; sys.stdout.write(sys.stdin.read().upper())"
out = {}
try:
    r, w = high_pipe()
    if how == "run_in_fork":
        def probe():
            exec(PROBE.replace("int(sys.argv[1])", str(w)), {})
        handle = tether.run_in_fork(probe)
        wait = handle.pidfd.wait
    elif how == "spawn_lifelined":
        handle = tether.spawn_lifelined([sys.executable, "-c", PROBE, str(w)], pass_fds=[w])
        wait = handle.pidfd.wait
    else:
        contain = None if how == "None" else how
        handle = tether.spawn([sys.executable, "-c", PROBE, str(w)], pass_fds=[w],
                              contain=contain)
        wait = handle.wait
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out["program"] = f.read().decode()
    out["parent_closed_while_alive"] = all(closed(fd) for fd in (0, 1, 2))
    exit_ = wait()
    out["returncode"] = exit_ if isinstance(exit_, int) else exit_.returncode
    if how not in ("run_in_fork", "spawn_lifelined"):
        done = tether.run([sys.executable, "-c", UPPER], input=b"abc", capture_output=True,
                          contain=contain)
        out["pipes"] = done.stdout.decode()
    out["parent_closed_after"] = all(closed(fd) for fd in (0, 1, 2))
except tether.Unsupported as exc:
    out["unsupported"] = str(exc)
except BaseException as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
os.write(report, json.dumps(out).encode())
"""


def run_parent_with_stdio_closed(how: str, python_env: dict[str, str]) -> dict[str, object]:
    r, w = os.pipe()
    try:
        parent = tether.spawn_lifelined([PY, "-c", PARENT, str(w), how], pass_fds=[w],
                                        env=python_env)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    assert parent.pidfd.wait().code == 0, raw
    parent.lifeline.close()
    report: dict[str, object] = json.loads(raw)
    if "unsupported" in report:
        pytest.skip(f"{how}: {report['unsupported']}")
    return report


@pytest.mark.parametrize("contain", ["group", "cgroup", "pidns", "None"])
def test_every_containment_mode_works_for_a_parent_with_stdio_closed(
    contain: str, python_env: dict[str, str]
) -> None:
    report = run_parent_with_stdio_closed(contain, python_env)
    assert report == {
        "program": "closed closed closed",  # as the parent has them, like subprocess
        "parent_closed_while_alive": True,  # no lifeline, socket, pidfd or fd of ours there
        "returncode": 0,
        "pipes": "ABC",
        "parent_closed_after": True,
    }


@pytest.mark.parametrize("how", ["spawn_lifelined", "run_in_fork"])
def test_the_primitives_work_for_a_parent_with_stdio_closed(
    how: str, python_env: dict[str, str]
) -> None:
    report = run_parent_with_stdio_closed(how, python_env)
    assert report == {
        "program": "closed closed closed",
        "parent_closed_while_alive": True,
        "returncode": 0,
        "parent_closed_after": True,
    }


@pytest.mark.parametrize("contain", ["group", "cgroup", "pidns", "auto"])
@pytest.mark.parametrize("program, status", [(["true"], 0), (["sh", "-c", "exit 7"], 7)])
def test_tether_run_with_stdio_closed_reports_the_programs_status(
    contain: str, program: list[str], status: int, python_env: dict[str, str]
) -> None:
    # `tether run -- true <&- >&- 2>&-`
    cli = tether.spawn_lifelined(
        ["sh", "-c", 'exec "$@" <&- >&- 2>&-', "sh",
         PY, "-m", "tether", "run", "--contain", contain, "--", *program],
        env=python_env)
    exit_ = cli.pidfd.wait()
    cli.lifeline.close()
    assert exit_.code == status
