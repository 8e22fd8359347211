"""The pytest plugin: a test that leaves a process running fails, names it, and the process is
killed -- with the cgroup containment and with the subreaper fallback forced on.

Every scenario runs an inner pytest in a subprocess (``runpytest_subprocess``): the plugin
moves its own pytest between cgroups and makes it a subreaper, which must not happen to the
pytest running these tests. This test process is itself a child subreaper (conftest), so
after an inner run ``oracle.reap_until`` answering ECHILD proves nothing the inner run
started is left, daemons included.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import oracle
import tether
from tether._kernel.cgroup import PARENT_NAME, cgroup_root, cgroup_unavailable_reason

pytest_plugins = ["pytester"]

CONTAINMENTS = ["cgroup", "subreaper"]


def _plugin_args() -> list[str]:
    # Once tether is installed with its pytest11 entry point the plugin loads by itself, and
    # naming it again with -p would register the module twice (pluggy refuses that).
    for ep in importlib.metadata.entry_points(group="pytest11"):
        if ep.value == "tether.pytest_plugin":
            return []
    return ["-p", "tether.pytest_plugin"]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        *_plugin_args(), "-p", "no:cacheprovider", "-rA", *args, timeout=120)


def _sessions() -> set[str]:
    """The pytest-* session cgroups that no live pytest owns (their flock is free). Owned
    ones belong to runs going on now, maybe someone else's on a shared machine."""
    if cgroup_unavailable_reason() is not None:
        return set()
    parent = os.path.join(cgroup_root(), PARENT_NAME)
    try:
        names = [n for n in os.listdir(parent) if n.startswith("pytest-")]
    except FileNotFoundError:
        return set()
    return {n for n in names if oracle.cgroup_locked(os.path.join(parent, n)) is False}


@pytest.fixture(autouse=True)
def _inner_runs_import_this_tether(monkeypatch: pytest.MonkeyPatch) -> None:
    src = os.path.dirname(os.path.dirname(tether.__file__))
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", src + (os.pathsep + old if old else ""))


@pytest.fixture(autouse=True)
def _no_session_cgroup_left() -> Iterator[None]:
    """No inner run may leave its pytest-* cgroup directory behind (conftest checks t-*)."""
    before = _sessions()
    yield
    left = _sessions() - before
    assert not left, f"session cgroup directories left: {sorted(left)}"


@pytest.fixture(params=CONTAINMENTS)
def containment(request: pytest.FixtureRequest) -> str:
    """Each containment: cgroup v2 (skipped, with the reason, only where unavailable) and the
    subreaper fallback, forced on as trio forces its pidfd fast path off."""
    return require_containment(request.param)


def require_containment(name: str) -> str:
    """``name``, or a skip (with the reason) where that containment is unavailable."""
    if name == "cgroup":
        why = cgroup_unavailable_reason()
        if why is not None:
            pytest.skip(f"cgroup v2 containment unavailable here: {why}")
    return name


def _read_pid(pytester: pytest.Pytester, name: str) -> int:
    return int((pytester.path / name).read_text())


def _assert_nothing_left() -> None:
    seen = oracle.reap_until(5.0)
    assert seen.empty, "processes of the inner run are still alive 5 s after it ended"


LEAK_POPEN = """
import os, subprocess

def test_leak():
    child = subprocess.Popen(["sleep", "300"])
    with open("leak.pid", "w") as f:
        f.write(str(child.pid))
"""


def test_leaked_popen_fails_the_test_and_is_named(
    pytester: pytest.Pytester, containment: str
) -> None:
    pytester.makepyfile(test_leak=LEAK_POPEN)
    result = run(pytester, "--tether", f"--tether-containment={containment}")
    pid = _read_pid(pytester, "leak.pid")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leak*",
        "tether: test_leak.py::test_leak left 1 process running (tether killed it):",
        f"    pid {pid}: sleep 300",
    ])
    _assert_nothing_left()


def test_forced_fallback_catches_a_leaked_direct_child(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leak=LEAK_POPEN)
    result = run(pytester, "--tether", "--tether-containment=subreaper")
    result.stdout.fnmatch_lines(["tether: leak check via child subreaper (forced by *"])
    result.stdout.fnmatch_lines([f"    pid {_read_pid(pytester, 'leak.pid')}: sleep 300"])
    result.assert_outcomes(passed=1, errors=1)
    _assert_nothing_left()


def test_setsid_double_forked_daemon_fails_the_test_and_is_killed(
    pytester: pytest.Pytester, containment: str
) -> None:
    pytester.makepyfile(test_daemon="""
        import subprocess

        def test_daemon():
            # sh backgrounds a setsid'd sh, which backgrounds sleep and exits: sleep is a
            # daemon in its own session whose parents are both gone.
            out = subprocess.run(
                ["sh", "-c", "setsid sh -c 'sleep 300 >/dev/null 2>&1 & echo $!' &"],
                capture_output=True, text=True, check=True).stdout
            with open("daemon.pid", "w") as f:
                f.write(out.strip())
    """)
    result = run(pytester, "--tether", f"--tether-containment={containment}")
    pid = _read_pid(pytester, "daemon.pid")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "tether: test_daemon.py::test_daemon left 1 process running (tether killed it):",
        f"    pid {pid}: sleep 300",
    ])
    _assert_nothing_left()


def test_clean_test_passes(pytester: pytest.Pytester, containment: str) -> None:
    pytester.makepyfile(test_clean="""
        import os, subprocess, tether

        def test_subprocess():
            subprocess.run(["true"], check=True)
            with subprocess.Popen(["sleep", "300"]) as child:
                child.kill()

        def test_tether():
            tether.run(["true"], check=True)
            with tether.spawn(["sh", "-c", "sleep 300 & sleep 300"], contain="auto"):
                pass

        def test_fork():
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)

        def test_fixture(tether_spawn):
            tether_spawn(["sleep", "300"])  # left to the fixture, which ends it first
    """)
    result = run(pytester, "--tether", f"--tether-containment={containment}")
    result.assert_outcomes(passed=4)
    result.stdout.no_fnmatch_line("tether: * left * running*")
    _assert_nothing_left()


def test_without_the_option_the_plugin_is_inert(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leak=LEAK_POPEN)
    result = run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("tether:*")
    # The leak outlived the inner run: it is now this (subreaper) process's child, still
    # running. End it here, through a pidfd checked to name our own unreaped child.
    pid = _read_pid(pytester, "leak.pid")
    pidfd = os.pidfd_open(pid)
    try:
        assert os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None, (
            "the leaked process should still be running: the plugin must do nothing here")
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    finally:
        os.close(pidfd)


def test_ini_option_turns_it_on(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntether = true\ntether_containment = subreaper\n")
    pytester.makepyfile(test_leak=LEAK_POPEN)
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["tether: test_leak.py::test_leak left 1 process running*"])
    _assert_nothing_left()


def test_header_names_the_mechanism(pytester: pytest.Pytester, containment: str) -> None:
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = run(pytester, "--tether", f"--tether-containment={containment}")
    result.assert_outcomes(passed=1)
    if containment == "cgroup":
        session = os.path.join(cgroup_root(), PARENT_NAME, "pytest-")
        result.stdout.fnmatch_lines([f"tether: leak check via cgroup v2 at {session}*"])
    else:
        result.stdout.fnmatch_lines(["tether: leak check via child subreaper (*"])
    result.stdout.fnmatch_lines(["tether: cannot see: *"])


def test_unwritable_cgroup_falls_back_and_says_why(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A directory that is no cgroup stands for a hierarchy this user cannot write.
    monkeypatch.setenv("TETHER_CGROUP_ROOT", str(tmp_path))
    pytester.makepyfile(test_leak=LEAK_POPEN)
    result = run(pytester, "--tether")
    result.stdout.fnmatch_lines([
        "tether: leak check via child subreaper (cgroup v2 unavailable: "
        f"{tmp_path} is not a cgroup v2 directory*",
    ])
    result.assert_outcomes(passed=1, errors=1)
    _assert_nothing_left()

    forced = run(pytester, "--tether", "--tether-containment=cgroup")
    assert forced.ret == pytest.ExitCode.USAGE_ERROR
    forced.stderr.fnmatch_lines(["*--tether-containment=cgroup is unavailable: *"])


def test_leak_in_a_failing_test_is_reported_too(
    pytester: pytest.Pytester, containment: str
) -> None:
    pytester.makepyfile(test_fail="""
        import subprocess

        def test_fail():
            subprocess.Popen(["sleep", "300"])
            assert False, "the test's own failure"
    """)
    result = run(pytester, "--tether", f"--tether-containment={containment}")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(["*the test's own failure*"])
    result.stdout.fnmatch_lines(["tether: test_fail.py::test_fail left 1 process running*"])
    _assert_nothing_left()


def test_wide_scope_fixture_processes_are_not_test_leaks(
    pytester: pytest.Pytester, containment: str
) -> None:
    pytester.makepyfile(test_fixtures="""
        import subprocess
        import pytest

        @pytest.fixture(scope="module")
        def server():
            child = subprocess.Popen(["sleep", "300"])
            yield child
            child.kill()
            child.wait()

        @pytest.fixture(scope="module")
        def leaky_server():
            yield subprocess.Popen(["sleep", "301"])

        def test_first(server):
            assert server.poll() is None

        def test_second(server):
            assert server.poll() is None

        def test_leaky(leaky_server):
            pass
    """)
    result = run(pytester, "--tether", f"--tether-containment={containment}")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaky*",
        "tether: fixture 'leaky_server' (module scope), after its teardown, left 1 process "
        "running (tether killed it):",
        "    pid *: sleep 301",
    ])
    result.stdout.no_fnmatch_line("*sleep 300")
    _assert_nothing_left()


def test_tether_spawn_fixture_kills_its_children(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_spawn="""
        def test_spawn(tether_spawn):
            child = tether_spawn(["sh", "-c", "sleep 300 & sleep 300"])
            assert child.poll() is None
    """)
    # The fixture works on its own: without --tether nothing else would end the child.
    result = run(pytester)
    result.assert_outcomes(passed=1)
    _assert_nothing_left()


def test_keyboard_interrupt_mid_test_leaves_nothing(
    pytester: pytest.Pytester, containment: str
) -> None:
    pytester.makepyfile(test_interrupt="""
        import subprocess

        def test_interrupted():
            subprocess.Popen(["sleep", "300"])
            raise KeyboardInterrupt
    """)
    result = run(pytester, "--tether", f"--tether-containment={containment}")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    _assert_nothing_left()


def test_directories_of_a_killed_pytest_are_swept_by_the_next_run(
    pytester: pytest.Pytester,
) -> None:
    if cgroup_unavailable_reason() is not None:
        pytest.skip(f"cgroup v2 containment unavailable here: {cgroup_unavailable_reason()}")
    pytester.makepyfile(test_die="""
        import os, signal, subprocess

        def test_die():
            subprocess.Popen(["sleep", "300"])
            os.kill(os.getpid(), signal.SIGKILL)  # pytest dies inside the test's cgroup
    """)
    before = _sessions()
    died = run(pytester, "--tether", "--tether-containment=cgroup")
    assert died.ret == -signal.SIGKILL
    left = _sessions() - before
    assert len(left) == 1, "the killed pytest should have left its session directory"

    pytester.makepyfile(test_die="def test_ok():\n    pass\n")
    result = run(pytester, "--tether", "--tether-containment=cgroup")
    result.assert_outcomes(passed=1)
    assert not (_sessions() & left), "the next run should have removed the stale directory"
    _assert_nothing_left()


def test_enforce_makes_never_use_primitives_raise(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_enforced="""
        import subprocess
        import pytest
        import tether

        def test_popen_is_refused():
            with pytest.raises(tether.DoctrineViolation):
                subprocess.run(["true"])

        def test_tether_is_allowed():
            tether.run(["true"], check=True)
    """)
    result = run(pytester, "--tether-enforce", "--tether-containment=subreaper")
    result.stdout.fnmatch_lines(["tether: tether.enforce() is active for this run"])
    result.assert_outcomes(passed=2)


SLOW_EXIT = """
import subprocess, sys

CHILD = '''
import signal, sys, time
def on_term(*_):
    time.sleep(0.3)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(300)
'''

def test_slow_exit():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\\n"
    child.terminate()  # on its way out: exits 0.3 s later
"""


def test_grace_lets_an_exiting_process_go_and_zero_grace_calls_it_a_leak(
    pytester: pytest.Pytester, containment: str
) -> None:
    pytester.makepyfile(test_slow=SLOW_EXIT)
    graced = run(pytester, "--tether", f"--tether-containment={containment}")
    graced.assert_outcomes(passed=1)
    _assert_nothing_left()

    no_grace = run(pytester, "--tether", f"--tether-containment={containment}",
                   "--tether-grace=0")
    no_grace.assert_outcomes(passed=1, errors=1)
    no_grace.stdout.fnmatch_lines(["tether: test_slow.py::test_slow_exit left 1 process*"])
    _assert_nothing_left()


def test_grace_ini_option_and_its_check(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_slow=SLOW_EXIT)
    pytester.makeini("[pytest]\ntether = true\ntether_containment = subreaper\n"
                     "tether_grace = 0\n")
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    _assert_nothing_left()

    pytester.makeini("[pytest]\ntether = true\ntether_grace = soon\n")
    bad = run(pytester)
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*tether_grace must be a number of seconds >= 0, not 'soon'*"])


def test_allow_leak_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_marked="""
        import pytest

        @pytest.mark.tether_allow_leak
        def test_marked():
            pass
    """)
    result = run(pytester, "--strict-markers")  # without --tether too
    result.assert_outcomes(passed=1)


def test_subreaper_reaps_orphans_as_they_come_and_keeps_own_children(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_daemon_gone="""
        import os, signal, subprocess, time

        def test_waits_for_the_daemon_to_disappear():
            own = subprocess.Popen(["sh", "-c", "exit 3"])  # waited for only at the end
            out = subprocess.run(
                ["sh", "-c", "setsid sh -c 'sleep 300 >/dev/null 2>&1 & echo $!' &"],
                capture_output=True, text=True, check=True).stdout
            daemon = int(out)
            os.kill(daemon, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while True:  # how suites wait for a daemon to go (psutil.pid_exists alike)
                try:
                    os.kill(daemon, 0)
                except ProcessLookupError:
                    break
                assert time.monotonic() < deadline, "the daemon stays a zombie of pytest"
                time.sleep(0.01)
            assert own.wait() == 3  # the plugin never took pytest's own child
    """)
    result = run(pytester, "--tether", "--tether-containment=subreaper")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["tether: orphans adopted by pytest are reaped as they exit*"])
    _assert_nothing_left()
