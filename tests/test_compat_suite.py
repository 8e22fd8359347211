"""CPython's own test_subprocess and test_asyncio.test_subprocess, with tether standing in
(tests/compat/run_cpython_suite.py): a test that fails and is not in
tests/compat/expected_differences.txt fails this. By default a subset that fits CI time (the
classes the drop-in promises most about, and the asyncio class whose child watcher reaps
*every* child with waitpid(-1)); TETHER_FULL=1 runs both suites whole."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import tether

RUNNER = Path(__file__).resolve().parent / "compat" / "run_cpython_suite.py"
FULL = os.environ.get("TETHER_FULL", "") not in ("", "0")

SUBSETS = {
    "subprocess": ["RunFuncTestCase.", "ContextManagerTests.", "MiscTests.",
                   "POSIXProcessTestCase.test_close_fds", "POSIXProcessTestCase.test_pass_fds",
                   "POSIXProcessTestCase.test_start_new_session",
                   "POSIXProcessTestCase.test_umask", "POSIXProcessTestCase.test_user",
                   "POSIXProcessTestCase.test_group", "POSIXProcessTestCase.test_extra_groups",
                   "POSIXProcessTestCase.test_restore_signals",
                   "POSIXProcessTestCase.test_process_group_0",
                   "ProcessTestCase.test_communicate", "ProcessTestCase.test_wait_timeout",
                   "ProcessTestCase.test_pipesizes"],
    "asyncio": ["SubprocessSafeWatcherTests."],
}


@pytest.mark.parametrize("suite", sorted(SUBSETS))
def test_cpython_suite_has_no_unexpected_failure(suite: str, python_env: dict[str, str]) -> None:
    selection = [] if FULL else [arg for k in SUBSETS[suite] for arg in ("-k", k)]
    result = tether.run([sys.executable, str(RUNNER), suite, *selection],
                        capture_output=True, text=True, env=python_env)
    if result.stdout.startswith("skipped:"):
        pytest.skip(result.stdout.strip())
    summary = result.stdout.splitlines()[0] if result.stdout else result.stderr[-2000:]
    assert result.returncode == 0, f"{summary}\n{result.stdout}\n{result.stderr[-3000:]}"
    assert " 0 tests" not in summary, "the selection ran nothing"
