"""The pytest plugin's per-test limits and accounting: ``--tether-limits`` (ini
``tether_limits``) in each test's own cgroup, an OOM kill failing the test by name, and
``--tether-heaviest`` listing tests by peak memory and CPU read from those cgroups.

Inner runs are subprocesses (tests/test_pytest_plugin.py says why); their per-test v1
cgroups go below a private directory of each test (TETHER_CGROUP_V1_SUBDIR), checked empty
afterwards, so a second copy of the suite never shares them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import pytest

import oracle
from test_pytest_plugin import run
from tether._kernel import controllers
from tether._kernel.cgroup import cgroup_unavailable_reason

pytest_plugins = ["pytester"]

ALLOCATE = ("import subprocess, sys\n"
            "def test_big():\n"
            "    code = \"b = bytearray(400 << 20); b[::4096] = b'x' * len(b[::4096])\"\n"
            "    assert subprocess.run([sys.executable, '-c', code]).returncode == -9\n")


@pytest.fixture(autouse=True)
def private_v1(monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester) -> Iterator[None]:
    """The inner run imports this tether, puts its v1 cgroups in a private directory, and
    leaves none behind (nor any process)."""
    import tether

    why = cgroup_unavailable_reason()
    if why is not None:
        pytest.skip(f"cgroup v2 containment unavailable here: {why}")
    src = os.path.dirname(os.path.dirname(tether.__file__))
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", src + (os.pathsep + old if old else ""))
    monkeypatch.setenv(controllers.V1_SUBDIR_ENV, f"tether-tests-{secrets.token_hex(4)}")
    controllers.forget_layout()
    places = controllers.controller_places()
    if "memory" not in places or "pids" not in places:
        pytest.skip(f"memory and pids controllers needed; this machine has {places}")
    v1 = set(places.values()) - {"v2"}
    try:
        yield
        assert oracle.reap_until(5.0).empty, "the inner run left processes"
        for where in v1:
            parent = os.path.join(where, "tether")
            left = os.listdir(parent) if os.path.isdir(parent) else []
            assert not [n for n in left if n.startswith("t-")], f"v1 cgroups left in {parent}"
    finally:
        for where in v1:
            for path in (os.path.join(where, "tether"), where):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        controllers.forget_layout()


def test_a_test_past_its_memory_limit_fails_naming_the_oom_kill(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\ntether_limits = memory=128M\n")
    pytester.makepyfile(test_big=ALLOCATE, test_small="def test_small():\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_big*",
        "tether: test_big.py::test_big hit its memory limit (memory limit 128 MiB): "
        "the OOM killer killed 1 process in the test's cgroup",
    ])


def test_the_pids_limit_holds_in_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_many="""
import subprocess

def test_many():
    started = []
    try:
        for _ in range(10):
            started.append(subprocess.Popen(["sleep", "30"]))
    except BlockingIOError:
        assert len(started) < 10  # fork() failed with EAGAIN at the limit
    else:
        raise AssertionError("10 processes started under pids=5")
    finally:
        for p in started:
            p.kill()
            p.wait()
""")
    result = run(pytester, "--tether-limits", "pids=5")
    result.assert_outcomes(passed=1)


def test_heaviest_lists_the_heavy_test_first(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_weights="""
import subprocess, sys

def test_light():
    pass

def test_heavy():
    code = "b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096]); sum(range(10**7))"
    subprocess.run([sys.executable, "-c", code], check=True)
""")
    result = run(pytester, "--tether-heaviest=2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "*tether: heaviest 2 tests*",
        "by peak memory *",
        "* MiB *s cpu  test_weights.py::test_heavy",
        "* test_weights.py::test_light",
        "by CPU *",
        "*s cpu * test_weights.py::test_heavy",
        "* test_weights.py::test_light",
    ])


def test_limits_without_the_cgroup_containment_are_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = run(pytester, "--tether-limits", "memory=1G", "--tether-containment=subreaper")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*--tether-limits/--tether-heaviest need the cgroup containment*which this run "
        "does not have: leak check via child subreaper (forced by *"])


@pytest.mark.parametrize("text", ["memory=lots", "disk=1G", "pids=0", "memory"])
def test_bad_limits_are_a_usage_error_before_any_test(
    pytester: pytest.Pytester, text: str
) -> None:
    pytester.makepyfile(test_ok="def test_ok():\n    open('ran', 'w').close()\n")
    result = run(pytester, f"--tether-limits={text}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*tether_limits: *"])
    assert not (pytester.path / "ran").exists()
