"""Run CPython's own subprocess test suites with tether's names standing in.

    python3 tests/compat/run_cpython_suite.py [subprocess|asyncio] [--baseline] [-k SUBSTR]...

``subprocess``: ``Lib/test/test_subprocess.py`` imported with ``subprocess`` bound to
``tether.subprocess`` in its namespace (the public names are tether's; private names the
tests reach for, ``_active``, ``_USE_VFORK``, ``_fork_exec``..., fall through to the stdlib
module, so tests that patch them patch nothing of tether's). ``asyncio``:
``Lib/test/test_asyncio/test_subprocess.py`` with ``asyncio.create_subprocess_exec/_shell``
(and ``asyncio.subprocess``'s) bound to ``tether.aio``'s. ``--baseline``: tether's old API
(``tether.spawn``/``run``/``check_output``) stands in instead, to measure where it started.

Prints pass/fail/error/skip counts and each failing test; with the expected-differences file
(``expected_differences.txt`` beside this file: one ``test id  # reason`` per line) it exits
1 if a test fails that is not listed there, and names listed tests that now pass. Exits 0 with
a message, running nothing, where the CPython test package is not installed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import types
import unittest
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected_differences.txt"
MODULES = {"subprocess": "test.test_subprocess", "asyncio": "test.test_asyncio.test_subprocess"}


class _Proxy(types.ModuleType):
    """Setting one of ``names`` (mock.patch.object) sets it where the code looks it up."""

    owner: types.ModuleType | None = None

    def __setattr__(self, attr: str, value: Any) -> None:
        super().__setattr__(attr, value)
        if self.owner is not None and attr in self.owner.__dict__:
            setattr(self.owner, attr, value)


def proxy(name: str, real: types.ModuleType, names: dict[str, Any],
          owner: types.ModuleType | None = None) -> types.ModuleType:
    """A module whose ``names`` are ours and whose every other attribute is ``real``'s.
    ``owner``: the module whose functions look ``names`` up (tether.subprocess's run()
    finds Popen in its own globals, as the stdlib's does in its own)."""
    module = _Proxy(name)
    module.__dict__.update(names)
    object.__setattr__(module, "owner", owner)

    def fallback(attr: str) -> Any:
        return getattr(real, attr)

    module.__getattr__ = fallback  # type: ignore[method-assign]
    return module


def baseline_names() -> dict[str, Any]:
    """tether's first-release API standing in for subprocess (the measure of the start)."""
    import subprocess

    import tether

    class Popen:  # a class: the suite subclasses it
        def __new__(cls, args: Any, **kwargs: Any) -> Any:
            return tether.spawn(args, **kwargs)

    def call(args: Any, **kwargs: Any) -> int:
        with tether.spawn(args, **kwargs) as child:
            return child.wait()

    def check_call(args: Any, **kwargs: Any) -> int:
        rc = call(args, **kwargs)
        if rc:
            raise subprocess.CalledProcessError(rc, args)
        return 0

    return {"Popen": Popen, "run": tether.run, "call": call, "check_call": check_call,
            "check_output": tether.check_output}


def load_subprocess_suite(baseline: bool) -> types.ModuleType:
    import subprocess

    # Imported with the real subprocess: only the test module gets the stand-in.
    for name in ("test.support", "test.support.script_helper"):
        importlib.import_module(name)

    import tether.subprocess as tsp

    names = baseline_names() if baseline else {n: getattr(tsp, n) for n in tsp.__all__}
    stand_in = proxy("subprocess", subprocess, names, None if baseline else tsp)
    sys.modules.pop(MODULES["subprocess"], None)
    sys.modules["subprocess"] = stand_in  # only while the test module imports it
    try:
        return importlib.import_module(MODULES["subprocess"])
    finally:
        sys.modules["subprocess"] = subprocess


def load_asyncio_suite(baseline: bool) -> types.ModuleType:
    import asyncio
    import asyncio.subprocess

    import tether.aio as aio

    module = importlib.import_module(MODULES["asyncio"])
    if baseline:
        async def exec_(program: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs.pop("limit", None)
            return await aio.spawn([program, *args], **kwargs)

        names: dict[str, Any] = {"create_subprocess_exec": exec_}
    else:
        names = {"create_subprocess_exec": aio.create_subprocess_exec,
                 "create_subprocess_shell": aio.create_subprocess_shell}
    sub = proxy("asyncio.subprocess", asyncio.subprocess, names)
    module.asyncio = proxy("asyncio", asyncio, {**names, "subprocess": sub})  # type: ignore[attr-defined]
    module.subprocess = sub  # type: ignore[attr-defined]
    return module


def iter_tests(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def short_id(test: unittest.TestCase) -> str:
    """``Class.test_method``: the id without the module (the two suites' classes differ)."""
    return ".".join(test.id().split(".")[-2:])


def read_expected(path: Path = EXPECTED) -> dict[str, str]:
    """``{test id: reason}`` from the expected-differences file."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            test_id, _, reason = line.partition("#")
            out[test_id.strip()] = reason.strip()
    return out


class Result(unittest.TextTestResult):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passed: list[str] = []

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self.passed.append(short_id(test))


def run(suite_name: str, *, baseline: bool = False, select: Callable[[str], bool] | None = None,
        verbosity: int = 0) -> tuple[Result, int]:
    """Run one suite; returns the result and how many tests ran."""
    loader = load_subprocess_suite if suite_name == "subprocess" else load_asyncio_suite
    module = loader(baseline)
    tests = [t for t in iter_tests(unittest.defaultTestLoader.loadTestsFromModule(module))
             if select is None or select(short_id(t))]
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=verbosity,
                                     resultclass=Result)
    result = runner.run(unittest.TestSuite(tests))
    assert isinstance(result, Result)
    return result, len(tests)


def failing(result: unittest.TestResult) -> dict[str, str]:
    """``{test id: the last line of its traceback}`` for every failure and error."""
    out: dict[str, str] = {}
    for test, trace in [*result.failures, *result.errors, *[(t, "unexpected success")
                                                            for t in result.unexpectedSuccesses]]:
        lines = [ln for ln in trace.strip().splitlines() if ln.strip()]
        out[short_id(test)] = lines[-1][:160] if lines else ""
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", default="subprocess", choices=sorted(MODULES))
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("-k", action="append", default=[], help="run ids containing this")
    parser.add_argument("-v", action="count", default=0)
    args = parser.parse_args(argv)
    try:
        importlib.import_module("test.support")
        importlib.import_module(MODULES[args.suite])
    except ImportError as exc:
        print(f"skipped: CPython's test package is not installed here ({exc})")
        return 0
    select = (lambda tid: any(k in tid for k in args.k)) if args.k else None
    result, ran = run(args.suite, baseline=args.baseline, select=select, verbosity=args.v)
    bad = failing(result)
    expected = read_expected()
    unexpected = {t: why for t, why in bad.items() if t not in expected}
    fixed = sorted(t for t in expected if t in result.passed)
    print(f"{args.suite}{' (baseline)' if args.baseline else ''}: {ran} tests, "
          f"{len(result.passed)} passed, {len(result.failures)} failed, "
          f"{len(result.errors)} errors, {len(result.skipped)} skipped, "
          f"{len(bad)} not passing ({len(bad) - len(unexpected)} expected)")
    for test_id, why in sorted(bad.items()):
        mark = "expected" if test_id in expected else "UNEXPECTED"
        print(f"  {mark}: {test_id}: {why}")
    for test_id in fixed:
        print(f"  listed but passes: {test_id}")
    return 1 if unexpected and not args.baseline else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
