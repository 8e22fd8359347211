"""The pytest plugin on real-suite patterns (tests/plugin_corpus/): no false positive, no
missed leak, under each containment.

Each case is a small suite copied into a fresh directory and run by an inner pytest with
``--tether`` (``runpytest_subprocess``: the plugin moves its own pytest between cgroups and
makes it a subreaper). This process is a child subreaper (conftest), so ``oracle.reap_until``
answering ECHILD after the run proves nothing the inner run started is left.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import oracle
from test_pytest_plugin import CONTAINMENTS, require_containment, run

pytest_plugins = ["pytester"]

CORPUS = Path(__file__).parent / "plugin_corpus"


@pytest.fixture(autouse=True)
def _inner_runs_import_this_tether(monkeypatch: pytest.MonkeyPatch) -> None:
    import tether

    src = os.path.dirname(os.path.dirname(tether.__file__))
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", src + (os.pathsep + old if old else ""))


@pytest.fixture(params=CONTAINMENTS)
def containment(request: pytest.FixtureRequest) -> str:
    return require_containment(request.param)


def run_case(pytester: pytest.Pytester, case: str, containment: str) -> pytest.RunResult:
    shutil.copytree(CORPUS / case, pytester.path, dirs_exist_ok=True)
    result = run(pytester, "--tether", f"--tether-containment={containment}")
    seen = oracle.reap_until(5.0)
    assert seen.empty, "processes of the inner run are still alive 5 s after it ended"
    return result


def test_cached_session_fixtures_are_not_leaks(
    pytester: pytest.Pytester, containment: str
) -> None:
    result = run_case(pytester, "cached_session_fixture", containment)
    result.assert_outcomes(passed=8)
    result.stdout.no_fnmatch_line("tether: * left *")


def test_multiprocessing_with_each_start_method_is_not_a_leak(
    pytester: pytest.Pytester, containment: str
) -> None:
    result = run_case(pytester, "multiprocessing_start_methods", containment)
    result.assert_outcomes(passed=9)
    result.stdout.no_fnmatch_line("tether: * left *")


def test_processes_exiting_during_teardown_are_not_leaks(
    pytester: pytest.Pytester, containment: str
) -> None:
    result = run_case(pytester, "exiting_during_teardown", containment)
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("tether: * left *")


def test_real_leaks_are_still_caught(pytester: pytest.Pytester, containment: str) -> None:
    result = run_case(pytester, "real_leaks", containment)
    result.assert_outcomes(passed=4, errors=4)
    result.stdout.fnmatch_lines([
        "tether: test_leaks.py::test_popen_leak left 1 process running*",
        "    pid *: sleep 300",
    ])
    result.stdout.fnmatch_lines([
        "tether: test_leaks.py::test_daemon_leak left 1 process running*",
        "    pid *: sleep 301",
    ])
    result.stdout.fnmatch_lines([
        "tether: test_leaks.py::test_multiprocessing_leak left 1 process running*",
        "    pid *: *spawn_main*",
    ])
    result.stdout.fnmatch_lines([
        "tether: fixture 'leaky_server' (module scope), after its teardown, left 1 process*",
        "    pid *: sleep 303",
    ])


def test_opted_out_tests_may_leave_processes(
    pytester: pytest.Pytester, containment: str
) -> None:
    result = run_case(pytester, "opt_out", containment)
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines([
        "tether: test_opt_out.py::test_unmarked_leak_still_fails left 1 process running*",
        "    pid *: sleep 302",
    ])
    result.stdout.no_fnmatch_line("*: sleep 300")
    result.stdout.no_fnmatch_line("*: sleep 301")
