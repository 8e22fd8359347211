"""tether.patch(): the stdlib's subprocess and asyncio entry points through tether, process-wide
(src/tether/patching.py), and the pytest plugin's --tether-patch."""

from __future__ import annotations

import asyncio
import asyncio.base_events
import importlib.metadata
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

import oracle
import tether
import tether.aio
import tether.patching
import tether.subprocess
from tether._tree.modes import resolve_mode

pytest_plugins = ["pytester"]

PY = sys.executable
_LOOP = asyncio.base_events.BaseEventLoop
# Every attribute patch() replaces, as (owner, name).
_TARGETS = [(subprocess, "Popen"), (asyncio, "create_subprocess_exec"),
            (asyncio, "create_subprocess_shell"),
            (asyncio.subprocess, "create_subprocess_exec"),
            (asyncio.subprocess, "create_subprocess_shell"),
            (_LOOP, "subprocess_exec"), (_LOOP, "subprocess_shell")]


def _snapshot() -> list[object]:
    return [owner.__dict__[name] for owner, name in _TARGETS]


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    before = _snapshot()
    yield
    while tether.patching.is_patched():  # a failed test must not leave the process patched
        tether.unpatch()
    assert _snapshot() == before


# -- what is routed, and what is put back -----------------------------------------------------


def test_patched_stdlib_run_and_popen_start_tethers_popen() -> None:
    import patch_thirdparty

    with tether.patched():
        assert isinstance(patch_thirdparty.start_popen(["true"]), tether.subprocess.Popen)
        out = subprocess.check_output([PY, "-c", "import os; print(os.getppid())"])
    # The program's parent is its guard, not this process.
    assert int(out) != os.getpid()


def test_patched_asyncio_create_subprocess_exec_is_tether_aios() -> None:
    import patch_thirdparty

    async def main() -> object:
        proc = await patch_thirdparty.start_async(["true"])
        await proc.wait()
        return proc

    with tether.patched():
        assert isinstance(asyncio.run(main()), tether.aio.Process)


def test_unpatch_restores_the_stdlibs_objects_identically() -> None:
    before = _snapshot()
    tether.patch()
    assert subprocess.Popen is tether.subprocess.Popen
    tether.unpatch()
    assert all(a is b for a, b in zip(_snapshot(), before, strict=True))


def test_patch_nests_and_the_last_unpatch_restores() -> None:
    before = _snapshot()
    with tether.patched():
        with tether.patched():
            pass
        assert subprocess.Popen is tether.subprocess.Popen  # the outer patch still holds
    assert _snapshot() == before


def test_unpatch_without_patch_is_refused() -> None:
    with pytest.raises(RuntimeError, match="without a matching"):
        tether.unpatch()


def test_patch_from_many_threads_leaves_the_stdlib_restored() -> None:
    before = _snapshot()
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            for _ in range(200):
                with tether.patched():
                    if subprocess.Popen is not tether.subprocess.Popen:
                        raise AssertionError("unpatched inside a patched() block")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and _snapshot() == before


def test_patch_refuses_a_popen_another_library_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    class Replaced(subprocess.Popen):  # type: ignore[type-arg]  # noqa: TET102
        pass

    monkeypatch.setattr(subprocess, "Popen", Replaced)
    exec_before = asyncio.create_subprocess_exec  # noqa: TET106
    with pytest.raises(tether.PatchConflict, match=r"subprocess\.Popen"):
        tether.patch()
    # Refused whole: nothing was replaced.
    assert subprocess.Popen is Replaced and asyncio.create_subprocess_exec is exec_before  # noqa: TET106
    assert not tether.patching.is_patched()


def test_unpatch_refuses_when_tethers_popen_was_replaced_meanwhile() -> None:
    tether.patch()
    ours = subprocess.Popen
    subprocess.Popen = object  # type: ignore[assignment,misc]
    try:
        with pytest.raises(tether.PatchConflict, match="restore"):
            tether.unpatch()
    finally:
        subprocess.Popen = ours  # type: ignore[misc]
    tether.unpatch()


def test_loop_subprocess_exec_is_refused_while_patched(no_leak: None) -> None:
    async def main() -> None:
        await asyncio.get_running_loop().subprocess_exec(asyncio.SubprocessProtocol, "true")

    with tether.patched(), pytest.raises(tether.Unsupported, match="child watcher"):
        asyncio.run(main())


# -- containment of a library's processes ------------------------------------------------------

_PARENT = """\
import asyncio, os, sys, threading, time
import tether
sys.path.insert(0, {tests!r})
import patch_thirdparty
tether.patch()
argv = ['sh', '-c', {cmd!r}]
how = {how!r}
if how == 'popen':
    patch_thirdparty.start_popen(argv)
elif how == 'run':
    threading.Thread(target=patch_thirdparty.run, args=(argv,), daemon=True).start()
else:
    async def main():
        proc = await patch_thirdparty.start_async(argv)  # (kept: a dropped one is ended)
        os.write(1, b'started\\n')
        await asyncio.sleep(300)
    asyncio.run(main())
os.write(1, b'started\\n')
time.sleep(300)
"""


def _sigkill_patched_parent(how: str, cmd: str, python_env: dict[str, str]) -> None:
    tests = os.path.dirname(os.path.abspath(__file__))
    # The program says when its children exist; the parent says when it has started it.
    code = _PARENT.format(tests=tests, cmd=cmd, how=how)
    r, w = os.pipe()
    try:
        parent = tether.spawn_lifelined([PY, "-c", code], stdout=w, env=python_env)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:  # the grandchildren exist (a barrier, not a sleep)
        lines = {f.readline(), f.readline()}
    assert lines == {b"started\n", b"ready\n"}
    parent.pidfd.send_signal(signal.SIGKILL)
    assert parent.pidfd.wait().signal == signal.SIGKILL


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["popen", "run", "asyncio"])
def test_a_libraries_grandchildren_die_with_the_patched_parent(
        how: str, python_env: dict[str, str]) -> None:
    _sigkill_patched_parent(how, "sleep 300 & sleep 300 & echo ready; wait", python_env)
    assert oracle.reap_until(5.0).empty, "the library's processes outlived the parent"


@pytest.mark.timeout(60)
def test_a_libraries_setsid_daemon_dies_with_the_patched_parent(
        python_env: dict[str, str]) -> None:
    if resolve_mode("auto", None) == "group":
        pytest.skip("auto is group here: a setsid daemon leaves the group (the README's table)")
    _sigkill_patched_parent("popen", "(setsid sleep 300 &); echo ready; sleep 300", python_env)
    assert oracle.reap_until(5.0).empty, "the setsid daemon outlived the parent"


# -- the pytest plugin --------------------------------------------------------------------------

_INNER_TEST = """\
import subprocess
import tether.subprocess

def test_subprocess_popen_is_tethers():
    assert subprocess.Popen is tether.subprocess.Popen
"""


def _plugin_args() -> list[str]:
    for ep in importlib.metadata.entry_points(group="pytest11"):
        if ep.value == "tether.pytest_plugin":
            return []
    return ["-p", "tether.pytest_plugin"]


def _run_inner(pytester: pytest.Pytester, python_env: dict[str, str], *args: str
               ) -> pytest.RunResult:
    pytester.makepyfile(test_inner=_INNER_TEST)
    os.environ["PYTHONPATH"] = python_env["PYTHONPATH"]
    return pytester.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider", *args,
                                         timeout=120)


def test_plugin_option_runs_the_session_patched(pytester: pytest.Pytester,
                                                python_env: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", python_env["PYTHONPATH"])
    _run_inner(pytester, python_env, "--tether-patch").assert_outcomes(passed=1)


def test_plugin_ini_option_runs_the_session_patched(pytester: pytest.Pytester,
                                                    python_env: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", python_env["PYTHONPATH"])
    pytester.makeini("[pytest]\ntether_patch = true\n")
    _run_inner(pytester, python_env).assert_outcomes(passed=1)


def test_without_the_option_the_session_is_not_patched(pytester: pytest.Pytester,
                                                       python_env: dict[str, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", python_env["PYTHONPATH"])
    _run_inner(pytester, python_env).assert_outcomes(failed=1)
